//! The pure scaling policy: (policy, floor, replicas, signals, last scale times, now) → decision.
//!
//! No Kubernetes, Redis or clock in sight: the operator's autoscaler loop reads the signals
//! ([`crate::signals`]), calls [`decide`] per component, and applies and records the result;
//! the simulator ([`crate::simulate`]) calls the very same function on a replayed trace.

mod decide;
pub mod format;
mod from_crd;
pub mod plan;
mod policy;

pub use decide::{
    Decision, Direction, Inputs, MAX_NEED_MARKS, Memory, NeedMark, Reason, Sample, Samples, SignalFailure,
    SignalHealth, decide, decide_quiet,
};
pub use from_crd::PolicyError;
pub use policy::{Capacity, Fallback, Policy, ScaleIn, ScaleOut, Signal, Step};

#[cfg(test)]
mod tests;
