//! The scaling policy of a component: capacity, scale-out steps, scale-in, fallback.

#[allow(unused_imports)]
use super::*;

// === scaling policy ===

/// Step scaling in the shape of the source documents' alarms, with their numbers as defaults:
/// +2 replicas above 5000 waiting users, +5 above 20000, -1 below 1000 after 5 minutes, cooldowns
/// 180 s out and 600 s in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.capacity) || !has(self.scaleOut) || size(self.scaleOut.steps) > 0")
        .message("scaleOut.steps may be empty only when a capacity is set: nothing else would scale out"),
    validation = Rule::new(
        "has(self.capacity) || !has(self.scaleOut) || !has(self.scaleIn) || !has(self.scaleIn.when) \
         || self.scaleOut.steps.all(s, !(s.signal == self.scaleIn.when.signal \
         && (has(s.query) ? s.query : '') == (has(self.scaleIn.when.query) ? self.scaleIn.when.query : '')) \
         || self.scaleIn.when.below <= s.above)"
    )
    .message(
        "scaleIn.when.below is above a scaleOut.steps threshold (above) of the same signal: \
         the bands overlap and replicas would flap (set below <= above, or a capacity)"
    )
    .field_path(".scaleIn.when.below"),
)]
pub struct ScalingPolicy {
    /// How often signals are read, e.g. 2s (250ms to 5m).
    #[serde(default = "default_poll_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(Some(MIN_POLL_INTERVAL_TEXT), MAX_POLL_INTERVAL_TEXT))]
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
    /// At most 720h.
    #[serde(default = "default_growth_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
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
    /// list order, and without a capacity at least `scaleIn.when.below` of that signal. The highest
    /// matching step applies. Empty (`[]`) only with a capacity.
    #[serde(default = "default_steps")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new(
        "self.all(a, self.all(b, !(a.signal == b.signal && (has(a.query) ? a.query : '') == (has(b.query) ? b.query : '') \
         && self.indexOf(a) < self.indexOf(b)) || a.above < b.above))"
    ).message("scaleOut.steps: thresholds (above) of the same signal must be strictly increasing in list order"))]
    #[x_kube(validation = Rule::new(
        "self.all(a, self.exists_one(b, b.signal == a.signal \
         && (has(b.query) ? b.query : '') == (has(a.query) ? a.query : '') && b.above == a.above))"
    ).message("scaleOut.steps: two steps of the same signal have the same threshold (above): each threshold may appear once"))]
    pub steps: Vec<ScaleOutStep>,
    /// Minimum time between two scale-outs, e.g. 180s (at most 720h).
    #[serde(default = "default_scale_out_cooldown")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleIn {
    /// The condition that must hold for the whole stabilizationWindow.
    #[serde(default)]
    pub when: ScaleInWhen,
    /// Replicas removed by one scale-in (1-1000).
    #[serde(default = "default_remove")]
    #[schemars(range(min = 1, max = 1000))]
    pub remove: i32,
    /// How long the signal must stay below the threshold, e.g. 5m (at most 720h).
    #[serde(default = "default_stabilization")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
    pub stabilization_window: String,
    /// Minimum time after the last scaling of either direction, e.g. 600s (at most 720h).
    #[serde(default = "default_scale_in_cooldown")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
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
    /// Scale in only while the signal is strictly below this value (>= 0). Without a capacity, at
    /// most the lowest scaleOut.steps threshold (above) of the same signal, else replicas would flap.
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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Signals older than this count as missing, e.g. 30s (at most 720h).
    #[serde(default = "default_after_stale")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"), length(max = MAX_DURATION_LEN))]
    #[x_kube(validation = duration_rule(None, MAX_SPEC_DURATION_TEXT))]
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
