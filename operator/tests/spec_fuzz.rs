//! Arbitrary TicketingEvent specs — any values the schema admits, extreme ones and some it would
//! refuse (an object stored before a rule existed) — through validate → schedule → plan → decide:
//! nothing panics, and every refusal names the field (`spec.…`). One bad event used to crash
//! every operator replica in turn (`holdFor: 3000000000h` overflowed the date range).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use tiketi_operator::autoscaler::plan::{Known, plan_component};
use tiketi_operator::autoscaler::{Samples, Signal};
use tiketi_operator::crd::{Component, TicketingEvent};
use tiketi_operator::reconciler::{SecretData, validate};
use tiketi_operator::schedule;

/// Mostly sane values (so most specs run through to a decision), sometimes an extreme one.
fn duration_from(sane: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    prop_oneof![
        90 => sane,
        2 => Just("3000000000h".to_owned()),
        2 => Just("2600000000000000h".to_owned()),
        2 => Just("99999999999999999999h".to_owned()),
        2 => Just("0s".to_owned()),
        2 => Just("721h".to_owned()),
    ]
}

fn duration() -> impl Strategy<Value = String> {
    duration_from(prop_oneof![
        (1u64..7_200).prop_map(|s| format!("{s}s")),
        Just("1h30m".to_owned())
    ])
}

fn poll() -> impl Strategy<Value = String> {
    duration_from((250u64..300_000).prop_map(|ms| format!("{ms}ms")))
}

fn count(sane: std::ops::Range<i64>) -> impl Strategy<Value = i64> {
    prop_oneof![94 => sane, 2 => Just(i64::from(i32::MAX)), 2 => Just(0i64), 2 => -5i64..0]
}

fn number(sane: std::ops::Range<f64>) -> impl Strategy<Value = f64> {
    prop_oneof![94 => sane, 2 => Just(0.001), 2 => Just(1e300), 2 => Just(0.0)]
}

fn on_sale() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        18 => (-400i64..400).prop_map(|m| Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap() + TimeDelta::minutes(m)),
        1 => Just(Utc.with_ymd_and_hms(9999, 12, 31, 23, 0, 0).unwrap()),
        1 => Just(Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap()),
    ]
}

fn signal() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("queueDepth"), 2 => Just("activeUsers"), 1 => Just("preQueueDepth")]
}

fn scaling() -> impl Strategy<Value = serde_json::Value> {
    (
        poll(),
        prop::collection::vec(
            (
                signal(),
                number(1_000.0..20_000.0),
                count(1..10),
                prop::option::of(count(1..300)),
            ),
            0..3,
        ),
        (duration(), prop::option::of(count(1..20))),
        (
            signal(),
            number(0.0..1_000.0),
            count(1..4),
            duration(),
            duration(),
            any::<bool>(),
        ),
        (duration(), count(1..30)),
        prop::option::of((signal(), number(100.0..5_000.0), 0i64..500)),
    )
        .prop_map(
            |(
                poll,
                steps,
                (out_cd, max_step),
                (in_sig, below, remove, window, in_cd, allow),
                (stale, fb),
                cap,
            )| {
                // Thresholds increasing in list order (an unsorted list is the schema's to refuse).
                let mut last = 0.0;
                let steps: Vec<_> = steps
                    .into_iter()
                    .map(|(s, above, add, pct)| {
                        last += above;
                        let mut v = serde_json::json!({"signal": s, "above": last, "add": add});
                        if let Some(p) = pct {
                            v["addPercent"] = p.into();
                        }
                        v
                    })
                    .collect();
                let mut v = serde_json::json!({
                    "pollInterval": poll,
                    "scaleOut": {"steps": steps, "cooldown": out_cd},
                    "scaleIn": {"when": {"signal": in_sig, "below": below}, "remove": remove,
                                "stabilizationWindow": window, "cooldown": in_cd, "allowWhileQueued": allow},
                    "fallback": {"afterStale": stale, "replicas": fb},
                });
                if let Some(m) = max_step {
                    v["scaleOut"]["maxStep"] = m.into();
                }
                if let Some((s, per, head)) = cap {
                    v["capacity"] =
                        serde_json::json!({"signal": s, "perReplica": per, "headroomPercent": head});
                }
                v
            },
        )
}

fn spec() -> impl Strategy<Value = serde_json::Value> {
    (
        on_sale(),
        prop::option::of(1i64..600),
        duration(),
        prop::option::of((
            duration(),
            prop_oneof![9 => 1i64..20, 1 => 0i64..25],
            duration(),
            count(1..10),
            count(1..10),
            prop_oneof![Just(1.0), 1.0..100.0f64],
        )),
        (count(1..5), count(10..60), scaling(), duration(), duration_from((1u64..600).prop_map(|s| format!("{s}s"))), count(1..500), count(1..5_000)),
        (count(1..5), count(10..60), scaling(), duration(), count(1..10)),
    )
        .prop_map(|(on_sale_at, ends, wind_down, prewarm, queue, reservation)| {
            let (qmin, qmax, qscaling, token_ttl, heartbeat, rate, max_active) = queue;
            let (rmin, rmax, rscaling, hold_ttl, seats) = reservation;
            let mut v = serde_json::json!({
                "apiVersion": "tiketi.gg/v1alpha1",
                "kind": "TicketingEvent",
                "metadata": {"name": "fuzz", "namespace": "fuzz", "uid": "u-1", "generation": 1},
                "spec": {
                    "onSaleAt": on_sale_at,
                    "windDown": wind_down,
                    "inventory": {"sections": [{"name": "A", "rows": 10, "seatsPerRow": 20}]},
                    "queue": {"image": "q:1", "minReplicas": qmin, "maxReplicas": qmax, "scaling": qscaling,
                              "admission": {"tokenTtl": token_ttl, "heartbeatTimeout": heartbeat,
                                            "ratePerSecond": rate, "maxActive": max_active}},
                    "reservation": {"image": "r:1", "minReplicas": rmin, "maxReplicas": rmax, "scaling": rscaling,
                                    "holdTtl": hold_ttl, "maxSeatsPerUser": seats},
                    "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
                    "database": {"secretRef": {"name": "db"}},
                    "auth": {"secretRef": {"name": "auth"}}
                }
            });
            if let Some(m) = ends {
                v["spec"]["saleEndsAt"] = serde_json::json!(on_sale_at.checked_add_signed(TimeDelta::minutes(m)).unwrap_or(on_sale_at));
            }
            if let Some((lead, steps, hold, q, r, growth)) = prewarm {
                v["spec"]["prewarm"] = serde_json::json!({"leadTime": lead, "rampSteps": steps, "holdFor": hold,
                    "queue": {"replicas": q}, "reservation": {"replicas": r}, "expectedGrowth": growth});
            }
            v
        })
}

fn secrets() -> SecretData {
    let mut m = SecretData::new();
    let data = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    m.insert("redis".into(), data(&[("url", "redis://localhost:6379")]));
    m.insert("db".into(), data(&[("url", "postgres://localhost/t")]));
    m.insert(
        "auth".into(),
        data(&[
            ("jwtSecret", "a-jwt-key-of-at-least-32-bytes-long"),
            ("admissionSecret", "an-admission-key-32-bytes-long!!"),
        ]),
    );
    m
}

static PARSED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static PLANNED: AtomicUsize = AtomicUsize::new(0);

fn check(
    v: serde_json::Value,
    offsets: Vec<i64>,
    depths: Vec<f64>,
) -> Result<(), proptest::test_runner::TestCaseError> {
    // Values outside the Rust types (e.g. a negative count for a u32) are refused by serde,
    // which is the API server's schema's job; those are not the operator's inputs.
    let Ok(tev) = serde_json::from_value::<TicketingEvent>(v) else {
        return Ok(());
    };
    PARSED.fetch_add(1, Ordering::Relaxed);
    match validate(&tev, &secrets()) {
        Err(invalid) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            prop_assert!(
                invalid.message.contains("spec.") || invalid.message.contains("Secret"),
                "refusal without a field: {}",
                invalid.message
            );
        }
        Ok(()) => {
            for off in offsets {
                let Some(now) = tev.spec.on_sale_at.checked_add_signed(TimeDelta::seconds(off)) else {
                    continue;
                };
                let sched = match schedule::evaluate(&tev.spec, None, now) {
                    Ok(s) => s,
                    Err(e) => {
                        prop_assert!(
                            e.to_string().contains("spec."),
                            "schedule error without a field: {e}"
                        );
                        continue;
                    }
                };
                let samples = Samples::new()
                    .ok(Signal::QueueDepth, depths[0], now)
                    .ok(Signal::ActiveUsers, depths[1], now)
                    .ok(Signal::PreQueueDepth, depths[2], now);
                for c in Component::ALL {
                    // A valid spec's policy must be runnable: validate parsed it.
                    let planned = plan_component(&tev, &sched, c, &samples, Known::default(), now);
                    prop_assert!(
                        planned.is_ok(),
                        "validate accepted a policy plan refuses: {:?}",
                        planned.err()
                    );
                    if let Ok(Some(p)) = planned {
                        PLANNED.fetch_add(1, Ordering::Relaxed);
                        let max = u32::try_from(tev.spec.max_replicas(c)).unwrap_or(0);
                        let min = u32::try_from(tev.spec.min_replicas(c)).unwrap_or(0);
                        prop_assert!(
                            p.decision.desired <= max.max(min),
                            "{} above max {max}",
                            p.decision.desired
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn no_spec_panics_and_every_refusal_names_a_field() {
    // The strategy's type is deep: run it on a thread with room for it in debug builds.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                cases: 2048,
                ..ProptestConfig::default()
            });
            let strategy = (
                spec(),
                prop::collection::vec(-100_000i64..100_000, 1..6),
                prop::collection::vec(prop_oneof![0.0..100_000.0f64, Just(1e300), Just(f64::NAN)], 3),
            );
            if let Err(e) = runner.run(&strategy, |(v, offsets, depths)| check(v, offsets, depths)) {
                panic!("{e}");
            }
            let (parsed, refused, planned) = (
                PARSED.load(Ordering::Relaxed),
                REFUSED.load(Ordering::Relaxed),
                PLANNED.load(Ordering::Relaxed),
            );
            println!("{parsed} specs parsed, {refused} refused naming a field, {planned} decisions planned");
            // The corpus reaches both sides: refusals and specs that run through to a decision.
            assert!(
                parsed >= 1_000 && refused >= 100 && planned >= 200,
                "{parsed} parsed, {refused} refused, {planned} planned"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
