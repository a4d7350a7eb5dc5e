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
    pub message: String,
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
            ),
        ),
        None => (
            reasons::SIGNALS_FRESH,
            "every signal the scaling policies use is fresh".to_owned(),
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
            ),
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
    /// The needs of the need history (not their refreshed times): a change is written at once,
    /// so a new leader inherits the window's highest need.
    pub need_shape: Vec<u32>,
    /// While scale-in evidence runs (`below_since`): the gap that would restart it. Status is
    /// rewritten at least every half of it, so `signalsObservedAt` carries the evidence across
    /// a leader change (a 60 s heartbeat would lose it to a 30 s gap).
    pub evidence_gap: Option<Duration>,
}

/// How often status must be rewritten at least: the configured heartbeat, or half the shortest
/// evidence gap of a component whose scale-in evidence runs.
pub fn heartbeat(configured: Duration, outcomes: &BTreeMap<Component, ComponentOutcome>) -> Duration {
    outcomes
        .values()
        .filter_map(|o| o.evidence_gap)
        .map(|gap| (gap / 2).max(Duration::from_secs(1)))
        .fold(configured, Duration::min)
}

/// The autoscaler's status body (without conditions and `signalsObservedAt`): the last good
/// reading, else what status already holds; per component its sizing and scale-in evidence.
pub fn status_body(
    last_ok: Option<&EventSignals>,
    status: &TicketingEventStatus,
    sold_out_at: Option<DateTime<Utc>>,
    outcomes: &BTreeMap<Component, ComponentOutcome>,
) -> AutoscalerStatus {
    let mut body = AutoscalerStatus {
        queue_depth: last_ok
            .map(|s| s.queue_depth)
            .or(status.queue_depth.and_then(|v| u64::try_from(v).ok())),
        active_users: last_ok
            .map(|s| s.active_users)
            .or(status.active_users.and_then(|v| u64::try_from(v).ok())),
        pre_queue_depth: last_ok.map(|s| s.pre_queue_depth),
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

/// The part of a status write that must not wait for the throttle: health, its reason, the sale
/// end, the scale-in evidence and the shape of the need history.
pub fn urgent_shape(
    report: &HealthReport,
    body: &AutoscalerStatus,
    outcomes: &BTreeMap<Component, ComponentOutcome>,
) -> serde_json::Value {
    serde_json::json!({
        "healthy": report.healthy,
        "reason": report.reason,
        "soldOutAt": body.sold_out_at,
        "below": outcomes.iter().map(|(c, o)| (c.as_str(), o.below_since)).collect::<BTreeMap<_, _>>(),
        "needs": outcomes.iter().map(|(c, o)| (c.as_str(), o.need_shape.clone())).collect::<BTreeMap<_, _>>(),
    })
}

/// The last status write, as the throttle sees it.
#[derive(Debug, Clone, Copy)]
pub struct LastWrite {
    pub elapsed: Duration,
    /// [`fingerprint`]s of what was written (a hash per event instead of two JSON trees: the
    /// loop keeps one per event, thousands of them).
    pub urgent: u64,
    pub snapshot: u64,
}

/// A stable hash of a JSON value (its maps are ordered, so equal values hash equally).
pub fn fingerprint(v: &serde_json::Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| crate::children::fnv1a(&b))
}

/// Whether to write the status now: always the first time and on any urgent change; other
/// changes at most every `interval`; an unchanged status every `heartbeat` (so readers can tell
/// a live loop from a dead one).
pub fn write_due(
    last: Option<LastWrite>,
    urgent: &serde_json::Value,
    snapshot: &serde_json::Value,
    interval: Duration,
    heartbeat: Duration,
) -> bool {
    match last {
        None => true,
        Some(w) => {
            w.urgent != fingerprint(urgent)
                || (w.snapshot != fingerprint(snapshot) && w.elapsed >= interval)
                || w.elapsed >= heartbeat
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
                need_shape: vec![12],
                evidence_gap: Some(Duration::from_secs(30)),
            },
        );
        // Evidence running with a 30 s gap: status is rewritten at least every 15 s, not 60 s.
        assert_eq!(
            heartbeat(Duration::from_secs(60), &outcomes),
            Duration::from_secs(15)
        );
        let mut idle = outcomes.clone();
        idle.values_mut().for_each(|o| o.evidence_gap = None);
        assert_eq!(heartbeat(Duration::from_secs(60), &idle), Duration::from_secs(60));
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

    #[test]
    fn the_throttle_writes_urgent_changes_at_once_and_the_rest_at_most_every_interval() {
        let (a, b) = (
            serde_json::json!({"healthy": true}),
            serde_json::json!({"healthy": false}),
        );
        let (s1, s2) = (
            serde_json::json!({"queueDepth": 1}),
            serde_json::json!({"queueDepth": 2}),
        );
        let (interval, heartbeat) = (Duration::from_secs(5), Duration::from_secs(60));
        let last = |secs| {
            Some(LastWrite {
                elapsed: Duration::from_secs(secs),
                urgent: fingerprint(&a),
                snapshot: fingerprint(&s1),
            })
        };
        assert!(write_due(None, &a, &s1, interval, heartbeat), "first write");
        assert!(
            write_due(last(0), &b, &s1, interval, heartbeat),
            "urgent: at once"
        );
        assert!(
            !write_due(last(1), &a, &s2, interval, heartbeat),
            "a new depth waits for the interval"
        );
        assert!(write_due(last(5), &a, &s2, interval, heartbeat));
        assert!(!write_due(last(30), &a, &s1, interval, heartbeat), "unchanged");
        assert!(write_due(last(60), &a, &s1, interval, heartbeat), "heartbeat");
    }
}
