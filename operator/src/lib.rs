//! tiketi-operator: the TicketingEvent CRD, the reconciler that deploys an event's services, the
//! schedule (pre-warm, sale, wind-down) and the queue-depth autoscaler.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod autoscaler;
pub mod children;
pub mod crd;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod runtime;
pub mod scaler;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod status;
pub mod supervise;

/// Server-side-apply field managers, one per writer (see `status` for who owns which field).
pub mod field_managers {
    /// The reconciler: children (without `spec.replicas` once created) and its status fields.
    pub const OPERATOR: &str = "tiketi-operator";
    /// The scaler: `spec.replicas` of the component Deployments, nothing else.
    pub const SCALER: &str = "tiketi-scaler";
    /// The autoscaler's status fields (signals, SignalsHealthy).
    pub const AUTOSCALER: &str = "tiketi-autoscaler";
}
