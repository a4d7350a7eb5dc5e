//! Properties of the pure scaling policy, over random policies and random tick sequences.
//!
//! Each case replays a random sequence of ticks (random gaps, values, failures, stale samples,
//! floor and max changes) through `decide`, carrying the memory forward like the operator does,
//! and checks every decision against an independent record of what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use tiketi_operator::autoscaler::{
    Capacity, Decision, Direction, Fallback, Inputs, Memory, Policy, Reason, Samples, ScaleIn, ScaleOut,
    Signal, SignalFailure, SignalHealth, Step, decide, decide_quiet,
};

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap()
}

fn at(ms: i64) -> DateTime<Utc> {
    epoch() + chrono::Duration::milliseconds(ms)
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::collection::vec((1_000.0..40_000.0f64, 0u32..8, prop::option::of(1u32..200)), 1..4),
        0u64..400,
        prop::option::of(1u32..20),
        (100.0..10_000.0f64, 1u32..4, 0u64..600, 0u64..900, any::<bool>()),
        (1u64..60, 1u32..30),
        1u64..5,
        prop::option::of((100.0..5_000.0f64, 0.0..1.0f64, prop_oneof![Just(0u64), 1u64..120])),
    )
        .prop_map(
            |(
                mut steps,
                out_cd,
                max_step,
                (below, remove, window, in_cd, allow),
                (stale, fb),
                poll,
                capacity,
            )| {
                steps.sort_by(|a, b| a.0.total_cmp(&b.0));
                steps.dedup_by(|a, b| a.0 == b.0);
                let steps = steps
                    .into_iter()
                    .map(|(above, add, pct)| Step {
                        signal: Signal::QueueDepth,
                        above,
                        add: if add == 0 && pct.is_none() { 1 } else { add },
                        add_percent: pct,
                    })
                    .collect();
                Policy {
                    poll_interval: Duration::from_secs(poll),
                    scale_out: ScaleOut {
                        steps,
                        cooldown: Duration::from_secs(out_cd),
                        max_step,
                    },
                    scale_in: ScaleIn {
                        signal: Signal::QueueDepth,
                        below,
                        remove,
                        stabilization_window: Duration::from_secs(window),
                        cooldown: Duration::from_secs(in_cd),
                        allow_while_queued: allow,
                    },
                    fallback: Fallback {
                        after_stale: Duration::from_secs(stale),
                        replicas: fb,
                    },
                    capacity: capacity.map(|(per_replica, headroom, growth)| Capacity {
                        signal: Signal::QueueDepth,
                        per_replica,
                        headroom,
                        growth_window: Duration::from_secs(growth),
                    }),
                }
            },
        )
}

/// One tick of a scenario.
#[derive(Debug, Clone)]
struct Tick {
    /// Milliseconds since the previous tick.
    gap_ms: i64,
    /// None: the read failed. Some((value, age_ms)): a sample `age_ms` old.
    reading: Option<(f64, i64)>,
    floor: u32,
    max: u32,
    on_sale: bool,
    /// The crowd-sized pre-warm floor (0: none).
    prewarm: u32,
}

fn tick() -> impl Strategy<Value = Tick> {
    (
        prop_oneof![4 => 1_000i64..4_000, 1 => 4_000i64..120_000, 1 => 0i64..1],
        prop_oneof![
            6 => (prop_oneof![0.0..2_000.0f64, 0.0..50_000.0f64, Just(0.0)], prop_oneof![9 => Just(0i64), 1 => 0i64..30_000])
                .prop_map(Some),
            1 => Just(None),
        ],
        prop_oneof![5 => Just(2u32), 1 => 1u32..30],
        prop_oneof![5 => Just(60u32), 1 => 1u32..80],
        any::<bool>(),
        prop_oneof![4 => Just(0u32), 1 => 1u32..40],
    )
        .prop_map(|(gap_ms, reading, floor, max, on_sale, prewarm)| Tick { gap_ms, reading, floor, max, on_sale, prewarm })
}

fn samples_for(t: &Tick, now: DateTime<Utc>) -> Samples {
    match t.reading {
        Some((v, age)) => Samples::new().ok(Signal::QueueDepth, v, now - chrono::Duration::milliseconds(age)),
        None => Samples::new().failed(
            Signal::QueueDepth,
            SignalFailure {
                reason: "Timeout",
                message: "timed out".into(),
            },
        ),
    }
}

/// What the checker itself remembers (independently of `Memory`).
#[derive(Default)]
struct Record {
    /// Every tick: (when the sample was observed, or the tick time when there was none; the
    /// fresh value, or None when failing/stale).
    history: Vec<(DateTime<Utc>, Option<f64>)>,
    last_out: Option<DateTime<Utc>>,
    last_in: Option<DateTime<Utc>>,
    /// With a capacity: (tick time, need) of every fresh reading, with the pre-warm floor.
    needs: Vec<(DateTime<Utc>, u32)>,
}

fn since(a: DateTime<Utc>, b: DateTime<Utc>) -> Duration {
    (b - a).to_std().unwrap_or(Duration::ZERO)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_decision_keeps_the_rules(policy in policy(), ticks in prop::collection::vec(tick(), 1..120), start in 0u32..60) {
        let mut memory = Memory::default();
        let mut current = start;
        let mut now_ms = 0i64;
        let mut rec = Record::default();
        let freshness = policy.poll_interval * 2;
        let gap_allowed = freshness.max(policy.fallback.after_stale);
        for t in &ticks {
            now_ms += t.gap_ms;
            let now = at(now_ms);
            let samples = samples_for(t, now);
            let fresh = t.reading.filter(|&(_, age)| Duration::from_millis(age as u64) <= freshness).map(|(v, _)| v);
            let observed = t.reading.map_or(now, |(_, age)| now - chrono::Duration::milliseconds(age));
            rec.history.push((observed, fresh));
            let inputs = Inputs { floor: t.floor, prewarm: t.prewarm, max: t.max, current, on_sale: t.on_sale, samples: &samples, memory: &memory, now };
            let d = decide(&policy, &inputs);
            // Without its text (the settled events' path) the decision is the same.
            prop_assert_eq!(decide_quiet(&policy, &inputs), Decision { message: String::new(), ..d.clone() });
            let lo = t.floor.max(t.prewarm).min(t.max);
            // The need lies between the value with the headroom capped at the exact rise within
            // the growth window (the memory's low may be older, never newer) and the full headroom.
            let full = policy.capacity.as_ref().and_then(|c| fresh.and_then(|v| c.need(v)));
            let least = policy.capacity.as_ref().and_then(|c| {
                let v = fresh?;
                let low = rec.history.iter().filter(|(at, _)| since(*at, observed) <= c.growth_window)
                    .filter_map(|(_, x)| *x).chain(std::iter::once(v)).fold(f64::INFINITY, f64::min);
                c.need_after_rise(v, Some(v - low))
            });
            prop_assert_eq!(d.need.is_some(), full.is_some(), "need reported");
            if let (Some(n), Some(lo_n), Some(hi_n)) = (d.need, least, full) {
                prop_assert!(lo_n <= n && n <= hi_n, "need {n} outside [{lo_n}, {hi_n}]");
            }
            let need = d.need;
            if let Some(n) = need {
                rec.needs.push((now, n.max(t.prewarm)));
            }
            let base = current.clamp(lo, t.max);

            // Replicas always within [floor, max].
            prop_assert!(d.desired >= lo && d.desired <= t.max, "{} outside [{lo}, {}]", d.desired, t.max);

            // Direction agrees with the numbers.
            let expected = match d.desired.cmp(&current) {
                std::cmp::Ordering::Greater => Direction::Up,
                std::cmp::Ordering::Less => Direction::Down,
                std::cmp::Ordering::Equal => Direction::Hold,
            };
            prop_assert_eq!(d.direction, expected);

            // With a capacity, replicas never go above the need plus one step (or the floor, or
            // the fallback, or where they already were).
            if let Some(cap) = &policy.capacity {
                let step = policy.scale_out.steps.iter().map(|s| {
                    let inc = s.increment(base);
                    policy.scale_out.max_step.map_or(inc, |m| inc.min(m))
                }).max().unwrap_or(0);
                let ceiling = need.map_or(0, |n| n.saturating_add(step)).max(lo).max(base)
                    .max(if d.reason == Reason::StaleFallback { policy.fallback.replicas } else { 0 });
                prop_assert!(d.desired <= ceiling.min(t.max).max(lo),
                    "{} above need {:?} + step {step} (base {base}, {:?}, per {})", d.desired, need, d.reason, cap.per_replica);
                if d.reason == Reason::CapacityNeed {
                    prop_assert_eq!(Some(d.desired), need.map(|n| n.min(t.max)), "capacity scale-out not to the need");
                }
                // Down to the need only: never below the highest need of the window, never on stale data.
                if d.reason == Reason::NeedFell {
                    prop_assert!(fresh.is_some(), "NeedFell on stale data");
                    let window = policy.scale_in.stabilization_window;
                    let highest = rec.needs.iter().filter(|(at, _)| since(*at, now) < window).map(|n| n.1).max().unwrap_or(0);
                    prop_assert!(d.desired >= highest.min(t.max).max(lo), "{} below the window's need {highest}", d.desired);
                    let last_any = rec.last_out.max(rec.last_in);
                    if let Some(last) = last_any {
                        prop_assert!(now > last && since(last, now) >= policy.scale_in.cooldown, "scale-in inside the cooldown");
                    }
                    rec.last_in = Some(now);
                }
                if d.reason == Reason::CapacityNeed {
                    rec.last_out = Some(now);
                }
            }

            // No scale-out inside the cooldown.
            if d.reason == Reason::StepAbove {
                if let Some(last) = rec.last_out {
                    prop_assert!(now > last && since(last, now) >= policy.scale_out.cooldown,
                        "scale-out {:?} after the last one", since(last, now));
                }
                rec.last_out = Some(now);
            }

            // Without a capacity a matching step never lowers replicas (with one, the step is a
            // boost on top of the need, and scale-in may come down to it).
            if policy.capacity.is_none() && fresh.is_some_and(|v| policy.scale_out.steps.iter().any(|s| v > s.above)) {
                prop_assert!(d.desired >= base, "a matching step lowered {base} to {}", d.desired);
            }

            // Stale or failing signals never scale in, and the fallback never lowers.
            if fresh.is_none() {
                let unhealthy = matches!(d.health, SignalHealth::Unhealthy { .. });
                prop_assert!(unhealthy, "stale data reported healthy");
                prop_assert!(d.desired >= base, "scaled in on stale data: {base} → {}", d.desired);
            }

            // Scale-in only after the whole window of fresh, below-threshold, unbroken observations,
            // after the cooldown since the last scaling of either direction, never below the floor,
            // and not while users are queued during the sale unless allowed.
            if d.reason == Reason::BelowThreshold {
                let rule = &policy.scale_in;
                prop_assert!(d.desired >= lo);
                let v = fresh.unwrap();
                prop_assert!(v < rule.below);
                if t.on_sale && !rule.allow_while_queued {
                    prop_assert!(v <= 0.0, "scaled in with {v} queued during the sale");
                }
                // Walk back through the history: every observation in the window must be fresh and
                // below, in order, with no gap longer than allowed, and the run of observations must
                // span the whole window (measured between observation times, when the values held).
                let mut covered = Duration::ZERO;
                let latest = rec.history.last().map_or(now, |h| h.0);
                let mut newer = latest;
                let mut ok = false;
                for &(when, value) in rec.history.iter().rev() {
                    let Some(value) = value else { break };
                    if value >= rule.below || when > newer || since(when, newer) > gap_allowed { break; }
                    newer = when;
                    covered = since(when, latest);
                    if covered >= rule.stabilization_window { ok = true; break; }
                }
                prop_assert!(ok, "scale-in after only {covered:?} of {:?} below", rule.stabilization_window);
                let last_any = rec.last_out.max(rec.last_in);
                if let Some(last) = last_any {
                    prop_assert!(now > last && since(last, now) >= rule.cooldown, "scale-in inside the cooldown");
                }
                rec.last_in = Some(now);
            }
            if d.direction == Direction::Down {
                let allowed = matches!(d.reason, Reason::BelowThreshold | Reason::NeedFell | Reason::MaxLowered | Reason::StaleFallback);
                prop_assert!(allowed, "down for {:?}", d.reason);
                if !matches!(d.reason, Reason::BelowThreshold | Reason::NeedFell) {
                    prop_assert_eq!(d.desired, t.max, "only a lowered max may cut replicas without the rule");
                }
            }

            // Idempotent: deciding again at the same instant with the outcome applied changes nothing.
            let again = decide(&policy, &Inputs { current: d.desired, memory: &d.memory, ..inputs });
            prop_assert_eq!(again.desired, d.desired, "second decision moved: {:?} then {:?}", d.reason, again.reason);
            prop_assert_eq!(&again.memory, &d.memory);

            memory = d.memory;
            current = d.desired;
        }
    }

    #[test]
    fn pre_warm_floor_applies_at_once_even_inside_cooldowns(
        floor in 3u32..50, current in 1u32..3, value in 0.0..100_000.0f64, since_out in 0i64..180
    ) {
        let policy = Policy::default();
        let samples = Samples::new().ok(Signal::QueueDepth, value, at(1_000_000));
        let memory = Memory { last_scale_out: Some(at(1_000_000 - since_out * 1000)), ..Memory::default() };
        let d = decide(&policy, &Inputs { floor, prewarm: 0, max: 100, current, on_sale: false, samples: &samples, memory: &memory, now: at(1_000_000) });
        prop_assert!(d.desired >= floor);
    }

    #[test]
    fn fallback_raises_to_its_replicas_after_after_stale_but_never_lowers(
        current in 1u32..60, stale_for in 0u64..120
    ) {
        let policy = Policy::default();
        let now = at(1_000_000);
        let samples = Samples::new().failed(Signal::QueueDepth, SignalFailure { reason: "Timeout", message: "t".into() });
        let memory = Memory { stale_since: Some(now - chrono::Duration::seconds(stale_for as i64)), ..Memory::default() };
        let d = decide(&policy, &Inputs { floor: 1, prewarm: 0, max: 100, current, on_sale: true, samples: &samples, memory: &memory, now });
        let due = Duration::from_secs(stale_for) >= policy.fallback.after_stale;
        let want = if due { current.max(policy.fallback.replicas) } else { current };
        prop_assert_eq!(d.desired, want);
    }

    /// The headroom covers growth only: over a smooth random walk read every poll, the need is
    /// the value plus `min(headroom × value, rise)`, where the rise is measured from a low no
    /// newer than the growth window's start and no older than one mark spacing plus one poll
    /// before it; before the run covers a whole window, the full headroom.
    #[test]
    fn headroom_is_spent_on_growth_only(
        steps in prop::collection::vec(-0.04..0.05f64, 20..200),
        start in 1_000.0..60_000.0f64,
        headroom in 0.05..1.0f64,
        window_s in 10u64..120,
        poll_s in 1u64..4,
    ) {
        let cap = Capacity {
            signal: Signal::QueueDepth,
            per_replica: 1_000.0,
            headroom,
            growth_window: Duration::from_secs(window_s),
        };
        let policy = Policy {
            poll_interval: Duration::from_secs(poll_s),
            capacity: Some(cap.clone()),
            scale_out: ScaleOut { steps: Vec::new(), ..Policy::default().scale_out },
            ..Policy::default()
        };
        let window = cap.growth_window;
        let spacing = window / 14;
        let poll = policy.poll_interval;
        let mut memory = Memory::default();
        let mut history: Vec<(DateTime<Utc>, f64)> = Vec::new();
        let mut value = start;
        let mut current = 1;
        for (i, step) in steps.iter().enumerate() {
            value = (value * (1.0 + step)).max(0.0);
            let now = at(i as i64 * poll.as_millis() as i64);
            history.push((now, value));
            let samples = Samples::new().ok(Signal::QueueDepth, value, now);
            let d = decide(&policy, &Inputs { floor: 1, prewarm: 0, max: 10_000, current, on_sale: true, samples: &samples, memory: &memory, now });
            let n = d.need.expect("a fresh reading has a need");
            let low_over = |span: Duration| history.iter().filter(|(t, _)| since(*t, now) <= span).map(|h| h.1).fold(f64::INFINITY, f64::min);
            if since(history[0].0, now) <= window {
                prop_assert_eq!(n, (value * (1.0 + headroom) / 1_000.0).ceil() as u32, "full headroom before the window is covered");
            } else {
                // Computed here, not with the crate's own sizing.
                let need_with = |low: f64| ((value + (value * headroom).min((value - low).max(0.0))) / 1_000.0).ceil() as u32;
                let most = need_with(low_over(window + spacing + poll));
                let least = need_with(low_over(window));
                prop_assert!(least <= n && n <= most, "need {n} outside [{least}, {most}] at {value}");
            }
            memory = d.memory;
            current = d.desired;
        }
    }
}
