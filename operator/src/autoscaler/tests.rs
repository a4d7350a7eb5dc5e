//! Table tests of `decide` with the default policy (the source documents' numbers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn queue(depth: f64, at: i64) -> Samples {
    Samples::new().ok(Signal::QueueDepth, depth, t(at))
}

fn down(at: i64) -> Samples {
    Samples::new()
        .failed(
            Signal::QueueDepth,
            SignalFailure {
                reason: "Timeout",
                message: "redis: timed out after 1s".into(),
            },
        )
        .ok(Signal::ActiveUsers, 0.0, t(at))
}

struct Case {
    name: &'static str,
    floor: u32,
    max: u32,
    current: u32,
    on_sale: bool,
    samples: Samples,
    memory: Memory,
    now: i64,
    want: u32,
    reason: Reason,
    message: &'static str,
}

fn mem(out: Option<i64>, inn: Option<i64>, below: Option<(i64, i64)>, stale: Option<i64>) -> Memory {
    Memory {
        last_scale_out: out.map(t),
        last_scale_in: inn.map(t),
        below_since: below.map(|b| t(b.0)),
        below_seen_at: below.map(|b| t(b.1)),
        stale_since: stale.map(t),
        need_marks: Vec::new(),
        lows: Default::default(),
        pre_lows: Default::default(),
    }
}

#[test]
fn table() {
    let none = Memory::default();
    #[rustfmt::skip]
    let cases = vec![
        Case { name: "quiet, nothing to do", floor: 2, max: 100, current: 2, on_sale: true,
            samples: queue(3_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 2, reason: Reason::WithinThresholds, message: "queueDepth 3,000 within thresholds" },
        Case { name: "first step", floor: 2, max: 100, current: 4, on_sale: true,
            samples: queue(8_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 6, reason: Reason::StepAbove, message: "queueDepth 8,000 > 5,000" },
        Case { name: "highest step wins", floor: 2, max: 100, current: 4, on_sale: true,
            samples: queue(25_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 9, reason: Reason::StepAbove, message: "queueDepth 25,000 > 20,000" },
        Case { name: "exactly at threshold does not match", floor: 2, max: 100, current: 4, on_sale: true,
            samples: queue(5_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 4, reason: Reason::WithinThresholds, message: "queueDepth 5,000 within thresholds" },
        Case { name: "step capped by max", floor: 2, max: 7, current: 4, on_sale: true,
            samples: queue(25_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 7, reason: Reason::StepAbove, message: "queueDepth 25,000 > 20,000" },
        Case { name: "at max", floor: 2, max: 7, current: 7, on_sale: true,
            samples: queue(25_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 7, reason: Reason::AtMaxReplicas, message: "queueDepth 25,000 > 20,000, already at maxReplicas 7" },
        Case { name: "inside scale-out cooldown", floor: 2, max: 100, current: 6, on_sale: true,
            samples: queue(8_000.0, 1_000), memory: mem(Some(900), None, None, None), now: 1_000,
            want: 6, reason: Reason::ScaleOutCooldown, message: "queueDepth 8,000 > 5,000, scale-out cooldown has 1m 20s left" },
        Case { name: "cooldown elapsed exactly", floor: 2, max: 100, current: 6, on_sale: true,
            samples: queue(8_000.0, 1_000), memory: mem(Some(820), None, None, None), now: 1_000,
            want: 8, reason: Reason::StepAbove, message: "queueDepth 8,000 > 5,000" },
        Case { name: "pre-warm floor raise applies at once, even in cooldown", floor: 10, max: 100, current: 4, on_sale: false,
            samples: queue(8_000.0, 1_000), memory: mem(Some(990), None, None, None), now: 1_000,
            want: 10, reason: Reason::FloorRaised, message: "floor 10 > 4 replicas (queueDepth 8,000 > 5,000, scale-out cooldown has 2m 50s left)" },
        Case { name: "floor raise then step on top", floor: 10, max: 100, current: 4, on_sale: true,
            samples: queue(8_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 12, reason: Reason::StepAbove, message: "queueDepth 8,000 > 5,000" },
        Case { name: "max lowered applies at once", floor: 2, max: 5, current: 9, on_sale: true,
            samples: queue(3_000.0, 1_000), memory: none.clone(), now: 1_000,
            want: 5, reason: Reason::MaxLowered, message: "maxReplicas 5 < 9 replicas (queueDepth 3,000 within thresholds)" },
        Case { name: "below, window just started", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: none.clone(), now: 1_000,
            want: 6, reason: Reason::Stabilizing, message: "queueDepth 300 < 1,000 for 0s of 5m" },
        Case { name: "below for 4m59s", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(None, None, Some((701, 998)), None), now: 1_000,
            want: 6, reason: Reason::Stabilizing, message: "queueDepth 300 < 1,000 for 4m 59s of 5m" },
        Case { name: "below for the window: scale in by one", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(None, None, Some((700, 998)), None), now: 1_000,
            want: 5, reason: Reason::BelowThreshold, message: "queueDepth 300 < 1,000 for 5m" },
        Case { name: "evidence with a hole restarts the window", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(None, None, Some((0, 900)), None), now: 1_000,
            want: 6, reason: Reason::Stabilizing, message: "queueDepth 300 < 1,000 for 0s of 5m" },
        Case { name: "scale-in cooldown counts the last scale-out", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(Some(500), None, Some((0, 998)), None), now: 1_000,
            want: 6, reason: Reason::ScaleInCooldown, message: "queueDepth 300 < 1,000 for 16m 40s, scale-in cooldown has 1m 40s left" },
        Case { name: "scale-in cooldown counts the last scale-in", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(Some(0), Some(600), Some((0, 998)), None), now: 1_000,
            want: 6, reason: Reason::ScaleInCooldown, message: "queueDepth 300 < 1,000 for 16m 40s, scale-in cooldown has 3m 20s left" },
        Case { name: "never below the floor", floor: 6, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 1_000), memory: mem(None, None, Some((0, 998)), None), now: 1_000,
            want: 6, reason: Reason::AtFloor, message: "queueDepth 300 < 1,000 for 16m 40s, at the floor (6)" },
        Case { name: "not while users are queued during the sale", floor: 2, max: 100, current: 6, on_sale: true,
            samples: queue(300.0, 1_000), memory: mem(None, None, Some((0, 998)), None), now: 1_000,
            want: 6, reason: Reason::QueueNotEmpty, message: "queueDepth 300 < 1,000 for 16m 40s, but 300 users still queued during the sale" },
        Case { name: "empty queue during the sale scales in", floor: 2, max: 100, current: 6, on_sale: true,
            samples: queue(0.0, 1_000), memory: mem(None, None, Some((0, 998)), None), now: 1_000,
            want: 5, reason: Reason::BelowThreshold, message: "queueDepth 0 < 1,000 for 16m 40s" },
        Case { name: "failing signal: hold, no scale-in", floor: 2, max: 100, current: 6, on_sale: false,
            samples: down(1_000), memory: mem(None, None, Some((0, 998)), None), now: 1_000,
            want: 6, reason: Reason::SignalsUnhealthy, message: "queueDepth: redis: timed out after 1s; holding, no scale-in on stale data" },
        Case { name: "stale sample: hold", floor: 2, max: 100, current: 6, on_sale: false,
            samples: queue(300.0, 990), memory: mem(None, None, Some((0, 990)), None), now: 1_000,
            want: 6, reason: Reason::SignalsUnhealthy, message: "queueDepth: stale, last observed 10s ago; holding, no scale-in on stale data" },
        Case { name: "missing sample: hold", floor: 2, max: 100, current: 6, on_sale: false,
            samples: Samples::new(), memory: none.clone(), now: 1_000,
            want: 6, reason: Reason::SignalsUnhealthy, message: "queueDepth: no reading; holding, no scale-in on stale data" },
        Case { name: "stale past afterStale: raise to fallback", floor: 2, max: 100, current: 4, on_sale: true,
            samples: down(1_000), memory: mem(None, None, None, Some(970)), now: 1_000,
            want: 10, reason: Reason::StaleFallback, message: "signals unhealthy (queueDepth: redis: timed out after 1s); holding fallback 10 replicas" },
        Case { name: "stale past afterStale never lowers to fallback (KEDA #6659)", floor: 2, max: 100, current: 40, on_sale: true,
            samples: down(1_000), memory: mem(None, None, None, Some(900)), now: 1_000,
            want: 40, reason: Reason::SignalsUnhealthy, message: "queueDepth: redis: timed out after 1s; holding, no scale-in on stale data" },
        Case { name: "fallback capped by max", floor: 2, max: 8, current: 4, on_sale: true,
            samples: down(1_000), memory: mem(None, None, None, Some(900)), now: 1_000,
            want: 8, reason: Reason::StaleFallback, message: "signals unhealthy (queueDepth: redis: timed out after 1s); holding fallback 8 replicas" },
        Case { name: "floor above max is capped at max", floor: 50, max: 20, current: 2, on_sale: false,
            samples: queue(0.0, 1_000), memory: none.clone(), now: 1_000,
            want: 20, reason: Reason::FloorRaised, message: "floor 20 > 2 replicas (queueDepth 0 < 1,000 for 0s of 5m)" },
    ];
    let policy = Policy::default();
    let mut failures = Vec::new();
    for c in &cases {
        let inputs = Inputs {
            floor: c.floor,
            prewarm: 0,
            max: c.max,
            current: c.current,
            on_sale: c.on_sale,
            samples: &c.samples,
            memory: &c.memory,
            now: t(c.now),
        };
        let d = decide(&policy, &inputs);
        // Without the text, the very same decision (signal problems still named).
        let quiet = decide_quiet(&policy, &inputs);
        if quiet
            != (Decision {
                message: String::new(),
                ..d.clone()
            })
        {
            failures.push(format!("{}: decide_quiet decided {quiet:?}, not {d:?}", c.name));
        }
        if (d.desired, d.reason, d.message.as_str()) != (c.want, c.reason, c.message) {
            failures.push(format!(
                "{}: got ({}, {:?}, {:?}), want ({}, {:?}, {:?})",
                c.name, d.desired, d.reason, d.message, c.want, c.reason, c.message
            ));
        }
        let expected_direction = match d.desired.cmp(&c.current) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => Direction::Hold,
        };
        if d.direction != expected_direction {
            failures.push(format!(
                "{}: direction {:?} for {}→{}",
                c.name, d.direction, c.current, d.desired
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn two_to_forty_in_one_decision_with_a_percent_step() {
    let mut policy = Policy::default();
    policy.scale_out.steps.push(Step {
        signal: Signal::QueueDepth,
        above: 100_000.0,
        add: 5,
        add_percent: Some(1_900),
    });
    let samples = queue(150_000.0, 0);
    let memory = Memory::default();
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 2,
            on_sale: true,
            samples: &samples,
            memory: &memory,
            now: t(0),
        },
    );
    assert_eq!((d.desired, d.reason), (40, Reason::StepAbove));
    assert_eq!(
        d.summary("reservation", 2),
        "ScaledOut reservation 2→40: queueDepth 150,000 > 100,000"
    );

    policy.scale_out.max_step = Some(10);
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 2,
            on_sale: true,
            samples: &samples,
            memory: &memory,
            now: t(0),
        },
    );
    assert_eq!(d.desired, 12, "maxStep caps one decision");
}

#[test]
fn across_signals_the_largest_increment_wins() {
    let mut policy = Policy::default();
    policy.scale_out.steps.push(Step {
        signal: Signal::Prometheus("p95".into()),
        above: 0.2,
        add: 3,
        add_percent: None,
    });
    let samples = queue(8_000.0, 0).ok(Signal::Prometheus("p95".into()), 0.35, t(0));
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 4,
            on_sale: true,
            samples: &samples,
            memory: &Memory::default(),
            now: t(0),
        },
    );
    assert_eq!((d.desired, d.message.as_str()), (7, "p95 0.35 > 0.2"));
    // A failing Prometheus does not stop queue-depth steps, but it blocks scale-in.
    let samples = queue(8_000.0, 0).failed(
        Signal::Prometheus("p95".into()),
        SignalFailure {
            reason: "PrometheusError",
            message: "connection refused".into(),
        },
    );
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 4,
            on_sale: true,
            samples: &samples,
            memory: &Memory::default(),
            now: t(0),
        },
    );
    assert_eq!(d.desired, 6);
    assert!(
        matches!(
            d.health,
            SignalHealth::Unhealthy {
                reason: "PrometheusError",
                ..
            }
        ),
        "{:?}",
        d.health
    );
}

#[test]
fn no_data_from_prometheus_is_healthy_and_matches_nothing() {
    let mut policy = Policy::default();
    policy.scale_out.steps.push(Step {
        signal: Signal::Prometheus("p95".into()),
        above: 0.2,
        add: 3,
        add_percent: None,
    });
    let samples = queue(0.0, 0).ok(Signal::Prometheus("p95".into()), f64::NAN, t(0));
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 4,
            on_sale: false,
            samples: &samples,
            memory: &Memory::default(),
            now: t(0),
        },
    );
    assert_eq!(d.health, SignalHealth::Healthy);
    assert_eq!(d.reason, Reason::Stabilizing);
}

#[test]
fn a_surge_then_quiet_runs_like_the_source_alarms() {
    // Replays a short story tick by tick with the default policy, carrying memory forward.
    let policy = Policy::default();
    let mut memory = Memory::default();
    let mut current = 2;
    let mut log = Vec::new();
    let depth = |s: i64| match s {
        0..600 => 25_000.0,
        600..900 => 8_000.0,
        _ => 0.0,
    };
    for s in (0..3_600).step_by(2) {
        let samples = queue(depth(s), s);
        let d = decide(
            &policy,
            &Inputs {
                floor: 2,
                prewarm: 0,
                max: 100,
                current,
                on_sale: false,
                samples: &samples,
                memory: &memory,
                now: t(s),
            },
        );
        if d.desired != current {
            log.push((s, current, d.desired, d.reason));
        }
        current = d.desired;
        memory = d.memory;
    }
    use Reason::*;
    assert_eq!(
        log,
        vec![
            (0, 2, 7, StepAbove),
            (180, 7, 12, StepAbove),
            (360, 12, 17, StepAbove),
            (540, 17, 22, StepAbove),
            (720, 22, 24, StepAbove),
            // Queue empty from 900 s: window 5 m (→1200 s), cooldown 600 s after 720 s (→1320 s).
            (1320, 24, 23, BelowThreshold),
            (1920, 23, 22, BelowThreshold),
            (2520, 22, 21, BelowThreshold),
            (3120, 21, 20, BelowThreshold),
        ]
    );
}

#[test]
fn restarted_operator_honours_cooldown_from_stored_memory() {
    let policy = Policy::default();
    let samples = queue(8_000.0, 100);
    let first = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 4,
            on_sale: true,
            samples: &samples,
            memory: &Memory::default(),
            now: t(100),
        },
    );
    assert_eq!(first.desired, 6);
    // The memory is what the status stores; a new process deserializes it.
    let stored = serde_json::to_string(&first.memory).unwrap();
    let restored: Memory = serde_json::from_str(&stored).unwrap();
    let samples = queue(9_000.0, 200);
    let again = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 6,
            on_sale: true,
            samples: &samples,
            memory: &restored,
            now: t(200),
        },
    );
    assert_eq!((again.desired, again.reason), (6, Reason::ScaleOutCooldown));
}

#[test]
fn reason_labels_are_unique_camel_case() {
    let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
    assert!(
        labels
            .iter()
            .all(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
    );
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Reason::ALL.len());
}

fn capacity_policy() -> Policy {
    let defaults = Policy::default();
    Policy {
        capacity: Some(Capacity {
            signal: Signal::QueueDepth,
            per_replica: 2_500.0,
            headroom: 0.2,
            growth_window: std::time::Duration::from_secs(60),
        }),
        scale_in: ScaleIn {
            stabilization_window: std::time::Duration::from_secs(180),
            cooldown: std::time::Duration::from_secs(60),
            ..defaults.scale_in.clone()
        },
        ..defaults
    }
}

fn step(policy: &Policy, memory: &Memory, current: u32, depth: f64, at: i64, prewarm: u32) -> Decision {
    let samples = queue(depth, at);
    let inputs = Inputs {
        floor: 2,
        prewarm,
        max: 100,
        current,
        on_sale: true,
        samples: &samples,
        memory,
        now: t(at),
    };
    let d = decide(policy, &inputs);
    // Every capacity decision of these tests, decided again without its text: the same.
    assert_eq!(
        decide_quiet(policy, &inputs),
        Decision {
            message: String::new(),
            ..d.clone()
        }
    );
    d
}

#[test]
fn capacity_goes_to_the_need_in_one_decision_and_back_to_the_floor_after_the_window() {
    let policy = capacity_policy();
    let d = step(&policy, &Memory::default(), 10, 60_000.0, 0, 0);
    assert_eq!(
        (d.desired, d.reason, d.need),
        (29, Reason::CapacityNeed, Some(29))
    );
    assert_eq!(
        d.summary("queue", 10),
        "ScaledOut queue 10→29: queueDepth 60,000 needs 29 at 2,500/replica (+20%)"
    );
    // The queue empties at 10 s; every 2 s a reading of 0 until well past the window.
    let (mut memory, mut current) = (d.memory, d.desired);
    let mut downs = Vec::new();
    for at in (10..=400).step_by(2) {
        let d = step(&policy, &memory, current, 0.0, at, 0);
        assert!(d.desired >= 2, "below the floor at {at}s");
        if d.desired < current {
            assert_eq!(d.reason, Reason::NeedFell, "{at}s: {}", d.message);
            downs.push((at, d.desired));
        } else if at < 180 {
            assert_eq!(
                d.desired, current,
                "{at}s: moved inside the window: {}",
                d.message
            );
        }
        memory = d.memory;
        current = d.desired;
    }
    // One decision brings it to the floor once the 29 has left the 3-minute window.
    assert_eq!(downs, vec![(180, 2)], "scale-in decisions");
}

/// Decisions every 2 s from `from` to `to` (inclusive) at a constant depth, applied like the
/// operator applies them; the last decision.
fn ticks(policy: &Policy, mut d: Decision, depth: f64, from: i64, to: i64, prewarm: u32) -> Decision {
    for at in (from..=to).step_by(2) {
        d = step(policy, &d.memory, d.desired, depth, at, prewarm);
    }
    d
}

#[test]
fn capacity_scale_in_stops_at_the_highest_need_of_the_window() {
    let policy = capacity_policy();
    // A fresh memory knows no rise yet: the full headroom.
    let d = step(&policy, &Memory::default(), 2, 60_000.0, 0, 0);
    assert_eq!(d.desired, 29);
    // Flat at 60,000: once the growth window (60 s) is covered it has not risen, so it needs 24
    // (no headroom); from 100 s the queue is 10,000 (needs 4), from 180 s 1,000 (needs 1).
    let d = ticks(&policy, d, 60_000.0, 2, 98, 0);
    assert_eq!((d.desired, d.need), (29, Some(24)), "{}", d.message);
    let d = ticks(&policy, d, 10_000.0, 100, 178, 0);
    assert_eq!((d.desired, d.reason), (29, Reason::Stabilizing), "{}", d.message);
    let d = ticks(&policy, d, 1_000.0, 180, 238, 0);
    assert_eq!((d.desired, d.reason), (29, Reason::Stabilizing), "{}", d.message);
    // The 29 was last needed at 60 s: at 240 s it leaves the window, the 24 (until 98 s) stays.
    let d = step(&policy, &d.memory, 29, 1_000.0, 240, 0);
    assert_eq!((d.desired, d.reason), (24, Reason::NeedFell), "{}", d.message);
    assert!(
        d.message.ends_with("down to 24, the highest need of the window"),
        "{}",
        d.message
    );
    // The 24 leaves at 278 s, but the scale-in cooldown (60 s) holds until 300 s: then 4, the
    // highest need left in the window, in one decision.
    let d = ticks(&policy, d, 1_000.0, 242, 298, 0);
    assert_eq!(
        (d.desired, d.reason),
        (24, Reason::ScaleInCooldown),
        "{}",
        d.message
    );
    let d = step(&policy, &d.memory, 24, 1_000.0, 300, 0);
    assert_eq!((d.desired, d.reason), (4, Reason::NeedFell), "{}", d.message);
}

#[test]
fn headroom_follows_growth_only() {
    let policy = Policy {
        scale_out: crate::autoscaler::ScaleOut {
            steps: Vec::new(),
            ..Policy::default().scale_out
        },
        ..capacity_policy()
    };
    // A slow ramp: +25 every 2 s from 15,000 (750 per minute). Until a minute has been watched
    // the spare is 20 % (3,000); after it, the 750 it rose.
    let mut d = step(&policy, &Memory::default(), 2, 15_000.0, 0, 0);
    assert_eq!(d.need, Some(8), "{}", d.message);
    for (k, at) in (2..=120).step_by(2).enumerate() {
        d = step(
            &policy,
            &d.memory,
            d.desired,
            15_000.0 + 25.0 * (k as f64 + 1.0),
            at,
            0,
        );
    }
    // 16,500 at 120 s: (16,500 + 750) / 2,500 = 6.9.
    assert_eq!(d.need, Some(7), "{}", d.message);
    assert!(
        d.message
            .contains("needs 7 at 2,500/replica (+750 risen within 1m)"),
        "{}",
        d.message
    );
    // Falling below everything of the last minute: no headroom at all, 10,000 / 2,500 = 4.
    let f = step(&policy, &d.memory, d.desired, 10_000.0, 122, 0);
    assert_eq!(f.need, Some(4), "{}", f.message);
    assert!(
        f.message
            .contains("needs 4 at 2,500/replica (not rising: no headroom)"),
        "{}",
        f.message
    );
    // A jump is a surge: the full headroom again.
    let d = step(&policy, &d.memory, d.desired, 40_000.0, 122, 0);
    assert_eq!(d.need, Some(20), "{}", d.message);
    assert!(d.message.contains("(+20%)"), "{}", d.message);
}

#[test]
fn a_gap_in_the_decisions_restarts_the_evidence() {
    let policy = capacity_policy();
    let d = step(&policy, &Memory::default(), 2, 60_000.0, 0, 0);
    let d = ticks(&policy, d, 0.0, 2, 20, 0);
    // The operator was down from 20 s to 400 s: the 29 is long out of the window, but nobody
    // watched, so a whole window of observations comes first.
    let d = step(&policy, &d.memory, 29, 0.0, 400, 0);
    assert_eq!((d.desired, d.reason), (29, Reason::Stabilizing), "{}", d.message);
    let d = ticks(&policy, d, 0.0, 402, 578, 0);
    assert_eq!(d.desired, 29, "{}", d.message);
    let d = step(&policy, &d.memory, 29, 0.0, 580, 0);
    assert_eq!((d.desired, d.reason), (2, Reason::NeedFell), "{}", d.message);
}

#[test]
fn steps_with_a_capacity_never_add_beyond_the_need_plus_one_step() {
    let policy = capacity_policy();
    // 8,000 queued needs 4; the default steps would add +2 per cooldown forever.
    let d = step(&policy, &Memory::default(), 2, 8_000.0, 0, 0);
    assert_eq!((d.desired, d.reason), (4, Reason::CapacityNeed));
    let d = step(&policy, &d.memory, 4, 8_000.0, 200, 0);
    assert_eq!((d.desired, d.reason), (6, Reason::StepAbove), "{}", d.message);
    let d = step(&policy, &d.memory, 6, 8_000.0, 400, 0);
    assert_eq!((d.desired, d.reason), (6, Reason::StepPastNeed), "{}", d.message);
}

#[test]
fn crowd_prewarm_raises_the_floor_and_holds_through_the_window() {
    let policy = capacity_policy();
    let d = step(&policy, &Memory::default(), 2, 0.0, 0, 18);
    assert_eq!((d.desired, d.reason), (18, Reason::FloorRaised), "{}", d.message);
    // The pre-warm ends at 2 s (prewarm 0) with an empty queue: the 18 stays for the window.
    let d = ticks(&policy, d, 0.0, 2, 178, 0);
    assert_eq!(d.desired, 18, "{}", d.message);
    let d = step(&policy, &d.memory, 18, 0.0, 180, 0);
    assert_eq!((d.desired, d.reason), (2, Reason::NeedFell), "{}", d.message);
}

#[test]
fn capacity_never_scales_in_on_stale_data() {
    let policy = capacity_policy();
    let d = step(&policy, &Memory::default(), 2, 60_000.0, 0, 0);
    let memory = d.memory;
    let samples = down(400);
    let d = decide(
        &policy,
        &Inputs {
            floor: 2,
            prewarm: 0,
            max: 100,
            current: 29,
            on_sale: true,
            samples: &samples,
            memory: &memory,
            now: t(400),
        },
    );
    assert!(d.desired >= 29, "{} on stale data: {}", d.desired, d.message);
}
