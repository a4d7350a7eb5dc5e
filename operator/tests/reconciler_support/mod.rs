//! Shared helpers of the reconciler's cluster tests: CRD install, an in-process operator scoped to
//! one namespace, the Secrets an event needs, and waiting on a TicketingEvent's status.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tiketi_e2e::wait_until;
use tiketi_operator::crd::TicketingEvent;
use tiketi_operator::leader::LeaderConfig;
use tiketi_operator::runtime::{RunOptions, run};
use tokio::sync::watch;

/// Applies the generated CRD and waits until it is Established.
pub async fn install_crd(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = tiketi_operator::crd::crd();
    let name = crd.name_any();
    api.patch(
        &name,
        &PatchParams::apply("tiketi-tests").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    wait_until("the CRD to be Established", Duration::from_secs(30), || async {
        let crd = api.get(&name).await?;
        Ok(crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await
}

/// An operator running in this process, watching one namespace.
pub struct Operator {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<()>>,
}

impl Operator {
    pub fn start(client: &Client, ns: &str) -> Self {
        Self::start_with(client, ns, None)
    }

    pub fn start_with(client: &Client, ns: &str, leader: Option<LeaderConfig>) -> Self {
        Self::start_opts(client, ns, |o| o.leader = leader)
    }

    /// Starts with the default options for `ns`, adjusted by `edit`.
    pub fn start_opts(client: &Client, ns: &str, edit: impl FnOnce(&mut RunOptions)) -> Self {
        tiketi_shared::telemetry::init("warn,tiketi_operator=info");
        let (stop, rx) = watch::channel(false);
        let mut opts = RunOptions {
            namespace: Some(ns.to_string()),
            secret_namespaces: vec![],
            metrics_addr: None,
            leader: None,
            identity: tiketi_e2e::unique("test-operator"),
            autoscaler: Default::default(),
        };
        edit(&mut opts);
        let handle = tokio::spawn(run(client.clone(), opts, rx));
        Self { stop, handle }
    }

    /// False once the operator's run loop ended (a panic, an error) without being stopped.
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    pub async fn stop(self) -> Result<()> {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(20), self.handle).await???;
        Ok(())
    }
}

/// Ends a test cleanly: deletes every TicketingEvent while the operator still runs (so its
/// finalizer is honoured), stops the operator, strips any finalizer left (a failed run) and
/// deletes the namespace.
pub async fn teardown(client: &Client, ns: tiketi_e2e::TestNamespace, op: Operator) -> Result<()> {
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    api.delete_collection(&kube::api::DeleteParams::default(), &ListParams::default())
        .await?;
    let gone = wait_until(
        "every TicketingEvent to be deleted",
        Duration::from_secs(20),
        || async { Ok(api.list(&ListParams::default()).await?.items.is_empty()) },
    )
    .await;
    op.stop().await?;
    ns.delete().await?;
    gone
}

/// The three Secrets the standard test event refers to.
pub async fn create_secrets(client: &Client, ns: &str) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in [
        (
            "tiketi-redis",
            // The stack's Redis, so the autoscaler reads healthy (empty) signals.
            serde_json::json!({"url": tiketi_e2e::stack_env("REDIS_URL")?}),
        ),
        (
            "tiketi-db",
            serde_json::json!({"url": "postgres://tiketi:pw@127.0.0.1:5432/tiketi"}),
        ),
        (
            "tiketi-auth",
            serde_json::json!({"jwtSecret": "test-jwt-key-of-at-least-32-bytes-long", "admissionSecret": "test-admission-key-of-32-bytes-or-more"}),
        ),
    ] {
        let s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}, "stringData": data
        }))?;
        match api.create(&PostParams::default(), &s).await {
            // Already there (a test recreating the one it deleted): keep it.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// A TicketingEvent with the standard Secrets; `edit` adjusts the JSON before creation.
pub fn event(
    name: &str,
    on_sale_at: DateTime<Utc>,
    edit: impl FnOnce(&mut serde_json::Value),
) -> TicketingEvent {
    let mut v = serde_json::json!({
        "apiVersion": "tiketi.gg/v1alpha1",
        "kind": "TicketingEvent",
        "metadata": {"name": name},
        "spec": {
            "onSaleAt": on_sale_at,
            "inventory": {"sections": [{"name": "A", "rows": 10, "seatsPerRow": 20}]},
            "queue": {"image": "tiketi/queue:test", "minReplicas": 1, "maxReplicas": 10},
            "reservation": {"image": "tiketi/reservation:test", "minReplicas": 1, "maxReplicas": 10},
            "redis": {"urlSecretRef": {"name": "tiketi-redis", "key": "url"}},
            "database": {"secretRef": {"name": "tiketi-db"}},
            "auth": {"secretRef": {"name": "tiketi-auth"}}
        }
    });
    edit(&mut v);
    serde_json::from_value(v).unwrap()
}

/// Waits until `check` holds for the named TicketingEvent.
pub async fn wait_tev(
    api: &Api<TicketingEvent>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&TicketingEvent) -> bool,
) -> Result<TicketingEvent> {
    let last = std::sync::Mutex::new(None::<TicketingEvent>);
    let res = wait_until(what, timeout, || {
        let api = api.clone();
        let name = name.to_string();
        let check = &check;
        let last = &last;
        async move {
            let tev = api.get(&name).await?;
            let ok = check(&tev);
            *last.lock().unwrap() = Some(tev);
            Ok(ok)
        }
    })
    .await;
    let last = last.into_inner().unwrap();
    match res {
        Ok(()) => Ok(last.unwrap()),
        Err(e) => Err(e.context(format!("last seen status: {:?}", last.and_then(|t| t.status)))),
    }
}

pub fn condition_is(tev: &TicketingEvent, type_: &str, status: &str) -> bool {
    tiketi_operator::status::find(tev, type_).is_some_and(|c| c.status == status)
}

pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Events regarding the named object, as (type, reason, note).
pub async fn events_of(client: &Client, ns: &str, name: &str) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// The Events about `name` once one of them satisfies `pred`, waiting up to 15 s: the operator
/// writes an Event after the status change it reports, so a test that saw the status may not see
/// the Event yet.
pub async fn event_seen(
    client: &Client,
    ns: &str,
    name: &str,
    pred: impl Fn(&(String, String, String)) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let evs = events_of(client, ns, name).await.unwrap_or_default();
        if evs.iter().any(&pred) {
            return evs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such Event about {name} within 15 s: {evs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator binary as a child process scoped to one namespace, leader election off (so it
/// can be SIGKILLed, and its memory read). Its log is printed if the test panics.
pub struct OperatorProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl OperatorProcess {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_tiketi-operator")` of the caller) with /metrics on
    /// `metrics_port` and `RUST_LOG=rust_log`.
    pub fn start(binary: &str, ns: &str, metrics_port: u16, rust_log: &str) -> Self {
        let log = std::env::temp_dir().join(tiketi_e2e::unique("tiketi-operator-log"));
        let child = std::process::Command::new(binary)
            .args([
                "run",
                "--namespace",
                ns,
                "--leader-election",
                "false",
                "--log-format",
                "text",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env("RUST_LOG", rust_log)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// SIGKILL: no clean-up, no Lease release.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Resident set (VmRSS) and its peak (VmHWM), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time the process has used so far (user + system), from /proc/<pid>/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command (which may hold spaces) start after its closing parenthesis;
        // utime and stime are the 14th and 15th fields of the line, in clock ticks (100 Hz).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        Duration::from_millis((fields[11] + fields[12]) * 10)
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "operator log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if std::env::var_os("TIKETI_KEEP_LOGS").is_some() {
            eprintln!("operator log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Requests an operator sent (watches left out), as (method, path?query).
pub type RequestLog = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// `client` that logs every request but the watches (what an operator costs the API server).
pub fn recording_client(client: Client) -> (Client, RequestLog) {
    let log: RequestLog = Default::default();
    let seen = log.clone();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        let query = req.uri().query().unwrap_or_default().to_owned();
        if !query.contains("watch=true") {
            let target = format!("{}?{query}", req.uri().path());
            seen.lock().unwrap().push((req.method().to_string(), target));
        }
        async move { client.send(req).await.map_err(tower::BoxError::from) }
    });
    (Client::new(service, "default"), log)
}
