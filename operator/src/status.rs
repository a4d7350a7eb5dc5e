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

/// A condition message as [`condition`] stores it: at most 1,024 bytes, a longer one cut at a
/// character boundary and ended with "..." (the second part; empty when nothing was cut).
pub fn bounded_message(message: &str) -> (&str, &'static str) {
    if message.len() <= 1024 {
        return (message, "");
    }
    let mut cut = 1021;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    (&message[..cut], "...")
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
    let (kept, cut) = bounded_message(&message);
    if !cut.is_empty() {
        let kept = kept.len();
        message.truncate(kept);
        message.push_str(cut);
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

// === what the autoscaler writes (field manager tiketi-autoscaler) ===

/// The autoscaler's part of the status, applied server-side as its own field manager: a field
/// it leaves out (None) is removed, so an ended stabilization run drops `belowSince`.
#[derive(serde::Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_users: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_queue_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sold_out_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signals_observed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<AutoscalerComponentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<AutoscalerComponentStatus>,
}

/// Per component: the scale-in evidence and the capacity sizing.
#[derive(serde::Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerComponentStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below_since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prewarm_replicas: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_history: Option<Vec<crate::crd::NeedMark>>,
}

impl AutoscalerStatus {
    pub fn component_mut(&mut self, c: crate::crd::Component) -> &mut Option<AutoscalerComponentStatus> {
        match c {
            crate::crd::Component::Queue => &mut self.queue,
            crate::crd::Component::Reservation => &mut self.reservation,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod schema_key_tests {
    use kube::CustomResourceExt as _;

    use super::*;

    /// Every key of `value` exists in `schema` (objects by `properties`, arrays by `items`;
    /// preserve-unknown-fields objects accept anything). The API server silently prunes a key
    /// the schema lacks, so a typo here would be a field that is never stored.
    fn keys_in_schema(
        value: &serde_json::Value,
        schema: &serde_json::Value,
        path: &str,
        missing: &mut Vec<String>,
    ) {
        if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true)) {
            return;
        }
        match value {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match schema.get("properties").and_then(|p| p.get(k)) {
                        Some(s) => keys_in_schema(v, s, &format!("{path}.{k}"), missing),
                        None => missing.push(format!("{path}.{k}")),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    match schema.get("items") {
                        Some(s) => keys_in_schema(v, s, &format!("{path}[{i}]"), missing),
                        None => missing.push(format!("{path}[]")),
                    }
                }
            }
            _ => {}
        }
    }

    /// For other modules' tests: every key of a status body is in the CRD's status schema.
    pub(crate) fn assert_in_status_schema(value: &serde_json::Value) {
        let mut missing = Vec::new();
        keys_in_schema(value, &status_schema(), "status", &mut missing);
        assert!(
            missing.is_empty(),
            "not in the CRD's status schema (pruned by the API server): {missing:?}"
        );
    }

    fn status_schema() -> serde_json::Value {
        let crd = serde_json::to_value(crate::crd::TicketingEvent::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].clone()
    }

    #[test]
    fn every_key_the_autoscaler_writes_is_in_the_status_schema() {
        let now = Utc::now();
        let component = AutoscalerComponentStatus {
            below_since: Some(now),
            need: Some(8),
            prewarm_replicas: Some(6),
            need_history: Some(vec![crate::crd::NeedMark { at: now, replicas: 8 }]),
        };
        let body = AutoscalerStatus {
            queue_depth: Some(1),
            active_users: Some(2),
            pre_queue_depth: Some(3),
            sold_out_at: Some(now),
            signals_observed_at: Some(now),
            conditions: vec![Condition {
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                message: "m".into(),
                observed_generation: Some(1),
                reason: "R".into(),
                status: "True".into(),
                type_: types::SIGNALS_HEALTHY.into(),
            }],
            queue: Some(component.clone()),
            reservation: Some(component),
        };
        let value = serde_json::to_value(&body).unwrap();
        let mut missing = Vec::new();
        keys_in_schema(&value, &status_schema(), "status", &mut missing);
        assert!(
            missing.is_empty(),
            "not in the CRD's status schema (pruned by the API server): {missing:?}"
        );
        // And the checker itself finds a key that is not there.
        let mut missing = Vec::new();
        keys_in_schema(
            &serde_json::json!({"queue": {"needz": 1}}),
            &status_schema(),
            "status",
            &mut missing,
        );
        assert_eq!(missing, vec!["status.queue.needz".to_owned()]);
    }
}
