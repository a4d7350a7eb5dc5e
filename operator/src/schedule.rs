//! The schedule: a pure function of (spec, sold-out time, now) → phase, the replica floor of each
//! component, and the next instant at which either changes. No client in sight.
//!
//! Timeline of an event (`L` = prewarm.leadTime, `n` = prewarm.rampSteps):
//!
//! ```text
//! Scheduled ──(onSaleAt-L)── PreWarming ──(onSaleAt)── OnSale ──(saleEndsAt | soldOutAt)── Closing|SoldOut ──(+windDown)── Closed
//! floor: min                 min + ⌈(target-min)·k/n⌉   target until +holdFor, then min   min                              min, pinned
//! ```
//!
//! Step `k` (1..=n) of the ramp starts at `onSaleAt - L + (k-1)·L/n`: the first step is taken as
//! soon as pre-warm begins, the last leaves `L/n` for pods to become Ready before the sale opens.
//! Closed means "pinned at minReplicas": the queue keeps answering "closed"/"soldOut" to late
//! visitors and the reservation service keeps serving orders, at the smallest footprint the user
//! allowed; deleting the TicketingEvent removes everything.

use chrono::{DateTime, TimeDelta, Utc};

use crate::crd::{Component, Phase, TicketingEventSpec, parse_duration};

/// The schedule at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub phase: Phase,
    /// Replica floor of the queue component (within [minReplicas, maxReplicas]).
    pub queue_floor: i32,
    /// Replica floor of the reservation component.
    pub reservation_floor: i32,
    /// Replicas are pinned at the floor (phase Closed): the autoscaler may not go above it.
    pub pinned: bool,
    /// The next instant at which phase or floor changes; `None` when nothing changes any more.
    pub next_boundary: Option<DateTime<Utc>>,
    /// Why the floor is what it is, for Events and logs ("pre-warm step 2/3").
    pub reason: String,
    /// From when the crowd-sized pre-warm provisions `prewarm.expectedGrowth` (onSaleAt −
    /// growthLead); None without a pre-warm.
    pub growth_from: Option<DateTime<Utc>>,
}

impl Schedule {
    pub fn floor(&self, c: Component) -> i32 {
        match c {
            Component::Queue => self.queue_floor,
            Component::Reservation => self.reservation_floor,
        }
    }

    /// The replicas to ask for: the schedule floor, raised to the last decision (`desired`, from
    /// status) when that is higher, clamped to [min, max]. Pinned (Closed): exactly the floor.
    pub fn replicas(&self, c: Component, min: i32, max: i32, desired: Option<i32>) -> i32 {
        let floor = self.floor(c);
        if self.pinned {
            return floor;
        }
        floor.max(desired.unwrap_or(floor)).clamp(min, max.max(min))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Duration(#[from] crate::crd::DurationError),
    #[error("{field} is out of range")]
    OutOfRange { field: &'static str },
    #[error("spec.prewarm.rampSteps is {0}, above {max}", max = crate::crd::MAX_RAMP_STEPS)]
    RampSteps(u32),
}

fn delta(field: &'static str, value: &str) -> Result<TimeDelta, ScheduleError> {
    let d = parse_duration(field, value)?;
    TimeDelta::from_std(d).map_err(|_| ScheduleError::OutOfRange { field })
}

/// Evaluates the schedule of `spec` at `now`. `sold_out_at` comes from status (the autoscaler
/// sets it when the reservation service reports sold out and the queue is empty).
pub fn evaluate(
    spec: &TicketingEventSpec,
    sold_out_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Schedule, ScheduleError> {
    let wind_down = delta("spec.windDown", &spec.wind_down)?;
    let (lead, steps, hold, growth_lead) = match &spec.prewarm {
        // The schema's bound, checked here too: an object stored before it (or past it) must not
        // make the operator build millions of step boundaries.
        Some(p) if p.ramp_steps > crate::crd::MAX_RAMP_STEPS => {
            return Err(ScheduleError::RampSteps(p.ramp_steps));
        }
        Some(p) => (
            delta("spec.prewarm.leadTime", &p.lead_time)?,
            i64::from(p.ramp_steps.max(1)),
            delta("spec.prewarm.holdFor", &p.hold_for)?,
            Some(delta("spec.prewarm.growthLead", &p.growth_lead)?),
        ),
        None => (TimeDelta::zero(), 1, TimeDelta::zero(), None),
    };
    let on_sale = spec.on_sale_at;
    // Every duration is bounded (≤ 30 days) but onSaleAt may be near the end of chrono's range:
    // the instants are computed checked, once, and named when out of range.
    let shift = |field: &'static str, at: DateTime<Utc>, by: TimeDelta| {
        at.checked_add_signed(by)
            .ok_or(ScheduleError::OutOfRange { field })
    };
    let ramp_start = shift("spec.prewarm.leadTime", on_sale, -lead)?;
    let hold_end = shift("spec.prewarm.holdFor", on_sale, hold)?;
    let growth_from = growth_lead
        .map(|g| shift("spec.prewarm.growthLead", on_sale, -g))
        .transpose()?;
    // Sold out only counts once the sale is open; the earlier of the two ends the sale.
    let sold_out = sold_out_at.map(|t| t.max(on_sale));
    let (close_at, closed_by_sell_out) = match (spec.sale_ends_at, sold_out) {
        (Some(end), Some(so)) if so < end => (Some(so), true),
        (Some(end), _) => (Some(end), false),
        (None, Some(so)) => (Some(so), true),
        (None, None) => (None, false),
    };

    let step_start = |k: i64| ramp_start + TimeDelta::milliseconds(lead.num_milliseconds() * (k - 1) / steps);

    // Candidate boundaries, in no particular order; the next one is the smallest after `now`.
    let mut boundaries = Vec::with_capacity(steps as usize + 5);
    if lead > TimeDelta::zero() {
        boundaries.extend((1..=steps).map(step_start));
    }
    boundaries.push(on_sale);
    if spec.prewarm.is_some() {
        boundaries.push(hold_end);
    }
    let closed_at = close_at
        .map(|c| shift("spec.windDown", c, wind_down))
        .transpose()?;
    if let (Some(c), Some(closed)) = (close_at, closed_at) {
        boundaries.push(c);
        boundaries.push(closed);
    }
    let next_boundary = boundaries.into_iter().filter(|b| *b > now).min();

    let min = |c: Component| spec.min_replicas(c);
    let target = |c: Component| {
        spec.prewarm_replicas(c)
            .unwrap_or_else(|| min(c))
            .max(min(c))
            .min(spec.max_replicas(c).max(min(c)))
    };

    let (phase, pinned, reason, floor): (Phase, bool, String, Box<dyn Fn(Component) -> i32>) = match close_at
    {
        Some(_) if closed_at.is_some_and(|closed| now >= closed) => {
            (Phase::Closed, true, "closed".into(), Box::new(min))
        }
        Some(c) if now >= c => {
            let phase = if closed_by_sell_out {
                Phase::SoldOut
            } else {
                Phase::Closing
            };
            (phase, false, "sale over, winding down".into(), Box::new(min))
        }
        _ if now >= on_sale => {
            if spec.prewarm.is_some() && now < hold_end {
                (
                    Phase::OnSale,
                    false,
                    "on sale, holding pre-warm replicas".into(),
                    Box::new(target),
                )
            } else {
                (Phase::OnSale, false, "on sale".into(), Box::new(min))
            }
        }
        _ if lead > TimeDelta::zero() && now >= ramp_start => {
            // The latest step that has started.
            let k = (1..=steps).rev().find(|k| now >= step_start(*k)).unwrap_or(1);
            let ramp = move |c: Component| {
                let (lo, hi) = (i64::from(min(c)), i64::from(target(c)));
                let floor = lo + ((hi - lo) * k + steps - 1) / steps;
                i32::try_from(floor).unwrap_or(i32::MAX)
            };
            (
                Phase::PreWarming,
                false,
                format!("pre-warm step {k}/{steps}"),
                Box::new(ramp),
            )
        }
        _ => (Phase::Scheduled, false, "scheduled".into(), Box::new(min)),
    };

    Ok(Schedule {
        phase,
        queue_floor: floor(Component::Queue),
        reservation_floor: floor(Component::Reservation),
        pinned,
        next_boundary,
        reason,
        growth_from,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec() -> TicketingEventSpec {
        crate::crd::fixture::event(serde_json::json!({"spec": {
            "saleEndsAt": "2026-12-01T05:00:00Z",
            "windDown": "30m",
            "prewarm": {"leadTime": "30m", "rampSteps": 3, "holdFor": "15m", "queue": {"replicas": 10}, "reservation": {"replicas": 20}},
            "queue": {"minReplicas": 2, "maxReplicas": 100},
            "reservation": {"minReplicas": 2, "maxReplicas": 200}
        }}))
        .spec
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn table_at_every_boundary_and_between() {
        let s = spec();
        // (now, phase, queue floor, reservation floor, next boundary)
        let rows: &[(&str, Phase, i32, i32, Option<&str>)] = &[
            (
                "2026-11-30T00:00:00Z",
                Phase::Scheduled,
                2,
                2,
                Some("2026-12-01T01:30:00Z"),
            ),
            (
                "2026-12-01T01:29:59Z",
                Phase::Scheduled,
                2,
                2,
                Some("2026-12-01T01:30:00Z"),
            ),
            // step 1/3: 2 + ceil(8/3)=5, 2 + ceil(18/3)=8
            (
                "2026-12-01T01:30:00Z",
                Phase::PreWarming,
                5,
                8,
                Some("2026-12-01T01:40:00Z"),
            ),
            (
                "2026-12-01T01:39:59Z",
                Phase::PreWarming,
                5,
                8,
                Some("2026-12-01T01:40:00Z"),
            ),
            // step 2/3: 2 + ceil(16/3)=8, 2 + 12=14
            (
                "2026-12-01T01:40:00Z",
                Phase::PreWarming,
                8,
                14,
                Some("2026-12-01T01:50:00Z"),
            ),
            // step 3/3: the targets, 10 minutes before the sale
            (
                "2026-12-01T01:50:00Z",
                Phase::PreWarming,
                10,
                20,
                Some("2026-12-01T02:00:00Z"),
            ),
            (
                "2026-12-01T01:59:59Z",
                Phase::PreWarming,
                10,
                20,
                Some("2026-12-01T02:00:00Z"),
            ),
            (
                "2026-12-01T02:00:00Z",
                Phase::OnSale,
                10,
                20,
                Some("2026-12-01T02:15:00Z"),
            ),
            (
                "2026-12-01T02:15:00Z",
                Phase::OnSale,
                2,
                2,
                Some("2026-12-01T05:00:00Z"),
            ),
            (
                "2026-12-01T05:00:00Z",
                Phase::Closing,
                2,
                2,
                Some("2026-12-01T05:30:00Z"),
            ),
            (
                "2026-12-01T05:29:59Z",
                Phase::Closing,
                2,
                2,
                Some("2026-12-01T05:30:00Z"),
            ),
            ("2026-12-01T05:30:00Z", Phase::Closed, 2, 2, None),
            ("2027-01-01T00:00:00Z", Phase::Closed, 2, 2, None),
        ];
        for (now, phase, q, r, next) in rows {
            let got = evaluate(&s, None, at(now)).unwrap();
            assert_eq!(got.phase, *phase, "phase at {now}");
            assert_eq!(
                (got.queue_floor, got.reservation_floor),
                (*q, *r),
                "floors at {now}"
            );
            assert_eq!(got.next_boundary, next.map(at), "next boundary at {now}");
            assert_eq!(got.pinned, *phase == Phase::Closed);
        }
    }

    #[test]
    fn sold_out_ends_the_sale_early() {
        let s = spec();
        let so = at("2026-12-01T03:00:00Z");
        let got = evaluate(&s, Some(so), at("2026-12-01T03:00:01Z")).unwrap();
        assert_eq!(got.phase, Phase::SoldOut);
        assert_eq!(got.next_boundary, Some(at("2026-12-01T03:30:00Z")));
        assert_eq!(
            evaluate(&s, Some(so), at("2026-12-01T03:30:00Z")).unwrap().phase,
            Phase::Closed
        );
        // A sold-out mark later than saleEndsAt changes nothing.
        let late = evaluate(&s, Some(at("2026-12-01T06:00:00Z")), at("2026-12-01T05:10:00Z")).unwrap();
        assert_eq!(late.phase, Phase::Closing);
    }

    #[test]
    fn without_prewarm_or_end_the_sale_runs_at_min() {
        let mut s = spec();
        s.prewarm = None;
        s.sale_ends_at = None;
        let before = evaluate(&s, None, at("2026-12-01T01:59:00Z")).unwrap();
        assert_eq!((before.phase, before.queue_floor), (Phase::Scheduled, 2));
        assert_eq!(before.next_boundary, Some(at("2026-12-01T02:00:00Z")));
        let after = evaluate(&s, None, at("2026-12-30T00:00:00Z")).unwrap();
        assert_eq!((after.phase, after.next_boundary), (Phase::OnSale, None));
    }

    #[test]
    fn replicas_keep_the_last_decision_and_clamp() {
        let s = spec();
        let sch = evaluate(&s, None, at("2026-12-01T01:40:00Z")).unwrap();
        assert_eq!(sch.replicas(Component::Queue, 2, 100, None), 8);
        assert_eq!(sch.replicas(Component::Queue, 2, 100, Some(6)), 8);
        assert_eq!(sch.replicas(Component::Queue, 2, 100, Some(40)), 40);
        assert_eq!(sch.replicas(Component::Queue, 2, 30, Some(40)), 30);
        let closed = evaluate(&s, None, at("2026-12-02T00:00:00Z")).unwrap();
        assert_eq!(closed.replicas(Component::Queue, 2, 100, Some(40)), 2);
    }

    #[test]
    fn durations_past_the_maximum_are_errors_naming_the_field_not_panics() {
        for (field, set) in [
            (
                "spec.prewarm.holdFor",
                (|s: &mut TicketingEventSpec, v: &str| s.prewarm.as_mut().unwrap().hold_for = v.into())
                    as fn(&mut TicketingEventSpec, &str),
            ),
            ("spec.prewarm.leadTime", |s, v| {
                s.prewarm.as_mut().unwrap().lead_time = v.into()
            }),
            ("spec.windDown", |s, v| s.wind_down = v.into()),
        ] {
            for v in ["3000000000h", "721h", "2600000000000000h"] {
                let mut s = spec();
                set(&mut s, v);
                let err = evaluate(&s, None, at("2026-12-01T00:00:00Z")).unwrap_err();
                assert!(err.to_string().contains(field), "{v}: {err}");
            }
        }
        // At the end of chrono's range, a bounded duration still cannot panic.
        let mut s = spec();
        s.on_sale_at = DateTime::<Utc>::MAX_UTC - TimeDelta::seconds(1);
        s.sale_ends_at = None;
        let err = evaluate(&s, None, at("2026-12-01T00:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("spec.prewarm.holdFor"), "{err}");
    }

    #[test]
    fn ramp_steps_past_the_schema_bound_are_an_error_not_millions_of_boundaries() {
        let mut s = spec();
        s.prewarm.as_mut().unwrap().ramp_steps = crate::crd::MAX_RAMP_STEPS;
        evaluate(&s, None, at("2026-12-01T01:45:00Z")).unwrap();
        for steps in [crate::crd::MAX_RAMP_STEPS + 1, u32::MAX] {
            s.prewarm.as_mut().unwrap().ramp_steps = steps;
            let err = evaluate(&s, None, at("2026-12-01T01:45:00Z")).unwrap_err();
            assert!(
                err.to_string().contains("spec.prewarm.rampSteps")
                    && err.to_string().contains(&steps.to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_duration_is_an_error_naming_the_field() {
        let mut s = spec();
        s.wind_down = "99999999999999999999h".into();
        let err = evaluate(&s, None, at("2026-12-01T00:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("spec.windDown"), "{err}");
    }

    fn arb_spec() -> impl Strategy<Value = TicketingEventSpec> {
        (
            1i32..20,
            0i32..50,
            0i32..80,
            0u64..7200,
            1u32..20,
            0u64..3600,
            1u64..7200,
            0u64..7200,
        )
            .prop_map(|(min, extra_max, pre, lead, steps, hold, sale_len, wind)| {
                let mut s = spec();
                let max = min + extra_max;
                s.queue.min_replicas = min;
                s.queue.max_replicas = max;
                s.reservation.min_replicas = min;
                s.reservation.max_replicas = max;
                let p = s.prewarm.as_mut().unwrap();
                p.queue.replicas = pre.clamp(1, max);
                p.reservation.replicas = max;
                p.lead_time = format!("{lead}s");
                p.ramp_steps = steps;
                p.hold_for = format!("{hold}s");
                s.sale_ends_at = Some(s.on_sale_at + TimeDelta::seconds(sale_len as i64));
                s.wind_down = format!("{wind}s");
                s
            })
    }

    proptest! {
        #[test]
        fn floor_stays_within_min_and_max(s in arb_spec(), offset in -10_000i64..20_000) {
            let now = s.on_sale_at + TimeDelta::seconds(offset);
            let sch = evaluate(&s, None, now).unwrap();
            for c in Component::ALL {
                prop_assert!(sch.floor(c) >= s.min_replicas(c));
                prop_assert!(sch.floor(c) <= s.max_replicas(c));
            }
        }

        #[test]
        fn prewarm_is_monotone_and_reaches_the_target(s in arb_spec(), a in 0i64..7200, b in 0i64..7200) {
            let (a, b) = (a.min(b), a.max(b));
            let lead = parse_duration("l", &s.prewarm.as_ref().unwrap().lead_time).unwrap().as_secs() as i64;
            let start = s.on_sale_at - TimeDelta::seconds(lead);
            // Within the pre-warm window, which ends before the on-sale instant: from then on the
            // floor is the sale's (with `holdFor: 0s`, already the minimum at the on-sale second).
            let t1 = start + TimeDelta::seconds(a.min(lead - 1).max(0));
            let t2 = start + TimeDelta::seconds(b.min(lead - 1).max(0));
            let (s1, s2) = (evaluate(&s, None, t1).unwrap(), evaluate(&s, None, t2).unwrap());
            for c in Component::ALL {
                prop_assert!(s1.floor(c) <= s2.floor(c), "{c}: {} at {t1} > {} at {t2}", s1.floor(c), s2.floor(c));
            }
            if lead > 0 {
                let last = evaluate(&s, None, s.on_sale_at - TimeDelta::milliseconds(1)).unwrap();
                prop_assert_eq!(last.phase, Phase::PreWarming);
                prop_assert_eq!(last.reservation_floor, s.reservation.max_replicas);
            }
        }

        #[test]
        // The whole schedule, not only phase and floors: the autoscaler keeps an evaluated
        // schedule until its next boundary (autoscale::in_schedule).
        fn nothing_changes_before_the_next_boundary(
            s in arb_spec(), offset in -10_000i64..20_000, frac in 0.0f64..1.0, sold in prop::option::of(-3_000i64..9_000),
        ) {
            let now = s.on_sale_at + TimeDelta::seconds(offset);
            let sold_out_at = sold.map(|o| s.on_sale_at + TimeDelta::seconds(o));
            let sch = evaluate(&s, sold_out_at, now).unwrap();
            if let Some(next) = sch.next_boundary {
                prop_assert!(next > now);
                let span = (next - now).num_milliseconds();
                let mid = now + TimeDelta::milliseconds((span as f64 * frac) as i64);
                prop_assert_eq!(evaluate(&s, sold_out_at, mid).unwrap(), sch.clone());
                let just_before = next - TimeDelta::milliseconds(1);
                if just_before >= now {
                    prop_assert_eq!(evaluate(&s, sold_out_at, just_before).unwrap(), sch);
                }
            } else {
                let much_later = evaluate(&s, sold_out_at, now + TimeDelta::days(400)).unwrap();
                prop_assert_eq!(much_later, sch);
            }
        }
    }
}
