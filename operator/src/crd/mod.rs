//! The `TicketingEvent` custom resource (`tiketi.gg/v1alpha1`): spec, status, defaults and the CEL
//! rules the API server enforces. `crds/ticketingevents.tiketi.gg.yaml` is generated from these types
//! by `tiketi-operator crd`; never edit it by hand.
//!
//! Doc comments on fields become `kubectl explain` text, so they are written for the platform
//! engineer, not the Rust reader.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Message, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tiketi_shared::config::MAX_SEATS_PER_EVENT;

/// Regex of a Go/humantime duration as written in the spec: one or more `<integer><unit>` groups,
/// units `ms`, `s`, `m`, `h` (`180s`, `5m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";
/// RFC 1123 DNS label (the shape of `eventId`).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Children are named `<metadata.name>-reservation`, and Service names are DNS-1035 labels of at
/// most 63 characters, so the resource name is bounded to 63 - len("-reservation") = 51.
pub const MAX_NAME_LEN: usize = 51;

mod component;
mod connections;
#[cfg(test)]
pub(crate) mod fixture;
mod inventory;
mod scaling;
mod status;

pub use component::*;
pub use connections::*;
pub use inventory::*;
pub use scaling::*;
pub use status::*;

// === the resource ===

/// A ticket on-sale: the operator deploys the event's waiting room (queue) and reservation
/// services, pre-warms them before `onSaleAt`, scales them during the sale and winds them down
/// after it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tiketi.gg",
    version = "v1alpha1",
    kind = "TicketingEvent",
    namespaced,
    shortname = "tev",
    category = "tiketi",
    doc = "A ticket on-sale. The operator deploys the event's waiting room (queue) and reservation services, pre-warms them before spec.onSaleAt, scales them during the sale from the Redis queue (capacity per replica, steps, cooldowns; fail-safe when signals are stale) and winds them down after it. kubectl get tev -o wide shows desired replicas and the last scaling reason; kubectl describe tev shows conditions and Events.",
    status = "TicketingEventStatus",
    cel,
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Schedule phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Every Deployment has its desired replicas Ready"),
    printcolumn(name = "Signals", type_ = "string", json_path = ".status.conditions[?(@.type==\"SignalsHealthy\")].status", description = "The autoscaler's signals are fresh (SignalsHealthy)"),
    printcolumn(name = "On-Sale", type_ = "string", json_path = ".spec.onSaleAt", description = "When the sale opens (RFC 3339)"),
    printcolumn(name = "Queue", type_ = "integer", json_path = ".status.queueDepth", description = "Users waiting in the queue"),
    printcolumn(name = "Queue-Pods", type_ = "string", json_path = ".status.queue.pods", description = "Queue pods ready/desired"),
    printcolumn(name = "Reservation-Pods", type_ = "string", json_path = ".status.reservation.pods", description = "Reservation pods ready/desired"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeUsers", description = "Admitted users", priority = "1"),
    printcolumn(name = "Queue-Desired", type_ = "integer", json_path = ".status.queue.desiredReplicas", description = "Queue replicas the operator asks for", priority = "1"),
    printcolumn(name = "Reservation-Desired", type_ = "integer", json_path = ".status.reservation.desiredReplicas", description = "Reservation replicas the operator asks for", priority = "1"),
    printcolumn(name = "Queue-Last-Scale", type_ = "string", json_path = ".status.queue.lastScaleReason", description = "Why the queue was last scaled", priority = "1"),
    printcolumn(name = "Reservation-Last-Scale", type_ = "string", json_path = ".status.reservation.lastScaleReason", description = "Why reservation was last scaled", priority = "1"),
    validation = Rule::new(format!(
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= {MAX_NAME_LEN}"
    ))
    .message(Message::Message(format!(
        "metadata.name must be a DNS-1035 label (lower-case letter first) of at most {MAX_NAME_LEN} characters: \
         children are named <name>-reservation"
    ))),
)]
#[x_kube(
    validation = Rule::new("has(self.eventId) == has(oldSelf.eventId) && (!has(self.eventId) || self.eventId == oldSelf.eventId)")
        .message("spec.eventId is immutable: Redis keys, admission tokens and orders carry it (create a new TicketingEvent instead)")
        .field_path(".eventId"),
    validation = Rule::new("!has(self.saleEndsAt) || self.saleEndsAt > self.onSaleAt")
        .message("spec.saleEndsAt must be after spec.onSaleAt").field_path(".saleEndsAt"),
    validation = Rule::new("!has(self.prewarm) || self.prewarm.queue.replicas <= self.queue.maxReplicas")
        .message("spec.prewarm.queue.replicas must not exceed spec.queue.maxReplicas").field_path(".prewarm.queue.replicas"),
    validation = Rule::new("!has(self.prewarm) || self.prewarm.reservation.replicas <= self.reservation.maxReplicas")
        .message("spec.prewarm.reservation.replicas must not exceed spec.reservation.maxReplicas")
        .field_path(".prewarm.reservation.replicas"),
    validation = Rule::new(
        "has(self.prometheus) || !(self.queue.scaling.scaleOut.steps.exists(s, s.signal == 'prometheus') \
         || self.queue.scaling.scaleIn.when.signal == 'prometheus' \
         || self.reservation.scaling.scaleOut.steps.exists(s, s.signal == 'prometheus') \
         || self.reservation.scaling.scaleIn.when.signal == 'prometheus')"
    )
    .message("a scaling step uses signal prometheus: set spec.prometheus.url")
    .field_path(".prometheus"),
)]
#[serde(rename_all = "camelCase")]
pub struct TicketingEventSpec {
    /// Identifier of the event in Redis keys, tokens and the reservation database. Defaults to
    /// metadata.name. An RFC 1123 DNS label; it must be unique among the events sharing one Redis
    /// and one database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub event_id: Option<String>,

    /// When the sale opens (RFC 3339, e.g. 2026-12-01T11:00:00+09:00). Pre-warm finishes before it.
    pub on_sale_at: DateTime<Utc>,

    /// When the sale ends (RFC 3339, after onSaleAt). Without it the sale runs until sold out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_ends_at: Option<DateTime<Utc>>,

    /// How long after the sale ends (saleEndsAt or sold out) the event stays in phase Closing
    /// (the autoscaler scales in, the queue tells waiting users the sale is over) before it is
    /// Closed and every component runs exactly minReplicas. A duration such as 30m, at most 720h.
    #[serde(default = "default_wind_down")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
    pub wind_down: String,

    /// The seats the reservation service sells: numbered seats in sections and general-admission
    /// areas. At most 200000 places in total per event.
    pub inventory: InventorySpec,

    /// Reach these replicas before onSaleAt, ramping up in steps across the lead time. Without it
    /// the services run minReplicas until the sale opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm: Option<PrewarmSpec>,

    /// The waiting-room (queue) Deployment.
    pub queue: QueueSpec,

    /// The reservation Deployment.
    pub reservation: ReservationSpec,

    /// The Redis both services use (queue, active set, holds).
    pub redis: RedisSpec,

    /// The PostgreSQL database of the reservation service.
    pub database: DatabaseSpec,

    /// The Secret holding the key that verifies users' bearer JWTs and the key that signs admission
    /// tokens.
    pub auth: AuthSpec,

    /// A Prometheus server for scaling signals of kind prometheus. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
}

fn default_wind_down() -> String {
    "30m".into()
}

// === the CRD document ===

/// The CustomResourceDefinition, as `tiketi-operator crd` prints it and `crds/` holds it.
/// Doc comments wrap at 110 columns in the source; their single line breaks are joined here so
/// `kubectl explain` can wrap the text itself (blank lines still separate paragraphs).
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = TicketingEvent::crd();
    for v in &mut crd.spec.versions {
        if let Some(schema) = v.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            unwrap_descriptions(schema);
        }
    }
    crd
}

fn unwrap_descriptions(
    p: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    if let Some(d) = p.description.as_mut() {
        *d = d
            .split("\n\n")
            .map(|para| para.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    for child in p.properties.iter_mut().flat_map(|m| m.values_mut()) {
        unwrap_descriptions(child);
    }
    if let Some(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(
            items,
        ),
    ) = p.items.as_mut()
    {
        unwrap_descriptions(items);
    }
}

/// An object whose fields the schema does not describe (a copy of the spec, validated when it
/// was the spec).
fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

impl TicketingEvent {
    /// True while condition InvalidSpec is True and an earlier valid spec is kept in force.
    pub fn keeps_last_good_spec(&self) -> bool {
        let st = self.status.as_ref();
        st.is_some_and(|s| s.last_good_spec.is_some() && s.phase != Some(Phase::Failed))
            && crate::status::find(self, crate::status::types::INVALID_SPEC)
                .is_some_and(|c| c.status == "True")
    }

    /// The event as it is in force: with the last good spec while the current one is invalid
    /// (see [`TicketingEventStatus::last_good_spec`]), else as it is.
    pub fn in_force(&self) -> std::borrow::Cow<'_, TicketingEvent> {
        if self.keeps_last_good_spec()
            && let Some(spec) = self
                .status
                .as_ref()
                .and_then(|s| s.last_good_spec.clone())
                .and_then(|v| serde_json::from_value::<TicketingEventSpec>(v).ok())
        {
            let mut tev = self.clone();
            tev.spec = spec;
            return std::borrow::Cow::Owned(tev);
        }
        std::borrow::Cow::Borrowed(self)
    }
}

// === derived values ===

/// The longest duration any field of the spec may hold: no part of a sale (pre-warm lead, hold,
/// wind-down, cooldowns, token and hold lifetimes) needs more, and bounding every duration keeps
/// the time arithmetic built on it far from chrono's range (year ±262,143).
/// The services' own bound (the event config's TTLs, their duration flags): one number for both.
pub const MAX_SPEC_DURATION: Duration = Duration::from_secs(tiketi_shared::config::MAX_DURATION_SECONDS);
/// Written the way the schema's CEL rules and error messages say it.
pub const MAX_SPEC_DURATION_TEXT: &str = "720h";

/// Shortest `tokenTtl`, `heartbeatTimeout` and `holdTtl`: the services count whole seconds (500ms
/// would become 0 and every waiting user would be dropped by each sweep).
pub const MIN_SERVICE_DURATION: Duration = Duration::from_secs(1);
/// [`MIN_SERVICE_DURATION`] as the schema's CEL rules say it.
pub const MIN_SERVICE_DURATION_TEXT: &str = "1s";
/// `scaling.pollInterval` bounds as the schema's CEL rule says them; the operator checks the same
/// bounds again (`MIN_POLL_INTERVAL`/`MAX_POLL_INTERVAL` in the autoscaler, a test keeps them equal).
pub const MIN_POLL_INTERVAL_TEXT: &str = "250ms";
pub const MAX_POLL_INTERVAL_TEXT: &str = "5m";

/// Longest text a duration field may hold (`maxLength`): far more than any bounded duration needs
/// (`2592000000ms` is 720h in 12 characters), and it bounds the groups [`DURATION_CEL_GUARD`] admits.
pub const MAX_DURATION_LEN: u32 = 32;

/// A [`DURATION_PATTERN`] value whose every `<number><unit>` group has at most as many significant
/// digits as 720h needs in that unit (3 h, 5 m, 7 s, 10 ms). CEL's `duration()` is Go's
/// `time.ParseDuration`, which fails (an evaluation error, not a clear refusal) past ~2,562,047h;
/// no value this admits (at most [`MAX_DURATION_LEN`] characters) comes near, and every value it
/// refuses has a group above 720h on its own.
const DURATION_CEL_GUARD: &str = "^(0*[0-9]{1,3}h|0*[0-9]{1,5}m|0*[0-9]{1,7}s|0*[0-9]{1,10}ms)+$";

/// The CEL rule of a duration field: at least `min` (a Go duration, `None` for no minimum) and at
/// most `max`, the bounds `parse_duration_within` enforces again in the operator. A value that
/// does not match [`DURATION_PATTERN`] passes this rule: the pattern refuses it with its own
/// message.
pub(crate) fn duration_rule(min: Option<&str>, max: &str) -> Rule {
    let within_min = min.map_or(String::new(), |m| {
        format!(" && duration(self) >= duration('{m}')")
    });
    let bound = if max == MAX_SPEC_DURATION_TEXT {
        format!("{max} ({} days)", MAX_SPEC_DURATION.as_secs() / 86_400)
    } else {
        max.to_owned()
    };
    let message = match min {
        Some(m) => format!("must be between {m} and {bound}"),
        None => format!("must be at most {bound}"),
    };
    Rule::new(format!(
        "!self.matches('{DURATION_PATTERN}') || (self.matches('{DURATION_CEL_GUARD}'){within_min} \
         && duration(self) <= duration('{max}'))"
    ))
    .message(Message::Message(message))
}

/// A spec duration that cannot be used: not a duration (e.g. an overflow the schema pattern
/// admits), or outside the bounds of its field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {value:?} {problem}")]
pub struct DurationError {
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

/// Parses a spec duration (`180s`, `5m`, `1h30m`), refusing anything above [`MAX_SPEC_DURATION`].
pub fn parse_duration(field: &'static str, value: &str) -> Result<Duration, DurationError> {
    parse_duration_within(field, value, Duration::ZERO, MAX_SPEC_DURATION)
}

/// Parses a spec duration that must lie within `[min, max]`.
pub fn parse_duration_within(
    field: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, DurationError> {
    let err = |problem: String| DurationError {
        field,
        value: value.to_string(),
        problem,
    };
    let d = humantime::parse_duration(value).map_err(|e| err(format!("is not a duration ({e})")))?;
    if d > max {
        return Err(err(format!(
            "is longer than the maximum {}",
            humantime::format_duration(max)
        )));
    }
    if d < min {
        return Err(err(format!(
            "is shorter than the minimum {}",
            humantime::format_duration(min)
        )));
    }
    Ok(d)
}

impl TicketingEventSpec {
    /// The event id: spec.eventId, else the resource name.
    pub fn event_id_or(&self, name: &str) -> String {
        self.event_id.clone().unwrap_or_else(|| name.to_string())
    }

    pub fn min_replicas(&self, c: Component) -> i32 {
        match c {
            Component::Queue => self.queue.min_replicas,
            Component::Reservation => self.reservation.min_replicas,
        }
    }

    pub fn max_replicas(&self, c: Component) -> i32 {
        match c {
            Component::Queue => self.queue.max_replicas,
            Component::Reservation => self.reservation.max_replicas,
        }
    }

    pub fn scaling(&self, c: Component) -> &ScalingPolicy {
        match c {
            Component::Queue => &self.queue.scaling,
            Component::Reservation => &self.reservation.scaling,
        }
    }

    pub fn prewarm_replicas(&self, c: Component) -> Option<i32> {
        self.prewarm.as_ref().map(|p| match c {
            Component::Queue => p.queue.replicas,
            Component::Reservation => p.reservation.replicas,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_duration_bound_is_one_number_in_the_schema_the_operator_and_the_services() {
        assert_eq!(
            humantime::parse_duration(MAX_SPEC_DURATION_TEXT).unwrap(),
            MAX_SPEC_DURATION
        );
        assert_eq!(
            humantime::parse_duration(MIN_SERVICE_DURATION_TEXT).unwrap(),
            MIN_SERVICE_DURATION
        );
        assert_eq!(MAX_SPEC_DURATION.as_secs(), 30 * 24 * 3600);
    }

    fn example() -> TicketingEvent {
        fixture::event(serde_json::json!({
            "metadata": {"name": "iu-2026-seoul", "namespace": "tickets"},
            "spec": {
                "onSaleAt": "2026-12-01T11:00:00+09:00",
                "saleEndsAt": "2026-12-01T14:00:00+09:00",
                "inventory": {
                    "sections": [{"name": "A", "rows": 20, "seatsPerRow": 30, "priceTier": "vip"}],
                    "generalAdmission": [{"name": "floor", "capacity": 500}]
                },
                "prewarm": {"leadTime": "30m", "rampSteps": 3, "queue": {"replicas": 10}, "reservation": {"replicas": 20}},
                "queue": {"image": "tiketi/queue:0.1", "minReplicas": 2, "maxReplicas": 100},
                "reservation": {"image": "tiketi/reservation:0.1", "minReplicas": 2, "maxReplicas": 200},
                "redis": {"urlSecretRef": {"name": "tiketi-redis"}},
                "database": {"secretRef": {"name": "tiketi-db"}},
                "auth": {"secretRef": {"name": "tiketi-auth"}}
            }
        }))
    }

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> TicketingEvent {
        let mut v = serde_json::to_value(example()).unwrap();
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn refused(tev: &TicketingEvent, fragment: &str) {
        let errs = tev.validate_cel().expect_err("the CEL rules should refuse this");
        let text = format!("{errs:?}");
        assert!(text.contains(fragment), "expected {fragment:?} in {text}");
    }

    #[test]
    fn defaults_are_the_source_numbers() {
        let tev = example();
        let p = &tev.spec.queue.scaling;
        assert_eq!(p.poll_interval, "2s");
        assert_eq!(p.scale_out.steps.len(), 2);
        assert_eq!(
            (p.scale_out.steps[0].above, p.scale_out.steps[0].add),
            (5000.0, 2)
        );
        assert_eq!(
            (p.scale_out.steps[1].above, p.scale_out.steps[1].add),
            (20000.0, 5)
        );
        assert_eq!(p.scale_out.cooldown, "180s");
        assert_eq!(p.scale_in.when.below, 1000.0);
        assert_eq!(p.scale_in.remove, 1);
        assert_eq!(p.scale_in.stabilization_window, "5m");
        assert_eq!(p.scale_in.cooldown, "600s");
        assert_eq!(p.fallback.after_stale, "30s");
        assert_eq!(p.fallback.replicas, 10);
        assert_eq!(tev.spec.reservation.hold_ttl, "5m");
        assert_eq!(tev.spec.queue.admission.token_ttl, "10m");
        for d in [
            &p.poll_interval,
            &p.scale_out.cooldown,
            &p.scale_in.stabilization_window,
            &p.scale_in.cooldown,
        ] {
            parse_duration("d", d).unwrap();
        }
    }

    #[test]
    fn the_example_passes_every_rule() {
        example().validate_cel().unwrap();
    }

    #[test]
    fn min_above_max_is_refused() {
        refused(
            &with(|v| v["spec"]["queue"]["minReplicas"] = 150.into()),
            "minReplicas must not exceed",
        );
        let ok = with(|v| v["spec"]["queue"]["minReplicas"] = 100.into());
        ok.validate_cel().unwrap();
    }

    #[test]
    fn prewarm_above_max_is_refused() {
        refused(
            &with(|v| v["spec"]["prewarm"]["reservation"]["replicas"] = 201.into()),
            "prewarm.reservation.replicas must not exceed",
        );
    }

    #[test]
    fn sale_end_before_start_is_refused() {
        refused(
            &with(|v| v["spec"]["saleEndsAt"] = "2026-12-01T01:59:59Z".into()),
            "saleEndsAt must be after",
        );
    }

    #[test]
    fn steps_must_increase_per_signal() {
        let steps = serde_json::json!([
            {"signal": "queueDepth", "above": 20000, "add": 5},
            {"signal": "queueDepth", "above": 5000, "add": 2},
        ]);
        refused(
            &with(|v| v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": steps}})),
            "strictly increasing",
        );
        let equal = serde_json::json!([
            {"signal": "queueDepth", "above": 5000, "add": 5},
            {"signal": "queueDepth", "above": 5000, "add": 2},
        ]);
        refused(
            &with(|v| v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": equal}})),
            "strictly increasing",
        );
        // Different signals are independent: the design's own example mixes them.
        let mixed = serde_json::json!([
            {"signal": "queueDepth", "above": 5000, "add": 2},
            {"signal": "queueDepth", "above": 20000, "add": 5},
            {"signal": "activeUsers", "above": 100, "add": 1},
            {"signal": "prometheus", "query": "histogram_quantile(0.95, x)", "above": 0.2, "add": 2},
        ]);
        let ok = with(|v| {
            v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": mixed}});
            v["spec"]["prometheus"] = serde_json::json!({"url": "http://prom:9090"});
        });
        ok.validate_cel().unwrap();
        assert_eq!(
            ok.spec.queue.scaling.scale_out.steps[3].signal(),
            Signal::Prometheus("histogram_quantile(0.95, x)".into())
        );
    }

    #[test]
    fn prometheus_steps_need_a_query_and_a_url() {
        let no_query = serde_json::json!([{"signal": "prometheus", "above": 0.2, "add": 2}]);
        refused(
            &with(|v| {
                v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": no_query}});
                v["spec"]["prometheus"] = serde_json::json!({"url": "http://prom:9090"});
            }),
            "query is required",
        );
        let no_url = serde_json::json!([{"signal": "prometheus", "query": "up", "above": 0.2, "add": 2}]);
        refused(
            &with(|v| v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": no_url}})),
            "spec.prometheus.url",
        );
    }

    #[test]
    fn a_step_must_add_something() {
        let steps = serde_json::json!([{"signal": "queueDepth", "above": 10, "add": 0}]);
        refused(
            &with(|v| v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": steps}})),
            "must add replicas",
        );
    }

    #[test]
    fn inventory_is_bounded_and_non_empty() {
        refused(
            &with(|v| {
                v["spec"]["inventory"] =
                    serde_json::json!({"sections": [{"name": "A", "rows": 500, "seatsPerRow": 401}]})
            }),
            "between 1 and 200000",
        );
        refused(
            &with(|v| v["spec"]["inventory"] = serde_json::json!({})),
            "between 1 and 200000",
        );
        let exactly = with(|v| {
            v["spec"]["inventory"] = serde_json::json!({"sections": [{"name": "A", "rows": 500, "seatsPerRow": 300}],
                                                         "generalAdmission": [{"name": "B", "capacity": 50000}]})
        });
        exactly.validate_cel().unwrap();
        refused(
            &with(|v| {
                v["spec"]["inventory"] = serde_json::json!({"sections": [{"name": "A", "rows": 1, "seatsPerRow": 1}],
                                                             "generalAdmission": [{"name": "A", "capacity": 5}]})
            }),
            "used both by a section",
        );
    }

    #[test]
    fn resource_name_must_fit_child_names() {
        refused(
            &with(|v| v["metadata"]["name"] = "a".repeat(MAX_NAME_LEN + 1).into()),
            "DNS-1035",
        );
        refused(&with(|v| v["metadata"]["name"] = "1abc".into()), "DNS-1035");
        with(|v| v["metadata"]["name"] = "a".repeat(MAX_NAME_LEN).into())
            .validate_cel()
            .unwrap();
    }

    #[test]
    fn schema_carries_patterns_descriptions_and_columns() {
        let crd = crd();
        let yaml = serde_yaml::to_string(&crd).unwrap();
        assert!(!yaml.contains("Without it\n"), "descriptions are unwrapped");
        assert!(yaml.contains(DURATION_PATTERN), "duration pattern missing");
        assert!(yaml.contains(DNS_LABEL_PATTERN), "DNS label pattern missing");
        assert!(yaml.contains("x-kubernetes-list-map-keys"));
        let v = &crd.spec.versions[0];
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            cols,
            [
                "Phase",
                "Ready",
                "Signals",
                "On-Sale",
                "Queue",
                "Queue-Pods",
                "Reservation-Pods",
                "Age",
                "Active",
                "Queue-Desired",
                "Reservation-Desired",
                "Queue-Last-Scale",
                "Reservation-Last-Scale",
            ]
        );
        // The last five are `-o wide` only.
        let wide = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority == Some(1));
        assert_eq!(wide.count(), 5);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["tev".to_string()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["tiketi".to_string()][..])
        );
        // `kubectl explain tev` opens with what the resource is.
        let top = v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
        assert!(
            top.description
                .as_deref()
                .is_some_and(|d| d.starts_with("A ticket on-sale."))
        );
        // Every property of spec and status has a description (kubectl explain reads like docs).
        let schema =
            serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
        let mut missing = Vec::new();
        walk_descriptions(&schema["properties"]["spec"], "spec", &mut missing);
        walk_descriptions(&schema["properties"]["status"], "status", &mut missing);
        assert!(missing.is_empty(), "fields without description: {missing:?}");
    }

    fn walk_descriptions(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        // k8s-openapi's ResourceRequirements and Condition carry upstream docs; stop at them.
        if path.ends_with(".resources") || path.ends_with(".conditions") {
            return;
        }
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (k, child) in props {
                let p = format!("{path}.{k}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk_descriptions(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk_descriptions(items, &format!("{path}[]"), missing);
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../manifests/examples/iu-2026-seoul.yaml");
        let tev = serde_yaml::Deserializer::from_str(text)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .find(|v| v["kind"] == "TicketingEvent")
            .map(|v| serde_yaml::from_value::<TicketingEvent>(v).unwrap())
            .unwrap();
        tev.validate_cel().unwrap();
        assert_eq!(tev.spec.reservation.scaling.scale_out.steps.len(), 1);
        assert!(tev.spec.queue.scaling.scale_out.steps.is_empty());
        for c in Component::ALL {
            let p = crate::autoscaler::Policy::try_from(tev.spec.scaling(c)).unwrap();
            assert!(p.capacity.is_some(), "{c} has a capacity");
        }
        crate::children::event_config(&tev).unwrap();
    }

    /// `example()` with the string at `path` (under spec) set to `value`.
    fn set(path: &[&str], value: &str) -> TicketingEvent {
        with(|v| {
            let mut node = &mut v["spec"];
            for k in path {
                node = &mut node[*k];
            }
            *node = value.into();
        })
    }

    /// Values above 720h, and ones CEL's `duration()` (Go's `time.ParseDuration`) cannot even
    /// hold: each must be refused with the message, never an evaluation error.
    const TOO_LONG: [&str; 6] = [
        "721h",
        "720h1ms",
        "43201m",
        "3000000000h",
        "2600000000000000h",
        "99999999999999999999h",
    ];

    #[test]
    fn durations_are_bounded_by_the_schema() {
        let at_most = format!("must be at most {MAX_SPEC_DURATION_TEXT} (30 days)");
        for path in [
            &["windDown"][..],
            &["prewarm", "leadTime"],
            &["prewarm", "holdFor"],
            &["prewarm", "growthLead"],
            &["queue", "scaling", "scaleOut", "cooldown"],
            &["queue", "scaling", "scaleIn", "stabilizationWindow"],
            &["reservation", "scaling", "scaleIn", "cooldown"],
            &["reservation", "scaling", "fallback", "afterStale"],
        ] {
            for good in [
                "0s",
                "1h30m",
                "720h",
                "2592000000ms",
                "0000000000000720h",
                "719h59m59s999ms",
            ] {
                set(path, good)
                    .validate_cel()
                    .unwrap_or_else(|e| panic!("{path:?} {good}: {e:?}"));
                parse_duration("d", good).unwrap();
            }
            for bad in TOO_LONG {
                refused(&set(path, bad), &at_most);
                assert!(parse_duration("d", bad).is_err(), "{bad}");
            }
            // Not a duration at all: the pattern refuses it, with its own message.
            set(path, "3 minutes").validate_cel().unwrap();
        }
        let field = format!(
            "{:?}",
            set(&["prewarm", "holdFor"], "3000000000h")
                .validate_cel()
                .unwrap_err()
        );
        assert!(field.contains("spec.prewarm.holdFor"), "{field}");

        // Services count whole seconds: at least 1s.
        let between =
            format!("must be between {MIN_SERVICE_DURATION_TEXT} and {MAX_SPEC_DURATION_TEXT} (30 days)");
        for path in [
            &["queue", "admission", "tokenTtl"][..],
            &["queue", "admission", "heartbeatTimeout"],
            &["reservation", "holdTtl"],
        ] {
            for good in ["1s", "1500ms", "720h"] {
                set(path, good)
                    .validate_cel()
                    .unwrap_or_else(|e| panic!("{path:?} {good}: {e:?}"));
                parse_duration_within("d", good, MIN_SERVICE_DURATION, MAX_SPEC_DURATION).unwrap();
            }
            for bad in ["0s", "500ms", "999ms"].into_iter().chain(TOO_LONG) {
                refused(&set(path, bad), &between);
                assert!(
                    parse_duration_within("d", bad, MIN_SERVICE_DURATION, MAX_SPEC_DURATION).is_err(),
                    "{bad}"
                );
            }
        }
        assert_eq!(
            humantime::parse_duration(MIN_SERVICE_DURATION_TEXT).unwrap(),
            MIN_SERVICE_DURATION
        );
        assert_eq!(
            humantime::parse_duration(MAX_SPEC_DURATION_TEXT).unwrap(),
            MAX_SPEC_DURATION
        );

        // pollInterval: 250ms to 5m.
        let poll = format!("must be between {MIN_POLL_INTERVAL_TEXT} and {MAX_POLL_INTERVAL_TEXT}");
        for path in [
            &["queue", "scaling", "pollInterval"][..],
            &["reservation", "scaling", "pollInterval"],
        ] {
            for good in ["250ms", "2s", "5m", "4m59s"] {
                set(path, good)
                    .validate_cel()
                    .unwrap_or_else(|e| panic!("{path:?} {good}: {e:?}"));
            }
            for bad in ["0s", "249ms", "5m1ms", "6m"].into_iter().chain(TOO_LONG) {
                refused(&set(path, bad), &poll);
            }
        }

        // capacity.growthWindow (the capacity is optional: set it whole).
        let growth = |w: &str| {
            with(|v| {
                v["spec"]["queue"]["scaling"]["capacity"] =
                    serde_json::json!({"signal": "queueDepth", "perReplica": 2500, "growthWindow": w})
            })
        };
        growth("720h").validate_cel().unwrap();
        growth("0s").validate_cel().unwrap();
        refused(&growth("3000000000h"), &at_most);
    }

    #[test]
    fn identical_steps_are_refused() {
        let steps = |s: serde_json::Value| {
            with(|v| {
                v["spec"]["queue"]["scaling"] = serde_json::json!({"scaleOut": {"steps": s}});
                v["spec"]["prometheus"] = serde_json::json!({"url": "http://prom:9090"});
            })
        };
        // Same signal, same threshold, same everything: the ordering rule's indexOf cannot tell
        // the two apart.
        let identical = steps(serde_json::json!([
            {"signal": "queueDepth", "above": 5000, "add": 2},
            {"signal": "queueDepth", "above": 5000, "add": 2},
        ]));
        refused(&identical, "two steps of the same signal have the same threshold");
        assert!(crate::autoscaler::Policy::try_from(&identical.spec.queue.scaling).is_err());
        refused(
            &steps(serde_json::json!([
                {"signal": "prometheus", "query": "up", "above": 1, "add": 2},
                {"signal": "prometheus", "query": "up", "above": 1, "add": 2},
            ])),
            "same threshold",
        );
        // The same threshold on different signals (or queries) is fine.
        let ok = steps(serde_json::json!([
            {"signal": "queueDepth", "above": 5000, "add": 2},
            {"signal": "activeUsers", "above": 5000, "add": 2},
            {"signal": "prometheus", "query": "up", "above": 5000, "add": 2},
            {"signal": "prometheus", "query": "down", "above": 5000, "add": 2},
        ]));
        ok.validate_cel().unwrap();
        crate::autoscaler::Policy::try_from(&ok.spec.queue.scaling).unwrap();
    }

    #[test]
    fn overlapping_scale_in_and_scale_out_bands_are_refused() {
        // The CEL rule and `Policy::validate` must agree on every case.
        let case = |step: serde_json::Value, when: serde_json::Value, capacity: bool| {
            let tev = with(|v| {
                let mut scaling =
                    serde_json::json!({"scaleOut": {"steps": [step]}, "scaleIn": {"when": when}});
                if capacity {
                    scaling["capacity"] = serde_json::json!({"signal": "queueDepth", "perReplica": 2500});
                }
                v["spec"]["reservation"]["scaling"] = scaling;
                v["spec"]["prometheus"] = serde_json::json!({"url": "http://prom:9090"});
            });
            let cel = tev.validate_cel();
            let rust = crate::autoscaler::Policy::try_from(&tev.spec.reservation.scaling);
            assert_eq!(cel.is_ok(), rust.is_ok(), "{cel:?} / {rust:?}");
            if let Err(e) = &cel {
                let text = format!("{e:?}");
                assert!(
                    text.contains("the bands overlap and replicas would flap"),
                    "{text}"
                );
                assert!(text.contains("scaleIn.when.below"), "{text}");
            }
            cel.is_ok()
        };
        let q = |above: f64| serde_json::json!({"signal": "queueDepth", "above": above, "add": 2});
        let below = |signal: &str, below: f64| serde_json::json!({"signal": signal, "below": below});
        assert!(
            !case(q(5000.0), below("queueDepth", 6000.0), false),
            "below above above"
        );
        assert!(!case(q(5000.0), below("queueDepth", 5000.5), false));
        // Equal is not an overlap: below 5,000 scales in, above 5,000 scales out.
        assert!(case(q(5000.0), below("queueDepth", 5000.0), false));
        assert!(
            case(q(5000.0), below("activeUsers", 6000.0), false),
            "another signal"
        );
        assert!(
            case(q(5000.0), below("queueDepth", 6000.0), true),
            "with a capacity scaleIn.when is not used"
        );
        let p = |query: &str, above: f64| serde_json::json!({"signal": "prometheus", "query": query, "above": above, "add": 1});
        let pin = |query: &str, below: f64| serde_json::json!({"signal": "prometheus", "query": query, "below": below});
        assert!(!case(p("up", 1.0), pin("up", 2.0), false), "the same query");
        assert!(
            case(p("up", 1.0), pin("down", 2.0), false),
            "another query is another signal"
        );
    }

    /// What `kubectl get tev [-o wide]`, `kubectl get tiketi` and `kubectl explain tev` show (the
    /// README's "Watching it" lists the same columns), and every column's path exists in the schema.
    #[test]
    fn kubectl_columns_category_and_explain() {
        let crd = crd();
        assert_eq!(crd.spec.names.categories, Some(vec!["tiketi".to_string()]));
        assert_eq!(crd.spec.names.short_names, Some(vec!["tev".to_string()]));
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        let explain = schema.description.as_deref().unwrap_or_default();
        assert!(explain.len() > 200 && explain.contains("-o wide"), "{explain}");
        let columns = version.additional_printer_columns.as_ref().unwrap();
        let names = |wide: bool| -> Vec<&str> {
            columns
                .iter()
                .filter(|c| (c.priority.unwrap_or(0) > 0) == wide)
                .map(|c| c.name.as_str())
                .collect()
        };
        assert_eq!(
            names(false),
            [
                "Phase",
                "Ready",
                "Signals",
                "On-Sale",
                "Queue",
                "Queue-Pods",
                "Reservation-Pods",
                "Age"
            ]
        );
        assert_eq!(
            names(true),
            [
                "Active",
                "Queue-Desired",
                "Reservation-Desired",
                "Queue-Last-Scale",
                "Reservation-Last-Scale"
            ]
        );
        for c in columns {
            if c.json_path.starts_with(".metadata.") {
                continue;
            }
            // `.status.conditions[?(@.type=="Ready")].status` → status, conditions, status.
            let path = c
                .json_path
                .split('[')
                .next()
                .unwrap_or_default()
                .trim_start_matches('.');
            let mut node = schema;
            for part in path.split('.') {
                node = node
                    .properties
                    .as_ref()
                    .and_then(|p| p.get(part))
                    .unwrap_or_else(|| {
                        panic!("column {} names {}: no {part} in the schema", c.name, c.json_path)
                    });
            }
            assert!(
                c.description.is_some() || c.name == "Age",
                "column {} has no description",
                c.name
            );
        }
    }

    #[test]
    fn durations_parse_like_go() {
        for (s, secs) in [("180s", 180), ("5m", 300), ("1h30m", 5400), ("2s", 2)] {
            assert_eq!(parse_duration("x", s).unwrap().as_secs(), secs);
        }
        assert!(parse_duration("x", "soon").is_err());
    }
}
