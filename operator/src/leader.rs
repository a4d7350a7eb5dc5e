//! Leader election on a `coordination.k8s.io/v1` Lease (kube 5 ships none), in the manner of
//! client-go's leaderelection: the holder renews every `retry_period`; a candidate takes the Lease
//! over once it has seen the same record unchanged for `lease_duration` by its *own* clock (so
//! clock skew between replicas does not matter); writes use the Lease's resourceVersion, so two
//! candidates can never both win. A leader that cannot renew within `renew_deadline` steps down
//! before its Lease can expire. On shutdown the holder releases the Lease so a standby takes over
//! at once.

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
}

impl LeaderState {
    /// A state that is always leader (leader election disabled: one replica, or tests).
    pub fn always() -> Self {
        let (_tx, rx) = watch::channel(Some(true));
        Self { rx }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow() == Some(true)
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

/// Starts an election; returns the state handle and a future that runs it until `shutdown`
/// resolves (then releases the Lease if held).
pub fn elect(
    client: Client,
    cfg: LeaderConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    LeaderState,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(None);
    (LeaderState { rx }, run(client, cfg, tx, shutdown))
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
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renew = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let outcome = try_acquire_or_renew(&api, &cfg, &mut observed).await;
        let was_leader = *tx.borrow() == Some(true);
        let leader = match outcome {
            Ok(true) => {
                last_renew = Instant::now();
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.lease_name, "leader election: cannot read or write the Lease");
                // Keep leading only while the Lease we hold cannot have expired yet.
                was_leader && last_renew.elapsed() < cfg.renew_deadline
            }
        };
        if leader != was_leader || tx.borrow().is_none() {
            tracing::info!(identity = %cfg.identity, leader, "leadership changed");
        }
        tx.send_replace(Some(leader));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if *tx.borrow() == Some(true) {
        if let Err(e) = release(&api, &cfg).await {
            tracing::warn!(error = %e, "cannot release the leader Lease");
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
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
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
