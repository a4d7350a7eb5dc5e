//! Conditions and status writes. Condition types and reasons are the one list other modules use;
//! an Event about the same thing carries the same reason.
//!
//! Who writes what in `status` (so writers never clobber each other):
//! - the reconciler, server-side apply with [`crate::field_managers::OPERATOR`]: phase,
//!   observedGeneration, nextTransitionAt, conditions Ready / Progressing / InvalidSpec, and
//!   `<component>.readyReplicas` / `.pods`;
//! - the scaler ([`crate::scaler`]), JSON merge patch: `<component>.desiredReplicas`, the
//!   `lastScale*` times and reason, and `recentDecisions`;
//! - the autoscaler, through [`apply_status`] with its own field manager: its condition
//!   (SignalsHealthy), queueDepth, activeUsers, signalsObservedAt, belowSince, soldOutAt.
//!
//! `conditions` is a list-map keyed by `type`, so each field manager owns only its own entries.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use crate::crd::TicketingEvent;

/// Condition types.
pub mod types {
    /// The event's services are deployed and every Deployment has its desired replicas Ready.
    pub const READY: &str = "Ready";
    /// A rollout or scaling is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// The spec cannot be deployed (see the message); nothing new is deployed until it is fixed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The autoscaler's signals are fresh (written by the autoscaler).
    pub const SIGNALS_HEALTHY: &str = "SignalsHealthy";
}

/// Reasons of conditions and Events (CamelCase, one place).
pub mod reasons {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const MISSING_SECRET: &str = "MissingSecret";
    pub const VALID_SPEC: &str = "ValidSpec";
    pub const AVAILABLE: &str = "Available";
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    pub const SCALING: &str = "Scaling";
    pub const COMPLETE: &str = "Complete";
    pub const CLOSED: &str = "Closed";
    pub const PHASE_CHANGED: &str = "PhaseChanged";
    pub const CREATED: &str = "Created";
    pub const SCALED_OUT: &str = "ScaledOut";
    pub const SCALED_IN: &str = "ScaledIn";
    pub const REPLICAS_OVERRIDDEN: &str = "ReplicasOverridden";
    pub const ORPHAN_DELETED: &str = "OrphanDeleted";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const CLEANED_UP: &str = "CleanedUp";
    /// SignalsHealthy=True. (When False, the reason is the failure's: Timeout, RedisError,
    /// SignalStale, SignalMissing, PrometheusError, DecodeError, ConfigError.)
    pub const SIGNALS_FRESH: &str = "SignalsFresh";
    /// Event: the signals turned unhealthy.
    pub const SIGNALS_UNHEALTHY: &str = "SignalsUnhealthy";
    /// Event: the signals are fresh again.
    pub const SIGNALS_RECOVERED: &str = "SignalsRecovered";
    /// Event: sold out with an empty queue; the sale ends early.
    pub const SOLD_OUT: &str = "SoldOut";
}

/// Converts a chrono time into the API's `Time`.
pub fn to_time(t: DateTime<Utc>) -> Time {
    let ts = k8s_openapi::jiff::Timestamp::from_millisecond(t.timestamp_millis())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    Time(ts)
}

/// Builds a condition, keeping `lastTransitionTime` from `existing` when the status did not flip
/// (API conventions: the time of the last *transition*, not of the last write).
pub fn condition(
    existing: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_time(now));
    let mut message: String = message.into();
    if message.len() > 1024 {
        let mut cut = 1021;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// Looks up a condition by type.
pub fn find<'a>(tev: &'a TicketingEvent, type_: &str) -> Option<&'a Condition> {
    tev.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Server-side applies `status` (a JSON object holding only the fields `manager` owns) to the
/// status subresource of `tev`. A manager must send every field it owns on each call: a field it
/// leaves out is removed.
pub async fn apply_status(
    api: &Api<TicketingEvent>,
    tev: &TicketingEvent,
    manager: &str,
    status: serde_json::Value,
) -> Result<TicketingEvent, kube::Error> {
    let body = serde_json::json!({
        "apiVersion": TicketingEvent::api_version(&()),
        "kind": TicketingEvent::kind(&()),
        "metadata": {"name": tev.name_any()},
        "status": status,
    });
    api.patch_status(
        &tev.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
}

/// JSON-merge-patches `status` into the status subresource as the scaler's field manager
/// (fields not mentioned stay).
pub async fn merge_status(
    api: &Api<TicketingEvent>,
    name: &str,
    status: serde_json::Value,
) -> Result<TicketingEvent, kube::Error> {
    let pp = PatchParams {
        field_manager: Some(crate::field_managers::SCALER.into()),
        ..Default::default()
    };
    api.patch_status(name, &pp, &Patch::Merge(serde_json::json!({ "status": status })))
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flips() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let t1 = t0 + chrono::TimeDelta::minutes(5);
        let first = condition(
            &[],
            types::READY,
            false,
            reasons::PODS_NOT_READY,
            "0/2",
            Some(1),
            t0,
        );
        assert_eq!(first.last_transition_time, to_time(t0));
        let same = condition(
            std::slice::from_ref(&first),
            types::READY,
            false,
            reasons::PODS_NOT_READY,
            "1/2",
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time, to_time(t0));
        assert_eq!(same.observed_generation, Some(2));
        let flipped = condition(
            &[same],
            types::READY,
            true,
            reasons::AVAILABLE,
            "2/2",
            Some(2),
            t1,
        );
        assert_eq!(flipped.last_transition_time, to_time(t1));
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn long_messages_are_bounded() {
        let now = Utc::now();
        let c = condition(
            &[],
            types::READY,
            false,
            reasons::INVALID_SPEC,
            "é".repeat(2000),
            None,
            now,
        );
        assert!(c.message.len() <= 1024);
        assert!(c.message.ends_with("..."));
    }
}
