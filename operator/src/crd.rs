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
    /// Closed and every component runs exactly minReplicas. A duration such as 30m.
    #[serde(default = "default_wind_down")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
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

// === inventory ===

/// Seated sections and general-admission areas. Section and area names are unique across both.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = inventory_bound_rule(),
    validation = Rule::new("self.sections.all(s, !self.generalAdmission.exists(g, g.name == s.name))")
        .message("spec.inventory: a name is used both by a section and by a general-admission area"),
)]
pub struct InventorySpec {
    /// Numbered seats: rows × seatsPerRow per section.
    #[serde(default)]
    #[schemars(length(max = 500))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sections: Vec<SeatedSectionSpec>,

    /// Standing areas sold by capacity.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub general_admission: Vec<GeneralAdmissionSpec>,
}

/// The CEL rule bounding one event's inventory by [`MAX_SEATS_PER_EVENT`].
pub fn inventory_bound_rule() -> Rule {
    Rule::new(format!(
        "self.sections.map(s, s.rows * s.seatsPerRow).sum() + self.generalAdmission.map(g, g.capacity).sum() \
         <= {MAX_SEATS_PER_EVENT} && size(self.sections) + size(self.generalAdmission) > 0"
    ))
    .message(Message::Message(format!(
        "spec.inventory must hold between 1 and {MAX_SEATS_PER_EVENT} places (sum of rows × seatsPerRow and capacity)"
    )))
}

/// A section of numbered seats.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeatedSectionSpec {
    /// Section name, part of every seat id (<section>-<row>-<seat>): 1-32 ASCII letters, digits or '_'.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,32}$"), length(max = 32))]
    pub name: String,
    /// Number of rows (1-10000).
    #[schemars(range(min = 1, max = 10000))]
    #[schemars(with = "i32")]
    pub rows: u32,
    /// Seats in each row (1-10000).
    #[schemars(range(min = 1, max = 10000))]
    #[schemars(with = "i32")]
    pub seats_per_row: u32,
    /// Price tier label shown with the seat (free text, e.g. vip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub price_tier: Option<String>,
}

/// A general-admission (standing) area.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeneralAdmissionSpec {
    /// Area name: 1-32 ASCII letters, digits or '_'.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,32}$"), length(max = 32))]
    pub name: String,
    /// Places in the area (1-200000).
    #[schemars(range(min = 1, max = 200000))]
    #[schemars(with = "i32")]
    pub capacity: u32,
    /// Price tier label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub price_tier: Option<String>,
}

// === pre-warm ===

/// Pre-warm: replicas to reach before the sale opens, ramped in steps across leadTime.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmSpec {
    /// How long before onSaleAt the ramp starts (phase PreWarming), e.g. 30m.
    #[serde(default = "default_lead_time")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub lead_time: String,
    /// Number of equal steps the ramp takes from minReplicas to the targets (1-20). Step k of n
    /// starts at onSaleAt - leadTime + (k-1)·leadTime/n, so the last step leaves leadTime/n for
    /// pods to become Ready before the sale opens.
    #[serde(default = "default_ramp_steps")]
    #[schemars(range(min = 1, max = 20))]
    #[schemars(with = "i32")]
    pub ramp_steps: u32,
    /// How long after onSaleAt the pre-warm replicas remain the floor the autoscaler may not go
    /// below, e.g. 15m. After it the floor is minReplicas again.
    #[serde(default = "default_hold_for")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub hold_for: String,
    /// How much the crowd is expected to grow beyond the pre-queue (1-100, default 1.5). While
    /// PreWarming, a component with a `scaling.capacity` keeps at least the replicas that
    /// `preQueueDepth × expectedGrowth` needs (for a component scaled on activeUsers, at most
    /// `queue.admission.maxActive` of that crowd), re-evaluated every poll as the pre-queue grows.
    #[serde(default = "default_expected_growth")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub expected_growth: f64,
    /// How long before onSaleAt the expected growth is provisioned, e.g. 5m (default). Before it
    /// the crowd-sized floor is what the pre-queue itself needs (those users are served now);
    /// from it, `preQueueDepth × expectedGrowth`: the extra replicas exist only for the last
    /// minutes, long enough for nodes and pods to become Ready, instead of the whole pre-warm.
    #[serde(default = "default_growth_lead")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub growth_lead: String,
    /// Queue replicas at onSaleAt.
    pub queue: PrewarmTarget,
    /// Reservation replicas at onSaleAt.
    pub reservation: PrewarmTarget,
}

fn default_lead_time() -> String {
    "30m".into()
}
fn default_ramp_steps() -> u32 {
    3
}
fn default_hold_for() -> String {
    "15m".into()
}
fn default_expected_growth() -> f64 {
    1.5
}
fn default_growth_lead() -> String {
    "5m".into()
}

/// Replicas one component reaches by the end of pre-warm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmTarget {
    /// Replicas at onSaleAt (at least 1, at most the component's maxReplicas).
    #[schemars(range(min = 1))]
    pub replicas: i32,
}

// === components ===

/// The waiting-room Deployment and its admission settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("spec.queue.minReplicas must not exceed spec.queue.maxReplicas").field_path(".minReplicas"))]
pub struct QueueSpec {
    /// Container image of tiketi-queue.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never). Defaults to the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory requests and limits of each pod. Defaults: requests cpu 250m, memory 128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Replicas never go below this (1-1000).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Replicas never go above this (1-1000).
    #[serde(default = "default_queue_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// How users move from the queue to the active set.
    #[serde(default)]
    pub admission: AdmissionSpec,
    /// Proxies in front of the waiting room that append to `X-Forwarded-For` (1 behind an AWS
    /// ALB; 0-10, default 0 = the TCP peer is the client). The per-address rate limit reads the
    /// entry that many hops from the right; client-written entries are never trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub trusted_proxy_hops: Option<u32>,
    /// The step-scaling policy of the queue Deployment.
    #[serde(default)]
    pub scaling: ScalingPolicy,
}

/// Admission from the waiting room.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionSpec {
    /// Users admitted per second at most (1-100000).
    #[serde(default = "default_rate")]
    #[schemars(range(min = 1, max = 100000))]
    #[schemars(with = "i32")]
    pub rate_per_second: u32,
    /// Users admitted at once at most (1-1000000).
    #[serde(default = "default_max_active")]
    #[schemars(range(min = 1, max = 1000000))]
    #[schemars(with = "i32")]
    pub max_active: u32,
    /// How long an admission (and its token) lasts, e.g. 10m.
    #[serde(default = "default_token_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub token_ttl: String,
    /// A waiting user who has neither polled nor streamed for this long loses their place, e.g. 2m.
    #[serde(default = "default_heartbeat")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub heartbeat_timeout: String,
}

impl Default for AdmissionSpec {
    fn default() -> Self {
        Self {
            rate_per_second: default_rate(),
            max_active: default_max_active(),
            token_ttl: default_token_ttl(),
            heartbeat_timeout: default_heartbeat(),
        }
    }
}

fn default_min_replicas() -> i32 {
    2
}
fn default_queue_max() -> i32 {
    100
}
fn default_reservation_max() -> i32 {
    200
}
fn default_rate() -> u32 {
    50
}
fn default_max_active() -> u32 {
    2000
}
fn default_token_ttl() -> String {
    "10m".into()
}
fn default_heartbeat() -> String {
    "2m".into()
}
fn default_hold_ttl() -> String {
    "5m".into()
}
fn default_max_seats_per_user() -> u32 {
    4
}

/// The reservation Deployment and its hold settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("spec.reservation.minReplicas must not exceed spec.reservation.maxReplicas").field_path(".minReplicas"))]
pub struct ReservationSpec {
    /// Container image of tiketi-reservation.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory of each pod. Defaults: requests cpu 250m, memory 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Replicas never go below this (1-1000).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Replicas never go above this (1-1000).
    #[serde(default = "default_reservation_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// How long a hold keeps its seats before they are free again, e.g. 5m.
    #[serde(default = "default_hold_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub hold_ttl: String,
    /// Seats one user may hold at once (1-50).
    #[serde(default = "default_max_seats_per_user")]
    #[schemars(range(min = 1, max = 50))]
    #[schemars(with = "i32")]
    pub max_seats_per_user: u32,
    /// The step-scaling policy of the reservation Deployment.
    #[serde(default)]
    pub scaling: ScalingPolicy,
}

/// Container image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Which part of the sale a component is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Component {
    Queue,
    Reservation,
}

impl Component {
    pub const ALL: [Component; 2] = [Component::Queue, Component::Reservation];

    /// Lower-case name, used in child names, labels, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Reservation => "reservation",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === scaling policy ===

/// Step scaling in the shape of the source documents' alarms, with their numbers as defaults:
/// +2 replicas above 5000 waiting users, +5 above 20000, -1 below 1000 after 5 minutes, cooldowns
/// 180 s out and 600 s in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.capacity) || !has(self.scaleOut) || size(self.scaleOut.steps) > 0")
    .message("scaleOut.steps may be empty only when a capacity is set: nothing else would scale out"))]
pub struct ScalingPolicy {
    /// How often signals are read, e.g. 2s.
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub poll_interval: String,
    /// When and by how much to add replicas.
    #[serde(default)]
    pub scale_out: ScaleOut,
    /// When and by how much to remove replicas.
    #[serde(default)]
    pub scale_in: ScaleIn,
    /// What to hold when signals are stale or missing.
    #[serde(default)]
    pub fallback: Fallback,
    /// What one Ready replica serves. When set, the autoscaler scales to the need
    /// `ceil(signal × (1 + headroomPercent/100) / perReplica)`: straight to it on the way out (no
    /// cooldown: the need is measured, not guessed), steps add at most one step past it, and
    /// scale-in goes down to the highest need of the last `scaleIn.stabilizationWindow` (as many
    /// replicas at once as that allows, after `scaleIn.cooldown`); `scaleIn.when`/`remove` are then
    /// not used. Unset: the step rules alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// What one Ready replica of a component serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.signal == 'prometheus' ? has(self.query) : !has(self.query)")
    .message("query is required when signal is prometheus, and only then"))]
pub struct Capacity {
    /// The signal one replica serves a share of: queueDepth (waiting users, for the queue),
    /// activeUsers (admitted users, for reservation), preQueueDepth or prometheus.
    pub signal: SignalKind,
    /// The PromQL instant query when signal is prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub query: Option<String>,
    /// Signal units one Ready replica serves, e.g. 2500 waiting users (at least 0.001).
    #[schemars(range(min = 0.001))]
    pub per_replica: f64,
    /// Spare capacity on top of the signal, in percent (0-400, default 20).
    #[serde(default = "default_headroom_percent")]
    #[schemars(range(min = 0, max = 400))]
    #[schemars(with = "i32")]
    pub headroom_percent: u32,
    /// The headroom covers growth only: the spare added on top of the signal is at most how much
    /// the signal rose within this window (default 2m: twice the ~60 s a new pod takes to become
    /// Ready on warm nodes, so a slower start or a new node is still covered). A surge gets its full headroom; a flat or draining signal is sized at its value,
    /// and the stabilization window keeps replicas while it drains. 0s: always the full headroom.
    #[serde(default = "default_growth_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub growth_window: String,
}

fn default_growth_window() -> String {
    "2m".into()
}

impl Capacity {
    pub fn signal(&self) -> Signal {
        resolve_signal(self.signal, self.query.as_ref())
    }
}

fn default_headroom_percent() -> u32 {
    20
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            scale_out: ScaleOut::default(),
            scale_in: ScaleIn::default(),
            fallback: Fallback::default(),
            capacity: None,
        }
    }
}

fn default_poll_interval() -> String {
    "2s".into()
}

/// Scale-out: the highest matching step applies, no sooner than cooldown after the last scale-out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleOut {
    /// Steps; for each signal (and query) their `above` thresholds must be strictly increasing in
    /// list order. The highest matching step applies. Empty (`[]`) only with a capacity.
    #[serde(default = "default_steps")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new(
        "self.all(a, self.all(b, !(a.signal == b.signal && (has(a.query) ? a.query : '') == (has(b.query) ? b.query : '') \
         && self.indexOf(a) < self.indexOf(b)) || a.above < b.above))"
    ).message("scaleOut.steps: thresholds (above) of the same signal must be strictly increasing in list order"))]
    pub steps: Vec<ScaleOutStep>,
    /// Minimum time between two scale-outs, e.g. 180s.
    #[serde(default = "default_scale_out_cooldown")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub cooldown: String,
    /// At most this many replicas added by one decision. Unset: no cap (2 → 40 in one step is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step: Option<i32>,
}

impl Default for ScaleOut {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            cooldown: default_scale_out_cooldown(),
            max_step: None,
        }
    }
}

fn default_steps() -> Vec<ScaleOutStep> {
    vec![
        ScaleOutStep {
            signal: SignalKind::QueueDepth,
            query: None,
            above: 5000.0,
            add: 2,
            add_percent: None,
        },
        ScaleOutStep {
            signal: SignalKind::QueueDepth,
            query: None,
            above: 20000.0,
            add: 5,
            add_percent: None,
        },
    ]
}
fn default_scale_out_cooldown() -> String {
    "180s".into()
}

/// The signal a step or scale-in rule reads.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// Users waiting in the event's queue (ZCARD of tiketi:{<event>}:queue).
    #[serde(rename = "queueDepth")]
    QueueDepth,
    /// Users in the event's pre-queue before the on-sale (ZCARD of tiketi:{<event>}:prequeue).
    #[serde(rename = "preQueueDepth")]
    PreQueueDepth,
    /// Admitted users whose admission has not expired.
    #[serde(rename = "activeUsers")]
    ActiveUsers,
    /// An instant PromQL query (field `query`) through spec.prometheus.url.
    #[serde(rename = "prometheus")]
    Prometheus,
}

/// A signal resolved from `signal` and `query`: what the autoscaler actually reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    QueueDepth,
    PreQueueDepth,
    ActiveUsers,
    Prometheus(String),
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueDepth => f.write_str("queueDepth"),
            Self::PreQueueDepth => f.write_str("preQueueDepth"),
            Self::ActiveUsers => f.write_str("activeUsers"),
            Self::Prometheus(q) => write!(f, "prometheus({q})"),
        }
    }
}

fn resolve_signal(kind: SignalKind, query: Option<&String>) -> Signal {
    match kind {
        SignalKind::QueueDepth => Signal::QueueDepth,
        SignalKind::PreQueueDepth => Signal::PreQueueDepth,
        SignalKind::ActiveUsers => Signal::ActiveUsers,
        SignalKind::Prometheus => Signal::Prometheus(query.cloned().unwrap_or_default()),
    }
}

/// One scale-out step: when `signal` is above `above`, add replicas.
///
/// A Prometheus step names its query in a field of its own, `{signal: prometheus, query:
/// "<promql>", above: 0.2, add: 2}`: a structural CRD schema cannot hold a value that is either a
/// string or an object (docs/contracts.md, "Scaling policy syntax").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.signal == 'prometheus' ? has(self.query) : !has(self.query)")
        .message("query is required when signal is prometheus, and only then"),
    validation = Rule::new("self.add > 0 || has(self.addPercent)")
        .message("a step must add replicas: set add > 0 or addPercent"),
)]
pub struct ScaleOutStep {
    /// The signal compared with `above`: queueDepth, activeUsers or prometheus.
    pub signal: SignalKind,
    /// The PromQL instant query when signal is prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub query: Option<String>,
    /// The step matches when the signal is strictly above this value (>= 0).
    #[schemars(range(min = 0.0))]
    pub above: f64,
    /// Replicas to add when this step matches (>= 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub add: i32,
    /// Also add this percentage of the current replicas (rounded up); the larger of add and
    /// addPercent applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub add_percent: Option<i32>,
}

impl ScaleOutStep {
    pub fn signal(&self) -> Signal {
        resolve_signal(self.signal, self.query.as_ref())
    }
}

/// Scale-in: remove replicas once the signal stayed below a threshold for a whole window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleIn {
    /// The condition that must hold for the whole stabilizationWindow.
    #[serde(default)]
    pub when: ScaleInWhen,
    /// Replicas removed by one scale-in (1-1000).
    #[serde(default = "default_remove")]
    #[schemars(range(min = 1, max = 1000))]
    pub remove: i32,
    /// How long the signal must stay below the threshold, e.g. 5m.
    #[serde(default = "default_stabilization")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub stabilization_window: String,
    /// Minimum time after the last scaling of either direction, e.g. 600s.
    #[serde(default = "default_scale_in_cooldown")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub cooldown: String,
    /// Allow scale-in during the sale while users still wait in the queue (default false: people
    /// in line are about to be admitted and will need the capacity).
    #[serde(default)]
    pub allow_while_queued: bool,
}

impl Default for ScaleIn {
    fn default() -> Self {
        Self {
            when: ScaleInWhen::default(),
            remove: default_remove(),
            stabilization_window: default_stabilization(),
            cooldown: default_scale_in_cooldown(),
            allow_while_queued: false,
        }
    }
}

fn default_remove() -> i32 {
    1
}
fn default_stabilization() -> String {
    "5m".into()
}
fn default_scale_in_cooldown() -> String {
    "600s".into()
}

/// The scale-in condition: `signal` below `below`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.signal == 'prometheus' ? has(self.query) : !has(self.query)")
    .message("query is required when signal is prometheus, and only then"))]
pub struct ScaleInWhen {
    /// The signal compared with `below`: queueDepth, activeUsers or prometheus.
    #[serde(default = "default_signal")]
    pub signal: SignalKind,
    /// The PromQL instant query when signal is prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub query: Option<String>,
    /// Scale in only while the signal is strictly below this value (>= 0).
    #[serde(default = "default_below")]
    #[schemars(range(min = 0.0))]
    pub below: f64,
}

impl Default for ScaleInWhen {
    fn default() -> Self {
        Self {
            signal: default_signal(),
            query: None,
            below: default_below(),
        }
    }
}

impl ScaleInWhen {
    pub fn signal(&self) -> Signal {
        resolve_signal(self.signal, self.query.as_ref())
    }
}

fn default_signal() -> SignalKind {
    SignalKind::QueueDepth
}
fn default_below() -> f64 {
    1000.0
}

/// Fail-safe when signals are stale or missing.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Signals older than this count as missing, e.g. 30s.
    #[serde(default = "default_after_stale")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub after_stale: String,
    /// Hold at least this many replicas (clamped to maxReplicas) while signals are missing; never
    /// lowers replicas.
    #[serde(default = "default_fallback_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
}

impl Default for Fallback {
    fn default() -> Self {
        Self {
            after_stale: default_after_stale(),
            replicas: default_fallback_replicas(),
        }
    }
}

fn default_after_stale() -> String {
    "30s".into()
}
fn default_fallback_replicas() -> i32 {
    10
}

// === connections ===

/// A key in a Secret in the event's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret (same namespace as the TicketingEvent).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Redis both services use.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the Redis URL (redis:// or rediss:// with credentials), e.g.
    /// {name: tiketi-redis, key: url}. Passed to the pods as TIKETI_REDIS_URL.
    pub url_secret_ref: SecretKeySelector,
    /// Connect with TLS and verify the server's certificate (a redis:// URL is upgraded to
    /// rediss://). ElastiCache with in-transit encryption: true.
    #[serde(default)]
    pub tls: bool,
    /// Redis Cluster mode: the URL is any node (ElastiCache: the configuration endpoint) and the
    /// services and the operator use a cluster client (all keys of an event share one hash tag,
    /// so every script and pipeline stays on one slot).
    #[serde(default)]
    pub cluster_mode: bool,
}

/// The reservation database.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret with the PostgreSQL URLs (user and password inside them): key `url` (writer
    /// endpoint, required) and key `readUrl` (reader endpoint, optional; the reservation service
    /// uses it for lag-tolerant reads).
    pub secret_ref: SecretRef,
}

/// A Secret in the event's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Signing and verifying keys.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret with key `jwtSecret` (HS256 key verifying users' bearer JWTs) and key
    /// `admissionSecret` (HS256 key signing admission tokens, shared by queue and reservation).
    pub secret_ref: SecretRef,
}

/// Prometheus for signals of kind prometheus.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: String,
}

/// Secret key names the operator reads (documented in the README).
pub mod secret_keys {
    pub const DATABASE_URL: &str = "url";
    pub const DATABASE_READ_URL: &str = "readUrl";
    pub const JWT_SECRET: &str = "jwtSecret";
    pub const ADMISSION_SECRET: &str = "admissionSecret";
}

// === status ===

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TicketingEventStatus {
    /// Schedule phase: Scheduled, PreWarming, OnSale, SoldOut, Closing, Closed, or Failed (the spec
    /// is invalid and no earlier spec was ever applied; see condition Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The spec of the last generation that was valid and applied. While a later edit (or a
    /// deleted Secret) makes the spec invalid, this one stays in force — schedule, replicas and
    /// autoscaling — and condition InvalidSpec=True says what is wrong: a live sale is never frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub last_good_spec: Option<serde_json::Value>,
    /// The metadata.generation of lastGoodSpec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_generation: Option<i64>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, InvalidSpec, SignalsHealthy (Kubernetes API conventions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,
    /// The next schedule boundary (phase change or ramp step); the operator wakes up then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition_at: Option<DateTime<Utc>>,
    /// When the event was found sold out (moves the phase to SoldOut early).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sold_out_at: Option<DateTime<Utc>>,
    /// Users waiting in the queue at signalsObservedAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    /// Admitted users whose admission had not expired at signalsObservedAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_users: Option<i64>,
    /// Users in the pre-queue (joined before the on-sale) at signalsObservedAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_queue_depth: Option<i64>,
    /// When the signals were last read successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals_observed_at: Option<DateTime<Utc>>,
    /// The queue Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<ComponentStatus>,
    /// The reservation Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ComponentStatus>,
    /// The last scaling decisions, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub recent_decisions: Option<Vec<ScalingDecisionRecord>>,
}

impl TicketingEventStatus {
    pub fn component(&self, c: Component) -> Option<&ComponentStatus> {
        match c {
            Component::Queue => self.queue.as_ref(),
            Component::Reservation => self.reservation.as_ref(),
        }
    }
}

/// Schedule phase of an event.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Scheduled,
    PreWarming,
    OnSale,
    SoldOut,
    Closing,
    Closed,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "Scheduled",
            Self::PreWarming => "PreWarming",
            Self::OnSale => "OnSale",
            Self::SoldOut => "SoldOut",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
            Self::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replicas and scaling history of one component.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Replicas the operator last asked for (schedule floor or autoscaler decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// "ready/desired", for kubectl get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<String>,
    /// When replicas last changed (either direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<DateTime<Utc>>,
    /// When a scale-out step last added replicas (the scale-out cooldown runs from here; pre-warm
    /// steps and the fallback do not count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_out_time: Option<DateTime<Utc>>,
    /// When the scale-in rule last removed replicas (the scale-in cooldown runs from the later of
    /// this and lastScaleOutTime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_in_time: Option<DateTime<Utc>>,
    /// Why replicas last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub last_scale_reason: Option<String>,
    /// Stabilization evidence. Without a capacity: since when the scale-in signal has been
    /// continuously below its threshold (absent while it is not). With a capacity: since when the
    /// need has been read without the signals turning unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_since: Option<DateTime<Utc>>,
    /// Replicas the capacity rule needs now (`scaling.capacity`), before the floor and max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need: Option<i32>,
    /// The pre-warm floor sized from the crowd while PreWarming (preQueueDepth × expectedGrowth,
    /// or the admission cap for a component scaled on activeUsers); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm_replicas: Option<i32>,
    /// The highest needs of the stabilization window, oldest first, each with when it was seen
    /// (a decreasing staircase, at most 16 marks): scale-in goes no lower than the highest one
    /// inside the window, and a restarted operator or a new leader keeps the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub need_history: Option<Vec<NeedMark>>,
}

/// One mark of the need history.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NeedMark {
    /// When the need was seen.
    pub at: DateTime<Utc>,
    /// Replicas needed then.
    #[schemars(range(min = 0))]
    pub replicas: i32,
}

/// One scaling decision, as shown in status.recentDecisions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecisionRecord {
    /// When the decision was applied.
    pub time: DateTime<Utc>,
    /// queue or reservation.
    #[schemars(length(max = 32))]
    pub component: String,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, e.g. "queueDepth 8000 > 5000".
    #[schemars(length(max = 1024))]
    pub reason: String,
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
pub const MAX_SPEC_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Written the way the schema's CEL rules and error messages say it.
pub const MAX_SPEC_DURATION_TEXT: &str = "720h";

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

    pub(crate) const EXAMPLE: &str = r#"
apiVersion: tiketi.gg/v1alpha1
kind: TicketingEvent
metadata: {name: iu-2026-seoul, namespace: tickets}
spec:
  onSaleAt: 2026-12-01T11:00:00+09:00
  saleEndsAt: 2026-12-01T14:00:00+09:00
  inventory:
    sections: [{name: A, rows: 20, seatsPerRow: 30, priceTier: vip}]
    generalAdmission: [{name: floor, capacity: 500}]
  prewarm: {leadTime: 30m, rampSteps: 3, queue: {replicas: 10}, reservation: {replicas: 20}}
  queue: {image: "tiketi/queue:0.1", minReplicas: 2, maxReplicas: 100}
  reservation: {image: "tiketi/reservation:0.1", minReplicas: 2, maxReplicas: 200}
  redis: {urlSecretRef: {name: tiketi-redis, key: url}}
  database: {secretRef: {name: tiketi-db}}
  auth: {secretRef: {name: tiketi-auth}}
"#;

    fn example() -> TicketingEvent {
        serde_yaml::from_str(EXAMPLE).unwrap()
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
        let text = include_str!("../../manifests/examples/iu-2026-seoul.yaml");
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

    #[test]
    fn durations_parse_like_go() {
        for (s, secs) in [("180s", 180), ("5m", 300), ("1h30m", 5400), ("2s", 2)] {
            assert_eq!(parse_duration("x", s).unwrap().as_secs(), secs);
        }
        assert!(parse_duration("x", "soon").is_err());
    }
}
