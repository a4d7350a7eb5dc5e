//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 ships none), in the manner of
//! client-go's leaderelection: the holder renews every `retry_period`; a candidate takes the Lease
//! over once it has seen the same record unchanged for `lease_duration` by its *own* clock (so
//! clock skew between replicas does not matter); writes use the Lease's resourceVersion, so two
//! candidates can never both win. A leader that cannot renew within `renew_deadline` steps down
//! before its Lease can expire. On shutdown the holder releases the Lease so a standby takes over
//! at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's identity (pod name, or host name plus process id).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What this replica knows about leadership: `None` until the first attempt finished.
#[derive(Clone, Debug)]
pub struct LeaderState {
    rx: watch::Receiver<Option<bool>>,
    /// Leadership is valid until this instant (the start of the last successful renewal plus
    /// renew_deadline); `None` without a bound (election disabled).
    until: Arc<Mutex<Option<Instant>>>,
}

impl LeaderState {
    /// A state that is always leader (leader election disabled: one replica, or tests).
    pub fn always() -> Self {
        let (_tx, rx) = watch::channel(Some(true));
        Self {
            rx,
            until: Arc::default(),
        }
    }

    /// True while this replica leads *now*: the flag is set and the renew deadline measured from
    /// the start of the last successful renewal has not passed. Writers call it right before
    /// each write, so a renewal stuck in a slow API call cannot leave two writers.
    pub fn is_leader(&self) -> bool {
        let until = *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self.rx.borrow() == Some(true) && until.is_none_or(|u| Instant::now() < u)
    }

    /// True once the first election attempt has finished (readiness needs it).
    pub fn known(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// A receiver that changes whenever leadership does.
    pub fn subscribe(&self) -> watch::Receiver<Option<bool>> {
        self.rx.clone()
    }
}

/// A write refused because this replica does not lead (any more). It never reached the API
/// server: [`guard_writes`] checks leadership right before each write is sent.
#[derive(Debug, thiserror::Error)]
#[error("not the leader (any more): {method} {path} was not sent")]
pub struct NotLeader {
    pub method: String,
    pub path: String,
}

impl NotLeader {
    /// True when `err` is a write [`guard_writes`] refused.
    pub fn is(err: &kube::Error) -> bool {
        matches!(err, kube::Error::Service(e) if e.downcast_ref::<NotLeader>().is_some())
    }
}

/// `client` with every write (any method but GET, HEAD and OPTIONS: applies, patches, creates,
/// deletes, status writes, Events) sent only while `leader` leads at that instant, so no code
/// path can write after the renew deadline passed or leadership moved, whatever it checked when
/// it began. Reads and watches pass. Not for the Lease calls themselves (the election uses its
/// own client).
pub fn guard_writes(client: Client, leader: LeaderState) -> Client {
    use axum::http::Method;
    let default_ns = client.default_namespace().to_owned();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        let leads =
            matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) || leader.is_leader();
        let refused = (!leads).then(|| NotLeader {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
        });
        async move {
            match refused {
                Some(e) => Err(tower::BoxError::from(e)),
                None => client.send(req).await.map_err(tower::BoxError::from),
            }
        }
    });
    Client::new(service, default_ns)
}

/// Starts an election; returns the state handle and a future that runs it until `shutdown`
/// resolves (then releases the Lease if held). The caller resolves `shutdown` only once its
/// writers have stopped, so no write follows the release.
pub fn elect(
    client: Client,
    cfg: LeaderConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    LeaderState,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(None);
    let until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(Some(Instant::now())));
    let state = LeaderState {
        rx,
        until: until.clone(),
    };
    (state, run(client, cfg, tx, until, shutdown))
}

/// The record last observed and when (by this replica's monotonic clock).
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

async fn run(
    client: Client,
    cfg: LeaderConfig,
    tx: watch::Sender<Option<bool>>,
    until: Arc<Mutex<Option<Instant>>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<Observed> = None;
    let set_until = |at: Instant| *until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    let mut valid_until = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let was_leader = *tx.borrow() == Some(true);
        // Every attempt is bounded: a leader's by what is left of its renew deadline (it steps
        // down when that passes, whatever the API server does), a candidate's by renew_deadline.
        let started = Instant::now();
        let bound = if was_leader {
            valid_until.saturating_duration_since(started)
        } else {
            cfg.renew_deadline
        };
        let outcome = match tokio::time::timeout(bound, try_acquire_or_renew(&api, &cfg, &mut observed)).await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {bound:?}")),
        };
        let leader = match outcome {
            Ok(true) => {
                valid_until = started + cfg.renew_deadline;
                set_until(valid_until);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.lease_name, "leader election: cannot read or write the Lease");
                // Keep leading only while the Lease we hold cannot have expired yet.
                was_leader && Instant::now() < valid_until
            }
        };
        if leader != was_leader || tx.borrow().is_none() {
            tracing::info!(identity = %cfg.identity, leader, "leadership changed");
        }
        if !leader {
            set_until(Instant::now());
        }
        tx.send_replace(Some(leader));
        // Sleep until the next attempt, but wake to step down the moment the deadline passes.
        let step_down = tokio::time::sleep_until(tokio::time::Instant::from_std(valid_until));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(cfg.retry_period) => {}
            () = step_down, if leader => {
                tracing::warn!(identity = %cfg.identity, "renew deadline passed: stepping down");
                tx.send_replace(Some(false));
            }
        }
    }
    if *tx.borrow() == Some(true) {
        // Bounded like every attempt: a hung API server must not hold the exit until the
        // kubelet's SIGKILL (the Lease then simply expires for the next leader).
        match tokio::time::timeout(cfg.renew_deadline, release(&api, &cfg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release the leader Lease"),
            Err(_) => tracing::warn!(
                bound = ?cfg.renew_deadline,
                "cannot release the leader Lease: no answer from the API server in time"
            ),
        }
        tx.send_replace(Some(false));
    }
}

fn now_micro() -> MicroTime {
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(Utc::now().timestamp_micros())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    MicroTime(ts)
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let duration_secs = i32::try_from(cfg.lease_duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.lease_name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record_changed = match observed {
        Some(o) => o.holder != holder || o.renew_time != spec.renew_time,
        None => true,
    };
    if record_changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let held_duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs)).unwrap_or(0));
    let expired = observed.as_ref().is_some_and(|o| o.at.elapsed() >= held_duration);
    let mine = holder.as_deref() == Some(cfg.identity.as_str());
    if !mine && holder.is_some() && !expired {
        return Ok(false);
    }
    if !mine {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(now_micro());
        // Saturating: a count someone set to i32::MAX must not end leader election.
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(now_micro());
    // replace carries the resourceVersion we read: a concurrent writer makes this fail with 409.
    match api.replace(&cfg.lease_name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now_micro());
    api.replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod deadline_tests {
    use super::*;

    #[tokio::test]
    async fn leadership_ends_at_the_renew_deadline_even_without_an_answer() {
        let (tx, rx) = watch::channel(Some(true));
        let until = Arc::new(Mutex::new(Some(Instant::now() + Duration::from_millis(80))));
        let state = LeaderState {
            rx,
            until: until.clone(),
        };
        assert!(state.is_leader());
        // No renewal arrives (a stalled API call): the flag still says leader, the deadline not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*tx.borrow(), Some(true));
        assert!(
            !state.is_leader(),
            "a replica past its renew deadline must not write"
        );
        // A renewal moves the deadline.
        *until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(10));
        assert!(state.is_leader());
        assert!(LeaderState::always().is_leader());
    }

    #[tokio::test]
    async fn a_leader_exits_within_the_renew_deadline_when_the_api_server_hangs_at_release() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        // An API server with no Lease that creates the one asked for, until `hang`; then it
        // accepts requests and answers nothing.
        let hang = Arc::new(AtomicBool::new(false));
        let after_hang = Arc::new(AtomicUsize::new(0));
        let server = {
            let (hang, after_hang) = (hang.clone(), after_hang.clone());
            tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
                let (hang, after_hang) = (hang.clone(), after_hang.clone());
                async move {
                    if hang.load(Ordering::SeqCst) {
                        after_hang.fetch_add(1, Ordering::SeqCst);
                        futures::future::pending::<()>().await;
                    }
                    let (status, out) = if req.method() == "POST" {
                        (
                            201,
                            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"lease","namespace":"ns","resourceVersion":"1"},"spec":{"holderIdentity":"me","leaseDurationSeconds":15}}"#,
                        )
                    } else {
                        (
                            404,
                            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#,
                        )
                    };
                    let res = axum::http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(out.as_bytes().to_vec()))?;
                    Ok::<_, tower::BoxError>(res)
                }
            })
        };
        let mut cfg = LeaderConfig::new("ns", "lease", "me");
        cfg.renew_deadline = Duration::from_millis(800);
        cfg.retry_period = Duration::from_secs(30);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (state, election) = elect(Client::new(server, "ns"), cfg, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
        let election = tokio::spawn(election);
        let mut leading = state.subscribe();
        tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l == Some(true)))
            .await
            .expect("became leader")
            .unwrap();
        // The API server stops answering; the replica shuts down while it still leads.
        hang.store(true, Ordering::SeqCst);
        let started = Instant::now();
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), election)
            .await
            .expect("the election did not end: the release waited on a hung API server")
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(after_hang.load(Ordering::SeqCst), 1, "the release was attempted");
        assert_eq!(*leading.borrow(), Some(false));
    }

    #[tokio::test]
    async fn a_follower_sends_reads_but_no_write() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // An "API server" that counts what reaches it and answers 404 to everything.
        let sent = Arc::new(AtomicUsize::new(0));
        let seen = sent.clone();
        let server = tower::service_fn(move |_req: axum::http::Request<kube::client::Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#;
            let res = axum::http::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(body.as_bytes().to_vec()))
                .unwrap();
            futures::future::ready(Ok::<_, tower::BoxError>(res))
        });
        let (tx, rx) = watch::channel(Some(true));
        let state = LeaderState {
            rx,
            until: Arc::default(),
        };
        let api: Api<ConfigMap> = Api::namespaced(guard_writes(Client::new(server, "ns"), state), "ns");
        let patch = kube::api::Patch::Merge(serde_json::json!({"data": {"a": "b"}}));
        let params = kube::api::PatchParams::default();
        // Leading: both reach the server.
        assert!(api.get_opt("x").await.unwrap().is_none());
        assert!(api.patch("x", &params, &patch).await.is_err());
        assert_eq!(sent.load(Ordering::SeqCst), 2);
        // Stepped down: the read still goes, the write is refused before it is sent.
        tx.send_replace(Some(false));
        assert!(api.get_opt("x").await.unwrap().is_none());
        let err = api.patch("x", &params, &patch).await.unwrap_err();
        assert!(NotLeader::is(&err), "{err:?}");
        assert!(err.to_string().contains("not the leader"), "{err}");
        let err = api.delete("x", &Default::default()).await.unwrap_err();
        assert!(NotLeader::is(&err), "{err:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 3, "a write reached the API server");
    }
}
