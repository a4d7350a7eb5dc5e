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
    /// With a capacity: the highest needs of the stabilization window, oldest first, strictly
    /// decreasing (each the highest need seen from its time on), at most [`MAX_NEED_MARKS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub need_marks: Vec<NeedMark>,
    /// With a capacity: the lows of the capacity signal over its growth window (how much it rose
    /// lately). Kept in memory only: after a restart the rise is unknown for one window, which
    /// keeps the full headroom.
    #[serde(skip)]
    #[schemars(skip)]
    pub lows: Lows,
    /// The same for the pre-queue, which sizes the crowd pre-warm.
    #[serde(skip)]
    #[schemars(skip)]
    pub pre_lows: Lows,
}

/// The sliding-window minimum of a signal, bounded: marks oldest first, values strictly
/// increasing, each the lowest value read from its first time on. A mark stands for the readings
/// from `first` to `last` (at most one spacing, `window / (MAX_NEED_MARKS − 2)`, apart) and lives
/// until `last` leaves the window, so the low is never higher than the true low of the window and
/// never from more than one spacing before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lows {
    marks: Vec<LowMark>,
    /// Start of the unbroken run of readings the marks cover.
    since: Option<DateTime<Utc>>,
    /// Latest reading recorded.
    seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct LowMark {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    value: f64,
}

impl Eq for Lows {}

impl Lows {
    /// Records `value` read at `now`; a gap longer than `gap_allowed` since the last reading
    /// restarts the run (time nobody watched says nothing about growth).
    pub fn record(&mut self, value: f64, now: DateTime<Utc>, window: Duration, gap_allowed: Duration) {
        let seen = self.seen_at;
        let continues = seen.is_some_and(|seen| seen <= now && format::since(seen, now) <= gap_allowed);
        if !continues {
            // A reading older than one already recorded restarts the run from the newest time
            // seen: the window then has to pass again before a rise is trusted.
            *self = Self::default();
            self.since = Some(seen.filter(|&seen| seen > now).unwrap_or(now));
        }
        self.seen_at = Some(seen.map_or(now, |seen| seen.max(now)));
        let marks = &mut self.marks;
        while marks.last().is_some_and(|m| m.value >= value) {
            marks.pop();
        }
        let spacing = window / (MAX_NEED_MARKS as u32 - 2);
        match marks.last_mut() {
            // Within one spacing of the last mark (which is lower): it stands for this reading too.
            Some(m) if format::since(m.first, now) < spacing => m.last = now,
            _ => marks.push(LowMark {
                first: now,
                last: now,
                value,
            }),
        }
        marks.retain(|m| format::since(m.last, now) <= window);
        while marks.len() > MAX_NEED_MARKS {
            // Unreachable with the spacing above; merging keeps the lower value, longer.
            let m = marks.remove(1);
            if let Some(front) = marks.first_mut() {
                front.last = front.last.max(m.last);
            }
        }
    }

    /// How much `value` rose above the window's low; None until the run covers the window.
    pub fn rise(&self, value: f64, now: DateTime<Utc>, window: Duration) -> Option<f64> {
        let since = self.since?;
        if since >= now || format::since(since, now) <= window {
            return None;
        }
        let low = self.marks.first().map_or(value, |m| m.value);
        Some(value - low)
    }
}

/// One mark of the need history: `need` replicas were needed at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeedMark {
    pub at: DateTime<Utc>,
    pub need: u32,
}

/// Bound of the need history (it lives in status): past it the two oldest marks merge into one
/// that keeps the higher need until the later time, which can only hold replicas longer.
pub const MAX_NEED_MARKS: usize = 16;

impl Memory {
    /// Records `need` seen at `now` and forgets marks older than `window`.
    pub fn record_need(&mut self, need: u32, now: DateTime<Utc>, window: Duration) {
        let marks = &mut self.need_marks;
        marks.retain(|m| format::since(m.at, now) < window);
        while marks.last().is_some_and(|m| m.need <= need) {
            marks.pop();
        }
        marks.push(NeedMark { at: now, need });
        while marks.len() > MAX_NEED_MARKS {
            let first = marks.remove(0);
            if let Some(next) = marks.first_mut() {
                next.need = next.need.max(first.need);
            }
        }
    }

    /// The highest need recorded within `window` of `now`.
    pub fn window_need(&self, now: DateTime<Utc>, window: Duration) -> Option<u32> {
        self.need_marks
            .iter()
            .filter(|m| format::since(m.at, now) < window)
            .map(|m| m.need)
            .max()
    }
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
    /// The pre-warm floor sized from the crowd (preQueueDepth × expectedGrowth), 0 when none. It
    /// raises the floor like the schedule's pre-warm and enters the need history, so the window
    /// right after the on-sale does not scale in below it.
    pub prewarm: u32,
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
            Self::Up => Some(crate::status::reasons::SCALED_OUT),
            Self::Down => Some(crate::status::reasons::SCALED_IN),
            Self::Hold => None,
        }
    }

    /// The one note of a scaling change, in Events, logs and the simulator: e.g.
    /// `ScaledOut reservation 4→6: queueDepth 8,000 > 5,000` (`Held` for a hold).
    pub fn note(
        self,
        component: &str,
        from: impl std::fmt::Display,
        to: impl std::fmt::Display,
        why: &str,
    ) -> String {
        let verb = self.event_reason().unwrap_or("Held");
        format!("{verb} {component} {from}→{to}: {why}")
    }
}

/// Why a decision came out the way it did. A fixed set, so it is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A scale-out step matched and the cooldown had passed.
    StepAbove,
    /// The scale-in signal stayed below its threshold for the window and the cooldown had passed.
    BelowThreshold,
    /// The capacity need is above the replicas: straight to it.
    CapacityNeed,
    /// The highest need of the stabilization window is below the replicas: down to it.
    NeedFell,
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
    /// A step matched but replicas are already one step past the capacity need.
    StepPastNeed,
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
    pub const ALL: [Reason; 16] = [
        Self::StepAbove,
        Self::BelowThreshold,
        Self::CapacityNeed,
        Self::NeedFell,
        Self::StepPastNeed,
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
            Self::CapacityNeed => "CapacityNeed",
            Self::NeedFell => "NeedFell",
            Self::StepPastNeed => "StepPastNeed",
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
    /// With a capacity and a fresh capacity signal: the replicas it needs now (unbounded).
    pub need: Option<u32>,
}

impl Decision {
    /// The note of this decision from `from` replicas ([`Direction::note`]).
    pub fn summary(&self, component: &str, from: u32) -> String {
        self.direction.note(component, from, self.desired, &self.message)
    }
}

// === decide ===

/// Decides the replicas for one component. Pure: equal inputs give equal outputs.
///
/// The rules, each a function below, in the order they are consulted:
/// 1. [`bounds`]: `[min(floor, max), max]`; raising the floor or lowering max applies at once;
/// 2. [`health`]: a signal the policy uses that is failing, missing or older than two poll
///    intervals makes the signals unhealthy; unhealthy signals never scale in, and after
///    `fallback.afterStale` replicas are raised (never lowered) to `fallback.replicas`;
/// 3. evidence for scale-in: [`track_need`] (with a capacity: the need history) or
///    [`track_below_run`] (without: the unbroken run below `scaleIn.when`);
/// 4. [`scale_out_candidate`]: the capacity need at once, and the highest matching step per
///    signal (the largest increment across signals, once per `scaleOut.cooldown`; with a capacity
///    never past the need plus one step);
/// 5. [`scale_in_verdict`]: with a capacity down to the window's highest need; without, `remove`
///    once the signal stayed below for the window; after `scaleIn.cooldown`, never below the floor.
///
/// Floor, max and fallback changes do not start cooldowns: they are not reactions to load, and a
/// pre-warm step right before on-sale must not delay the first surge step.
pub fn decide(policy: &Policy, inputs: &Inputs<'_>) -> Decision {
    decide_as(policy, inputs, true)
}

/// [`decide`] without the human text: the same decision with `message` left empty (signal
/// problems are still named: they are the status condition's). For a caller that only commits a
/// hold (the autoscaler's settled events, thousands per tick), where formatting the explanation
/// cost more than the decision.
pub fn decide_quiet(policy: &Policy, inputs: &Inputs<'_>) -> Decision {
    decide_as(policy, inputs, false)
}

fn decide_as(policy: &Policy, inputs: &Inputs<'_>, explain: bool) -> Decision {
    let ctx = Ctx::new(policy, inputs, explain);
    let mut memory = inputs.memory.clone();
    let health = health(&ctx, &mut memory);
    let healthy = matches!(health, SignalHealth::Healthy);
    let mut explained = None;
    let need = match &policy.capacity {
        Some(cap) => track_need(&ctx, cap, healthy, &mut memory, &mut explained),
        None => {
            track_below_run(&ctx, &mut memory);
            None
        }
    };
    let fallback = FallbackRule::new(&ctx, &health);
    let out = |d: Decision| Decision {
        need,
        ..fallback.apply(d, ctx.current)
    };

    let explained = explained.as_deref();
    if let Some(d) = scale_out_candidate(&ctx, need, explained, &mut memory, &health) {
        return out(d);
    }
    if let SignalHealth::Unhealthy { problems, .. } = &health {
        let message = ctx.say(|| format!("{}; holding, no scale-in on stale data", problems.join("; ")));
        return out(bounds(
            &ctx,
            memory,
            health.clone(),
            Reason::SignalsUnhealthy,
            message,
        ));
    }
    out(scale_in_verdict(&ctx, need, explained, memory, health))
}

/// The inputs with the bounds applied, and the helpers every rule shares.
struct Ctx<'a> {
    policy: &'a Policy,
    floor: u32,
    max: u32,
    current: u32,
    /// `current` within the bounds: what the rules start from.
    base: u32,
    on_sale: bool,
    samples: &'a Samples,
    now: DateTime<Utc>,
    freshness: Duration,
    prewarm: u32,
    /// Whether decision messages are written ([`decide_quiet`]: not).
    explain: bool,
}

impl<'a> Ctx<'a> {
    fn new(policy: &'a Policy, inputs: &Inputs<'a>, explain: bool) -> Self {
        let Inputs {
            floor,
            max,
            current,
            on_sale,
            samples,
            memory: _,
            now,
            prewarm,
        } = *inputs;
        let floor = floor.max(prewarm).min(max);
        Self {
            policy,
            floor,
            max,
            current,
            base: current.clamp(floor, max),
            on_sale,
            samples,
            now,
            freshness: policy.freshness(),
            prewarm,
            explain,
        }
    }

    /// The decision message `text` builds, or nothing when not explaining.
    fn say(&self, text: impl FnOnce() -> String) -> String {
        if self.explain { text() } else { String::new() }
    }

    /// The sample of `signal` if it was read successfully within the freshness bound.
    fn fresh(&self, signal: &Signal) -> Option<Sample> {
        match self.samples.get(signal) {
            Some(Ok(s)) if format::since(s.observed_at, self.now) <= self.freshness => Some(*s),
            _ => None,
        }
    }

    /// The waiting queue must be empty before a scale-in during the sale (step rules only: a
    /// capacity need already counts the queue).
    fn queue_check(&self) -> bool {
        self.on_sale && !self.policy.scale_in.allow_while_queued && self.policy.capacity.is_none()
    }

    /// Remaining cooldown, None when a scaling is allowed now. At most one scaling per instant,
    /// so deciding twice with the same inputs changes nothing the second time.
    fn cooldown_left(&self, last: Option<DateTime<Utc>>, cooldown: Duration) -> Option<Duration> {
        let last = last?;
        let elapsed = format::since(last, self.now);
        if self.now <= last {
            Some(cooldown.max(Duration::from_millis(1)))
        } else if elapsed < cooldown {
            Some(cooldown.saturating_sub(elapsed))
        } else {
            None
        }
    }
}

// === rule: bounds ===

/// The outcome of the bounds alone, used when no rule moves replicas: the floor raised or max
/// lowered applies at once; otherwise a hold with `reason`.
fn bounds(ctx: &Ctx<'_>, memory: Memory, health: SignalHealth, reason: Reason, message: String) -> Decision {
    let Ctx {
        floor,
        max,
        current,
        base,
        ..
    } = *ctx;
    let (direction, reason, message) = match base.cmp(&current) {
        std::cmp::Ordering::Greater => (
            Direction::Up,
            Reason::FloorRaised,
            ctx.say(|| format!("floor {floor} > {current} replicas ({message})")),
        ),
        std::cmp::Ordering::Less => (
            Direction::Down,
            Reason::MaxLowered,
            ctx.say(|| format!("maxReplicas {max} < {current} replicas ({message})")),
        ),
        std::cmp::Ordering::Equal => (Direction::Hold, reason, message),
    };
    Decision {
        desired: base,
        direction,
        reason,
        message,
        health,
        memory,
        need: None,
    }
}

// === rule: signal health ===

/// Every signal the decision needs is read, and fresh; else Unhealthy with each problem named.
fn health(ctx: &Ctx<'_>, memory: &mut Memory) -> SignalHealth {
    let mut needed = ctx.policy.signals();
    if ctx.queue_check() && !needed.contains(&Signal::QueueDepth) {
        needed.push(Signal::QueueDepth);
    }
    let mut problems = Vec::new();
    let mut failure_reason = "SignalMissing";
    for signal in &needed {
        match ctx.samples.get(signal) {
            None => problems.push(format!("{signal}: no reading")),
            Some(Err(f)) => {
                failure_reason = f.reason;
                problems.push(format!("{signal}: {}", f.message));
            }
            Some(Ok(s)) if ctx.fresh(signal).is_none() => {
                failure_reason = "SignalStale";
                problems.push(format!(
                    "{signal}: stale, last observed {} ago",
                    format::duration(format::since(s.observed_at, ctx.now))
                ));
            }
            Some(Ok(_)) => {}
        }
    }
    if problems.is_empty() {
        memory.stale_since = None;
        SignalHealth::Healthy
    } else {
        SignalHealth::Unhealthy {
            since: *memory.stale_since.get_or_insert(ctx.now),
            reason: failure_reason,
            problems,
        }
    }
}

// === rule: scale-in evidence ===

/// Without a capacity: `belowSince`/`belowSeenAt` follow the unbroken run of fresh readings of
/// the scale-in signal below its threshold; a gap longer than max(freshness, afterStale) (the
/// operator was down) restarts it.
fn track_below_run(ctx: &Ctx<'_>, memory: &mut Memory) {
    let rule = &ctx.policy.scale_in;
    let gap_allowed = ctx.freshness.max(ctx.policy.fallback.after_stale);
    match ctx.fresh(&rule.signal) {
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
}

/// With a capacity: the need now (None when the capacity signal is not fresh or has no data),
/// recorded in the need history together with the crowd-sized pre-warm floor. `belowSince` is
/// the start of the evidence: the first decision since the signals were last unhealthy or since
/// a gap in the decisions. The
/// history survives restarts (it is in status) and unhealthy spells (it can only hold replicas).
fn track_need(
    ctx: &Ctx<'_>,
    cap: &super::policy::Capacity,
    healthy: bool,
    memory: &mut Memory,
    explained: &mut Option<String>,
) -> Option<u32> {
    let window = ctx.policy.scale_in.stabilization_window;
    let gap_allowed = ctx.freshness.max(ctx.policy.fallback.after_stale);
    let sized = ctx.fresh(&cap.signal).and_then(|s| {
        if !s.value.is_finite() {
            return None;
        }
        memory
            .lows
            .record(s.value, s.observed_at, cap.growth_window, gap_allowed);
        let rise = memory.lows.rise(s.value, s.observed_at, cap.growth_window);
        let need = cap.need_after_rise(s.value, rise)?;
        Some((
            need,
            ctx.explain.then(|| cap.explain_after_rise(need, s.value, rise)),
        ))
    });
    let need = sized.as_ref().map(|(n, _)| *n);
    *explained = sized.and_then(|(_, e)| e);
    if let Some(n) = need {
        memory.record_need(n.max(ctx.prewarm), ctx.now, window);
    }
    if healthy && need.is_some() {
        // A gap longer than max(freshness, afterStale) (the operator was down, leadership moved)
        // restarts the evidence: time nobody watched is not evidence.
        let gap_allowed = ctx.freshness.max(ctx.policy.fallback.after_stale);
        let continues = matches!(
            (memory.below_since, memory.below_seen_at),
            (Some(_), Some(seen)) if seen <= ctx.now && format::since(seen, ctx.now) <= gap_allowed
        );
        if !continues {
            memory.below_since = Some(ctx.now);
        }
        memory.below_seen_at = Some(ctx.now);
    } else {
        memory.below_since = None;
        memory.below_seen_at = None;
    }
    need
}

// === rule: scale-out ===

/// The best matching step: per signal the one with the highest threshold, across signals the
/// one that adds the most.
struct StepMatch<'a> {
    signal: &'a Signal,
    value: f64,
    above: f64,
    target: u32,
}

fn best_step<'a>(ctx: &Ctx<'a>, need: Option<u32>) -> Option<StepMatch<'a>> {
    let mut per_signal: BTreeMap<&Signal, (f64, &super::policy::Step)> = BTreeMap::new();
    for step in &ctx.policy.scale_out.steps {
        let Some(s) = ctx.fresh(&step.signal) else {
            continue;
        };
        if s.value > step.above {
            match per_signal.get(&step.signal) {
                Some((_, prev)) if prev.above > step.above => {}
                _ => {
                    per_signal.insert(&step.signal, (s.value, step));
                }
            }
        }
    }
    let mut best: Option<StepMatch<'_>> = None;
    for (signal, (value, step)) in per_signal {
        let inc = step.increment(ctx.base);
        let inc = ctx.policy.scale_out.max_step.map_or(inc, |cap| inc.min(cap));
        // With a known need a step is a boost, not a ratchet: at most one step past the need.
        let target = match need {
            Some(n) => ctx.base.min(n).saturating_add(inc).max(n),
            None => ctx.base.saturating_add(inc),
        }
        .min(ctx.max);
        if best.as_ref().is_none_or(|b| target > b.target) {
            best = Some(StepMatch {
                signal,
                value,
                above: step.above,
                target,
            });
        }
    }
    best
}

/// Scale-out, or a hold because a step matched (cooldown, at max, past the need): Some ends the
/// decision; None lets the scale-in rules speak.
fn scale_out_candidate(
    ctx: &Ctx<'_>,
    need: Option<u32>,
    explained: Option<&str>,
    memory: &mut Memory,
    health: &SignalHealth,
) -> Option<Decision> {
    let base = ctx.base;
    let capacity = ctx.policy.capacity.as_ref();
    let to_need = need.map(|n| n.min(ctx.max)).filter(|&t| t > base);
    let step = best_step(ctx, need);
    let step_what = step.as_ref().map(|m| {
        ctx.say(|| {
            format!(
                "{} {} > {}",
                m.signal,
                format::value(m.value),
                format::value(m.above)
            )
        })
    });
    let step_left = ctx.cooldown_left(memory.last_scale_out, ctx.policy.scale_out.cooldown);
    let step_target = step
        .as_ref()
        .filter(|m| m.target > base && step_left.is_none())
        .map(|m| m.target);

    let capacity_target = to_need.filter(|&t| step_target.is_none_or(|s| t >= s));
    if let (Some(target), Some(cap)) = (capacity_target, capacity) {
        let value = ctx.fresh(&cap.signal).map_or(f64::NAN, |s| s.value);
        let n = need.unwrap_or(target);
        let message = ctx.say(|| {
            let mut message = format!(
                "{} {} {}",
                cap.signal,
                format::value(value),
                explained.map_or_else(|| cap.explain(n), str::to_owned)
            );
            if target < n {
                message.push_str(&format!(", capped at maxReplicas {}", ctx.max));
            }
            message
        });
        memory.last_scale_out = Some(ctx.now);
        return Some(Decision {
            desired: target,
            direction: Direction::Up,
            reason: Reason::CapacityNeed,
            message,
            health: health.clone(),
            memory: memory.clone(),
            need,
        });
    }
    if let (Some(target), Some(what)) = (step_target, &step_what) {
        memory.last_scale_out = Some(ctx.now);
        return Some(Decision {
            desired: target,
            direction: Direction::Up,
            reason: Reason::StepAbove,
            message: what.clone(),
            health: health.clone(),
            memory: memory.clone(),
            need,
        });
    }
    let (m, what) = (step?, step_what?);
    if capacity.is_some() && m.target <= base && base < ctx.max {
        // Already at or past the boosted need: the scale-in rule decides (it keeps the boost).
        return None;
    }
    let (reason, message) = if m.target <= base && base >= ctx.max {
        (
            Reason::AtMaxReplicas,
            ctx.say(|| format!("{what}, already at maxReplicas {}", ctx.max)),
        )
    } else if m.target <= base {
        let n = need.unwrap_or(base);
        (
            Reason::StepPastNeed,
            ctx.say(|| format!("{what}, already one step past the need ({n})")),
        )
    } else {
        let left = step_left.unwrap_or_default();
        (
            Reason::ScaleOutCooldown,
            ctx.say(|| format!("{what}, scale-out cooldown has {} left", format::duration(left))),
        )
    };
    Some(bounds(ctx, memory.clone(), health.clone(), reason, message))
}

// === rule: scale-in ===

/// Scale-in, or the hold that explains why not. Only reached with healthy signals.
fn scale_in_verdict(
    ctx: &Ctx<'_>,
    need: Option<u32>,
    explained: Option<&str>,
    memory: Memory,
    health: SignalHealth,
) -> Decision {
    match &ctx.policy.capacity {
        Some(cap) => scale_in_to_need(ctx, cap, need, explained, memory, health),
        None => scale_in_below_threshold(ctx, memory, health),
    }
}

/// With a capacity: down to the highest need of the stabilization window, as many replicas at
/// once as that allows, once the evidence covers the window and `scaleIn.cooldown` has passed.
fn scale_in_to_need(
    ctx: &Ctx<'_>,
    cap: &super::policy::Capacity,
    need: Option<u32>,
    explained: Option<&str>,
    mut memory: Memory,
    health: SignalHealth,
) -> Decision {
    let window = ctx.policy.scale_in.stabilization_window;
    let Some(n) = need else {
        let msg = ctx.say(|| format!("{}: no data, holding", cap.signal));
        return bounds(ctx, memory, health, Reason::WithinThresholds, msg);
    };
    let value = ctx.fresh(&cap.signal).map_or(f64::NAN, |s| s.value);
    let what = ctx.say(|| {
        format!(
            "{} {} {}",
            cap.signal,
            format::value(value),
            explained.map_or_else(|| cap.explain(n), str::to_owned)
        )
    });
    let highest = memory.window_need(ctx.now, window).unwrap_or(n).max(n);
    // A matching step keeps its boost (need + one step) while it matches, so scale-in and the
    // step never take turns.
    let boost = best_step(ctx, need).map(|m| (m.target, m.signal, m.value, m.above));
    let target = highest.max(boost.map_or(0, |b| b.0)).max(ctx.floor).min(ctx.max);
    if target >= ctx.base {
        let (reason, msg) = if n >= ctx.base {
            (
                Reason::WithinThresholds,
                ctx.say(|| format!("{what}, at {} replicas", ctx.base)),
            )
        } else if let Some((_, signal, value, above)) = boost.filter(|b| b.0 >= ctx.base) {
            let step = || format!("{signal} {} > {}", format::value(value), format::value(above));
            (
                Reason::StepPastNeed,
                ctx.say(|| format!("{}, already one step past the need ({n})", step())),
            )
        } else if highest > ctx.floor {
            let within = || format::duration(window);
            (
                Reason::Stabilizing,
                ctx.say(|| format!("{what}; {highest} needed within the last {}", within())),
            )
        } else {
            (
                Reason::AtFloor,
                ctx.say(|| format!("{what}, at the floor ({})", ctx.floor)),
            )
        };
        return bounds(ctx, memory, health, reason, msg);
    }
    let observed = memory
        .below_since
        .map_or(Duration::ZERO, |since| format::since(since, ctx.now));
    if observed < window {
        let msg = ctx.say(|| {
            format!(
                "{what}; need observed for {} of {}",
                format::duration(observed),
                format::duration(window)
            )
        });
        return bounds(ctx, memory, health, Reason::Stabilizing, msg);
    }
    let last_any = memory.last_scale_out.max(memory.last_scale_in);
    if let Some(left) = ctx.cooldown_left(last_any, ctx.policy.scale_in.cooldown) {
        let msg = ctx.say(|| format!("{what}, scale-in cooldown has {} left", format::duration(left)));
        return bounds(ctx, memory, health, Reason::ScaleInCooldown, msg);
    }
    memory.last_scale_in = Some(ctx.now);
    let message = if target > n {
        let why = if target == ctx.floor {
            "the floor"
        } else if boost.is_some_and(|b| b.0 == target) && target > highest {
            "the need plus one step"
        } else {
            "the highest need of the window"
        };
        ctx.say(|| format!("{what}; down to {target}, {why}"))
    } else {
        what
    };
    Decision {
        desired: target,
        direction: Direction::Down,
        reason: Reason::NeedFell,
        message,
        health,
        memory,
        need,
    }
}

/// Without a capacity: `remove` replicas once the signal stayed below `scaleIn.when` for the
/// whole window, the cooldown has passed, and (during the sale) nobody waits in the queue.
fn scale_in_below_threshold(ctx: &Ctx<'_>, mut memory: Memory, health: SignalHealth) -> Decision {
    let rule = &ctx.policy.scale_in;
    let Some(s) = ctx.fresh(&rule.signal) else {
        // Unreachable while healthy (the scale-in signal is among the needed ones), but a hold is
        // the safe answer anyway.
        return bounds(
            ctx,
            memory,
            health,
            Reason::SignalsUnhealthy,
            ctx.say(|| "no scale-in reading".into()),
        );
    };
    if s.value.is_nan() || s.value >= rule.below {
        let msg = ctx.say(|| format!("{} {} within thresholds", rule.signal, format::value(s.value)));
        return bounds(ctx, memory, health, Reason::WithinThresholds, msg);
    }
    let what = ctx.say(|| {
        format!(
            "{} {} < {}",
            rule.signal,
            format::value(s.value),
            format::value(rule.below)
        )
    });
    let stayed = match (memory.below_since, memory.below_seen_at) {
        (Some(a), Some(b)) => format::since(a, b),
        _ => Duration::ZERO,
    };
    if stayed < rule.stabilization_window {
        let msg = ctx.say(|| {
            format!(
                "{what} for {} of {}",
                format::duration(stayed),
                format::duration(rule.stabilization_window)
            )
        });
        return bounds(ctx, memory, health, Reason::Stabilizing, msg);
    }
    let what = ctx.say(|| format!("{what} for {}", format::duration(stayed)));
    if ctx.base <= ctx.floor {
        let msg = ctx.say(|| format!("{what}, at the floor ({})", ctx.floor));
        return bounds(ctx, memory, health, Reason::AtFloor, msg);
    }
    if ctx.queue_check() {
        let queued = ctx.fresh(&Signal::QueueDepth).map_or(f64::NAN, |q| q.value);
        if queued.is_nan() || queued > 0.0 {
            let msg = ctx.say(|| {
                format!(
                    "{what}, but {} users still queued during the sale",
                    format::value(queued)
                )
            });
            return bounds(ctx, memory, health, Reason::QueueNotEmpty, msg);
        }
    }
    let last_any = memory.last_scale_out.max(memory.last_scale_in);
    if let Some(left) = ctx.cooldown_left(last_any, rule.cooldown) {
        let msg = ctx.say(|| format!("{what}, scale-in cooldown has {} left", format::duration(left)));
        return bounds(ctx, memory, health, Reason::ScaleInCooldown, msg);
    }
    memory.last_scale_in = Some(ctx.now);
    Decision {
        desired: ctx.base.saturating_sub(rule.remove).max(ctx.floor),
        direction: Direction::Down,
        reason: Reason::BelowThreshold,
        message: what,
        health,
        memory,
        need: None,
    }
}

// === rule: fallback ===

/// After `fallback.afterStale` of unhealthy signals, raise (never lower) to `fallback.replicas`.
struct FallbackRule {
    due: bool,
    target: u32,
    explain: bool,
}

impl FallbackRule {
    fn new(ctx: &Ctx<'_>, health: &SignalHealth) -> Self {
        let due = match health {
            SignalHealth::Unhealthy { since, .. } => {
                format::since(*since, ctx.now) >= ctx.policy.fallback.after_stale
            }
            SignalHealth::Healthy => false,
        };
        Self {
            due,
            target: ctx.policy.fallback.replicas.min(ctx.max),
            explain: ctx.explain,
        }
    }

    fn apply(&self, d: Decision, current: u32) -> Decision {
        let target = self.target;
        if !self.due || d.desired >= target {
            return d;
        }
        let message = match &d.health {
            _ if !self.explain => String::new(),
            SignalHealth::Unhealthy { problems, .. } => format!(
                "signals unhealthy ({}); holding fallback {target} replicas",
                problems.join("; ")
            ),
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
}
