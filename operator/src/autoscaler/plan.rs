//! The pure glue between a TicketingEvent and [`decide`]: from (resource, schedule, samples, now)
//! to one decision per component. The autoscaler loop only adds I/O around it (read signals,
//! apply replicas, write status), so everything it decides is tested here from inline YAML.

use chrono::{DateTime, Utc};

use super::{Decision, Inputs, Memory, Policy, PolicyError, Samples, Signal, decide, decide_quiet};
use crate::crd::{Component, Phase, TicketingEvent};
use crate::schedule::Schedule;

/// One component's decision for one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub component: Component,
    /// Replicas before the decision (status.<component>.desiredReplicas, else the floor).
    pub current: u32,
    pub decision: Decision,
    /// The pre-warm floor sized from the crowd (PreWarming with a capacity and a pre-queue).
    pub prewarm: Option<u32>,
    /// The longest gap between two readings that still continues the scale-in evidence
    /// (max(freshness, fallback.afterStale)); a new leader reads the last one from
    /// `status.signalsObservedAt`.
    pub evidence_gap: std::time::Duration,
    /// The fewest replicas a scale-in could reach now (the floor, the crowd's pre-warm, capped
    /// by max): at it, scale-in evidence leads nowhere.
    pub lowest: u32,
}

impl Planned {
    /// True when `spec.replicas` must be written.
    pub fn changes(&self) -> bool {
        self.decision.desired != self.current
    }
}

fn non_negative(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// What the caller knows that is fresher than `tev.status` (the operator's book of its own
/// writes); `Known::default()` means "take everything from status".
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// Replicas last written.
    pub current: Option<i32>,
    /// Memory after the last decision.
    pub memory: Option<&'a Memory>,
    /// The component's policy, parsed once per spec by the caller (None: parsed here).
    pub policy: Option<&'a Policy>,
    /// Leave the decision's message empty ([`super::decide::decide_quiet`]): the caller only
    /// commits a hold and shows no text.
    pub quiet: bool,
}

/// True while a crowd can arrive (pre-warm and the sale): only then does the fallback raise
/// replicas on stale signals. Before the pre-warm and after the sale a Redis outage holds
/// replicas (no scale-in on stale data) but does not add pods nobody will use.
pub fn fallback_applies(phase: Phase) -> bool {
    matches!(phase, Phase::PreWarming | Phase::OnSale)
}

/// Decides one component. `None` while the schedule owns replicas outright: phase Closed (pinned
/// at the floor) or Failed (invalid spec: nothing is scaled).
pub fn plan_component(
    tev: &TicketingEvent,
    schedule: &Schedule,
    component: Component,
    samples: &Samples,
    known: Known<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Planned>, PolicyError> {
    if schedule.pinned || schedule.phase == Phase::Failed {
        return Ok(None);
    }
    let spec = &tev.spec;
    let mut policy = match known.policy {
        Some(p) => std::borrow::Cow::Borrowed(p),
        None => std::borrow::Cow::Owned(Policy::try_from(spec.scaling(component))?),
    };
    if !fallback_applies(schedule.phase) && policy.fallback.replicas != 0 {
        policy.to_mut().fallback.replicas = 0;
    }
    let min = non_negative(spec.min_replicas(component));
    let max = non_negative(spec.max_replicas(component)).max(min);
    let floor = non_negative(schedule.floor(component)).max(min);
    let status = tev.status.as_ref();
    let component_status = status.and_then(|s| s.component(component));
    let current = known
        .current
        .or_else(|| component_status.and_then(|c| c.desired_replicas))
        .map_or(floor, non_negative);
    // Borrowed unless the pre-warm records a reading in it: `decide` copies it anyway.
    let mut memory = match known.memory {
        Some(m) => std::borrow::Cow::Borrowed(m),
        None => std::borrow::Cow::Owned(Memory::from_status(
            component_status,
            status.and_then(|s| s.signals_observed_at),
            now,
        )),
    };
    let crowd = match schedule.phase {
        Phase::PreWarming => {
            let growing = schedule.growth_from.is_none_or(|from| now >= from);
            let rise = pre_queue_rise(&policy, samples, memory.to_mut(), now);
            crowd_prewarm(tev, &policy, samples, growing, rise, now).map(|(n, why)| (n.min(max), why))
        }
        _ => None,
    };
    let prewarm = crowd.as_ref().map_or(0, |(n, _)| *n);
    let inputs = Inputs {
        floor,
        max,
        current,
        on_sale: schedule.phase == Phase::OnSale,
        samples,
        memory: &memory,
        now,
        prewarm,
    };
    let mut decision = if known.quiet {
        decide_quiet(&policy, &inputs)
    } else {
        decide(&policy, &inputs)
    };
    if decision.reason == super::Reason::FloorRaised && !known.quiet {
        decision.message = match &crowd {
            Some((n, why)) if *n > floor => why.clone(),
            // Say it the way the reconciler does when it applies the same floor first.
            _ => schedule.reason.clone(),
        };
    }
    Ok(Some(Planned {
        component,
        current,
        decision,
        prewarm: crowd.map(|(n, _)| n),
        evidence_gap: policy.freshness().max(policy.fallback.after_stale),
        lowest: floor.max(prewarm).min(max),
    }))
}

/// The pre-warm floor the crowd needs while PreWarming, the larger of:
/// - what the pre-queue needs now (those users hold streams on the waiting room): its capacity
///   need, the headroom spent as far as the pre-queue rose within the growth window (`rise`;
///   None: not known yet, the full headroom);
/// - once `growing` (from `prewarm.growthLead` before the on-sale): the capacity need of
///   `preQueueDepth × prewarm.expectedGrowth` with the full headroom (the growth is a guess; the
///   headroom covers it falling short while new pods start: without it the 4-minute sell-out
///   trace, 1.75× its pre-queue, is under capacity 0.9 min).
///
/// For a component scaled on activeUsers, at most the admission cap `queue.admission.maxActive`
/// of that crowd is ever active at once. With the explanation for the Event. None without a
/// capacity, a Prometheus capacity signal, or a fresh pre-queue reading.
pub fn crowd_prewarm(
    tev: &TicketingEvent,
    policy: &Policy,
    samples: &Samples,
    growing: bool,
    rise: Option<f64>,
    now: DateTime<Utc>,
) -> Option<(u32, String)> {
    use super::format::value;
    let cap = policy.capacity.as_ref()?;
    let pre = match samples.get(&Signal::PreQueueDepth) {
        Some(Ok(s)) if super::format::since(s.observed_at, now) <= policy.freshness() => s.value,
        _ => return None,
    };
    if !pre.is_finite() || pre <= 0.0 {
        return None;
    }
    let growth = growth_factor(tev);
    let (bound, cap_text) = match cap.signal {
        Signal::QueueDepth | Signal::PreQueueDepth => (f64::INFINITY, String::new()),
        Signal::ActiveUsers => {
            let max_active = f64::from(tev.spec.queue.admission.max_active);
            (max_active, format!(", at most maxActive {}", value(max_active)))
        }
        Signal::Prometheus(_) => return None,
    };
    let served = pre.min(bound);
    let now_need = cap.need_after_rise(served, rise)?;
    let per = value(cap.per_replica);
    let later = match tev.spec.prewarm.as_ref() {
        Some(p) if !growing && growth > 1.0 => {
            format!("; × {} from {} before the on-sale", value(growth), p.growth_lead)
        }
        _ => String::new(),
    };
    let grown = (pre * growth).min(bound);
    let grown_need = cap.need(grown)?;
    if growing && growth > 1.0 && grown_need > now_need {
        let n = grown_need;
        return Some((
            n,
            format!(
                "pre-warm raised to {n}: preQueueDepth {} × {}{cap_text} / {per}{}",
                value(pre),
                value(growth),
                cap.spare_note(grown, None)
            ),
        ));
    }
    let n = now_need;
    if n == 0 {
        return None;
    }
    let spare = cap.spare_note(served, rise);
    Some((
        n,
        format!(
            "pre-warm raised to {n}: preQueueDepth {}{cap_text} / {per}{spare}{later}",
            value(pre)
        ),
    ))
}

/// Records a fresh pre-queue reading in the memory's pre-queue lows and returns how much it rose
/// within the capacity's growth window (None: no capacity, no fresh reading, or not yet known).
fn pre_queue_rise(
    policy: &Policy,
    samples: &Samples,
    memory: &mut Memory,
    now: DateTime<Utc>,
) -> Option<f64> {
    let cap = policy.capacity.as_ref()?;
    let s = match samples.get(&Signal::PreQueueDepth) {
        Some(Ok(s))
            if super::format::since(s.observed_at, now) <= policy.freshness() && s.value.is_finite() =>
        {
            *s
        }
        _ => return None,
    };
    let gap_allowed = policy.freshness().max(policy.fallback.after_stale);
    memory
        .pre_lows
        .record(s.value, s.observed_at, cap.growth_window, gap_allowed);
    memory.pre_lows.rise(s.value, s.observed_at, cap.growth_window)
}

/// `prewarm.expectedGrowth` as used (at least 1; 1.5 without a pre-warm block).
fn growth_factor(tev: &TicketingEvent) -> f64 {
    let g = tev.spec.prewarm.as_ref().map_or(1.5, |p| p.expected_growth);
    if g.is_finite() { g.max(1.0) } else { 1.0 }
}

/// How often the event's signals are read: the shorter of its two components' poll intervals.
pub fn poll_interval(tev: &TicketingEvent) -> Result<std::time::Duration, PolicyError> {
    let mut out: Option<std::time::Duration> = None;
    for c in Component::ALL {
        let p = Policy::try_from(tev.spec.scaling(c))?.poll_interval;
        out = Some(out.map_or(p, |o| o.min(p)));
    }
    Ok(out.unwrap_or(std::time::Duration::from_secs(2)))
}

/// The Prometheus queries the event's policies use (both components, without duplicates); the
/// loop runs them when spec.prometheus is set.
pub fn prometheus_queries(tev: &TicketingEvent) -> Vec<String> {
    let mut out: Vec<String> = Component::ALL
        .iter()
        .flat_map(|&c| {
            let p = tev.spec.scaling(c);
            let steps = p.scale_out.steps.iter().map(|s| s.signal());
            steps
                .chain(std::iter::once(p.scale_in.when.signal()))
                .collect::<Vec<_>>()
        })
        .filter_map(|s| match Signal::from(s) {
            Signal::Prometheus(q) => Some(q),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::autoscaler::{Reason, SignalFailure};
    use crate::schedule;

    fn tev() -> TicketingEvent {
        crate::crd::fixture::event(serde_json::json!({
            "metadata": {"name": "iu-2026-seoul", "namespace": "tickets"},
            "spec": {
                "inventory": {"sections": [{"name": "A", "rows": 20, "seatsPerRow": 30}]},
                "prewarm": {"leadTime": "30m", "rampSteps": 3, "queue": {"replicas": 10}, "reservation": {"replicas": 20}},
                "queue": {"minReplicas": 2, "maxReplicas": 100},
                "reservation": {"minReplicas": 2, "maxReplicas": 200, "scaling": {"scaleOut": {"steps": [
                    {"signal": "queueDepth", "above": 5000, "add": 2},
                    {"signal": "prometheus", "query": "p95_latency", "above": 0.2, "add": 4}
                ]}}}
            }
        }))
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn queue(v: f64, now: DateTime<Utc>) -> Samples {
        Samples::new()
            .ok(Signal::QueueDepth, v, now)
            .ok(Signal::Prometheus("p95_latency".into()), 0.05, now)
    }

    #[test]
    fn on_sale_surge_steps_out_from_the_prewarm_floor() {
        let tev = tev();
        let now = at("2026-12-01T02:00:02Z");
        let sched = schedule::evaluate(&tev.spec, None, now).unwrap();
        assert_eq!(sched.phase, Phase::OnSale);
        let samples = queue(25_000.0, now);
        let plan = |c| plan_component(&tev, &sched, c, &samples, Known::default(), now);
        let plans = [plan(Component::Queue), plan(Component::Reservation)];
        let q = plans[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (q.component, q.current, q.decision.desired),
            (Component::Queue, 10, 15)
        );
        assert_eq!(
            q.decision.summary("queue", q.current),
            "ScaledOut queue 10→15: queueDepth 25,000 > 20,000"
        );
        let r = plans[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (r.current, r.decision.desired, r.decision.reason),
            (20, 22, Reason::StepAbove)
        );
    }

    #[test]
    fn stored_status_carries_the_cooldown_across_a_restart() {
        let mut tev = tev();
        let now = at("2026-12-01T02:01:00Z");
        let mut status = crate::crd::TicketingEventStatus::default();
        let mut q = crate::crd::ComponentStatus {
            desired_replicas: Some(15),
            ..Default::default()
        };
        Memory {
            last_scale_out: Some(at("2026-12-01T02:00:02Z")),
            ..Memory::default()
        }
        .write_status(&mut q);
        status.queue = Some(q);
        tev.status = Some(status);
        let sched = schedule::evaluate(&tev.spec, None, now).unwrap();
        let planned = plan_component(
            &tev,
            &sched,
            Component::Queue,
            &queue(25_000.0, now),
            Known::default(),
            now,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (planned.decision.desired, planned.decision.reason),
            (15, Reason::ScaleOutCooldown)
        );
        assert!(!planned.changes());
    }

    #[test]
    fn redis_down_holds_and_reports_unhealthy() {
        let tev = tev();
        let now = at("2026-12-01T02:10:00Z");
        let sched = schedule::evaluate(&tev.spec, None, now).unwrap();
        let fail = SignalFailure {
            reason: "Timeout",
            message: "timed out after 1s".into(),
        };
        let samples = Samples::new()
            .failed(Signal::QueueDepth, fail.clone())
            .failed(Signal::ActiveUsers, fail);
        let planned = plan_component(&tev, &sched, Component::Queue, &samples, Known::default(), now)
            .unwrap()
            .unwrap();
        assert_eq!(planned.decision.desired, 10);
        assert!(matches!(
            planned.decision.health,
            crate::autoscaler::SignalHealth::Unhealthy {
                reason: "Timeout",
                ..
            }
        ));
    }

    #[test]
    fn closed_events_are_left_to_the_schedule() {
        let tev = tev();
        let now = at("2026-12-02T02:00:00Z");
        let sched = schedule::evaluate(&tev.spec, Some(at("2026-12-01T03:00:00Z")), now).unwrap();
        assert!(sched.pinned, "{sched:?}");
        assert_eq!(
            plan_component(
                &tev,
                &sched,
                Component::Queue,
                &queue(0.0, now),
                Known::default(),
                now
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn the_book_overrides_a_lagging_status() {
        // status still says 10 (the cache lags), but 15 was written and the cooldown started.
        let tev = tev();
        let now = at("2026-12-01T02:00:04Z");
        let sched = schedule::evaluate(&tev.spec, None, now).unwrap();
        let memory = Memory {
            last_scale_out: Some(at("2026-12-01T02:00:02Z")),
            ..Memory::default()
        };
        let known = Known {
            current: Some(15),
            memory: Some(&memory),
            policy: None,
            quiet: false,
        };
        let planned = plan_component(&tev, &sched, Component::Queue, &queue(25_000.0, now), known, now)
            .unwrap()
            .unwrap();
        assert_eq!(
            (planned.current, planned.decision.desired, planned.decision.reason),
            (15, 15, Reason::ScaleOutCooldown)
        );
        // The loop passes the policy it parsed once per spec: the same decision.
        let policy = Policy::try_from(tev.spec.scaling(Component::Queue)).unwrap();
        let parsed = Known {
            policy: Some(&policy),
            ..known
        };
        let again = plan_component(&tev, &sched, Component::Queue, &queue(25_000.0, now), parsed, now);
        assert_eq!(again.unwrap().unwrap(), planned);
    }

    #[test]
    fn the_fallback_raises_only_while_a_crowd_can_arrive() {
        let tev = tev();
        let fail = SignalFailure {
            reason: "Timeout",
            message: "timed out after 1s".into(),
        };
        let samples = Samples::new()
            .failed(Signal::QueueDepth, fail.clone())
            .failed(Signal::ActiveUsers, fail);
        let stale = Memory {
            stale_since: Some(at("2026-11-01T00:00:00Z")),
            ..Memory::default()
        };
        let known = Known {
            current: Some(2),
            memory: Some(&stale),
            policy: None,
            quiet: false,
        };
        // A month before the sale: hold at 2, do not add the fallback's 10.
        let early = at("2026-11-01T00:05:00Z");
        let sched = schedule::evaluate(&tev.spec, None, early).unwrap();
        assert_eq!(sched.phase, Phase::Scheduled);
        let p = plan_component(&tev, &sched, Component::Queue, &samples, known, early)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.decision.desired, p.decision.reason),
            (2, Reason::SignalsUnhealthy)
        );
        // During the sale: raise to the fallback.
        let during = at("2026-12-01T02:30:00Z");
        let sched = schedule::evaluate(&tev.spec, None, during).unwrap();
        assert_eq!(sched.phase, Phase::OnSale);
        let p = plan_component(&tev, &sched, Component::Queue, &samples, known, during)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.decision.desired, p.decision.reason),
            (10, Reason::StaleFallback)
        );
    }

    #[test]
    fn prometheus_queries_are_collected_once() {
        assert_eq!(prometheus_queries(&tev()), vec!["p95_latency".to_owned()]);
    }

    #[test]
    fn the_expected_growth_is_provisioned_only_for_the_growth_lead() {
        let mut tev = tev();
        tev.spec.queue.scaling = serde_yaml::from_str(
            "{capacity: {signal: queueDepth, perReplica: 2500, headroomPercent: 20}, scaleOut: {steps: []}}",
        )
        .unwrap();
        if let Some(p) = tev.spec.prewarm.as_mut() {
            p.growth_lead = "5m".into();
            p.expected_growth = 1.5;
        }
        let pre = |now| {
            Samples::new()
                .ok(Signal::QueueDepth, 0.0, now)
                .ok(Signal::PreQueueDepth, 30_000.0, now)
        };
        // 10 min before the on-sale: the pre-queue's own need, 30,000 × 1.2 / 2,500 = 15.
        let early = at("2026-12-01T01:50:00Z");
        let sched = schedule::evaluate(&tev.spec, None, early).unwrap();
        assert_eq!(sched.phase, Phase::PreWarming);
        let p = plan_component(
            &tev,
            &sched,
            Component::Queue,
            &pre(early),
            Known::default(),
            early,
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.prewarm, p.decision.desired), (Some(15), 15));
        assert_eq!(
            p.decision.message,
            "pre-warm raised to 15: preQueueDepth 30,000 / 2,500 (+20%); × 1.5 from 5m before the on-sale"
        );
        // 5 min before: the expected growth, 45,000 × 1.2 / 2,500 = 21.6.
        let late = at("2026-12-01T01:55:00Z");
        let sched = schedule::evaluate(&tev.spec, None, late).unwrap();
        let p = plan_component(&tev, &sched, Component::Queue, &pre(late), Known::default(), late)
            .unwrap()
            .unwrap();
        assert_eq!((p.prewarm, p.decision.desired), (Some(22), 22));
        assert_eq!(
            p.decision.message,
            "pre-warm raised to 22: preQueueDepth 30,000 × 1.5 / 2,500 (+20%)"
        );
    }
}
