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
}

impl PrivateRedis {
    /// Starts `redis-server` with `extra` arguments and waits until it accepts connections.
    pub fn start(extra: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique("tiketi-redis"));
        std::fs::create_dir_all(&dir)?;
        let dir_arg = dir.to_str().context("temp dir is not UTF-8")?.to_owned();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", &dir_arg])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("redis-server must be installed (e2e/stack up installs it)")?;
        let me = Self { child, port, dir };
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
        let _ = self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
