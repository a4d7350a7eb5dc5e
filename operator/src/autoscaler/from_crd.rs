//! Conversions between the TicketingEvent's types (`crate::crd`) and the autoscaler's plain
//! values: the `scaling:` block into a [`Policy`], and a component's status into [`Memory`] and back.
//!
//! This is the only place the autoscaler knows the CRD exists; `decide` never sees it.

use chrono::{DateTime, Utc};

use super::decide::{MAX_NEED_MARKS, NeedMark};
use super::{Capacity, Fallback, Memory, Policy, ScaleIn, ScaleOut, Signal, Step};
use crate::crd;

/// `pollInterval` bounds: faster than 250 ms costs Redis round trips for nothing (the signal
/// read itself has a 1 s timeout), slower than 5 min is no longer reacting to a sale.
pub const MIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
pub const MAX_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// A `scaling:` block that passed the schema but cannot be used (a duration out of bounds, a
/// negative number the schema should have stopped, steps that repeat or overlap scale-in).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Duration(#[from] crd::DurationError),
    #[error("{field} must not be negative (got {value})")]
    Negative { field: &'static str, value: i32 },
    #[error("invalid scaling policy: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl PolicyError {
    /// The message with the field path from the spec's root, e.g.
    /// `spec.queue.scaling.pollInterval: "0s" is shorter than the minimum 250ms`.
    pub fn in_component(&self, c: crd::Component) -> String {
        match self {
            Self::Invalid(problems) => format!("spec.{c}.scaling: {}", problems.join("; ")),
            Self::Duration(_) => format!("spec.{c}.{self}"),
            Self::Negative { .. } => format!("spec.{c}.{self}"),
        }
    }

    /// Bounded reason, for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Duration(_) => "InvalidDuration",
            Self::Negative { .. } => "NegativeNumber",
            Self::Invalid(_) => "InvalidScalingPolicy",
        }
    }
}

fn non_negative(field: &'static str, value: i32) -> Result<u32, PolicyError> {
    u32::try_from(value).map_err(|_| PolicyError::Negative { field, value })
}

impl From<crd::Signal> for Signal {
    fn from(s: crd::Signal) -> Self {
        match s {
            crd::Signal::QueueDepth => Self::QueueDepth,
            crd::Signal::PreQueueDepth => Self::PreQueueDepth,
            crd::Signal::ActiveUsers => Self::ActiveUsers,
            crd::Signal::Prometheus(query) => Self::Prometheus(query),
        }
    }
}

impl TryFrom<&crd::ScalingPolicy> for Policy {
    type Error = PolicyError;

    fn try_from(p: &crd::ScalingPolicy) -> Result<Self, PolicyError> {
        let crd::ScalingPolicy {
            poll_interval,
            scale_out,
            scale_in,
            fallback,
            capacity,
        } = p;
        let crd::ScaleOut {
            steps,
            cooldown: out_cooldown,
            max_step,
        } = scale_out;
        let crd::ScaleIn {
            when,
            remove,
            stabilization_window,
            cooldown: in_cooldown,
            allow_while_queued,
        } = scale_in;
        let crd::Fallback {
            after_stale,
            replicas,
        } = fallback;

        let steps = steps
            .iter()
            .map(|step| {
                let crd::ScaleOutStep {
                    signal: _,
                    query: _,
                    above,
                    add,
                    add_percent,
                } = step;
                Ok(Step {
                    signal: step.signal().into(),
                    above: *above,
                    add: non_negative("scaling.scaleOut.steps[].add", *add)?,
                    add_percent: add_percent
                        .map(|p| non_negative("scaling.scaleOut.steps[].addPercent", p))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>, PolicyError>>()?;

        let policy = Policy {
            poll_interval: crd::parse_duration_within(
                "scaling.pollInterval",
                poll_interval,
                MIN_POLL_INTERVAL,
                MAX_POLL_INTERVAL,
            )?,
            scale_out: ScaleOut {
                steps,
                cooldown: crd::parse_duration("scaling.scaleOut.cooldown", out_cooldown)?,
                max_step: max_step
                    .map(|m| non_negative("scaling.scaleOut.maxStep", m))
                    .transpose()?,
            },
            scale_in: ScaleIn {
                signal: when.signal().into(),
                below: when.below,
                remove: non_negative("scaling.scaleIn.remove", *remove)?,
                stabilization_window: crd::parse_duration(
                    "scaling.scaleIn.stabilizationWindow",
                    stabilization_window,
                )?,
                cooldown: crd::parse_duration("scaling.scaleIn.cooldown", in_cooldown)?,
                allow_while_queued: *allow_while_queued,
            },
            fallback: Fallback {
                after_stale: crd::parse_duration("scaling.fallback.afterStale", after_stale)?,
                replicas: non_negative("scaling.fallback.replicas", *replicas)?,
            },
            capacity: capacity
                .as_ref()
                .map(|c| {
                    let crd::Capacity {
                        signal: _,
                        query: _,
                        per_replica,
                        headroom_percent,
                        growth_window,
                    } = c;
                    Ok::<_, PolicyError>(Capacity {
                        signal: c.signal().into(),
                        per_replica: *per_replica,
                        headroom: f64::from(*headroom_percent) / 100.0,
                        growth_window: crd::parse_duration("scaling.capacity.growthWindow", growth_window)?,
                    })
                })
                .transpose()?,
        };
        let problems = policy.validate();
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError::Invalid(problems))
        }
    }
}

impl NeedMark {
    pub fn to_status(&self) -> crd::NeedMark {
        crd::NeedMark {
            at: self.at,
            replicas: i32::try_from(self.need).unwrap_or(i32::MAX),
        }
    }
}

impl Memory {
    /// Rebuilds the memory from a component's status after a restart or leader change.
    ///
    /// `signals_observed_at` (status.signalsObservedAt) stands in for the last observation that
    /// confirmed the stabilization run: the status records `belowSince` but not when it was last
    /// confirmed, so a gap longer than the allowed one is only detected from this timestamp.
    /// `stale_since` is not stored: after a restart the fallback timer starts again.
    ///
    /// The newest need mark counts as seen `now`: the status is rewritten whenever the needs of
    /// the history change (not when only the newest mark's time moves on), so the newest need
    /// held until the old leader stopped. Taking it as current can only keep replicas longer
    /// (at most one stabilization window after the take-over), never scale in early.
    pub fn from_status(
        status: Option<&crd::ComponentStatus>,
        signals_observed_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Self {
        let Some(s) = status else { return Self::default() };
        let below_since = s.below_since;
        let mut need_marks: Vec<NeedMark> = s
            .need_history
            .iter()
            .flatten()
            .take(MAX_NEED_MARKS)
            .map(|m| NeedMark {
                at: m.at,
                need: u32::try_from(m.replicas).unwrap_or(0),
            })
            .collect();
        if let Some(newest) = need_marks.last_mut() {
            newest.at = newest.at.max(now);
        }
        Self {
            last_scale_out: s.last_scale_out_time,
            last_scale_in: s.last_scale_in_time,
            below_since,
            below_seen_at: below_since.and(signals_observed_at.or(below_since)),
            stale_since: None,
            need_marks,
            lows: super::decide::Lows::default(),
            pre_lows: super::decide::Lows::default(),
        }
    }

    /// Writes the parts of the memory the status holds.
    pub fn write_status(&self, status: &mut crd::ComponentStatus) {
        let Self {
            last_scale_out,
            last_scale_in,
            below_since,
            below_seen_at: _,
            stale_since: _,
            need_marks,
            lows: _,
            pre_lows: _,
        } = self;
        status.last_scale_out_time = *last_scale_out;
        status.last_scale_in_time = *last_scale_in;
        status.below_since = *below_since;
        status.need_history = Some(need_marks.iter().map(NeedMark::to_status).collect());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn crd_defaults_convert_to_the_domain_defaults() {
        let p = Policy::try_from(&crd::ScalingPolicy::default()).unwrap();
        assert_eq!(p, Policy::default());
    }

    #[test]
    fn the_design_scaling_block_converts() {
        let yaml = r#"
pollInterval: 2s
scaleOut:
  steps:
    - {signal: queueDepth, above: 5000, add: 2}
    - {signal: queueDepth, above: 20000, add: 5}
    - {signal: prometheus, query: "histogram_quantile(0.95, x)", above: 0.2, add: 2, addPercent: 50}
  cooldown: 3m
  maxStep: 30
scaleIn:
  when: {signal: activeUsers, below: 100}
  remove: 2
  stabilizationWindow: 10m
  cooldown: 600s
fallback: {afterStale: 45s, replicas: 12}
"#;
        let crd: crd::ScalingPolicy = serde_yaml::from_str(yaml).unwrap();
        let p = Policy::try_from(&crd).unwrap();
        assert_eq!(
            p.scale_out.steps[2].signal,
            Signal::Prometheus("histogram_quantile(0.95, x)".into())
        );
        assert_eq!(p.scale_out.steps[2].add_percent, Some(50));
        assert_eq!(p.scale_out.cooldown, Duration::from_secs(180));
        assert_eq!(p.scale_out.max_step, Some(30));
        assert_eq!(
            (p.scale_in.signal.clone(), p.scale_in.below, p.scale_in.remove),
            (Signal::ActiveUsers, 100.0, 2)
        );
        assert_eq!(p.scale_in.stabilization_window, Duration::from_secs(600));
        assert_eq!(
            (p.fallback.after_stale, p.fallback.replicas),
            (Duration::from_secs(45), 12)
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let mut crd = crd::ScalingPolicy::default();
        crd.scale_in.remove = -1;
        let err = Policy::try_from(&crd).unwrap_err();
        assert_eq!(err.reason(), "NegativeNumber");
        assert!(err.to_string().contains("scaleIn.remove"), "{err}");

        let mut crd = crd::ScalingPolicy::default();
        crd.scale_out.cooldown = "soon".into();
        let err = Policy::try_from(&crd).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");

        let mut crd = crd::ScalingPolicy::default();
        crd.scale_out.steps.swap(0, 1);
        let err = Policy::try_from(&crd).unwrap_err();
        assert_eq!(err.reason(), "InvalidScalingPolicy");
    }

    #[test]
    fn poll_interval_bounds_match_the_schema_rule() {
        // The CRD's CEL rule says the bounds as text; the operator checks these again.
        assert_eq!(
            humantime::parse_duration(crd::MIN_POLL_INTERVAL_TEXT).unwrap(),
            MIN_POLL_INTERVAL
        );
        assert_eq!(
            humantime::parse_duration(crd::MAX_POLL_INTERVAL_TEXT).unwrap(),
            MAX_POLL_INTERVAL
        );
    }

    #[test]
    fn memory_round_trips_through_status() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let m = Memory {
            last_scale_out: Some(t(1)),
            last_scale_in: Some(t(2)),
            below_since: Some(t(3)),
            below_seen_at: Some(t(9)),
            stale_since: Some(t(4)),
            need_marks: vec![NeedMark { at: t(5), need: 7 }, NeedMark { at: t(8), need: 3 }],
            lows: crate::autoscaler::decide::Lows::default(),
            pre_lows: crate::autoscaler::decide::Lows::default(),
        };
        let mut status = crd::ComponentStatus::default();
        m.write_status(&mut status);
        // Taken over at t(8) (the newest mark's time): the memory comes back as it was.
        let back = Memory::from_status(Some(&status), Some(t(9)), t(8));
        assert_eq!(
            back,
            Memory {
                stale_since: None,
                ..m.clone()
            }
        );
        assert_eq!(Memory::from_status(None, Some(t(9)), t(8)), Memory::default());
        // Taken over later: the newest need (3) counts as seen at the take-over, so the window
        // holds it a whole window from then; the older, higher mark keeps its own time.
        let later = Memory::from_status(Some(&status), Some(t(9)), t(100));
        assert_eq!(
            later.need_marks,
            vec![NeedMark { at: t(5), need: 7 }, NeedMark { at: t(100), need: 3 }]
        );
    }
}
