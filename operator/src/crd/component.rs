//! The two components (queue, reservation), their shared settings and the pre-warm targets.

#[allow(unused_imports)]
use super::*;

// === pre-warm ===

/// The most steps a pre-warm ramp takes (`spec.prewarm.rampSteps`).
pub const MAX_RAMP_STEPS: u32 = 20;

/// Pre-warm: replicas to reach before the sale opens, ramped in steps across leadTime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrewarmSpec {
    /// How long before onSaleAt the ramp starts (phase PreWarming), e.g. 30m (at most 720h).
    #[serde(default = "default_lead_time")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
    pub lead_time: String,
    /// Number of equal steps the ramp takes from minReplicas to the targets (1-20). Step k of n
    /// starts at onSaleAt - leadTime + (k-1)·leadTime/n, so the last step leaves leadTime/n for
    /// pods to become Ready before the sale opens.
    #[serde(default = "default_ramp_steps")]
    #[schemars(range(min = 1, max = MAX_RAMP_STEPS))]
    #[schemars(with = "i32")]
    pub ramp_steps: u32,
    /// How long after onSaleAt the pre-warm replicas remain the floor the autoscaler may not go
    /// below, e.g. 15m (at most 720h). After it the floor is minReplicas again.
    #[serde(default = "default_hold_for")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
    pub hold_for: String,
    /// How much the crowd is expected to grow beyond the pre-queue (1-100, default 1.5). While
    /// PreWarming, a component with a `scaling.capacity` keeps at least the replicas that
    /// `preQueueDepth × expectedGrowth` needs (for a component scaled on activeUsers, at most
    /// `queue.admission.maxActive` of that crowd), re-evaluated every poll as the pre-queue grows.
    #[serde(default = "default_expected_growth")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub expected_growth: f64,
    /// How long before onSaleAt the expected growth is provisioned, e.g. 5m (default; at most
    /// 720h). Before it the crowd-sized floor is what the pre-queue itself needs (those users are served now);
    /// from it, `preQueueDepth × expectedGrowth`: the extra replicas exist only for the last
    /// minutes, long enough for nodes and pods to become Ready, instead of the whole pre-warm.
    #[serde(default = "default_growth_lead")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
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
    /// How long an admission (and its token) lasts, e.g. 10m (1s to 720h).
    #[serde(default = "default_token_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(Some(MIN_SERVICE_DURATION_TEXT), MAX_SPEC_DURATION_TEXT))]
    pub token_ttl: String,
    /// A waiting user who has neither polled nor streamed for this long loses their place, e.g. 2m
    /// (1s to 720h).
    #[serde(default = "default_heartbeat")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(Some(MIN_SERVICE_DURATION_TEXT), MAX_SPEC_DURATION_TEXT))]
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
    /// How long a hold keeps its seats before they are free again, e.g. 5m (1s to 720h).
    #[serde(default = "default_hold_ttl")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(Some(MIN_SERVICE_DURATION_TEXT), MAX_SPEC_DURATION_TEXT))]
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
