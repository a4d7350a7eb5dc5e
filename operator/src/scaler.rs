//! The one writer of a component Deployment's `spec.replicas`. It server-side applies only that
//! field under its own field manager ([`crate::field_managers::SCALER`]), so the reconciler's
//! apply of the rest of the Deployment never touches replicas, and a `kubectl scale` shows up in
//! `managedFields` and is reported (Event `ReplicasOverridden`) instead of being fought silently.
//!
//! The reconciler calls it with the schedule's answer; the autoscaler calls it with its decisions.
//! Each change becomes an Event ("ScaledOut reservation 4→6: queueDepth 8000 > 5000"), a line in
//! `status.recentDecisions`, the `lastScale*` fields of the component's status, a log line and a
//! metric.
//!
//! Both callers decide under the component's [`Book`] entry: the replicas this process last
//! wrote and the autoscaler's memory. The watch cache lags writes by a few milliseconds, so a
//! caller that read `status.desiredReplicas` from it could undo a decision made a moment before
//! (the reconciler runs whenever a pod turns Ready, i.e. constantly while scaling out); the book
//! is written under the same lock as the Deployment, so it never lags. It is cleared when
//! leadership is lost, and rebuilt from status by the next leader.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use crate::autoscaler::Direction;
use crate::autoscaler::Memory;
use crate::children::component_name;
use crate::crd::{Component, ScalingDecisionRecord, TicketingEvent};
use crate::events::{EventPublisher, EventType, bounded};
use crate::field_managers;
use crate::metrics::{DecisionLabels, Metrics};
use crate::status::{merge_status, reasons};

/// How many decisions `status.recentDecisions` keeps (newest first).
pub const RECENT_DECISIONS: usize = 20;

/// The fixed `kind`s of a [`ScaleReason`] (a bounded metric label).
pub mod kinds {
    /// The schedule floor (pre-warm ramp, minReplicas), applied by the reconciler or the autoscaler.
    pub const SCHEDULE: &str = "schedule";
    /// Phase Closed pins minReplicas.
    pub const CLOSED: &str = "closed";
    /// A scale-out step matched (starts the scale-out cooldown).
    pub const SCALE_OUT: &str = "scaleOut";
    /// The scale-in rule fired (starts the scale-in cooldown).
    pub const SCALE_IN: &str = "scaleIn";
    /// Signals stale: raised to fallback.replicas.
    pub const FALLBACK: &str = "fallback";
    /// maxReplicas was lowered below the current replicas.
    pub const MAX_LOWERED: &str = "maxLowered";
    /// Every kind (to forget an event's series).
    pub const ALL: [&str; 6] = [SCHEDULE, CLOSED, SCALE_OUT, SCALE_IN, FALLBACK, MAX_LOWERED];
}

/// Annotations the scaler writes on a component Deployment in the same server-side apply as
/// `spec.replicas` (RFC 3339): when the last signal-driven scale-out and scale-in happened. The
/// same instants are in status (`lastScaleOutTime`, `lastScaleInTime`), but a status write can
/// fail after the Deployment write landed; a new leader then takes the cooldowns from here, so
/// replicas and their cooldown are one write.
pub mod cooldown_annotations {
    pub const LAST_SCALE_OUT: &str = "tiketi.gg/last-scale-out-time";
    pub const LAST_SCALE_IN: &str = "tiketi.gg/last-scale-in-time";
}

/// The cooldown instants a Deployment carries (see [`cooldown_annotations`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScaledAt {
    pub out: Option<DateTime<Utc>>,
    pub inn: Option<DateTime<Utc>>,
}

impl ScaledAt {
    /// Read from `d`'s annotations (an unparsable value counts as absent).
    pub fn of(d: &Deployment) -> Self {
        let read = |key: &str| {
            d.annotations()
                .get(key)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Self {
            out: read(cooldown_annotations::LAST_SCALE_OUT),
            inn: read(cooldown_annotations::LAST_SCALE_IN),
        }
    }

    /// After a change of `kind` at `at`.
    pub fn after(self, kind: &str, at: DateTime<Utc>) -> Self {
        match kind {
            kinds::SCALE_OUT => Self {
                out: Some(at),
                ..self
            },
            kinds::SCALE_IN => Self {
                inn: Some(at),
                ..self
            },
            _ => self,
        }
    }

    /// The annotations that carry it (only the instants that exist).
    pub fn annotations(self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (key, at) in [
            (cooldown_annotations::LAST_SCALE_OUT, self.out),
            (cooldown_annotations::LAST_SCALE_IN, self.inn),
        ] {
            if let Some(at) = at {
                m.insert(
                    key.to_owned(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into(),
                );
            }
        }
        m
    }
}

/// Why replicas change: a fixed `kind` for metrics and a free-text message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleReason {
    /// Bounded label, one of [`kinds`]. Only `scaleOut` and `scaleIn` write `lastScaleOutTime` /
    /// `lastScaleInTime` (the cooldowns run from signal-driven scalings, not from pre-warm steps).
    pub kind: &'static str,
    /// Shown in the Event and status, e.g. "queueDepth 8,000 > 5,000".
    pub message: String,
}

impl ScaleReason {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A replica change that was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleChange {
    pub from: i32,
    pub to: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("Deployment {0} does not exist yet")]
    NoDeployment(String),
    #[error("TicketingEvent has no namespace")]
    NoNamespace,
    #[error("kube API: {0}")]
    Kube(#[from] kube::Error),
    #[error("not the leader (any more): no write")]
    NotLeader,
}

impl ScaleError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoDeployment(_) => "no_deployment",
            Self::NoNamespace => "no_namespace",
            Self::Kube(e) => crate::runtime::kube_error_label(e),
            Self::NotLeader => "not_leader",
        }
    }
}

/// What this process knows of one component of one event, fresher than any cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BookEntry {
    /// The replicas this process last wrote (None: not yet, use status).
    pub desired: Option<i32>,
    /// The autoscaler's memory after its last decision (None: not yet, rebuild from status).
    pub memory: Option<Memory>,
    /// A change written to the Deployment whose status record was refused; retried by
    /// [`Scaler::flush`] before the next decision (the Deployment write is what counts: the
    /// memory is committed from it, so a refused status write never scales out twice).
    pub unrecorded: Option<Unrecorded>,
    /// The cooldown instants the Deployment carried when this entry adopted it (a new leader):
    /// newer than status when the previous leader's status write never landed.
    pub adopted_cooldowns: Option<ScaledAt>,
}

/// A change applied to a Deployment but not yet recorded in status.
#[derive(Debug, Clone, PartialEq)]
pub struct Unrecorded {
    pub change: ScaleChange,
    pub reason: ScaleReason,
    pub at: DateTime<Utc>,
}

impl BookEntry {
    /// A fresh entry (a new leader, a restart) takes the Deployment's `spec.replicas` when this
    /// operator's scaler manages that field: the previous leader wrote it, even if its status
    /// write never landed. Without this the new leader would decide from a stale
    /// `status.desiredReplicas`, revert a fresh scale-out and report it as a `kubectl scale`.
    /// Returns the adopted replicas.
    /// When status does not show those replicas, the change is kept as [`Unrecorded`] (with the
    /// cooldown instant the Deployment carries), so the next [`Scaler::flush`] records it.
    pub fn adopt(
        &mut self,
        deployment: Option<&Deployment>,
        tev: &TicketingEvent,
        c: Component,
    ) -> Option<i32> {
        if self.desired.is_some() {
            return None;
        }
        let deployment = deployment?;
        let replicas = scaler_owned_replicas(deployment)?;
        let scaled_at = ScaledAt::of(deployment);
        self.desired = Some(replicas);
        self.adopted_cooldowns = Some(scaled_at);
        let status = tev.status.as_ref().and_then(|s| s.component(c));
        if let Some(from) = status.and_then(|s| s.desired_replicas)
            && from != replicas
        {
            let newer = |adopted: Option<DateTime<Utc>>, recorded: Option<DateTime<Utc>>| {
                adopted.filter(|a| recorded.is_none_or(|r| a > &r))
            };
            let (kind, at) =
                if let Some(at) = newer(scaled_at.out, status.and_then(|s| s.last_scale_out_time)) {
                    (kinds::SCALE_OUT, at)
                } else if let Some(at) = newer(scaled_at.inn, status.and_then(|s| s.last_scale_in_time)) {
                    (kinds::SCALE_IN, at)
                } else {
                    (kinds::SCHEDULE, Utc::now())
                };
            self.unrecorded = Some(Unrecorded {
                change: ScaleChange { from, to: replicas },
                reason: ScaleReason::new(
                    kind,
                    "written by the previous leader, whose status record had not landed",
                ),
                at,
            });
        }
        Some(replicas)
    }

    /// The autoscaler's memory: this process's, else (a new leader) rebuilt from status with the
    /// cooldowns the adopted Deployment carries where they are newer. None: rebuild from status.
    pub fn memory_or_adopted(
        &self,
        tev: &TicketingEvent,
        c: Component,
        now: DateTime<Utc>,
    ) -> Option<Memory> {
        if self.memory.is_some() {
            return self.memory.clone();
        }
        let adopted = self.adopted_cooldowns?;
        let status = tev.status.as_ref();
        let mut m = Memory::from_status(
            status.and_then(|s| s.component(c)),
            status.and_then(|s| s.signals_observed_at),
            now,
        );
        m.last_scale_out = m.last_scale_out.max(adopted.out);
        m.last_scale_in = m.last_scale_in.max(adopted.inn);
        Some(m)
    }

    /// The replicas last asked for: this process's write, else `status.<component>.desiredReplicas`.
    pub fn recorded(&self, tev: &TicketingEvent, c: Component) -> Option<i32> {
        self.desired.or_else(|| {
            tev.status
                .as_ref()
                .and_then(|s| s.component(c))
                .and_then(|s| s.desired_replicas)
        })
    }
}

/// True when nothing of `component`'s replicas needs a write: `current` (just read) has `desired`
/// replicas written by this operator's scaler, status records them, and no change awaits its
/// record. The reconciler then sends nothing (an unchanged event costs no write).
pub fn settled(
    entry: &BookEntry,
    tev: &TicketingEvent,
    component: Component,
    current: Option<&Deployment>,
    desired: i32,
) -> bool {
    let status_desired = tev
        .status
        .as_ref()
        .and_then(|s| s.component(component))
        .and_then(|c| c.desired_replicas);
    entry.unrecorded.is_none()
        && entry.recorded(tev, component) == Some(desired)
        && status_desired == Some(desired)
        && current.and_then(scaler_owned_replicas) == Some(desired)
}

/// `spec.replicas` of `d` when [`field_managers::SCALER`] manages it (its server-side apply is
/// the last write of that field: a `kubectl scale` or another writer takes it over).
pub fn scaler_owned_replicas(d: &Deployment) -> Option<i32> {
    let replicas = d.spec.as_ref()?.replicas?;
    let owned = d.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(field_managers::SCALER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|spec| spec.get("f:replicas"))
                .is_some()
    });
    owned.then_some(replicas)
}

/// One event's entries, one per component (in [`Component::ALL`] order).
type EventEntries = [Arc<tokio::sync::Mutex<BookEntry>>; 2];

/// Per (event uid, component), a lock and the [`BookEntry`] it guards.
#[derive(Default)]
pub struct Book {
    /// By event uid (the name when an object has none, as in unit tests): a lookup borrows the
    /// uid, so the autoscaler's per-tick locking allocates nothing.
    entries: Mutex<foldhash::HashMap<String, EventEntries>>,
    /// Bumped after entries were dropped ([`Book::clear`], [`Book::retain`]): a [`BookHandle`]
    /// found before looks its entries up again, so it never locks an entry the book forgot.
    dropped: std::sync::atomic::AtomicU64,
}

/// An event's entries as the book held them, kept by the autoscaler between ticks: one lookup
/// per event while the book keeps them, instead of one per event per tick.
#[derive(Clone)]
pub struct BookHandle {
    generation: u64,
    entries: EventEntries,
}

impl std::fmt::Debug for BookHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookHandle")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Book {
    /// Both entries of `tev` (made on first use).
    fn entries(&self, tev: &TicketingEvent) -> EventEntries {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = tev
            .metadata
            .uid
            .as_deref()
            .or(tev.metadata.name.as_deref())
            .unwrap_or_default();
        if let Some(entries) = map.get(key) {
            return entries.clone();
        }
        let entries: EventEntries = Default::default();
        map.insert(key.to_owned(), entries.clone());
        entries
    }

    fn entry(&self, tev: &TicketingEvent, c: Component) -> Arc<tokio::sync::Mutex<BookEntry>> {
        let [queue, reservation] = self.entries(tev);
        if c == Component::Reservation {
            reservation
        } else {
            queue
        }
    }

    /// Locks both entries of `tev` if both are free now (in [`Component::ALL`] order; None:
    /// someone holds one), through `kept` (found again if the book dropped entries since): the
    /// autoscaler's settled path.
    pub fn try_lock_both(
        &self,
        tev: &TicketingEvent,
        kept: &mut Option<BookHandle>,
    ) -> Option<[tokio::sync::OwnedMutexGuard<BookEntry>; 2]> {
        // Read before the lookup: a drop after it bumps past this, and the next use looks again.
        let generation = self.dropped.load(std::sync::atomic::Ordering::Acquire);
        if kept.as_ref().is_none_or(|h| h.generation != generation) {
            *kept = Some(BookHandle {
                generation,
                entries: self.entries(tev),
            });
        }
        let [queue, reservation] = &kept.as_ref()?.entries;
        Some([
            queue.clone().try_lock_owned().ok()?,
            reservation.clone().try_lock_owned().ok()?,
        ])
    }

    fn dropped_some(&self) {
        self.dropped.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Locks the entry of `tev`'s `component`; decide and apply while holding it.
    pub async fn lock(&self, tev: &TicketingEvent, c: Component) -> tokio::sync::OwnedMutexGuard<BookEntry> {
        self.entry(tev, c).lock_owned().await
    }

    /// Forgets everything (leadership lost: another replica may write now).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.dropped_some();
    }

    /// Forgets the events whose uid is not in `keep` (deleted events).
    pub fn retain(&self, keep: &foldhash::HashSet<&str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let before = entries.len();
        entries.retain(|uid, _| keep.contains(uid.as_str()));
        if entries.len() != before {
            self.dropped_some();
        }
    }

    /// Events with entries.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes replicas; cheap to clone.
#[derive(Clone)]
pub struct Scaler {
    client: Client,
    events: EventPublisher,
    metrics: Metrics,
    book: Arc<Book>,
    leader: crate::leader::LeaderState,
}

impl Scaler {
    pub fn new(
        client: Client,
        events: EventPublisher,
        metrics: Metrics,
        leader: crate::leader::LeaderState,
    ) -> Self {
        Self {
            client,
            events,
            metrics,
            book: Arc::new(Book::default()),
            leader,
        }
    }

    /// The book both callers decide under.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// [`BookEntry::adopt`] with a GET of the Deployment, for a fresh entry only (one call per
    /// component after a leadership change or a restart). A failed GET adopts nothing.
    pub async fn adopt(&self, entry: &mut BookEntry, tev: &TicketingEvent, component: Component) {
        if entry.desired.is_some() {
            return;
        }
        let Some(ns) = tev.namespace() else { return };
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        match api.get_opt(&component_name(&tev.name_any(), component)).await {
            Ok(d) => {
                if let Some(r) = entry.adopt(d.as_ref(), tev, component) {
                    tracing::debug!(%component, replicas = r, "adopted the replicas this operator's scaler wrote");
                }
            }
            Err(e) => {
                tracing::debug!(%component, error = %e, "cannot read the Deployment to adopt its replicas")
            }
        }
    }

    /// Records in status the change that [`Self::apply_replicas`] could not record, if any (the
    /// caller holds `entry` from [`Book::lock`]). A failure keeps it for the next call.
    pub async fn flush(&self, entry: &mut BookEntry, tev: &TicketingEvent, component: Component) {
        let Some(u) = entry.unrecorded.clone() else { return };
        let Some(ns) = tev.namespace() else { return };
        let api: Api<TicketingEvent> = Api::namespaced(self.client.clone(), &ns);
        match record_change(&api, &tev.name_any(), component, &u).await {
            Ok(()) => {
                tracing::info!(%component, from = u.change.from, to = u.change.to, "recorded a change whose status write had failed");
                entry.unrecorded = None;
            }
            Err(e) => tracing::debug!(%component, error = %e, "status still not writable"),
        }
    }

    /// Sets `spec.replicas` of `component`'s Deployment to `desired` and records the change (in
    /// `entry`, which the caller holds from [`Book::lock`], and in status).
    /// Idempotent: when nothing changes it re-asserts ownership of the field and returns `None`
    /// (no Event, no status write).
    pub async fn apply_replicas(
        &self,
        entry: &mut BookEntry,
        tev: &TicketingEvent,
        component: Component,
        desired: i32,
        reason: &ScaleReason,
    ) -> Result<Option<ScaleChange>, ScaleError> {
        let ns = tev.namespace().ok_or(ScaleError::NoNamespace)?;
        let name = tev.name_any();
        let deploy_name = component_name(&name, component);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let current = deployments
            .get_opt(&deploy_name)
            .await?
            .ok_or_else(|| ScaleError::NoDeployment(deploy_name.clone()))?;
        let from = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let recorded = entry.recorded(tev, component);
        if recorded.is_some_and(|r| r != from) {
            let note = format!(
                "spec.replicas of Deployment {deploy_name} was set to {from} outside the operator; restoring {desired}"
            );
            tracing::warn!(namespace = %ns, event = %name, %component, from, to = desired, "replicas overridden");
            self.events
                .publish(
                    tev,
                    EventType::Warning,
                    reasons::REPLICAS_OVERRIDDEN,
                    "Scale",
                    note,
                )
                .await;
        }
        let now = Utc::now();
        // The cooldown instants ride in the same write as the replicas (see `cooldown_annotations`).
        let scaled_at = if from == desired {
            ScaledAt::of(&current)
        } else {
            ScaledAt::of(&current).after(reason.kind, now)
        };
        let body = serde_json::json!({
            "apiVersion": Deployment::api_version(&()),
            "kind": Deployment::kind(&()),
            "metadata": {"name": deploy_name, "annotations": scaled_at.annotations()},
            "spec": {"replicas": desired},
        });
        // Leadership is checked right before the write, not only when the tick or reconcile began.
        if !self.leader.is_leader() {
            return Err(ScaleError::NotLeader);
        }
        deployments
            .patch(
                &deploy_name,
                &PatchParams::apply(field_managers::SCALER).force(),
                &Patch::Apply(body),
            )
            .await?;
        entry.desired = Some(desired);

        let status_desired = tev
            .status
            .as_ref()
            .and_then(|s| s.component(component))
            .and_then(|c| c.desired_replicas);
        if from == desired && status_desired == Some(desired) {
            return Ok(None);
        }
        let api: Api<TicketingEvent> = Api::namespaced(self.client.clone(), &ns);
        if from == desired {
            // First record of replicas set at creation: status only, nothing changed on the cluster.
            merge_status(
                &api,
                &name,
                serde_json::json!({ component.as_str(): {"desiredReplicas": desired} }),
            )
            .await?;
            return Ok(None);
        }

        let change = ScaleChange { from, to: desired };
        let direction = if desired > from {
            Direction::Up
        } else {
            Direction::Down
        };
        let event_reason = direction.event_reason().unwrap_or(reasons::SCALED_OUT);
        let note = direction.note(component.as_str(), from, desired, &reason.message);
        let u = Unrecorded {
            change,
            reason: reason.clone(),
            at: now,
        };
        // The Deployment write landed: that is the change. A status write that fails now is kept
        // and retried (`flush`), never a reason to decide (and scale) again.
        if let Err(e) = record_change(&api, &name, component, &u).await {
            tracing::warn!(namespace = %ns, event = %name, %component, error = %e, "recording a scaling change in status failed; retried before the next decision");
            entry.unrecorded = Some(u);
        } else {
            entry.unrecorded = None;
        }
        tracing::info!(namespace = %ns, event = %name, %component, from, to = desired, reason = %reason.message, "scaled");
        self.metrics
            .scaling_decisions
            .get_or_create(&DecisionLabels {
                namespace: ns.clone(),
                event: name.clone(),
                component: component.as_str(),
                direction: direction.metric_label(),
                reason: reason.kind,
            })
            .inc();
        self.events
            .publish(tev, EventType::Normal, event_reason, "Scale", note)
            .await;
        Ok(Some(change))
    }
}

/// Writes one applied change to status (with `recentDecisions` composed from the freshest
/// status: another component's decision may have landed since the event was read).
async fn record_change(
    api: &Api<TicketingEvent>,
    name: &str,
    component: Component,
    u: &Unrecorded,
) -> Result<(), kube::Error> {
    let fresh = api.get_status(name).await?;
    merge_status(
        api,
        name,
        status_patch(&fresh, component, u.change, &u.reason, u.at),
    )
    .await?;
    Ok(())
}

/// The status merge patch of one applied change.
fn status_patch(
    tev: &TicketingEvent,
    component: Component,
    change: ScaleChange,
    reason: &ScaleReason,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let message = reason.message.as_str();
    let mut decisions = tev
        .status
        .as_ref()
        .and_then(|s| s.recent_decisions.clone())
        .unwrap_or_default();
    decisions.insert(
        0,
        ScalingDecisionRecord {
            time: now,
            component: component.as_str().into(),
            from: change.from,
            to: change.to,
            reason: bounded(message, 1024),
        },
    );
    decisions.truncate(RECENT_DECISIONS);
    let mut fields = serde_json::json!({
        "desiredReplicas": change.to,
        "lastScaleTime": now,
        "lastScaleReason": bounded(message, 1024),
    });
    // The cooldowns run from signal-driven scalings only (see `kinds`).
    let cooldown_field = match reason.kind {
        kinds::SCALE_OUT => Some("lastScaleOutTime"),
        kinds::SCALE_IN => Some("lastScaleInTime"),
        _ => None,
    };
    if let Some(field) = cooldown_field {
        fields[field] = serde_json::json!(now);
    }
    serde_json::json!({
        component.as_str(): fields,
        "recentDecisions": decisions,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, manager: &str, operation: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e-queue", "managedFields": [
                {"manager": "tiketi-operator", "operation": "Apply", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:template": {}}}},
                {"manager": manager, "operation": operation, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            ]},
            "spec": {"replicas": replicas, "selector": {}, "template": {}}
        }))
        .unwrap()
    }

    #[test]
    fn a_fresh_entry_adopts_only_replicas_the_scaler_wrote() {
        let ours = deployment(29, field_managers::SCALER, "Apply");
        assert_eq!(scaler_owned_replicas(&ours), Some(29));
        // A `kubectl scale` (an Update by another manager) is not ours: it stays an override.
        assert_eq!(scaler_owned_replicas(&deployment(7, "kubectl", "Update")), None);
        assert_eq!(
            scaler_owned_replicas(&deployment(7, field_managers::SCALER, "Update")),
            None
        );

        let tev =
            crate::crd::fixture::event(serde_json::json!({"status": {"queue": {"desiredReplicas": 10}}}));
        let mut fresh = BookEntry::default();
        assert_eq!(fresh.recorded(&tev, Component::Queue), Some(10), "stale status");
        assert_eq!(fresh.adopt(Some(&ours), &tev, Component::Queue), Some(29));
        // Status said 10: the adopted change is recorded on the next flush.
        let u = fresh
            .unrecorded
            .clone()
            .expect("the previous leader's change is to be recorded");
        assert_eq!(u.change, ScaleChange { from: 10, to: 29 });
        assert_eq!(fresh.recorded(&tev, Component::Queue), Some(29));
        // An entry this process already wrote is not overridden by what the cache shows.
        let mut written = BookEntry {
            desired: Some(31),
            ..Default::default()
        };
        assert_eq!(written.adopt(Some(&ours), &tev, Component::Queue), None);
        assert_eq!(written.desired, Some(31));
        assert_eq!(BookEntry::default().adopt(None, &tev, Component::Queue), None);
    }

    #[test]
    fn a_new_leader_takes_the_cooldowns_the_deployment_carries() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // The previous leader scaled out at 10:00:05; its status write (lastScaleOutTime) never
        // landed, so status still says 09:00.
        let tev = crate::crd::fixture::event(serde_json::json!({"status": {"queue": {
            "desiredReplicas": 3, "lastScaleOutTime": "2026-12-01T09:00:00Z",
            "lastScaleInTime": "2026-12-01T09:30:00Z"
        }}}));
        let at = ScaledAt::default().after(kinds::SCALE_OUT, t("2026-12-01T10:00:05Z"));
        assert_eq!(at.inn, None);
        let mut d = deployment(5, field_managers::SCALER, "Apply");
        d.metadata.annotations = Some(
            at.annotations()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
                .collect(),
        );
        assert_eq!(ScaledAt::of(&d), at, "the annotations read back");
        let mut fresh = BookEntry::default();
        assert_eq!(fresh.adopt(Some(&d), &tev, Component::Queue), Some(5));
        // Status said 3: recorded as the scale-out it was, at the instant it happened.
        let u = fresh.unrecorded.clone().unwrap();
        assert_eq!(
            (u.change.from, u.change.to, u.reason.kind),
            (3, 5, kinds::SCALE_OUT)
        );
        assert_eq!(u.at, t("2026-12-01T10:00:05Z"));
        let m = fresh
            .memory_or_adopted(&tev, Component::Queue, t("2026-12-01T10:00:06Z"))
            .unwrap();
        assert_eq!(
            m.last_scale_out,
            Some(t("2026-12-01T10:00:05Z")),
            "the newer instant wins"
        );
        assert_eq!(
            m.last_scale_in,
            Some(t("2026-12-01T09:30:00Z")),
            "status kept where newer"
        );
        // Schedule steps start no cooldown; this process's own memory is never replaced.
        assert_eq!(at.after(kinds::SCHEDULE, t("2026-12-02T00:00:00Z")), at);
        let own = Memory::default();
        fresh.memory = Some(own.clone());
        assert_eq!(
            fresh.memory_or_adopted(&tev, Component::Queue, t("2026-12-01T10:00:06Z")),
            Some(own)
        );
        // Nothing adopted: rebuilt from status by the caller.
        assert_eq!(
            BookEntry::default().memory_or_adopted(&tev, Component::Queue, t("2026-12-01T10:00:06Z")),
            None
        );
    }

    #[test]
    fn decisions_are_newest_first_and_bounded() {
        let mut tev = crate::crd::fixture::event(serde_json::json!({}));
        let now = Utc::now();
        for i in 0..25 {
            let patch = status_patch(
                &tev,
                Component::Queue,
                ScaleChange { from: i, to: i + 1 },
                &ScaleReason::new(kinds::SCALE_OUT, "x"),
                now,
            );
            let mut status = tev.status.clone().unwrap_or_default();
            status.recent_decisions = serde_json::from_value(patch["recentDecisions"].clone()).unwrap();
            tev.status = Some(status);
        }
        let d = tev.status.unwrap().recent_decisions.unwrap();
        assert_eq!(d.len(), RECENT_DECISIONS);
        assert_eq!((d[0].from, d[0].to), (24, 25));
        let patch = status_patch(
            &tev_fixture(),
            Component::Reservation,
            ScaleChange { from: 6, to: 4 },
            &ScaleReason::new(kinds::SCALE_IN, "y"),
            now,
        );
        assert!(patch["reservation"].get("lastScaleInTime").is_some());
        assert!(patch["reservation"].get("lastScaleOutTime").is_none());
        assert_eq!(patch["reservation"]["desiredReplicas"], 4);
        // Every key the scaler writes is one the API server keeps.
        crate::status::schema_key_tests::assert_in_status_schema(&patch);
        let out = status_patch(
            &tev_fixture(),
            Component::Queue,
            ScaleChange { from: 1, to: 3 },
            &ScaleReason::new(kinds::SCALE_OUT, "z"),
            now,
        );
        crate::status::schema_key_tests::assert_in_status_schema(&out);
    }

    #[test]
    fn schedule_steps_do_not_start_cooldowns() {
        let patch = status_patch(
            &tev_fixture(),
            Component::Queue,
            ScaleChange { from: 2, to: 6 },
            &ScaleReason::new(kinds::SCHEDULE, "pre-warm step 2/3"),
            Utc::now(),
        );
        assert!(patch["queue"].get("lastScaleOutTime").is_none(), "{patch}");
        assert!(patch["queue"].get("lastScaleTime").is_some());
        assert_eq!(patch["recentDecisions"][0]["to"], 6);
    }

    #[tokio::test]
    async fn a_kept_book_handle_locks_what_the_book_locks_even_after_the_book_forgot() {
        let book = Book::default();
        let tev = tev_fixture();
        let mut kept = None;
        // Found once, then kept: both entries free.
        drop(book.try_lock_both(&tev, &mut kept).unwrap());
        // The reconciler's path holds the queue entry: the kept handle sees it held.
        let held = book.lock(&tev, Component::Queue).await;
        assert!(book.try_lock_both(&tev, &mut kept).is_none());
        drop(held);
        assert!(book.try_lock_both(&tev, &mut kept).is_some());

        // The book forgets (leadership lost; or the event deleted): new entries are made on
        // the next lock, and the kept handle must lock those, not the forgotten ones.
        book.clear();
        let held = book.lock(&tev, Component::Reservation).await;
        assert!(
            book.try_lock_both(&tev, &mut kept).is_none(),
            "a handle from before clear() locked a forgotten entry"
        );
        drop(held);
        book.retain(&foldhash::HashSet::default());
        let held = book.lock(&tev, Component::Queue).await;
        assert!(
            book.try_lock_both(&tev, &mut kept).is_none(),
            "a handle from before retain() locked a forgotten entry"
        );
        drop(held);
        assert!(book.try_lock_both(&tev, &mut kept).is_some());
    }

    fn tev_fixture() -> TicketingEvent {
        TicketingEvent::new(
            "e",
            serde_json::from_value(serde_json::json!({
                "onSaleAt": "2026-12-01T02:00:00Z", "inventory": {"sections": [{"name": "A", "rows": 1, "seatsPerRow": 1}]},
                "queue": {"image": "q"}, "reservation": {"image": "r"},
                "redis": {"urlSecretRef": {"name": "r", "key": "url"}}, "database": {"secretRef": {"name": "d"}},
                "auth": {"secretRef": {"name": "a"}}
            }))
            .unwrap(),
        )
    }
}
