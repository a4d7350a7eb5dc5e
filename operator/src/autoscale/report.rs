//! The pure parts of one event's tick, tested with plain values: sold-out detection, the health
//! summary (with its hysteresis), the autoscaler's status body and the write throttle. The loop
//! in `mod.rs` only adds the I/O around them (signals, Deployments, Events, the status write).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::autoscaler::SignalHealth;
use crate::crd::{Component, Phase, TicketingEventStatus};
use crate::signals::{EventSignals, SignalError};
use crate::status::{AutoscalerComponentStatus, AutoscalerStatus, reasons};

// === sold out ===

/// The Event note when this reading ends the sale early (sold out with nobody waiting, during the
/// sale, not already ended); None otherwise.
pub fn sale_ends_now(
    sold_out_at: Option<DateTime<Utc>>,
    phase: Phase,
    reading: &Result<EventSignals, SignalError>,
) -> Option<String> {
    let s = reading.as_ref().ok()?;
    if sold_out_at.is_some() || phase != Phase::OnSale || !s.sold_out_and_drained() {
        return None;
    }
    Some(match s.counts.sold {
        Some(n) => format!("sold out ({n} sold) and the queue is empty: the sale ends early"),
        None => "sold out and the queue is empty: the sale ends early".to_owned(),
    })
}

// === health ===

/// Reported signal health with hysteresis: the first reading is reported at once, after that a
/// flip needs [`HealthGate::TICKS`] consecutive readings the other way, so a Redis that hovers
/// around the timeout does not flood Events and status writes. Decisions do not wait for it: a
/// tick with unhealthy signals never scales in, whatever is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthGate {
    reported: Option<bool>,
    /// Consecutive readings that disagree with `reported`.
    pub against: u32,
}

impl HealthGate {
    pub const TICKS: u32 = 3;

    /// Feeds one reading; returns (reported health, whether it flipped now).
    pub fn observe(&mut self, healthy: bool) -> (bool, bool) {
        match self.reported {
            None => {
                self.reported = Some(healthy);
                (healthy, !healthy)
            }
            Some(r) if r == healthy => {
                self.against = 0;
                (r, false)
            }
            Some(r) => {
                self.against += 1;
                if self.against >= Self::TICKS {
                    self.reported = Some(healthy);
                    self.against = 0;
                    (healthy, true)
                } else {
                    (r, false)
                }
            }
        }
    }
}

/// What the `SignalsHealthy` condition, the metric and the flip Events say for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The reported health (after the gate).
    pub healthy: bool,
    /// The reported health flipped on this tick (one Event).
    pub flipped: bool,
    pub reason: &'static str,
    pub message: std::borrow::Cow<'static, str>,
}

/// Summarises the components' signal health through `gate`. Both components usually read the
/// same signal: each problem is named once.
pub fn health_report(health: &[(Component, SignalHealth)], gate: &mut HealthGate) -> HealthReport {
    let mut problems: Vec<(&'static str, DateTime<Utc>, String)> = Vec::new();
    for (_, h) in health {
        if let SignalHealth::Unhealthy {
            since,
            reason,
            problems: texts,
        } = h
        {
            for text in texts {
                if !problems.iter().any(|p| &p.2 == text) {
                    problems.push((*reason, *since, text.clone()));
                }
            }
        }
    }
    let (healthy, flipped) = gate.observe(problems.is_empty());
    if healthy {
        // Reported healthy while a short spell of problems has not yet flipped it.
        problems.clear();
    }
    let (reason, message) = match problems.first() {
        None if !healthy => (
            reasons::SIGNALS_UNHEALTHY,
            format!(
                "signals fresh again ({} of {} readings before reporting healthy)",
                gate.against,
                HealthGate::TICKS
            )
            .into(),
        ),
        None => (
            reasons::SIGNALS_FRESH,
            "every signal the scaling policies use is fresh".into(),
        ),
        Some((reason, since, _)) => (
            *reason,
            format!(
                "{}; since {}: holding replicas (no scale-in on stale data)",
                problems
                    .iter()
                    .map(|p| p.2.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
            .into(),
        ),
    };
    HealthReport {
        healthy,
        flipped,
        reason,
        message,
    }
}

// === status ===

/// What one component's decision leaves for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentOutcome {
    /// `need`, `prewarmReplicas`, `needHistory` (and `belowSince`, filled in here).
    pub sizing: AutoscalerComponentStatus,
    pub below_since: Option<DateTime<Utc>>,
    /// While scale-in evidence runs (`below_since`) above the lowest replicas: the gap that
    /// would restart it. Status is rewritten at least every half of it, so `signalsObservedAt`
    /// carries the evidence across a leader change.
    pub evidence_gap: Option<Duration>,
    /// This tick changed the component's replicas: the status shows the readings behind it at
    /// once (not after the throttle's interval).
    pub scaled: bool,
}

/// How often status must be rewritten while nothing else changes: half the shortest evidence
/// gap of a component whose scale-in evidence runs; None (never) otherwise. There is no
/// liveness heartbeat: a settled event costs no write.
pub fn evidence_heartbeat(outcomes: &BTreeMap<Component, ComponentOutcome>) -> Option<Duration> {
    outcomes
        .values()
        .filter_map(|o| o.evidence_gap)
        .map(heartbeat_of)
        .min()
}

/// The heartbeat one evidence gap asks for: half of it, at least a second.
pub fn heartbeat_of(gap: Duration) -> Duration {
    (gap / 2).max(Duration::from_secs(1))
}

/// The readings a status body shows, `[queueDepth, activeUsers, preQueueDepth]`: the last good
/// reading, else what status already holds (no pre-queue depth without a reading).
pub fn readings(last_ok: Option<&EventSignals>, status: &TicketingEventStatus) -> [Option<u64>; 3] {
    [
        last_ok
            .map(|s| s.queue_depth)
            .or(status.queue_depth.and_then(|v| u64::try_from(v).ok())),
        last_ok
            .map(|s| s.active_users)
            .or(status.active_users.and_then(|v| u64::try_from(v).ok())),
        last_ok.map(|s| s.pre_queue_depth),
    ]
}

/// The autoscaler's status body (without conditions and `signalsObservedAt`): the last good
/// reading, else what status already holds; per component its sizing and scale-in evidence.
pub fn status_body(
    last_ok: Option<&EventSignals>,
    status: &TicketingEventStatus,
    sold_out_at: Option<DateTime<Utc>>,
    outcomes: &BTreeMap<Component, ComponentOutcome>,
) -> AutoscalerStatus {
    let [queue_depth, active_users, pre_queue_depth] = readings(last_ok, status);
    let mut body = AutoscalerStatus {
        queue_depth,
        active_users,
        pre_queue_depth,
        sold_out_at: sold_out_at.or(status.sold_out_at),
        ..Default::default()
    };
    for (c, o) in outcomes {
        let mut fields = o.sizing.clone();
        fields.below_since = o.below_since;
        *body.component_mut(*c) = Some(fields);
    }
    body
}

/// Fingerprints of a status body as the throttle compares them: `urgent` covers what must not
/// wait (health and its reason, `soldOutAt`, each component's `belowSince` and the needs of its
/// need history), `snapshot` everything a reader uses (signal values, sizing, the condition's
/// message) except the times of the need marks — the newest mark's time moves on every tick
/// while its need holds, and a new leader takes the newest mark as current (see
/// `Memory::from_status`), so rewriting it would carry nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shapes {
    pub urgent: u64,
    pub snapshot: u64,
}

impl Shapes {
    pub fn of(healthy: bool, reason: &str, message: &str, body: &AutoscalerStatus) -> Self {
        // Every field named: a new one must be placed in a shape or left out on purpose.
        let AutoscalerStatus {
            queue_depth,
            active_users,
            pre_queue_depth,
            sold_out_at,
            signals_observed_at: _,
            conditions: _,
            queue,
            reservation,
        } = body;
        let mut shapes = ShapesOf::new(
            healthy,
            reason,
            message,
            *sold_out_at,
            [*queue_depth, *active_users, *pre_queue_depth],
        );
        for c in [queue, reservation] {
            shapes.component(c.as_ref().map(|c| {
                let AutoscalerComponentStatus {
                    below_since,
                    need,
                    prewarm_replicas,
                    need_history,
                } = c;
                ComponentShape {
                    below_since: *below_since,
                    need: *need,
                    prewarm_replicas: *prewarm_replicas,
                    needs: need_history.as_ref().map(|h| h.iter().map(|m| m.replicas)),
                }
            }));
        }
        shapes.finish()
    }

    /// The shapes of what status already holds of the autoscaler's fields for `components`, with
    /// when it was written (`signalsObservedAt`); None when the autoscaler never wrote it
    /// (no `SignalsHealthy` condition). A new leader compares against it before its first write,
    /// so taking over thousands of settled events costs no write.
    pub fn in_status(
        status: &TicketingEventStatus,
        components: impl Iterator<Item = Component>,
        now: DateTime<Utc>,
    ) -> Option<(Self, Duration)> {
        let cond = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == crate::status::types::SIGNALS_HEALTHY)?;
        let written = status.signals_observed_at?;
        let mut body = AutoscalerStatus {
            queue_depth: status.queue_depth.and_then(|v| u64::try_from(v).ok()),
            active_users: status.active_users.and_then(|v| u64::try_from(v).ok()),
            pre_queue_depth: status.pre_queue_depth.and_then(|v| u64::try_from(v).ok()),
            sold_out_at: status.sold_out_at,
            ..Default::default()
        };
        for c in components {
            let held = status.component(c);
            let unsigned = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
            *body.component_mut(c) = Some(AutoscalerComponentStatus {
                below_since: held.and_then(|h| h.below_since),
                need: unsigned(held.and_then(|h| h.need)),
                prewarm_replicas: unsigned(held.and_then(|h| h.prewarm_replicas)),
                need_history: held.and_then(|h| h.need_history.clone()),
            });
        }
        let age = (now - written).to_std().unwrap_or_default();
        Some((
            Self::of(cond.status == "True", &cond.reason, &cond.message, &body),
            age,
        ))
    }
}

/// One component's part of [`Shapes`]: what [`Shapes::of`] reads from its status fields.
pub struct ComponentShape<N> {
    pub below_since: Option<DateTime<Utc>>,
    pub need: Option<u32>,
    pub prewarm_replicas: Option<u32>,
    /// The replicas of `needHistory`'s marks (None: no history).
    pub needs: Option<N>,
}

/// [`Shapes`] fed field by field, so a settled tick is judged without building the body it
/// would write (and [`Shapes::of`], which builds from the body, cannot disagree with it).
pub struct ShapesOf {
    urgent: std::hash::DefaultHasher,
    snapshot: std::hash::DefaultHasher,
}

impl ShapesOf {
    /// The condition's health, reason and message (bounded as [`crate::status::condition`]
    /// stores it), `soldOutAt`, and the readings `[queueDepth, activeUsers, preQueueDepth]`.
    pub fn new(
        healthy: bool,
        reason: &str,
        message: &str,
        sold_out_at: Option<DateTime<Utc>>,
        readings: [Option<u64>; 3],
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let mut urgent = std::hash::DefaultHasher::new();
        (healthy, reason, sold_out_at).hash(&mut urgent);
        let mut snapshot = std::hash::DefaultHasher::new();
        let (kept, cut) = crate::status::bounded_message(message);
        snapshot.write(kept.as_bytes());
        snapshot.write(cut.as_bytes());
        snapshot.write_u8(0xff);
        readings.hash(&mut snapshot);
        Self { urgent, snapshot }
    }

    /// The next component, queue first (None: the autoscaler does not size it now).
    pub fn component<N: Iterator<Item = i32>>(&mut self, c: Option<ComponentShape<N>>) {
        use std::hash::{Hash, Hasher};
        match c {
            None => {
                self.urgent.write_u8(0);
                self.snapshot.write_u8(0);
            }
            Some(c) => {
                self.urgent.write_u8(1);
                c.below_since.hash(&mut self.urgent);
                match c.needs {
                    None => self.urgent.write_u8(0),
                    Some(needs) => {
                        self.urgent.write_u8(1);
                        let mut n = 0usize;
                        for r in needs {
                            self.urgent.write_i32(r);
                            n += 1;
                        }
                        self.urgent.write_usize(n);
                    }
                }
                self.snapshot.write_u8(1);
                (c.need, c.prewarm_replicas).hash(&mut self.snapshot);
            }
        }
    }

    pub fn finish(self) -> Shapes {
        use std::hash::Hasher;
        Shapes {
            urgent: self.urgent.finish(),
            snapshot: self.snapshot.finish(),
        }
    }
}

/// The last status write, as the throttle sees it.
#[derive(Debug, Clone, Copy)]
pub struct LastWrite {
    pub elapsed: Duration,
    pub shapes: Shapes,
}

/// Whether to write the status now: always the first time and on any urgent change; other
/// changes at most every `interval`; an unchanged status only every `heartbeat` (while scale-in
/// evidence runs), else never.
pub fn write_due(
    last: Option<LastWrite>,
    now: Shapes,
    interval: Duration,
    heartbeat: Option<Duration>,
) -> bool {
    match last {
        None => true,
        Some(w) => {
            w.shapes.urgent != now.urgent
                || (w.shapes.snapshot != now.snapshot && w.elapsed >= interval)
                || heartbeat.is_some_and(|h| w.elapsed >= h)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::autoscaler::SignalHealth;

    #[test]
    fn a_hovering_signal_does_not_flip_the_reported_health() {
        let mut g = HealthGate::default();
        assert_eq!(
            g.observe(true),
            (true, false),
            "first healthy reading: reported, no Event"
        );
        // Unhealthy every other tick: never three in a row, never reported.
        for i in 0..20 {
            assert_eq!(g.observe(i % 2 == 1), (true, false), "tick {i}");
        }
        // Three in a row flip it (one Event), and three healthy flip it back.
        assert_eq!(g.observe(false), (true, false));
        assert_eq!(g.observe(false), (true, false));
        assert_eq!(g.observe(false), (false, true));
        assert_eq!(g.observe(true), (false, false));
        assert_eq!(g.observe(true), (false, false));
        assert_eq!(g.observe(true), (true, true));
        // An operator that starts on a broken Redis reports it at once.
        assert_eq!(HealthGate::default().observe(false), (false, true));
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn unhealthy(text: &str) -> SignalHealth {
        SignalHealth::Unhealthy {
            since: t(0),
            reason: "Timeout",
            problems: vec![text.to_owned()],
        }
    }

    #[test]
    fn the_health_report_names_each_problem_once_and_follows_the_gate() {
        let mut gate = HealthGate::default();
        let both = [
            (Component::Queue, unhealthy("queueDepth: timed out after 1s")),
            (
                Component::Reservation,
                unhealthy("queueDepth: timed out after 1s"),
            ),
        ];
        let r = health_report(&both, &mut gate);
        assert_eq!((r.healthy, r.flipped, r.reason), (false, true, "Timeout"));
        assert_eq!(
            r.message,
            "queueDepth: timed out after 1s; since 2027-01-15T08:00:00Z: holding replicas (no scale-in on stale data)"
        );
        // Fresh again: still reported unhealthy for two readings, then flipped.
        let fine = [(Component::Queue, SignalHealth::Healthy)];
        let r = health_report(&fine, &mut gate);
        assert_eq!(
            (r.healthy, r.flipped, r.reason),
            (false, false, reasons::SIGNALS_UNHEALTHY)
        );
        assert_eq!(
            r.message,
            "signals fresh again (1 of 3 readings before reporting healthy)"
        );
        health_report(&fine, &mut gate);
        let r = health_report(&fine, &mut gate);
        assert_eq!(
            (r.healthy, r.flipped, r.reason),
            (true, true, reasons::SIGNALS_FRESH)
        );
    }

    fn signals(queue: u64, pre: u64, at: DateTime<Utc>) -> EventSignals {
        EventSignals {
            queue_depth: queue,
            pre_queue_depth: pre,
            active_users: 0,
            sold_out: false,
            counts: crate::signals::Counts::default(),
            observed_at: at,
        }
    }

    fn reading(queue: u64, sold_out: bool) -> Result<EventSignals, SignalError> {
        Ok(EventSignals {
            sold_out,
            ..signals(queue, 0, t(0))
        })
    }

    #[test]
    fn the_sale_ends_once_sold_out_and_drained_during_the_sale() {
        assert_eq!(
            sale_ends_now(None, Phase::OnSale, &reading(0, true)).as_deref(),
            Some("sold out and the queue is empty: the sale ends early")
        );
        assert_eq!(
            sale_ends_now(None, Phase::OnSale, &reading(5, true)),
            None,
            "users still queued"
        );
        assert_eq!(sale_ends_now(None, Phase::PreWarming, &reading(0, true)), None);
        assert_eq!(
            sale_ends_now(Some(t(1)), Phase::OnSale, &reading(0, true)),
            None,
            "already ended"
        );
        assert_eq!(sale_ends_now(None, Phase::OnSale, &reading(0, false)), None);
    }

    #[test]
    fn the_status_body_falls_back_to_status_and_carries_each_component() {
        let status = TicketingEventStatus {
            queue_depth: Some(40),
            active_users: Some(7),
            sold_out_at: Some(t(5)),
            ..Default::default()
        };
        let mut outcomes = BTreeMap::new();
        outcomes.insert(
            Component::Queue,
            ComponentOutcome {
                sizing: AutoscalerComponentStatus {
                    need: Some(12),
                    ..Default::default()
                },
                below_since: Some(t(3)),
                evidence_gap: Some(Duration::from_secs(30)),
                scaled: false,
            },
        );
        // Evidence running with a 30 s gap: status is rewritten at least every 15 s.
        assert_eq!(evidence_heartbeat(&outcomes), Some(Duration::from_secs(15)));
        // Nothing that a take-over could lose: never rewritten for its own sake.
        let mut idle = outcomes.clone();
        idle.values_mut().for_each(|o| o.evidence_gap = None);
        assert_eq!(evidence_heartbeat(&idle), None);
        let body = status_body(None, &status, None, &outcomes);
        assert_eq!(
            (
                body.queue_depth,
                body.active_users,
                body.pre_queue_depth,
                body.sold_out_at
            ),
            (Some(40), Some(7), None, Some(t(5)))
        );
        let q = body.queue.clone().unwrap();
        assert_eq!((q.need, q.below_since), (Some(12), Some(t(3))));
        assert!(body.reservation.is_none());
        let live = signals(900, 30, t(9));
        let body = status_body(Some(&live), &status, Some(t(8)), &outcomes);
        assert_eq!(
            (body.queue_depth, body.pre_queue_depth, body.sold_out_at),
            (Some(900), Some(30), Some(t(8)))
        );
    }

    fn body(depth: u64, needs: &[(i64, i32)]) -> AutoscalerStatus {
        AutoscalerStatus {
            queue_depth: Some(depth),
            queue: Some(AutoscalerComponentStatus {
                need: needs.last().and_then(|(_, n)| u32::try_from(*n).ok()),
                need_history: Some(
                    needs
                        .iter()
                        .map(|&(at, replicas)| crate::crd::NeedMark { at: t(at), replicas })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_throttle_writes_urgent_changes_at_once_and_the_rest_at_most_every_interval() {
        let fresh = "every signal the scaling policies use is fresh";
        let shapes = |healthy, b: &AutoscalerStatus| Shapes::of(healthy, "SignalsFresh", fresh, b);
        let written = shapes(true, &body(1, &[(0, 9), (5, 4)]));
        let (interval, evidence) = (Duration::from_secs(5), Some(Duration::from_secs(15)));
        let last = |secs| {
            Some(LastWrite {
                elapsed: Duration::from_secs(secs),
                shapes: written,
            })
        };
        assert!(write_due(None, written, interval, None), "first write");
        assert!(
            write_due(
                last(0),
                shapes(false, &body(1, &[(0, 9), (5, 4)])),
                interval,
                None
            ),
            "health: at once"
        );
        assert!(
            write_due(last(0), shapes(true, &body(1, &[(0, 9), (6, 3)])), interval, None),
            "a new need in the history: at once"
        );
        let deeper = shapes(true, &body(2, &[(0, 9), (5, 4)]));
        assert!(
            !write_due(last(1), deeper, interval, None),
            "a new depth waits for the interval"
        );
        assert!(write_due(last(5), deeper, interval, None));
        // The newest mark's time moves on every tick while its need holds: nothing to write.
        let same = shapes(true, &body(1, &[(0, 9), (3600, 4)]));
        assert_eq!(same, written);
        assert!(!write_due(last(3600), same, interval, None), "settled: never");
        assert!(
            write_due(last(15), same, interval, evidence),
            "scale-in evidence carried every half gap"
        );
        assert!(!write_due(last(14), same, interval, evidence));
    }

    #[test]
    fn what_status_holds_counts_as_written() {
        let fresh = "every signal the scaling policies use is fresh";
        let b = body(7, &[(0, 9), (5, 4)]);
        let mut status = TicketingEventStatus {
            queue_depth: Some(7),
            signals_observed_at: Some(t(10)),
            queue: Some(crate::crd::ComponentStatus {
                need: Some(4),
                need_history: b.queue.as_ref().and_then(|q| q.need_history.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Shapes::in_status(&status, [Component::Queue].into_iter(), t(40)),
            None,
            "never written by the autoscaler (no SignalsHealthy)"
        );
        status.conditions = Some(vec![crate::status::condition(
            &[],
            crate::status::types::SIGNALS_HEALTHY,
            true,
            reasons::SIGNALS_FRESH,
            fresh.to_owned(),
            None,
            t(0),
        )]);
        let (held, age) = Shapes::in_status(&status, [Component::Queue].into_iter(), t(40)).unwrap();
        assert_eq!(age, Duration::from_secs(30));
        assert_eq!(held, Shapes::of(true, reasons::SIGNALS_FRESH, fresh, &b));
        // A reading that moved is a difference (written once the interval has passed).
        assert_ne!(
            held,
            Shapes::of(true, reasons::SIGNALS_FRESH, fresh, &body(8, &[(0, 9), (5, 4)]))
        );
    }
}
