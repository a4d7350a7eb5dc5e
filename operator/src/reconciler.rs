//! The TicketingEvent reconciler, as a pipeline: gather (Secrets, existing Deployments) →
//! validate (pure) → schedule (pure) → build children (pure) → apply (server-side apply, one field
//! manager) → replicas (through the scaler) → orphan clean-up → status. There is no finalizer:
//! every child has an owner reference to its event, so the garbage collector deletes them with it
//! (also while the operator is scaled to zero), and the event's metric series are forgotten when
//! the watch sees it go (`runtime::run`). A finalizer left by an older operator is removed.
//!
//! Only the leader writes: a follower's reconcile returns at once, and every event is reconciled
//! again when leadership is gained.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::{self, Children, EVENT_LABEL, component_name};
use crate::crd::{Component, ComponentStatus, Phase, TicketingEvent, TicketingEventStatus, secret_keys};
use crate::events::{EventPublisher, EventType};
use crate::field_managers;
use crate::leader::LeaderState;
use crate::metrics::{ErrorLabels, Metrics};
use crate::scaler::{self, BookEntry, ScaleReason, Scaler};
use crate::schedule::{self, Schedule};
use crate::status::{apply_status, condition, reasons, types};

/// The finalizer older operators put on every TicketingEvent (deletion waited for the operator,
/// and hung while it was scaled to zero). Removed from every event this operator reconciles.
pub const LEGACY_FINALIZER: &str = "tiketi.gg/cleanup";
/// Re-check of a spec that refers to a missing Secret (a backstop: the Secret watch reconciles
/// the event when it is created).
pub const MISSING_SECRET_RETRY: Duration = Duration::from_secs(15);

/// Shared state of the reconciler and the autoscaler loop.
pub struct Context {
    pub client: Client,
    pub events: EventPublisher,
    pub metrics: Metrics,
    pub scaler: Scaler,
    pub leader: LeaderState,
    /// Secret data (auth keys, URLs, the CA) for validation and the autoscaler's signal reads.
    pub secrets: crate::secrets::Secrets,
    /// The children as the operator's watches show them.
    pub children: ChildStores,
    failures: Mutex<HashMap<String, u32>>,
}

/// What the operator's metadata watches show of the children (see `runtime`): compared with
/// the desired children before applying, and searched for orphans.
#[derive(Clone, Default)]
pub struct ChildStores {
    pub config_maps: ChildIndex,
    pub services: ChildIndex,
    pub pdbs: ChildIndex,
    pub deployments: ChildIndex,
}

/// What a reconcile needs of a cached child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSummary {
    /// uid of its controller (owner reference with `controller: true`).
    pub controller: Option<String>,
    /// Its `tiketi.gg/event` label.
    pub event: Option<String>,
    /// Its applied hash ([`children::APPLIED_HASH_ANNOTATION`]).
    pub hash: Option<String>,
}

impl ChildSummary {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            controller: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            event: meta.labels.as_ref().and_then(|l| l.get(EVENT_LABEL)).cloned(),
            hash: children::applied_hash(meta).map(str::to_owned),
        }
    }
}

type ChildMap = HashMap<(String, String), ChildSummary>;

/// One kind of child, (namespace, name) → [`ChildSummary`], kept by a metadata watch: a few
/// hundred bytes per child instead of its object (thousands of children are cached).
#[derive(Clone, Default)]
pub struct ChildIndex {
    map: Arc<std::sync::RwLock<ChildMap>>,
    /// A relist in progress: it replaces the map when it is done.
    relist: Arc<Mutex<Option<ChildMap>>>,
}

impl ChildIndex {
    fn key(meta: &ObjectMeta) -> (String, String) {
        (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }

    /// Applies one watch event.
    pub fn apply<K>(&self, ev: &kube::runtime::watcher::Event<PartialObjectMeta<K>>) {
        use kube::runtime::watcher::Event;
        let lock_relist = || {
            self.relist
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let write_map = || {
            self.map
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        match ev {
            Event::Apply(o) => {
                write_map().insert(Self::key(&o.metadata), ChildSummary::of(&o.metadata));
            }
            Event::Delete(o) => {
                write_map().remove(&Self::key(&o.metadata));
            }
            Event::Init => *lock_relist() = Some(ChildMap::new()),
            Event::InitApply(o) => {
                if let Some(m) = lock_relist().as_mut() {
                    m.insert(Self::key(&o.metadata), ChildSummary::of(&o.metadata));
                }
            }
            Event::InitDone => {
                if let Some(m) = lock_relist().take() {
                    *write_map() = m;
                }
            }
        }
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<ChildSummary> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(ns.to_owned(), name.to_owned())).cloned()
    }

    /// Names in `ns` of children of the event `event` controlled by `uid`.
    pub fn owned_by(&self, ns: &str, event: &str, uid: &str) -> Vec<String> {
        let map = self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|((n, _), s)| {
                n == ns && s.event.as_deref() == Some(event) && s.controller.as_deref() == Some(uid)
            })
            .map(|((_, name), _)| name.clone())
            .collect()
    }
}

/// True when the cached child exists, is controlled by the event `uid` and carries the hash of
/// `desired` (nothing to apply).
fn up_to_date(index: &ChildIndex, desired: &ObjectMeta, uid: &str) -> bool {
    let (Some(name), Some(ns)) = (desired.name.as_deref(), desired.namespace.as_deref()) else {
        return false;
    };
    index.get(ns, name).is_some_and(|cur| {
        cur.controller.as_deref() == Some(uid)
            && cur.hash.is_some()
            && cur.hash.as_deref() == children::applied_hash(desired)
    })
}

/// `current` is controlled by `uid` and carries the applied hash of `desired`.
fn same_child(current: &ObjectMeta, desired: &ObjectMeta, uid: &str) -> bool {
    let owned = current
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true));
    owned
        && children::applied_hash(current).is_some()
        && children::applied_hash(current) == children::applied_hash(desired)
}

impl Context {
    pub fn new(
        client: Client,
        events: EventPublisher,
        metrics: Metrics,
        leader: LeaderState,
        secrets: crate::secrets::Secrets,
        children: ChildStores,
    ) -> Self {
        let scaler = Scaler::new(client.clone(), events.clone(), metrics.clone(), leader.clone());
        Self {
            client,
            events,
            metrics,
            scaler,
            leader,
            secrets,
            children,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn backoff(&self, key: &str) -> Duration {
        let Ok(mut f) = self.failures.lock() else {
            return Duration::from_secs(5);
        };
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n).min(8)).min(Duration::from_secs(300))
    }

    fn reset_backoff(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kube API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building children: {0}")]
    Build(#[from] children::BuildError),
    #[error("schedule: {0}")]
    Schedule(#[from] schedule::ScheduleError),
    #[error("scaling: {0}")]
    Scale(#[from] crate::scaler::ScaleError),
    #[error("TicketingEvent has no namespace")]
    NoNamespace,
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    #[error("reconcile did not finish within {0:?} (API calls hanging)")]
    Timeout(Duration),
}

impl Error {
    /// A fixed label per variant, for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(e) => crate::runtime::kube_error_label(e),
            Self::Build(_) => "build",
            Self::Schedule(_) => "schedule",
            Self::Scale(e) => e.metric_label(),
            Self::NoNamespace => "no_namespace",
            Self::Panicked(_) => "panic",
            Self::Timeout(_) => "timeout",
        }
    }
}

// === validate (pure) ===

/// Secret contents as far as validation needs them: `None` = the Secret does not exist.
pub type SecretData = BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>;

/// Why a spec cannot be deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// reasons::INVALID_SPEC or reasons::MISSING_SECRET.
    pub reason: &'static str,
    pub message: String,
}

/// The Secrets a spec refers to, with the keys each must hold.
pub fn required_secrets(tev: &TicketingEvent) -> BTreeMap<String, BTreeSet<String>> {
    let s = &tev.spec;
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    m.entry(s.redis.url_secret_ref.name.clone())
        .or_default()
        .insert(s.redis.url_secret_ref.key.clone());
    if let Some(ca) = &s.redis.ca_secret_ref {
        m.entry(ca.name.clone()).or_default().insert(ca.key.clone());
    }
    m.entry(s.database.secret_ref.name.clone())
        .or_default()
        .insert(secret_keys::DATABASE_URL.into());
    let auth = m.entry(s.auth.secret_ref.name.clone()).or_default();
    auth.insert(secret_keys::JWT_SECRET.into());
    auth.insert(secret_keys::ADMISSION_SECRET.into());
    m
}

/// What only the operator can judge: Secrets and their keys, and the semantic checks of the
/// event configuration and schedule (repeated here even where CEL already refuses, so an object
/// stored before a rule existed is still caught).
pub fn validate(tev: &TicketingEvent, secrets: &SecretData) -> Result<(), Invalid> {
    let invalid = |message: String| Invalid {
        reason: reasons::INVALID_SPEC,
        message,
    };
    let mut missing = Vec::new();
    for (name, keys) in required_secrets(tev) {
        match secrets.get(&name).and_then(Option::as_ref) {
            None => missing.push(format!("Secret {name:?} does not exist")),
            Some(data) => {
                for key in keys.iter().filter(|k| !data.contains_key(k.as_str())) {
                    missing.push(format!("Secret {name:?} has no key {key:?}"));
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(Invalid {
            reason: reasons::MISSING_SECRET,
            message: missing.join("; "),
        });
    }
    let auth = &tev.spec.auth.secret_ref.name;
    for key in [secret_keys::JWT_SECRET, secret_keys::ADMISSION_SECRET] {
        let value = secrets
            .get(auth)
            .and_then(Option::as_ref)
            .and_then(|d| d.get(key))
            .map_or(&[][..], Vec::as_slice);
        // The services refuse to start with such a key; saying so here names the Secret.
        tiketi_shared::token::check_signing_key(&format!("Secret {auth:?} key {key:?}"), value)
            .map_err(invalid)?;
    }
    if let Some(ca) = &tev.spec.redis.ca_secret_ref {
        if !tev.spec.redis.tls {
            return Err(invalid(
                "spec.redis.caSecretRef is a CA for TLS: set spec.redis.tls: true with it".into(),
            ));
        }
        let pem = secrets
            .get(&ca.name)
            .and_then(Option::as_ref)
            .and_then(|d| d.get(&ca.key));
        if !pem.is_some_and(|p| tiketi_shared::redis::holds_pem_certificate(p)) {
            return Err(invalid(format!(
                "spec.redis.caSecretRef: Secret {:?} key {:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.name, ca.key
            )));
        }
    }
    let r = &tev.spec.redis.url_secret_ref;
    if tev.spec.redis.tls {
        let url = secrets
            .get(&r.name)
            .and_then(Option::as_ref)
            .and_then(|d| d.get(&r.key));
        if !url.is_some_and(|u| u.starts_with(b"rediss://")) {
            return Err(invalid(format!(
                "spec.redis.tls is true but the URL in Secret {:?} key {:?} does not start with rediss://",
                r.name, r.key
            )));
        }
    }
    if let Some(end) = tev.spec.sale_ends_at
        && end <= tev.spec.on_sale_at
    {
        return Err(invalid("spec.saleEndsAt must be after spec.onSaleAt".into()));
    }
    for c in Component::ALL {
        let (min, max) = (tev.spec.min_replicas(c), tev.spec.max_replicas(c));
        if min > max {
            return Err(invalid(format!(
                "spec.{c}.minReplicas ({min}) exceeds maxReplicas ({max})"
            )));
        }
        if let Some(p) = tev.spec.prewarm_replicas(c)
            && p > max
        {
            return Err(invalid(format!(
                "spec.prewarm.{c}.replicas ({p}) exceeds spec.{c}.maxReplicas ({max})"
            )));
        }
    }
    for c in Component::ALL {
        let resources = match c {
            Component::Queue => tev.spec.queue.resources.as_ref(),
            Component::Reservation => tev.spec.reservation.resources.as_ref(),
        };
        check_quantities(c, resources).map_err(invalid)?;
    }
    for c in Component::ALL {
        // The policy the autoscaler will run, parsed here so a policy it cannot run is
        // InvalidSpec before anything is deployed (not a skip logged at debug later).
        crate::autoscaler::Policy::try_from(tev.spec.scaling(c)).map_err(|e| invalid(e.in_component(c)))?;
    }
    children::event_config(tev).map_err(|e| invalid(e.to_string()))?;
    schedule::evaluate(&tev.spec, None, tev.spec.on_sale_at).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// Every quantity in `resources` has the Kubernetes quantity syntax. The API server refuses a
/// Deployment holding one that does not with a 500 (it fails converting the object), which a
/// dry run cannot tell from an outage; so it is checked here, naming the field.
fn check_quantities(
    c: Component,
    resources: Option<&k8s_openapi::api::core::v1::ResourceRequirements>,
) -> Result<(), String> {
    let Some(r) = resources else { return Ok(()) };
    for (part, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in map.iter().flatten() {
            if !is_quantity(&q.0) {
                return Err(format!(
                    "spec.{c}.resources.{part}.{name}: {:?} is not a quantity (e.g. 500m, 1, 256Mi, 1Gi)",
                    q.0
                ));
            }
        }
    }
    Ok(())
}

/// `^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$`, the API server's own quantity pattern.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits = s
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(s.len());
    if digits == 0 {
        return false;
    }
    let rest = &s[digits..];
    let suffix = rest
        .find(|ch: char| !"eEinumkKMGTP".contains(ch))
        .unwrap_or(rest.len());
    let rest = &rest[suffix..];
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    rest.chars().all(|ch| ch.is_ascii_digit())
}

// === reconcile ===

/// The most one reconcile may take: a normal one is a few API round trips (milliseconds).
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Entry point for the Controller: [`reconcile`], with a panic turned into an error for this
/// event (logged, counted, retried with backoff) instead of taking down the process and, after
/// it, every standby that takes the Lease and reconciles the same object.
pub async fn reconcile_guarded(tev: Arc<TicketingEvent>, ctx: Arc<Context>) -> Result<Action, Error> {
    use futures::FutureExt as _;
    let key = format!("{}/{}", tev.namespace().unwrap_or_default(), tev.name_any());
    let bounded = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile(tev, ctx.clone()));
    match std::panic::AssertUnwindSafe(bounded).catch_unwind().await {
        Ok(Ok(result)) => result,
        // A hung API call fails this reconcile (retried with backoff), not the queue behind it.
        Ok(Err(_)) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
        Err(payload) => {
            let message = crate::supervise::panic_message(payload.as_ref());
            ctx.metrics
                .panics
                .get_or_create(&crate::metrics::TaskLabels { task: "reconcile" })
                .inc();
            tracing::error!(event = %key, panic = %message, "reconcile panicked");
            Err(Error::Panicked(message))
        }
    }
}

/// Reconciles one TicketingEvent (see [`reconcile_guarded`]).
pub async fn reconcile(tev: Arc<TicketingEvent>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        // Gaining leadership re-triggers every object (see `run`).
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile_timer();
    let ns = tev.namespace().ok_or(Error::NoNamespace)?;
    tracing::debug!(namespace = %ns, event = %tev.name_any(), "reconciling");
    let api: Api<TicketingEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{}", tev.name_any());
    drop_legacy_finalizer(&api, &tev).await?;
    let action = if tev.metadata.deletion_timestamp.is_some() {
        // Being deleted (another finalizer holds it): the garbage collector takes the children.
        ctx.metrics.forget_event(&ns, &tev.name_any());
        Action::await_change()
    } else {
        apply(tev, &ctx).await?
    };
    ctx.reset_backoff(&key);
    Ok(action)
}

/// Removes [`LEGACY_FINALIZER`] if the event carries it. The patch carries the cached
/// resourceVersion, so a concurrent change of the list is a conflict (retried) instead of a
/// lost finalizer of someone else's.
async fn drop_legacy_finalizer(api: &Api<TicketingEvent>, tev: &TicketingEvent) -> Result<(), Error> {
    if !tev.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = tev
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": tev.resource_version(),
    }});
    match api
        .patch(&tev.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing to remove.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Errors become one Warning Event and a requeue with exponential backoff.
pub fn error_policy(tev: Arc<TicketingEvent>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            error: err.metric_label(),
        })
        .inc();
    let key = format!("{}/{}", tev.namespace().unwrap_or_default(), tev.name_any());
    if err.metric_label() == "not_leader" {
        // Leadership ended during the reconcile: nothing to report (a follower writes nothing,
        // Events included); regaining leadership reconciles everything again.
        tracing::info!(event = %key, "leadership ended during the reconcile; stopped before writing");
        return Action::await_change();
    }
    let backoff = ctx.backoff(&key);
    tracing::warn!(event = %key, error = %err, ?backoff, "reconcile failed");
    let note = format!("{err}");
    let events = ctx.events.clone();
    tokio::spawn(async move {
        events
            .publish(
                &tev,
                EventType::Warning,
                reasons::RECONCILE_ERROR,
                "Reconcile",
                note,
            )
            .await;
    });
    Action::requeue(backoff)
}

/// What a reconcile reads before deciding anything: the Secrets the event refers to and its
/// Deployments as they are.
struct Gathered {
    secrets: SecretData,
    existing: BTreeMap<Component, Option<Deployment>>,
}

/// gather: `Ok(Err(_))` when the event cannot run at all here (a namespace the operator may not
/// read Secrets in).
async fn gather(tev: &TicketingEvent, ctx: &Context, ns: &str) -> Result<Result<Gathered, Invalid>, Error> {
    if let Some(why) = ctx.secrets.refuses(ns) {
        return Ok(Err(Invalid {
            reason: reasons::INVALID_SPEC,
            message: why,
        }));
    }
    let mut secrets = SecretData::new();
    for name in required_secrets(tev).into_keys() {
        let data = ctx.secrets.get(ns, &name).await?.map(|d| (*d).clone());
        secrets.insert(name, data);
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut existing = BTreeMap::new();
    for c in Component::ALL {
        existing.insert(c, deployments.get_opt(&component_name(&tev.name_any(), c)).await?);
    }
    Ok(Ok(Gathered { secrets, existing }))
}

/// What the schedule asks for now and the children built from the spec.
struct Plan {
    sched: Schedule,
    /// Replicas per component (the schedule's, keeping the last decision in the book).
    targets: BTreeMap<Component, i32>,
    /// Components whose Deployment does not exist yet, with the replicas to create it with.
    create: BTreeMap<Component, i32>,
    children: Children,
}

/// plan: schedule and build (no writes; the book entries adopt what the scaler wrote).
async fn plan(
    tev: &TicketingEvent,
    ctx: &Context,
    existing: &BTreeMap<Component, Option<Deployment>>,
    now: DateTime<Utc>,
) -> Result<Plan, Error> {
    let status = tev.status.clone().unwrap_or_default();
    let sched = schedule::evaluate(&tev.spec, status.sold_out_at, now)?;
    let mut targets = BTreeMap::new();
    for c in Component::ALL {
        let mut entry = ctx.scaler.book().lock(tev, c).await;
        entry.adopt(existing.get(&c).and_then(Option::as_ref), tev, c);
        targets.insert(c, schedule_target(&sched, tev, c, &entry));
    }
    let create: BTreeMap<Component, i32> = targets
        .iter()
        .filter(|(c, _)| existing.get(c).is_some_and(Option::is_none))
        .map(|(c, r)| (*c, *r))
        .collect();
    let children = children::build(tev, &create)?;
    Ok(Plan {
        sched,
        targets,
        create,
        children,
    })
}

/// The reconcile pipeline: gather → validate → plan → (ownership and dry-run checks) → apply →
/// replicas → clean up → status. An event already deployed keeps its last good spec in force
/// (schedule, replicas, autoscaling) when its spec turns invalid, a Secret goes away or the API
/// server refuses what the spec builds, with InvalidSpec=True saying why; one never deployed
/// gets nothing until it is valid.
async fn apply(tev: Arc<TicketingEvent>, ctx: &Context) -> Result<Action, Error> {
    let ns = tev.namespace().ok_or(Error::NoNamespace)?;
    let now = Utc::now();
    let api: Api<TicketingEvent> = Api::namespaced(ctx.client.clone(), &ns);

    // gather
    let Gathered { secrets, existing } = match gather(&tev, ctx, &ns).await? {
        Ok(g) => g,
        Err(invalid) => return write_invalid(&tev, ctx, &api, &invalid, now).await,
    };
    // never adopt: a Deployment with a child's name that this event does not own (someone
    // else's, or a leftover) would be taken over by the apply and deleted with the event
    if let Some(invalid) = foreign_child(&tev, &existing) {
        // Re-checked: a recreated event waits for the garbage collector to remove its
        // predecessor's Deployments.
        write_invalid(&tev, ctx, &api, &invalid, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }

    // validate
    let (mut tev, mut kept) = match validate(&tev, &secrets) {
        Ok(()) => (tev, None),
        Err(invalid) => match last_good(&tev, &existing) {
            Some(good) => (Arc::new(good), Some(invalid)),
            None => return write_invalid(&tev, ctx, &api, &invalid, now).await,
        },
    };

    // plan
    let mut plan = plan(&tev, ctx, &existing, now).await?;

    // never adopt the other children either: on a first deploy, a ConfigMap, Service or PDB with
    // a child's name that this event does not own is refused (the apply would take it over and
    // the garbage collector would delete it with the event). Only then: it costs a GET each.
    if !plan.create.is_empty()
        && let Some(invalid) = foreign_object(&ctx.client, &ns, &tev, &plan.children).await?
    {
        // Re-checked, like a foreign Deployment: a predecessor's children go with the GC.
        write_invalid(&tev, ctx, &api, &invalid, now).await?;
        return Ok(Action::requeue(MISSING_SECRET_RETRY));
    }

    // dry run: what the API server would refuse in a Deployment (a quantity such as `cpu: lots`,
    // requests above limits) is found before anything is applied, so nothing is deployed
    // half-way; a deployed event goes on with its last good spec, like an invalid one
    if kept.is_none() {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let changed = changed_deployments(&tev, &plan, &existing);
        if let Err(invalid) = dry_run_deployments(&deployments, &plan.children, &changed).await? {
            let Some(good) = last_good(&tev, &existing) else {
                return write_invalid(&tev, ctx, &api, &invalid, now).await;
            };
            tev = Arc::new(good);
            kept = Some(invalid);
            plan = self::plan(&tev, ctx, &existing, now).await?;
        }
    }

    // apply (children stay as the last good spec built them while it is kept in force)
    let applied = match &kept {
        None => apply_children(ctx, &tev, &ns, &plan, &existing).await?,
        Some(_) => Component::ALL
            .into_iter()
            .filter_map(|c| existing.get(&c).cloned().flatten().map(|d| (c, d)))
            .collect(),
    };

    // replicas
    apply_replicas(ctx, &tev, &mut plan, &existing).await?;

    // clean up children that are no longer desired
    if kept.is_none() {
        delete_orphans(ctx, &tev, &ns, &plan.children).await?;
    }

    // status
    write_status(&tev, ctx, &api, &observe(&plan, &applied, kept.as_ref()), now).await?;
    let name = tev.name_any();
    for c in Component::ALL {
        let ready = applied
            .iter()
            .find(|(ac, _)| *ac == c)
            .map_or(0, |(_, d)| ready_of(d));
        ctx.metrics.set_replicas(&ns, &name, c, plan.targets[&c], ready);
    }
    ctx.metrics.set_phase(&ns, &name, plan.sched.phase);
    ctx.metrics.set_admission(&ns, &name, &tev.spec.queue.admission);

    let next = requeue_at(plan.sched.next_boundary, now);
    Ok(match &kept {
        // Re-check soon: a recreated Secret or a fixed edit ends the fallback to the last good spec.
        Some(_) => {
            let at = plan.sched.next_boundary.map_or(MISSING_SECRET_RETRY, |b| {
                (b - now).to_std().unwrap_or_default().min(MISSING_SECRET_RETRY)
            });
            Action::requeue(at)
        }
        None => next,
    })
}

fn ready_of(d: &Deployment) -> i32 {
    d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0)
}

/// replicas: through the scaler (its own field manager; it also reports a `kubectl scale`), under
/// the component's book entry so an autoscaler decision made since `tev` was cached is not undone.
async fn apply_replicas(
    ctx: &Context,
    tev: &TicketingEvent,
    plan: &mut Plan,
    existing: &BTreeMap<Component, Option<Deployment>>,
) -> Result<(), Error> {
    for c in Component::ALL {
        let mut entry = ctx.scaler.book().lock(tev, c).await;
        ctx.scaler.flush(&mut entry, tev, c).await;
        let target = schedule_target(&plan.sched, tev, c, &entry);
        plan.targets.insert(c, target);
        let current = existing.get(&c).and_then(Option::as_ref);
        if scaler::settled(&entry, tev, c, current, target) {
            continue; // the scaler's own write, recorded in status: nothing to send
        }
        let reason = schedule_reason(&plan.sched, tev, c, entry.recorded(tev, c), target);
        ctx.scaler
            .apply_replicas(&mut entry, tev, c, target, &reason)
            .await?;
    }
    Ok(())
}

/// What the status write reports of this pass.
fn observe<'a>(
    plan: &'a Plan,
    applied: &[(Component, Deployment)],
    kept: Option<&'a Invalid>,
) -> Observed<'a> {
    let mut ready = BTreeMap::new();
    let mut updated = BTreeMap::new();
    for c in Component::ALL {
        let d = applied.iter().find(|(ac, _)| *ac == c).map(|(_, d)| d);
        ready.insert(c, d.map_or(0, ready_of));
        // Settled: the Deployment controller saw this generation and updated every replica.
        let settled = d.is_some_and(|d| {
            let st = d.status.as_ref();
            st.and_then(|s| s.observed_generation) >= d.metadata.generation
                && st.and_then(|s| s.updated_replicas).unwrap_or(0) >= plan.targets[&c]
        });
        updated.insert(c, settled);
    }
    Observed {
        sched: &plan.sched,
        targets: &plan.targets,
        ready,
        updated,
        kept,
    }
}

/// A Deployment that has a child's name but no owner reference to this event (by uid).
fn foreign_child(
    tev: &TicketingEvent,
    existing: &BTreeMap<Component, Option<Deployment>>,
) -> Option<Invalid> {
    let uid = tev.uid()?;
    existing.iter().find_map(|(c, d)| {
        let d = d.as_ref()?;
        let owned = d.owner_references().iter().any(|o| o.uid == uid);
        (!owned).then(|| not_owned(&format!("spec.{c}"), "Deployment", &d.name_any()))
    })
}

/// The event with its last good spec, when it has one and its Deployments exist (it was deployed).
fn last_good(
    tev: &TicketingEvent,
    existing: &BTreeMap<Component, Option<Deployment>>,
) -> Option<TicketingEvent> {
    if !existing.values().all(Option::is_some) {
        return None;
    }
    let status = tev.status.as_ref()?;
    let Some(spec) = status.last_good_spec.clone() else {
        // The cache drops the copy when the current generation is the good one (it is the spec).
        return (status.last_good_generation.is_some()
            && status.last_good_generation == tev.metadata.generation)
            .then(|| tev.clone());
    };
    let spec: crate::crd::TicketingEventSpec = serde_json::from_value(spec).ok()?;
    let mut good = tev.clone();
    good.spec = spec;
    Some(good)
}

/// The replicas the schedule asks for now, keeping the last decision recorded in the book.
fn schedule_target(sched: &Schedule, tev: &TicketingEvent, c: Component, entry: &BookEntry) -> i32 {
    sched.replicas(
        c,
        tev.spec.min_replicas(c),
        tev.spec.max_replicas(c),
        entry.recorded(tev, c),
    )
}

/// Why the reconciler sets `target`: a lowered maxReplicas that cuts the last decision says so
/// (not "on sale"); otherwise the schedule's reason (its floor, or Closed pinning minReplicas).
fn schedule_reason(
    sched: &Schedule,
    tev: &TicketingEvent,
    c: Component,
    recorded: Option<i32>,
    target: i32,
) -> ScaleReason {
    let max = tev.spec.max_replicas(c);
    if !sched.pinned && target == max && recorded.is_some_and(|r| r > max) {
        return ScaleReason::new(
            scaler::kinds::MAX_LOWERED,
            format!("spec.{c}.maxReplicas is {max}"),
        );
    }
    let kind = if sched.pinned {
        scaler::kinds::CLOSED
    } else {
        scaler::kinds::SCHEDULE
    };
    ScaleReason::new(kind, sched.reason.clone())
}

/// What a reconcile pass saw and decided, for its status write.
struct Observed<'a> {
    sched: &'a Schedule,
    targets: &'a BTreeMap<Component, i32>,
    ready: BTreeMap<Component, i32>,
    updated: BTreeMap<Component, bool>,
    /// The current spec is invalid (why) and the last good one is kept in force.
    kept: Option<&'a Invalid>,
}

/// Requeue exactly at the next schedule boundary (a few ms after, so `now` is past it).
pub fn requeue_at(next: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Action {
    match next {
        Some(t) => {
            let wait = (t - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(20);
            Action::requeue(wait)
        }
        None => Action::await_change(),
    }
}

async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let mut body = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(field_managers::OPERATOR).force(),
        &Patch::Apply(body),
    )
    .await
}

/// The first ConfigMap, Service or PodDisruptionBudget of `ch` that exists without an owner
/// reference to `tev`, as the InvalidSpec that names it.
async fn foreign_object(
    client: &Client,
    ns: &str,
    tev: &TicketingEvent,
    ch: &Children,
) -> Result<Option<Invalid>, Error> {
    let Some(uid) = tev.uid() else { return Ok(None) };
    async fn find<K>(client: &Client, ns: &str, objs: &[K], uid: &str) -> Result<Option<Invalid>, kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api = Api::<K>::namespaced(client.clone(), ns);
        for obj in objs {
            let name = obj.meta().name.clone().unwrap_or_default();
            if let Some(found) = api.get_opt(&name).await?
                && !found.owner_references().iter().any(|o| o.uid == uid)
            {
                return Ok(Some(not_owned("metadata.name", &K::kind(&()), &name)));
            }
        }
        Ok(None)
    }
    if let Some(i) = find(client, ns, std::slice::from_ref(&ch.config_map), &uid).await? {
        return Ok(Some(i));
    }
    if let Some(i) = find(client, ns, &ch.services, &uid).await? {
        return Ok(Some(i));
    }
    Ok(find(client, ns, &ch.pdbs, &uid).await?)
}

/// The InvalidSpec of a child name taken by an object this event does not own.
fn not_owned(field: &str, kind: &str, name: &str) -> Invalid {
    Invalid {
        reason: reasons::INVALID_SPEC,
        message: format!(
            "{field}: {kind} {name:?} already exists and is not owned by this TicketingEvent; \
             the operator does not adopt it (delete or rename it, or rename the TicketingEvent)"
        ),
    }
}

/// Server-side dry run of every Deployment: `Ok(Err(_))` when the API server refuses one (a 4xx
/// other than a conflict), naming the component whose spec holds the problem.
async fn dry_run_deployments(
    api: &Api<Deployment>,
    ch: &Children,
    changed: &BTreeSet<Component>,
) -> Result<Result<(), Invalid>, Error> {
    for (c, d) in ch.deployments.iter().filter(|(c, _)| changed.contains(c)) {
        let mut body = serde_json::to_value(d).map_err(kube::Error::SerdeError)?;
        body["apiVersion"] = Deployment::api_version(&()).into();
        body["kind"] = Deployment::kind(&()).into();
        let name = d.metadata.name.clone().unwrap_or_default();
        let params = PatchParams::apply(field_managers::OPERATOR).force().dry_run();
        match api.patch(&name, &params, &Patch::Apply(body)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => {
                return Ok(Err(Invalid {
                    reason: reasons::INVALID_SPEC,
                    message: format!(
                        "spec.{c}: the API server refuses Deployment {name:?} built from it: {}",
                        s.message
                    ),
                }));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Ok(()))
}

/// The Deployments whose applied hash differs from what exists (or that do not exist yet).
fn changed_deployments(
    tev: &TicketingEvent,
    plan: &Plan,
    existing: &BTreeMap<Component, Option<Deployment>>,
) -> BTreeSet<Component> {
    let uid = tev.uid().unwrap_or_default();
    plan.children
        .deployments
        .iter()
        .filter(|(c, d)| {
            !existing
                .get(c)
                .and_then(Option::as_ref)
                .is_some_and(|cur| same_child(&cur.metadata, &d.metadata, &uid))
        })
        .map(|(c, _)| *c)
        .collect()
}

/// apply: every child that differs from what the operator's caches show (server-side apply;
/// an unchanged event sends nothing); returns the Deployments as they are now. A first deploy is
/// announced with an Event.
async fn apply_children(
    ctx: &Context,
    tev: &TicketingEvent,
    ns: &str,
    plan: &Plan,
    existing: &BTreeMap<Component, Option<Deployment>>,
) -> Result<Vec<(Component, Deployment)>, Error> {
    use futures::future::try_join_all;
    let (client, ch, stores) = (&ctx.client, &plan.children, &ctx.children);
    let uid = tev.uid().unwrap_or_default();
    // ConfigMap, Services and PDBs together; Deployments after them (pods mount the ConfigMap).
    let cms = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let svcs = Api::<Service>::namespaced(client.clone(), ns);
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    let cm = (!up_to_date(&stores.config_maps, &ch.config_map.metadata, &uid)).then_some(&ch.config_map);
    futures::try_join!(
        try_join_all(cm.into_iter().map(|m| ssa(&cms, m))),
        try_join_all(
            ch.services
                .iter()
                .filter(|s| !up_to_date(&stores.services, &s.metadata, &uid))
                .map(|s| ssa(&svcs, s))
        ),
        try_join_all(
            ch.pdbs
                .iter()
                .filter(|p| !up_to_date(&stores.pdbs, &p.metadata, &uid))
                .map(|p| ssa(&pdbs, p))
        ),
    )?;
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let changed = changed_deployments(tev, plan, existing);
    let mut applied = Vec::new();
    for (c, d) in &ch.deployments {
        let current = existing.get(c).cloned().flatten();
        let d = match current {
            Some(cur) if !changed.contains(c) => cur,
            _ => ssa(&api, d).await?,
        };
        applied.push((*c, d));
    }
    if !plan.create.is_empty() {
        let created: Vec<String> = plan
            .create
            .iter()
            .map(|(c, r)| format!("{c} with {r} replicas"))
            .collect();
        let note = format!("created {}", created.join(", "));
        ctx.events
            .publish(tev, EventType::Normal, reasons::CREATED, "Deploy", note)
            .await;
    }
    Ok(applied)
}

/// Deletes children of `tev` (by label and controller uid, as the operator's caches show them)
/// whose names are no longer desired. No LIST: the caches hold every child.
async fn delete_orphans(ctx: &Context, tev: &TicketingEvent, ns: &str, ch: &Children) -> Result<(), Error> {
    let names = |metas: Vec<&ObjectMeta>| -> BTreeSet<String> {
        metas.into_iter().filter_map(|m| m.name.clone()).collect()
    };
    let keep_cm = names(vec![&ch.config_map.metadata]);
    let keep_svc = names(ch.services.iter().map(|s| &s.metadata).collect());
    let keep_pdb = names(ch.pdbs.iter().map(|p| &p.metadata).collect());
    let keep_deploy = names(ch.deployments.iter().map(|(_, d)| &d.metadata).collect());
    let stores = &ctx.children;
    futures::try_join!(
        delete_orphans_of::<ConfigMap>(ctx, tev, ns, &stores.config_maps, &keep_cm),
        delete_orphans_of::<Service>(ctx, tev, ns, &stores.services, &keep_svc),
        delete_orphans_of::<PodDisruptionBudget>(ctx, tev, ns, &stores.pdbs, &keep_pdb),
        delete_orphans_of::<Deployment>(ctx, tev, ns, &stores.deployments, &keep_deploy),
    )?;
    Ok(())
}

async fn delete_orphans_of<K>(
    ctx: &Context,
    tev: &TicketingEvent,
    ns: &str,
    index: &ChildIndex,
    keep: &BTreeSet<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let uid = tev.uid().unwrap_or_default();
    let orphans: Vec<String> = index
        .owned_by(ns, &tev.name_any(), &uid)
        .into_iter()
        .filter(|child| !keep.contains(child))
        .collect();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    for child in orphans {
        match api.delete(&child, &DeleteParams::background()).await {
            Ok(_) => {}
            // Gone already (the cache lags the delete).
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
        let note = format!("deleted {} {child}: no longer part of the event", K::kind(&()));
        ctx.events
            .publish(tev, EventType::Normal, reasons::ORPHAN_DELETED, "Cleanup", note)
            .await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_status(
    tev: &TicketingEvent,
    ctx: &Context,
    api: &Api<TicketingEvent>,
    obs: &Observed<'_>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let Observed {
        sched,
        targets,
        ready,
        updated,
        kept,
    } = obs;
    let kept = *kept;
    let gen_ = tev.metadata.generation;
    let old = tev.status.clone().unwrap_or_default();
    let (last_good_spec, last_good_generation) = match kept {
        None => (
            Some(serde_json::to_value(&tev.spec).map_err(kube::Error::SerdeError)?),
            gen_,
        ),
        // `tev` is the good event here (its spec is the one kept in force).
        Some(_) => (
            Some(serde_json::to_value(&tev.spec).map_err(kube::Error::SerdeError)?),
            old.last_good_generation,
        ),
    };
    let invalid_condition = match kept {
        None => (false, reasons::VALID_SPEC, "the spec is valid".to_owned()),
        Some(invalid) => (
            true,
            invalid.reason,
            format!(
                "{}; keeping the spec of generation {} in force (schedule, replicas and autoscaling continue)",
                invalid.message,
                last_good_generation.unwrap_or_default()
            ),
        ),
    };
    let kept_already = crate::status::find(tev, types::INVALID_SPEC).is_some_and(|c| {
        c.status == "True" && c.message == invalid_condition.2 && c.observed_generation == gen_
    });
    let existing = old.conditions.clone().unwrap_or_default();
    let all_ready = Component::ALL.iter().all(|c| ready[c] >= targets[c]);
    let settled = all_ready && Component::ALL.iter().all(|c| updated[c]);
    let summary = Component::ALL
        .iter()
        .map(|c| format!("{c} {}/{} ready", ready[c], targets[c]))
        .collect::<Vec<_>>()
        .join(", ");
    let ready_reason = if all_ready {
        reasons::AVAILABLE
    } else {
        reasons::PODS_NOT_READY
    };
    let conditions = vec![
        condition(
            &existing,
            types::READY,
            all_ready,
            ready_reason,
            summary.clone(),
            gen_,
            now,
        ),
        condition(
            &existing,
            types::PROGRESSING,
            !settled,
            if settled {
                reasons::COMPLETE
            } else {
                reasons::SCALING
            },
            format!("{}: {summary}", sched.reason),
            gen_,
            now,
        ),
        condition(
            &existing,
            types::INVALID_SPEC,
            invalid_condition.0,
            invalid_condition.1,
            invalid_condition.2.clone(),
            gen_,
            now,
        ),
    ];
    let component = |c: Component| ComponentStatus {
        ready_replicas: Some(ready[&c]),
        pods: Some(format!("{}/{}", ready[&c], targets[&c])),
        ..Default::default()
    };
    let status = TicketingEventStatus {
        phase: Some(sched.phase),
        observed_generation: gen_,
        conditions: Some(conditions),
        next_transition_at: sched.next_boundary,
        queue: Some(component(Component::Queue)),
        reservation: Some(component(Component::Reservation)),
        last_good_spec,
        last_good_generation,
        ..Default::default()
    };
    if !reports_news(&old, &status) {
        return Ok(()); // an unchanged event: no write
    }
    let value = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    apply_status(api, tev, field_managers::OPERATOR, value).await?;
    if kept.is_some() && !kept_already {
        warn_invalid(ctx, tev, invalid_condition.2.clone()).await;
    }
    if old.phase != Some(sched.phase) {
        let from = old.phase.map_or("none", Phase::as_str);
        let note = format!("{from} → {}: {}", sched.phase, sched.reason);
        tracing::info!(event = %tev.name_any(), from, to = %sched.phase, "phase changed");
        ctx.events
            .publish(tev, EventType::Normal, reasons::PHASE_CHANGED, "Schedule", note)
            .await;
    }
    Ok(())
}

/// True when `new` (the reconciler's status fields) says something `old` does not.
fn reports_news(old: &TicketingEventStatus, new: &TicketingEventStatus) -> bool {
    let component = |s: &TicketingEventStatus, c: Component| {
        s.component(c)
            .map(|x| (x.ready_replicas, x.pods.clone()))
            .unwrap_or_default()
    };
    let conditions_changed = new
        .conditions
        .iter()
        .flatten()
        .any(|n| !old.conditions.iter().flatten().any(|o| o == n));
    conditions_changed
        || old.phase != new.phase
        || old.observed_generation != new.observed_generation
        || old.next_transition_at != new.next_transition_at
        // A generation's spec never changes: the generation says which spec is the good one
        // (and the cache keeps no copy of it while it is the current one).
        || old.last_good_generation != new.last_good_generation
        || Component::ALL
            .iter()
            .any(|c| component(old, *c) != component(new, *c))
}

async fn write_invalid(
    tev: &TicketingEvent,
    ctx: &Context,
    api: &Api<TicketingEvent>,
    invalid: &Invalid,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let gen_ = tev.metadata.generation;
    let old = tev.status.clone().unwrap_or_default();
    let existing = old.conditions.clone().unwrap_or_default();
    let already = old.phase == Some(Phase::Failed)
        && crate::status::find(tev, types::INVALID_SPEC).is_some_and(|c| {
            c.status == "True" && c.message == invalid.message && c.observed_generation == gen_
        });
    let status = TicketingEventStatus {
        phase: Some(Phase::Failed),
        observed_generation: gen_,
        conditions: Some(vec![
            condition(
                &existing,
                types::READY,
                false,
                reasons::INVALID_SPEC,
                invalid.message.clone(),
                gen_,
                now,
            ),
            condition(
                &existing,
                types::PROGRESSING,
                false,
                reasons::INVALID_SPEC,
                "waiting for a valid spec",
                gen_,
                now,
            ),
            condition(
                &existing,
                types::INVALID_SPEC,
                true,
                invalid.reason,
                invalid.message.clone(),
                gen_,
                now,
            ),
        ]),
        ..Default::default()
    };
    let value = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    apply_status(api, tev, field_managers::OPERATOR, value).await?;
    if !already {
        warn_invalid(ctx, tev, invalid.message.clone()).await;
    }
    ctx.metrics.set_phase(
        &tev.namespace().unwrap_or_default(),
        &tev.name_any(),
        Phase::Failed,
    );
    Ok(if invalid.reason == reasons::MISSING_SECRET {
        Action::requeue(MISSING_SECRET_RETRY)
    } else {
        Action::await_change()
    })
}

/// The log line and the Warning Event of an invalid spec (once per distinct message).
async fn warn_invalid(ctx: &Context, tev: &TicketingEvent, message: String) {
    tracing::warn!(event = %tev.name_any(), %message, "invalid spec");
    ctx.events
        .publish(
            tev,
            EventType::Warning,
            reasons::INVALID_SPEC,
            "Validate",
            message,
        )
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_max_is_named_as_such_not_as_the_schedule() {
        let t = crate::crd::fixture::event(serde_json::json!({
            "spec": {"queue": {"minReplicas": 1, "maxReplicas": 4}}
        }));
        let sched = schedule::evaluate(&t.spec, None, t.spec.on_sale_at).unwrap();
        let r = schedule_reason(&sched, &t, Component::Queue, Some(9), 4);
        assert_eq!(r.kind, scaler::kinds::MAX_LOWERED);
        assert_eq!(r.message, "spec.queue.maxReplicas is 4");
        // At or under the max, or with nothing recorded above it: the schedule's reason.
        for recorded in [Some(4), Some(2), None] {
            let r = schedule_reason(&sched, &t, Component::Queue, recorded, 4);
            assert_eq!(r.kind, scaler::kinds::SCHEDULE, "{recorded:?}");
            assert_eq!(r.message, sched.reason);
        }
    }

    #[test]
    fn the_child_index_follows_the_watch_and_its_relists() {
        use kube::runtime::watcher::Event;
        let child = |name: &str, hash: &str| -> PartialObjectMeta<ConfigMap> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "ns",
                    "labels": {EVENT_LABEL: "e", "other": "x"},
                    "annotations": {children::APPLIED_HASH_ANNOTATION: hash},
                    "ownerReferences": [{"apiVersion": "tiketi.gg/v1alpha1", "kind": "TicketingEvent",
                        "name": "e", "uid": "u1", "controller": true}]}
            }))
            .unwrap()
        };
        let index = ChildIndex::default();
        index.apply(&Event::Apply(child("a", "h1")));
        index.apply(&Event::Apply(child("b", "h1")));
        let a = index.get("ns", "a").unwrap();
        assert_eq!(
            (a.controller.as_deref(), a.event.as_deref(), a.hash.as_deref()),
            (Some("u1"), Some("e"), Some("h1"))
        );
        let desired = child("a", "h1").metadata;
        assert!(up_to_date(&index, &desired, "u1"));
        assert!(!up_to_date(&index, &desired, "someone-else"));
        assert!(!up_to_date(&index, &child("a", "h2").metadata, "u1"), "changed");
        index.apply(&Event::Delete(child("b", "h1")));
        assert_eq!(index.owned_by("ns", "e", "u1"), vec!["a".to_owned()]);
        // A relist replaces everything once it is done (not before).
        index.apply::<ConfigMap>(&Event::Init);
        index.apply(&Event::InitApply(child("c", "h1")));
        assert!(
            index.get("ns", "a").is_some(),
            "replaced before the relist was done"
        );
        index.apply::<ConfigMap>(&Event::InitDone);
        assert!(index.get("ns", "a").is_none());
        assert_eq!(index.owned_by("ns", "e", "u1"), vec!["c".to_owned()]);
    }

    #[test]
    fn error_labels_say_what_failed() {
        let api = |code: u16| kube::Error::Api(kube::core::Status::failure("x", "").with_code(code).boxed());
        let service = |e: tower::BoxError| kube::Error::Service(e);
        let not_leader = crate::leader::NotLeader {
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/ns/deployments/d".into(),
        };
        let timed_out = crate::runtime::CallTimeout {
            method: "GET".into(),
            path: "/api/v1/namespaces/ns/secrets/s".into(),
            timeout: Duration::from_secs(10),
        };
        let cases = [
            (Error::Kube(api(422)), "api_refused"),
            (Error::Kube(api(409)), "conflict"),
            (Error::Kube(api(503)), "api_error"),
            (Error::Kube(service(Box::new(not_leader))), "not_leader"),
            (Error::Kube(service(Box::new(timed_out))), "api_timeout"),
            (Error::Kube(service("connection reset".into())), "kube"),
            (
                Error::Scale(scaler::ScaleError::NoDeployment("d".into())),
                "no_deployment",
            ),
            (Error::Timeout(RECONCILE_TIMEOUT), "timeout"),
            (Error::Panicked("boom".into()), "panic"),
            (Error::NoNamespace, "no_namespace"),
        ];
        for (err, want) in cases {
            assert_eq!(err.metric_label(), want, "{err}");
        }
    }

    #[test]
    fn quantities_follow_the_api_servers_pattern() {
        for ok in ["500m", "1", "0.5", "256Mi", "1Gi", "1e3", "+2", "100k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["lots", "", "Mi", "1 Gi", "1Gi!", "m500"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    fn tev() -> TicketingEvent {
        crate::crd::fixture::event(serde_json::json!({
            "metadata": {"uid": "u1"},
            "spec": {"redis": {"tls": true}}
        }))
    }

    const KEY: &str = "a-signing-key-of-at-least-32-bytes!";

    fn secrets() -> SecretData {
        let s = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        BTreeMap::from([
            ("redis".into(), s(&[("url", "rediss://u:p@host:6379")])),
            ("db".into(), s(&[("url", "postgres://x")])),
            ("auth".into(), s(&[("jwtSecret", KEY), ("admissionSecret", KEY)])),
        ])
    }

    #[test]
    fn short_empty_or_placeholder_signing_keys_are_invalid() {
        for (value, expect) in [
            ("", "empty"),
            ("short", "5 bytes"),
            ("CHANGE_ME_ADMISSION_HS256_KEY_0123456789", "placeholder"),
        ] {
            let mut s = secrets();
            s.get_mut("auth")
                .and_then(Option::as_mut)
                .unwrap()
                .insert("admissionSecret".into(), value.as_bytes().to_vec());
            let err = validate(&tev(), &s).unwrap_err();
            assert_eq!(err.reason, reasons::INVALID_SPEC);
            assert!(
                err.message.contains(r#"Secret "auth" key "admissionSecret""#)
                    && err.message.contains(expect),
                "{value:?}: {}",
                err.message
            );
        }
    }

    #[test]
    fn valid_spec_with_its_secrets_passes() {
        validate(&tev(), &secrets()).unwrap();
    }

    #[test]
    fn missing_secret_or_key_is_named() {
        let mut s = secrets();
        s.insert("db".into(), None);
        let err = validate(&tev(), &s).unwrap_err();
        assert_eq!(err.reason, reasons::MISSING_SECRET);
        assert!(
            err.message.contains(r#"Secret "db" does not exist"#),
            "{}",
            err.message
        );
        let mut s = secrets();
        s.get_mut("auth")
            .unwrap()
            .as_mut()
            .unwrap()
            .remove("admissionSecret");
        let err = validate(&tev(), &s).unwrap_err();
        assert!(
            err.message.contains(r#"has no key "admissionSecret""#),
            "{}",
            err.message
        );
    }

    #[test]
    fn semantic_problems_are_invalid_spec() {
        let mut s = secrets();
        s.insert(
            "redis".into(),
            Some(BTreeMap::from([("url".into(), b"redis://plain".to_vec())])),
        );
        let err = validate(&tev(), &s).unwrap_err();
        assert_eq!(err.reason, reasons::INVALID_SPEC);
        assert!(err.message.contains("rediss://"));
        let mut t = tev();
        t.spec.sale_ends_at = Some(t.spec.on_sale_at);
        assert!(
            validate(&t, &secrets())
                .unwrap_err()
                .message
                .contains("saleEndsAt")
        );
        let mut t = tev();
        t.spec.reservation.hold_ttl = "99999999999999999999h".into();
        assert!(validate(&t, &secrets()).unwrap_err().message.contains("holdTtl"));
    }

    #[test]
    fn requeue_lands_just_after_the_boundary() {
        let now = Utc::now();
        let a = requeue_at(Some(now + chrono::TimeDelta::seconds(10)), now);
        assert_eq!(a, Action::requeue(Duration::from_millis(10_020)));
        assert_eq!(
            requeue_at(Some(now - chrono::TimeDelta::seconds(1)), now),
            Action::requeue(Duration::from_millis(20))
        );
        assert_eq!(requeue_at(None, now), Action::await_change());
    }
}
