//! The scaling policy as plain values, with the source documents' numbers as defaults.
//!
//! These are the values [`super::decide`] works on; the TicketingEvent's `scaling:` block
//! (`crate::crd::ScalingPolicy`) converts into them in `from_crd`.

use std::collections::BTreeMap;
use std::time::Duration;

/// What a threshold is compared against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// ZCARD of the event's waiting queue.
    QueueDepth,
    /// ZCARD of the event's pre-queue (users who joined before the on-sale).
    PreQueueDepth,
    /// Admitted users whose admission has not expired.
    ActiveUsers,
    /// A Prometheus instant query (the query text is the signal's identity).
    Prometheus(String),
}

impl Signal {
    /// Short name for messages: `queueDepth`, `activeUsers`, or the Prometheus query.
    pub fn name(&self) -> &str {
        match self {
            Self::QueueDepth => "queueDepth",
            Self::PreQueueDepth => "preQueueDepth",
            Self::ActiveUsers => "activeUsers",
            Self::Prometheus(query) => query,
        }
    }

    /// Bounded label for metrics: `queueDepth`, `activeUsers` or `prometheus`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::QueueDepth => "queueDepth",
            Self::PreQueueDepth => "preQueueDepth",
            Self::ActiveUsers => "activeUsers",
            Self::Prometheus(_) => "prometheus",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A whole component's scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How often signals are read and a decision is made.
    pub poll_interval: Duration,
    pub scale_out: ScaleOut,
    pub scale_in: ScaleIn,
    pub fallback: Fallback,
    /// What one Ready replica serves; None keeps the step rules alone (the source documents').
    pub capacity: Option<Capacity>,
}

/// How much of a signal one Ready replica serves. With it the autoscaler knows the *need*,
/// `ceil(signal × (1 + headroom) / perReplica)`: scale-out goes to the need at once, steps only
/// boost up to one step past it, and scale-in goes down to the highest need of the stabilization
/// window (the HPA's scale-down rule) instead of one `remove` per cooldown.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub signal: Signal,
    /// Signal units one Ready replica serves (> 0).
    pub per_replica: f64,
    /// Spare capacity on top of the signal, as a fraction (0.2 = 20 %).
    pub headroom: f64,
    /// The spare covers growth only: it is at most how much the signal rose within this window
    /// (about how long a new pod takes to become Ready). Zero: always the full headroom.
    pub growth_window: Duration,
}

impl Capacity {
    /// Replicas `value` needs, unbounded (the caller clamps to [floor, max]); None for no data.
    pub fn need(&self, value: f64) -> Option<u32> {
        self.need_after_rise(value, None)
    }

    /// Replicas `value` needs when it rose by `rise` within the growth window (None: not known,
    /// e.g. right after a restart, which keeps the full headroom). The spare on top of the value
    /// is `min(headroom × value, rise)`: a surge gets its headroom, a flat or draining signal is
    /// sized at its value.
    pub fn need_after_rise(&self, value: f64, rise: Option<f64>) -> Option<u32> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let raw = ((value + self.spare(value, rise)) / self.per_replica).ceil();
        // Float to integer casts saturate; a need beyond u32 is "all of max" anyway.
        Some(raw.clamp(0.0, f64::from(u32::MAX)) as u32)
    }

    /// The spare on top of `value`: `headroom × value`, at most `rise` when the rise is known.
    pub fn spare(&self, value: f64, rise: Option<f64>) -> f64 {
        let full = value * self.headroom;
        match rise.filter(|r| r.is_finite() && !self.growth_window.is_zero()) {
            Some(rise) => full.min(rise.max(0.0)),
            None => full,
        }
    }

    /// The spare as decision messages name it: ` (+20%)` (the full headroom), ` (+750 risen
    /// within 1m)` (capped by the rise), ` (not rising: no headroom)`, or empty without headroom.
    pub fn spare_note(&self, value: f64, rise: Option<f64>) -> String {
        let pct = (self.headroom * 100.0).round();
        if pct <= 0.0 {
            return String::new();
        }
        let spare = self.spare(value, rise);
        if spare >= value * self.headroom {
            format!(" (+{}%)", super::format::value(pct))
        } else if spare <= 0.0 {
            " (not rising: no headroom)".to_owned()
        } else {
            format!(
                " (+{} risen within {})",
                super::format::value(spare.round()),
                super::format::duration(self.growth_window)
            )
        }
    }

    /// Like [`Self::explain`], naming the spare when the rise capped it:
    /// `needs 7 at 2,500/replica (+750 risen within 1m)`, `needs 6 at 2,500/replica (not rising)`.
    pub fn explain_after_rise(&self, need: u32, value: f64, rise: Option<f64>) -> String {
        format!(
            "needs {need} at {}/replica{}",
            super::format::value(self.per_replica),
            self.spare_note(value, rise)
        )
    }

    /// `needs 24 at 2,500/replica (+20%)`, for decision messages.
    pub fn explain(&self, need: u32) -> String {
        self.explain_after_rise(need, 0.0, None)
    }
}

/// Step scale-out.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleOut {
    /// Per signal, the matching step with the highest `above` applies; across signals, the step
    /// that adds the most replicas.
    pub steps: Vec<Step>,
    /// Minimum time between two signal-driven scale-outs.
    pub cooldown: Duration,
    /// Optional cap on replicas added by one decision. None (the default) means no rate cap:
    /// 2 → 40 in one decision is allowed, unlike the HPA.
    pub max_step: Option<u32>,
}

/// One scale-out step: when `signal > above`, add `max(add, ceil(current × addPercent / 100))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub signal: Signal,
    pub above: f64,
    pub add: u32,
    pub add_percent: Option<u32>,
}

impl Step {
    /// Replicas this step adds to `current` (before max and `maxStep`).
    pub fn increment(&self, current: u32) -> u32 {
        let pct = self.add_percent.map_or(0, |p| {
            (u64::from(current) * u64::from(p))
                .div_ceil(100)
                .min(u64::from(u32::MAX)) as u32
        });
        self.add.max(pct)
    }
}

/// Scale-in (one rule, the way the source documents' alarm reads).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleIn {
    pub signal: Signal,
    /// Scale in only while `signal < below`.
    pub below: f64,
    /// Replicas removed by one decision.
    pub remove: u32,
    /// The signal must have stayed below for this long (continuously observed).
    pub stabilization_window: Duration,
    /// Minimum time since the last scaling of either direction.
    pub cooldown: Duration,
    /// Allow scale-in during the sale while the waiting queue still holds users. Off by default:
    /// people in line are about to be admitted and will need the capacity.
    pub allow_while_queued: bool,
}

/// What to hold when signals are missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// After signals have been unhealthy this long, hold at least `replicas`.
    pub after_stale: Duration,
    /// Replicas held while signals are stale; never used to *lower* replicas.
    pub replicas: u32,
}

// === defaults: the source documents' numbers ===

impl Default for Policy {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            scale_out: ScaleOut::default(),
            scale_in: ScaleIn::default(),
            fallback: Fallback::default(),
            capacity: None,
        }
    }
}

impl Default for ScaleOut {
    fn default() -> Self {
        Self {
            steps: vec![
                Step {
                    signal: Signal::QueueDepth,
                    above: 5_000.0,
                    add: 2,
                    add_percent: None,
                },
                Step {
                    signal: Signal::QueueDepth,
                    above: 20_000.0,
                    add: 5,
                    add_percent: None,
                },
            ],
            cooldown: Duration::from_secs(180),
            max_step: None,
        }
    }
}

impl Default for ScaleIn {
    fn default() -> Self {
        Self {
            signal: Signal::QueueDepth,
            below: 1_000.0,
            remove: 1,
            stabilization_window: Duration::from_secs(300),
            cooldown: Duration::from_secs(600),
            allow_while_queued: false,
        }
    }
}

impl Default for Fallback {
    fn default() -> Self {
        Self {
            after_stale: Duration::from_secs(30),
            replicas: 10,
        }
    }
}

impl Policy {
    /// Every signal the policy reads, without duplicates, in a stable order. With a capacity the
    /// `scaleIn.when` rule is not used, so its signal is not needed.
    pub fn signals(&self) -> Vec<Signal> {
        let mut out: Vec<Signal> = self.scale_out.steps.iter().map(|s| s.signal.clone()).collect();
        match &self.capacity {
            Some(c) => out.push(c.signal.clone()),
            None => out.push(self.scale_in.signal.clone()),
        }
        out.sort();
        out.dedup();
        out
    }

    /// A sample older than this is stale: two poll intervals, at least one second.
    pub fn freshness(&self) -> Duration {
        self.poll_interval.saturating_mul(2).max(Duration::from_secs(1))
    }

    /// Checks what a schema cannot: returns every problem found, empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let Self {
            poll_interval,
            scale_out,
            scale_in,
            fallback: _,
            capacity,
        } = self;
        let mut problems = Vec::new();
        if let Some(c) = capacity {
            if !(c.per_replica.is_finite() && c.per_replica > 0.0) {
                problems.push("capacity.perReplica must be a positive number".to_owned());
            }
            if !(c.headroom.is_finite() && c.headroom >= 0.0) {
                problems.push("capacity.headroomPercent must be a non-negative number".to_owned());
            }
        }
        if scale_out.steps.is_empty() && capacity.is_none() {
            problems.push(
                "scaleOut.steps is empty and no capacity is set: nothing would ever scale out".to_owned(),
            );
        }
        if poll_interval.is_zero() {
            problems.push("pollInterval must be greater than zero".to_owned());
        }
        for (i, step) in scale_out.steps.iter().enumerate() {
            if !step.above.is_finite() {
                problems.push(format!("scaleOut.steps[{i}].above must be a finite number"));
            }
            if step.add == 0 && step.add_percent.unwrap_or(0) == 0 {
                problems.push(format!(
                    "scaleOut.steps[{i}] adds nothing (add and addPercent are 0)"
                ));
            }
        }
        // Per signal, thresholds strictly increasing (an identical step is a typo that a
        // schema `indexOf` rule lets through), and the scale-in band below every scale-out band
        // of the same signal (else replicas flap between the two).
        let mut last_above: BTreeMap<&Signal, f64> = BTreeMap::new();
        for (i, step) in scale_out.steps.iter().enumerate() {
            if let Some(prev) = last_above.insert(&step.signal, step.above)
                && step.above <= prev
            {
                problems.push(format!(
                    "scaleOut.steps[{i}]: steps for {} must have strictly increasing `above` ({} then {})",
                    step.signal,
                    super::format::value(prev),
                    super::format::value(step.above)
                ));
            }
            // (With a capacity, scale-in follows the need and `scaleIn.when` is not used.)
            if capacity.is_none() && step.signal == scale_in.signal && scale_in.below > step.above {
                problems.push(format!(
                    "scaleIn.when.below ({}) is above scaleOut.steps[{i}].above ({}) for {}: the bands overlap and replicas would flap",
                    super::format::value(scale_in.below),
                    super::format::value(step.above),
                    step.signal
                ));
            }
        }
        if scale_out.max_step == Some(0) {
            problems.push("scaleOut.maxStep must be at least 1 when set".to_owned());
        }
        if !scale_in.below.is_finite() {
            problems.push("scaleIn.when.below must be a finite number".to_owned());
        }
        if scale_in.remove == 0 {
            problems.push("scaleIn.remove must be at least 1".to_owned());
        }
        problems
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_source_numbers_and_valid() {
        let p = Policy::default();
        assert_eq!(p.poll_interval, Duration::from_secs(2));
        let steps: Vec<_> = p.scale_out.steps.iter().map(|s| (s.above, s.add)).collect();
        assert_eq!(steps, vec![(5_000.0, 2), (20_000.0, 5)]);
        assert_eq!(p.scale_out.cooldown, Duration::from_secs(180));
        assert_eq!((p.scale_in.below, p.scale_in.remove), (1_000.0, 1));
        assert_eq!(p.scale_in.stabilization_window, Duration::from_secs(300));
        assert_eq!(p.scale_in.cooldown, Duration::from_secs(600));
        assert_eq!(
            (p.fallback.after_stale, p.fallback.replicas),
            (Duration::from_secs(30), 10)
        );
        assert!(p.validate().is_empty());
        assert_eq!(p.signals(), vec![Signal::QueueDepth]);
    }

    #[test]
    fn validate_names_each_problem() {
        let mut p = Policy::default();
        p.scale_out.steps.swap(0, 1);
        p.scale_in.remove = 0;
        let problems = p.validate();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("strictly increasing"), "{problems:?}");
        assert!(problems[1].contains("remove"));
    }

    #[test]
    fn identical_steps_and_overlapping_bands_are_refused() {
        let mut p = Policy::default();
        let first = p.scale_out.steps[0].clone();
        p.scale_out.steps.insert(1, first);
        let problems = p.validate();
        assert!(
            problems
                .iter()
                .any(|m| m.contains("scaleOut.steps[1]") && m.contains("strictly increasing")),
            "{problems:?}"
        );
        let mut p = Policy::default();
        p.scale_in.below = p.scale_out.steps[0].above + 1.0;
        let problems = p.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("the bands overlap"), "{problems:?}");
        // Equal is not an overlap: below 5,000 scales in, above 5,000 scales out.
        let mut p = Policy::default();
        p.scale_in.below = p.scale_out.steps[0].above;
        assert!(p.validate().is_empty());
    }

    #[test]
    fn step_increment_is_the_larger_of_add_and_percent() {
        let s = Step {
            signal: Signal::QueueDepth,
            above: 0.0,
            add: 2,
            add_percent: Some(50),
        };
        assert_eq!(s.increment(2), 2);
        assert_eq!(s.increment(10), 5);
        assert_eq!(s.increment(11), 6); // rounds up
    }
}
