//! `decide`: one scaling decision from plain values. No I/O, no clock: `now` is an input.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::format;
use super::policy::{Policy, Signal};

/// One successful reading of a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value; NaN means "the source answered but has no data" (e.g. an empty Prometheus
    /// result): it matches no threshold but does not make the signals unhealthy.
    pub value: f64,
    /// When the value was read.
    pub observed_at: DateTime<Utc>,
}

/// Why a signal could not be read this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalFailure {
    /// Bounded label (`Timeout`, `RedisError`, `PrometheusError`, …) for metrics and conditions.
    pub reason: &'static str,
    /// Human text for the condition message.
    pub message: String,
}

/// The latest reading of every signal a component's policy uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    readings: BTreeMap<Signal, Result<Sample, SignalFailure>>,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a good value.
    pub fn ok(mut self, signal: Signal, value: f64, observed_at: DateTime<Utc>) -> Self {
        self.readings.insert(signal, Ok(Sample { value, observed_at }));
        self
    }

    /// Records a failed read.
    pub fn failed(mut self, signal: Signal, failure: SignalFailure) -> Self {
        self.readings.insert(signal, Err(failure));
        self
    }

    pub fn insert(&mut self, signal: Signal, reading: Result<Sample, SignalFailure>) {
        self.readings.insert(signal, reading);
    }

    pub fn get(&self, signal: &Signal) -> Option<&Result<Sample, SignalFailure>> {
        self.readings.get(signal)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Signal, &Result<Sample, SignalFailure>)> {
        self.readings.iter()
    }
}

/// What a decision must remember for the next one. It lives in the TicketingEvent's status so a
/// restarted operator or a new leader honours cooldowns and stabilization evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Last signal-driven scale-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_out: Option<DateTime<Utc>>,
    /// Last signal-driven scale-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_in: Option<DateTime<Utc>>,
    /// First observation of the scale-in signal below its threshold in the current unbroken run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_since: Option<DateTime<Utc>>,
    /// Latest observation that confirmed the run; a gap longer than the allowed one (the operator
    /// was down) restarts the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below_seen_at: Option<DateTime<Utc>>,
    /// When the signals became unhealthy (error, missing or stale); None while healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<DateTime<Utc>>,
}

/// Everything besides the policy that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The schedule's floor for now (pre-warm ramp, sale, wind-down); the caller passes
    /// `max(minReplicas, schedule floor)`. A floor above `max` is capped at `max`.
    pub floor: u32,
    /// `maxReplicas`.
    pub max: u32,
    /// The Deployment's current `spec.replicas` (what was last decided).
    pub current: u32,
    /// The sale is open (phase OnSale): scale-in then waits for an empty queue unless the policy
    /// allows it.
    pub on_sale: bool,
    pub samples: &'a Samples,
    pub memory: &'a Memory,
    pub now: DateTime<Utc>,
}

/// Which way a decision moves replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    /// Bounded metric label.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Hold => "hold",
        }
    }

    /// Kubernetes Event reason for a change (`ScaledOut`, `ScaledIn`), None for a hold.
    pub fn event_reason(self) -> Option<&'static str> {
        match self {
            Self::Up => Some("ScaledOut"),
            Self::Down => Some("ScaledIn"),
            Self::Hold => None,
        }
    }
}

/// Why a decision came out the way it did. A fixed set, so it is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A scale-out step matched and the cooldown had passed.
    StepAbove,
    /// The scale-in signal stayed below its threshold for the window and the cooldown had passed.
    BelowThreshold,
    /// The schedule floor (pre-warm, minReplicas) is above the current replicas; applied at once.
    FloorRaised,
    /// `maxReplicas` is below the current replicas; applied at once.
    MaxLowered,
    /// Signals have been unhealthy for `fallback.afterStale`; raised to `fallback.replicas`.
    StaleFallback,
    /// A step matched but the scale-out cooldown has not passed.
    ScaleOutCooldown,
    /// A step matched but replicas are already at max.
    AtMaxReplicas,
    /// Below the scale-in threshold, but not yet for the whole window.
    Stabilizing,
    /// Scale-in is due but the cooldown since the last scaling has not passed.
    ScaleInCooldown,
    /// Scale-in is due but replicas are at the floor.
    AtFloor,
    /// Scale-in is due but users are still queued during the sale.
    QueueNotEmpty,
    /// Some signal is failing, missing or stale: hold (no scale-in on stale data).
    SignalsUnhealthy,
    /// Nothing matched.
    WithinThresholds,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Self::StepAbove,
        Self::BelowThreshold,
        Self::FloorRaised,
        Self::MaxLowered,
        Self::StaleFallback,
        Self::ScaleOutCooldown,
        Self::AtMaxReplicas,
        Self::Stabilizing,
        Self::ScaleInCooldown,
        Self::AtFloor,
        Self::QueueNotEmpty,
        Self::SignalsUnhealthy,
        Self::WithinThresholds,
    ];

    /// CamelCase label, for metrics, `status.lastScaleReason` and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::StepAbove => "StepAbove",
            Self::BelowThreshold => "BelowThreshold",
            Self::FloorRaised => "FloorRaised",
            Self::MaxLowered => "MaxLowered",
            Self::StaleFallback => "StaleFallback",
            Self::ScaleOutCooldown => "ScaleOutCooldown",
            Self::AtMaxReplicas => "AtMaxReplicas",
            Self::Stabilizing => "Stabilizing",
            Self::ScaleInCooldown => "ScaleInCooldown",
            Self::AtFloor => "AtFloor",
            Self::QueueNotEmpty => "QueueNotEmpty",
            Self::SignalsUnhealthy => "SignalsUnhealthy",
            Self::WithinThresholds => "WithinThresholds",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The health of the signals as this decision saw them (for the `SignalsHealthy` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalHealth {
    Healthy,
    /// `since` is when they became unhealthy; `problems` names each failing signal.
    Unhealthy {
        since: DateTime<Utc>,
        reason: &'static str,
        problems: Vec<String>,
    },
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas to set (equal to `current` for a hold, unless bounds moved).
    pub desired: u32,
    pub direction: Direction,
    pub reason: Reason,
    /// Human explanation, e.g. `queueDepth 8,000 > 5,000`.
    pub message: String,
    pub health: SignalHealth,
    /// Memory to store (in status) for the next decision.
    pub memory: Memory,
}

impl Decision {
    /// The Event / log text for a change, e.g. `ScaledOut reservation 4→6: queueDepth 8,000 > 5,000`.
    pub fn summary(&self, component: &str, from: u32) -> String {
        let verb = self.direction.event_reason().unwrap_or("Held");
        format!("{verb} {component} {from}→{}: {}", self.desired, self.message)
    }

    /// True when the decision changes replicas.
    pub fn changes(&self, current: u32) -> bool {
        self.desired != current
    }
}

// === decide ===

/// Scale-out candidate: the step that adds the most.
struct Matched<'a> {
    signal: &'a Signal,
    value: f64,
    above: f64,
    target: u32,
}

/// Decides the replicas for one component. Pure: equal inputs give equal outputs.
///
/// Order of the rules, each explained in DESIGN.md and issue 4:
/// 1. bounds: `[min(floor, max), max]`; raising the floor or lowering max applies at once;
/// 2. signal health: a signal the policy uses that is failing, missing or older than two poll
///    intervals makes the signals unhealthy; unhealthy signals never scale in, and after
///    `fallback.afterStale` replicas are raised (never lowered) to `fallback.replicas`;
/// 3. scale-out: the highest matching step per signal, the largest increment across signals,
///    capped by max and the optional `maxStep`, once per `scaleOut.cooldown`;
/// 4. scale-in: the signal observed below its threshold without a break for the whole
///    stabilization window, `scaleIn.cooldown` since the last scaling of either direction, not
///    while users are queued during the sale (unless allowed), never below the floor.
///
/// Floor, max and fallback changes do not start cooldowns: they are not reactions to load, and a
/// pre-warm step right before on-sale must not delay the first surge step.
pub fn decide(policy: &Policy, inputs: &Inputs<'_>) -> Decision {
    let Inputs {
        floor,
        max,
        current,
        on_sale,
        samples,
        memory,
        now,
    } = *inputs;
    let floor = floor.min(max);
    let base = current.clamp(floor, max);
    let mut memory = memory.clone();

    // --- signal health ---
    let freshness = policy.freshness();
    let mut needed = policy.signals();
    let queue_check = on_sale && !policy.scale_in.allow_while_queued;
    if queue_check && !needed.contains(&Signal::QueueDepth) {
        needed.push(Signal::QueueDepth);
    }
    let fresh = |signal: &Signal| -> Option<Sample> {
        match samples.get(signal) {
            Some(Ok(s)) if format::since(s.observed_at, now) <= freshness => Some(*s),
            _ => None,
        }
    };
    let mut problems = Vec::new();
    let mut failure_reason = "SignalMissing";
    for signal in &needed {
        match samples.get(signal) {
            None => problems.push(format!("{signal}: no reading")),
            Some(Err(f)) => {
                failure_reason = f.reason;
                problems.push(format!("{signal}: {}", f.message));
            }
            Some(Ok(s)) if fresh(signal).is_none() => {
                failure_reason = "SignalStale";
                problems.push(format!(
                    "{signal}: stale, last observed {} ago",
                    format::duration(format::since(s.observed_at, now))
                ));
            }
            Some(Ok(_)) => {}
        }
    }
    let health = if problems.is_empty() {
        memory.stale_since = None;
        SignalHealth::Healthy
    } else {
        let since = *memory.stale_since.get_or_insert(now);
        SignalHealth::Unhealthy {
            since,
            reason: failure_reason,
            problems: problems.clone(),
        }
    };
    let healthy = problems.is_empty();

    // --- stabilization evidence for scale-in ---
    let rule = &policy.scale_in;
    let gap_allowed = freshness.max(policy.fallback.after_stale);
    let in_sample = fresh(&rule.signal);
    match in_sample {
        Some(s) if s.value < rule.below => {
            let continues = matches!(
                (memory.below_since, memory.below_seen_at),
                (Some(_), Some(seen)) if format::since(seen, s.observed_at) <= gap_allowed && seen <= s.observed_at
            );
            if !continues {
                memory.below_since = Some(s.observed_at);
            }
            memory.below_seen_at = Some(s.observed_at);
        }
        _ => {
            memory.below_since = None;
            memory.below_seen_at = None;
        }
    }

    // Outcome of the bounds alone, used when no rule fires.
    let bounds_outcome = |memory: Memory, health: SignalHealth, reason: Reason, message: String| {
        if base > current {
            Decision {
                desired: base,
                direction: Direction::Up,
                reason: Reason::FloorRaised,
                message: format!("floor {floor} > {current} replicas ({message})"),
                health,
                memory,
            }
        } else if base < current {
            Decision {
                desired: base,
                direction: Direction::Down,
                reason: Reason::MaxLowered,
                message: format!("maxReplicas {max} < {current} replicas ({message})"),
                health,
                memory,
            }
        } else {
            Decision {
                desired: base,
                direction: Direction::Hold,
                reason,
                message,
                health,
                memory,
            }
        }
    };
    let one_per_instant = |last: Option<DateTime<Utc>>, cooldown: Duration| -> Option<Duration> {
        // Remaining cooldown, None when a scaling is allowed now. At most one scaling per instant,
        // so deciding twice with the same inputs changes nothing the second time.
        let last = last?;
        let elapsed = format::since(last, now);
        if now <= last {
            Some(cooldown.max(Duration::from_millis(1)))
        } else if elapsed < cooldown {
            Some(cooldown - elapsed)
        } else {
            None
        }
    };

    // --- scale-out ---
    let mut best: Option<Matched<'_>> = None;
    // Per signal, the matching step with the highest threshold.
    let mut per_signal: BTreeMap<&Signal, (f64, &super::policy::Step)> = BTreeMap::new();
    for step in &policy.scale_out.steps {
        let Some(s) = fresh(&step.signal) else { continue };
        if s.value > step.above {
            match per_signal.get(&step.signal) {
                Some((_, prev)) if prev.above > step.above => {}
                _ => {
                    per_signal.insert(&step.signal, (s.value, step));
                }
            }
        }
    }
    // Across signals, the step that adds the most.
    for (signal, (value, step)) in per_signal {
        let inc = step.increment(base);
        let inc = policy.scale_out.max_step.map_or(inc, |cap| inc.min(cap));
        let target = base.saturating_add(inc).min(max);
        if best.as_ref().is_none_or(|b| target > b.target) {
            best = Some(Matched {
                signal,
                value,
                above: step.above,
                target,
            });
        }
    }
    let fallback_due = match &health {
        SignalHealth::Unhealthy { since, .. } => format::since(*since, now) >= policy.fallback.after_stale,
        SignalHealth::Healthy => false,
    };
    let fallback_target = policy.fallback.replicas.min(max);

    if let Some(m) = best {
        let what = format!(
            "{} {} > {}",
            m.signal,
            format::value(m.value),
            format::value(m.above)
        );
        if m.target <= base {
            let d = bounds_outcome(
                memory,
                health,
                Reason::AtMaxReplicas,
                format!("{what}, already at maxReplicas {max}"),
            );
            return with_fallback(d, fallback_due, fallback_target, current);
        }
        if let Some(left) = one_per_instant(memory.last_scale_out, policy.scale_out.cooldown) {
            let d = bounds_outcome(
                memory,
                health,
                Reason::ScaleOutCooldown,
                format!("{what}, scale-out cooldown has {} left", format::duration(left)),
            );
            return with_fallback(d, fallback_due, fallback_target, current);
        }
        memory.last_scale_out = Some(now);
        let d = Decision {
            desired: m.target,
            direction: Direction::Up,
            reason: Reason::StepAbove,
            message: what,
            health,
            memory,
        };
        return with_fallback(d, fallback_due, fallback_target, current);
    }

    // --- unhealthy: hold (and fall back) ---
    if !healthy {
        let d = bounds_outcome(
            memory,
            health,
            Reason::SignalsUnhealthy,
            format!("{}; holding, no scale-in on stale data", problems.join("; ")),
        );
        return with_fallback(d, fallback_due, fallback_target, current);
    }

    // --- scale-in ---
    let Some(s) = in_sample else {
        // Unreachable while healthy (the scale-in signal is among the needed ones), but a hold is
        // the safe answer anyway.
        return bounds_outcome(
            memory,
            health,
            Reason::SignalsUnhealthy,
            "no scale-in reading".into(),
        );
    };
    if s.value.is_nan() || s.value >= rule.below {
        let msg = format!("{} {} within thresholds", rule.signal, format::value(s.value));
        return bounds_outcome(memory, health, Reason::WithinThresholds, msg);
    }
    let what = format!(
        "{} {} < {}",
        rule.signal,
        format::value(s.value),
        format::value(rule.below)
    );
    let stayed = match (memory.below_since, memory.below_seen_at) {
        (Some(a), Some(b)) => format::since(a, b),
        _ => Duration::ZERO,
    };
    if stayed < rule.stabilization_window {
        let msg = format!(
            "{what} for {} of {}",
            format::duration(stayed),
            format::duration(rule.stabilization_window)
        );
        return bounds_outcome(memory, health, Reason::Stabilizing, msg);
    }
    let what = format!("{what} for {}", format::duration(stayed));
    if base <= floor {
        return bounds_outcome(
            memory,
            health,
            Reason::AtFloor,
            format!("{what}, at the floor ({floor})"),
        );
    }
    if queue_check {
        let queued = fresh(&Signal::QueueDepth).map_or(f64::NAN, |q| q.value);
        if queued.is_nan() || queued > 0.0 {
            let msg = format!(
                "{what}, but {} users still queued during the sale",
                format::value(queued)
            );
            return bounds_outcome(memory, health, Reason::QueueNotEmpty, msg);
        }
    }
    let last_any = memory.last_scale_out.max(memory.last_scale_in);
    if let Some(left) = one_per_instant(last_any, rule.cooldown) {
        let msg = format!("{what}, scale-in cooldown has {} left", format::duration(left));
        return bounds_outcome(memory, health, Reason::ScaleInCooldown, msg);
    }
    memory.last_scale_in = Some(now);
    Decision {
        desired: base.saturating_sub(rule.remove).max(floor),
        direction: Direction::Down,
        reason: Reason::BelowThreshold,
        message: what,
        health,
        memory,
    }
}

/// Raises a decision to the fallback replicas when due; never lowers it.
fn with_fallback(d: Decision, due: bool, target: u32, current: u32) -> Decision {
    if !due || d.desired >= target {
        return d;
    }
    let message = match &d.health {
        SignalHealth::Unhealthy { problems, .. } => {
            format!(
                "signals unhealthy ({}); holding fallback {target} replicas",
                problems.join("; ")
            )
        }
        SignalHealth::Healthy => format!("holding fallback {target} replicas"),
    };
    Decision {
        desired: target,
        direction: match target.cmp(&current) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => Direction::Hold,
        },
        reason: Reason::StaleFallback,
        message,
        ..d
    }
}
