//! Support for tests that run against tiketi's local stack (`e2e/stack up`): finding the stack
//! through the environment, failing loudly when it is missing, throwaway namespaces, and waiting on
//! conditions with a deadline instead of sleeping.
#![forbid(unsafe_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

/// Reads a variable that `e2e/stack env` exports; a missing one is an error that says how to fix
/// it, so a test run without the stack fails instead of silently passing.
pub fn stack_env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: this test needs the local stack (run `eval \"$(e2e/stack up)\"` or `make test`)")
    })
}

/// A client for the local API server named by `KUBECONFIG`.
pub async fn kube_client() -> Result<Client> {
    stack_env("KUBECONFIG")?;
    Client::try_default()
        .await
        .context("cannot build a client from KUBECONFIG")
}

/// A short random suffix for names that must not collide between concurrent tests.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:x}", std::process::id() % 0xfff, nanos)
}

/// A namespace created for one test; call [`TestNamespace::delete`] at the end.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = unique(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"tiketi.gg/test": "true"}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        // Pods need the namespace's default ServiceAccount, which the controller-manager creates.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_until("the default ServiceAccount", Duration::from_secs(30), || async {
            Ok(sa.get_opt("default").await?.is_some())
        })
        .await?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }
}

/// Polls `check` every 100 ms until it returns true, failing after `timeout` with `what` named.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A redis-server child process of one test (for faults the shared Redis must not suffer:
/// SIGSTOP, FLUSHALL, cluster mode), on its own port and scratch directory, killed on drop.
pub struct PrivateRedis {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    /// Killed by [`Self::kill`].
    killed: bool,
}

impl PrivateRedis {
    /// Starts `redis-server` with `extra` arguments and waits until it accepts connections.
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_with(extra, None)
    }

    /// Like [`Self::start`]; with `tls` (a directory holding `redis.crt`, `redis.key` and
    /// `ca.crt`, as `e2e/stack` makes them) the port speaks TLS only.
    pub fn start_with(extra: &[&str], tls: Option<&std::path::Path>) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique("tiketi-redis"));
        std::fs::create_dir_all(&dir)?;
        let dir_arg = dir.to_str().context("temp dir is not UTF-8")?.to_owned();
        let port_args: Vec<String> = match tls {
            None => vec!["--port".into(), port.to_string()],
            Some(pki) => {
                let file = |f: &str| pki.join(f).to_string_lossy().into_owned();
                vec![
                    "--port".into(),
                    "0".into(),
                    "--tls-port".into(),
                    port.to_string(),
                    "--tls-cert-file".into(),
                    file("redis.crt"),
                    "--tls-key-file".into(),
                    file("redis.key"),
                    "--tls-ca-cert-file".into(),
                    file("ca.crt"),
                    "--tls-auth-clients".into(),
                    "no".into(),
                    "--tls-cluster".into(),
                    "yes".into(),
                    "--tls-replication".into(),
                    "yes".into(),
                ]
            }
        };
        let child = std::process::Command::new("redis-server")
            .args(&port_args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", &dir_arg])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("redis-server must be installed (e2e/stack up installs it)")?;
        let me = Self {
            child,
            port,
            dir,
            killed: false,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server on {port} did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Not killed by [`Self::kill`].
    pub fn alive(&self) -> bool {
        !self.killed
    }

    /// SIGKILLs the server (no shutdown, no save: what a crashed host looks like) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.killed = true;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends a signal (`-STOP`, `-CONT`, …) to the server process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {sig} {} failed", self.child.id());
        }
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.signal("-CONT");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of one test: three primaries with one replica each (six `redis-server`
/// processes, node timeout 2 s), for faults the stack's cluster must not suffer (SIGKILL of a
/// primary, failover). Every node is killed on drop.
pub struct PrivateCluster {
    nodes: Vec<PrivateRedis>,
    /// The PKI directory when the cluster speaks TLS (`--tls-cluster yes`).
    tls: Option<std::path::PathBuf>,
}

impl PrivateCluster {
    /// Starts the six nodes, creates the cluster and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// The same cluster over TLS only (clients, the cluster bus and replication), with the
    /// certificates of `e2e/stack` (the directory of `REDIS_TLS_CA`).
    pub fn start_tls(pki: &std::path::Path) -> Result<Self> {
        Self::start_with(Some(pki))
    }

    /// [`Self::start`] from async code (the start-up waits block a thread).
    pub async fn spawn() -> Result<Self> {
        tokio::task::spawn_blocking(Self::start).await?
    }

    /// [`Self::start_tls`] with the stack's certificates, from async code; returns the cluster
    /// and the CA bundle (`REDIS_TLS_CA`) clients verify it with.
    pub async fn spawn_tls() -> Result<(Self, std::path::PathBuf)> {
        let ca = std::path::PathBuf::from(stack_env("REDIS_TLS_CA")?);
        let pki = ca
            .parent()
            .context("REDIS_TLS_CA has no directory")?
            .to_path_buf();
        let cluster = tokio::task::spawn_blocking(move || Self::start_tls(&pki)).await??;
        Ok((cluster, ca))
    }

    fn start_with(tls: Option<&std::path::Path>) -> Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port()?;
            nodes.push(PrivateRedis::start_with(
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-config-file",
                    "nodes.conf",
                ],
                tls,
            )?);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let tls_args = Self::tls_args(tls);
        let out = std::process::Command::new("redis-cli")
            .args(&tls_args)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("redis-cli must be installed (e2e/stack up installs it)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let me = Self {
            nodes,
            tls: tls.map(std::path::Path::to_path_buf),
        };
        me.wait_ok(Duration::from_secs(30))?;
        // A replica that has not finished its first sync never takes over: wait for every link.
        let start = Instant::now();
        while !me.nodes.iter().all(|n| {
            me.cli(n.port(), &["info", "replication"])
                .is_some_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
        }) {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the private cluster's replicas did not sync in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// The URL of the first node (any node serves as the configuration endpoint); `rediss://`
    /// for a TLS cluster.
    pub fn url(&self) -> String {
        self.urls().remove(0)
    }

    /// What a tiketi part is given to reach this cluster (cluster mode, verified with `ca`).
    pub fn redis_args(&self, ca: Option<std::path::PathBuf>) -> tiketi_shared::redis::RedisArgs {
        tiketi_shared::redis::RedisArgs {
            cluster: true,
            ca_file: ca,
            ..tiketi_shared::redis::RedisArgs::new(self.url())
        }
    }

    /// The URLs of every node (some may have been killed).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port()))
            .collect()
    }

    fn tls_args(tls: Option<&std::path::Path>) -> Vec<String> {
        tls.map(|pki| {
            vec![
                "--tls".to_owned(),
                "--cacert".to_owned(),
                pki.join("ca.crt").to_string_lossy().into_owned(),
            ]
        })
        .unwrap_or_default()
    }

    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new("redis-cli")
            .args(Self::tls_args(self.tls.as_deref()))
            .args(["-p", &port.to_string()])
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every node still running reports `cluster_state:ok`.
    pub fn wait_ok(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let ok = self.nodes.iter().filter(|n| n.alive()).all(|n| {
                self.cli(n.port(), &["cluster", "info"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("the private cluster did not reach cluster_state:ok in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the node that serves `slot` as a primary now.
    pub fn primary_of(&self, slot: u16) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.alive()
                && self.cli(n.port(), &["cluster", "nodes"]).is_some_and(|text| {
                    text.lines().any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 8
                            && f[2].contains("myself")
                            && f[2].contains("master")
                            && f[8..].iter().any(|r| match r.split_once('-') {
                                Some((a, b)) => a
                                    .parse::<u16>()
                                    .ok()
                                    .zip(b.parse::<u16>().ok())
                                    .is_some_and(|(a, b)| a <= slot && slot <= b),
                                None => r.parse::<u16>().ok() == Some(slot),
                            })
                    })
                })
        })
    }

    /// SIGKILLs node `i` (see [`PrivateRedis::kill`]).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.nodes[i].kill()
    }

    /// Sends a signal (`-STOP`, `-CONT`, …) to node `i`.
    pub fn signal(&self, i: usize, sig: &str) -> Result<()> {
        self.nodes[i].signal(sig)
    }
}
