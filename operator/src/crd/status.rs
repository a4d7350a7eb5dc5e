//! The status the operator and the autoscaler write.

#[allow(unused_imports)]
use super::*;

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
    /// When the signal values shown here were read. Status is written only when something in it
    /// changes, so with steady signals this time stays where it was: an old value is not a dead
    /// autoscaler (its liveness is the operator's tick metric and Lease).
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
