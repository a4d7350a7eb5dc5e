//! The things being simulated: pods with a start delay, tiketi's policy, and KEDA + HPA.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::autoscaler::{self, Inputs, Memory, Policy, Samples, Signal};

use super::trace::TracePoint;

/// Pods of one Deployment: each becomes Ready `start_delay` after it is created.
#[derive(Debug, Clone)]
pub struct Pods {
    /// Ready-at time (seconds) of each pod, in creation order.
    ready_at: Vec<f64>,
    start_delay: f64,
}

impl Pods {
    /// `initial` pods, already Ready at `t0`.
    pub fn new(initial: u32, t0: f64, start_delay: Duration) -> Self {
        Self {
            ready_at: vec![t0; initial as usize],
            start_delay: start_delay.as_secs_f64(),
        }
    }

    /// Pods that exist (what `spec.replicas` asked for).
    pub fn total(&self) -> u32 {
        self.ready_at.len() as u32
    }

    pub fn ready(&self, now: f64) -> u32 {
        self.ready_at.iter().filter(|&&r| r <= now).count() as u32
    }

    /// Scales to `desired`. A ReplicaSet scaling down deletes not-yet-ready pods first, then the
    /// newest; pods are appended in creation order, so removing from the end does exactly that.
    pub fn scale(&mut self, desired: u32, now: f64) {
        let desired = desired as usize;
        while self.ready_at.len() < desired {
            self.ready_at.push(now + self.start_delay);
        }
        self.ready_at.truncate(desired);
    }
}

/// An autoscaler under simulation.
pub trait Scaler {
    /// Seconds between two decisions.
    fn period(&self) -> f64;
    /// The replicas to set at `now`, given the trace sample in force and the current replicas.
    fn decide(&mut self, now: f64, point: &TracePoint, current: u32) -> u32;
    /// Pods that exist (and are Ready) when the trace starts; None: the world's minimum.
    fn initial(&self) -> Option<u32> {
        None
    }
}

// === static peak provisioning ===

/// Provisions the trace's peak need for the whole trace (what a team does without an autoscaler).
pub struct Static(pub u32);

impl Scaler for Static {
    fn period(&self) -> f64 {
        60.0
    }

    fn decide(&mut self, _now: f64, _point: &TracePoint, _current: u32) -> u32 {
        self.0
    }

    fn initial(&self) -> Option<u32> {
        Some(self.0)
    }
}

// === instant reactive reference ===

/// The reference for what reaction alone can do: every second it sets exactly the replicas the
/// load needs now (`ceil(load / capacity)`, no headroom, no tolerance, no cooldown, no rate
/// limit), never below `floor` while it applies (the event's pre-warm, as the cron row holds it).
/// What it is still under capacity comes from pod start alone: no scaler that reacts to the load
/// (rather than predicting it) avoids it without holding spare replicas.
pub struct InstantReactive {
    pub capacity: f64,
    pub min: u32,
    pub max: u32,
    pub metric: super::engine::Demand,
    /// `(start, end, replicas)` in trace seconds.
    pub floor: Option<(f64, f64, u32)>,
}

impl Scaler for InstantReactive {
    fn period(&self) -> f64 {
        1.0
    }

    fn decide(&mut self, now: f64, point: &TracePoint, _current: u32) -> u32 {
        let floor = self
            .floor
            .filter(|&(start, end, _)| now >= start && now < end)
            .map_or(0, |(_, _, r)| r);
        let need = (self.metric.of(point) / self.capacity.max(f64::MIN_POSITIVE)).ceil();
        (need.clamp(0.0, f64::from(u32::MAX)) as u32)
            .max(floor)
            .clamp(self.min, self.max.max(self.min))
    }
}

// === tiketi ===

/// The replica floor over time, mirroring `crate::schedule`: minReplicas, then a pre-warm ramp of
/// `ramp_steps` equal steps across `lead` before the on-sale time, the pre-warm target until
/// `hold_for` after it, then minReplicas again.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub min: u32,
    pub prewarm: Option<u32>,
    pub on_sale_at: f64,
    pub lead: f64,
    pub ramp_steps: u32,
    pub hold_for: f64,
}

impl Floor {
    pub fn at(&self, now: f64) -> u32 {
        let Some(target) = self.prewarm.filter(|&p| p > self.min) else {
            return self.min;
        };
        let start = self.on_sale_at - self.lead;
        if now < start || now >= self.on_sale_at + self.hold_for {
            return self.min;
        }
        if now >= self.on_sale_at {
            return target;
        }
        let n = self.ramp_steps.max(1);
        let step_len = self.lead / f64::from(n);
        let k = (((now - start) / step_len).floor() as u32 + 1).min(n);
        self.min + (u64::from(target - self.min) * u64::from(k)).div_ceil(u64::from(n)) as u32
    }
}

/// tiketi's real [`autoscaler::decide`], fed one fresh sample per poll interval.
pub struct Tiketi {
    pub policy: Policy,
    pub floor: Floor,
    pub max: u32,
    pub epoch: DateTime<Utc>,
    pub memory: Memory,
}

impl Tiketi {
    fn instant(&self, secs: f64) -> DateTime<Utc> {
        self.epoch + chrono::Duration::milliseconds((secs * 1000.0).round() as i64)
    }
}

impl Scaler for Tiketi {
    fn period(&self) -> f64 {
        self.policy.poll_interval.as_secs_f64().max(0.001)
    }

    fn decide(&mut self, now: f64, point: &TracePoint, current: u32) -> u32 {
        let at = self.instant(now);
        let mut samples = Samples::new().ok(Signal::QueueDepth, point.queue_depth, at);
        if let Some(active) = point.active_users {
            samples = samples.ok(Signal::ActiveUsers, active, at);
        }
        let decision = autoscaler::decide(
            &self.policy,
            &Inputs {
                floor: self.floor.at(now),
                prewarm: 0,
                max: self.max,
                current,
                on_sale: now >= self.floor.on_sale_at,
                samples: &samples,
                memory: &self.memory,
                now: at,
            },
        );
        self.memory = decision.memory;
        decision.desired
    }
}

// === KEDA + HPA ===

/// KEDA's redis trigger feeding an HPA, from their documented defaults:
/// - KEDA exposes the list length as an external metric of type AverageValue with target
///   `listLength`; it polls every `pollingInterval` (30 s) only to activate from zero replicas, the
///   HPA otherwise reads the live value through KEDA's metrics server;
/// - the HPA syncs every 15 s: `desired = ceil(current × (metric / current) / target)`, i.e.
///   `ceil(metric / target)`, skipped when the ratio is within the 0.1 tolerance;
/// - scale-up: no stabilization, policies `max(+100 %, +4 pods)` per 15 s;
/// - scale-down: the highest recommendation of the last 300 s, then 100 % per 15 s;
/// - bounded by `[minReplicaCount, maxReplicaCount]`.
pub struct KedaHpa {
    pub target: f64,
    pub min: u32,
    pub max: u32,
    pub sync: f64,
    pub polling: f64,
    pub tolerance: f64,
    pub scale_down_window: f64,
    /// Which trace column the trigger reads (redis `listLength` of the queue; for the
    /// reservation service a metric of the admitted users).
    pub metric: super::engine::Demand,
    /// A KEDA cron trigger next to the metric trigger: `(start, end, desiredReplicas)` in trace
    /// seconds. KEDA exposes it as one more external metric; the HPA takes the largest
    /// recommendation of all metrics, then applies its stabilization and rate policies.
    pub cron: Option<(f64, f64, u32)>,
    /// (time, recommendation) for the scale-down stabilization window.
    recommendations: VecDeque<(f64, u32)>,
    /// (time, replicas added) for the scale-up rate policies.
    scale_ups: VecDeque<(f64, u32)>,
    last_poll: Option<f64>,
    active: bool,
}

impl KedaHpa {
    pub fn new(target: f64, min: u32, max: u32) -> Self {
        Self {
            target: target.max(f64::MIN_POSITIVE),
            min,
            max,
            sync: 15.0,
            polling: 30.0,
            tolerance: 0.1,
            scale_down_window: 300.0,
            metric: super::engine::Demand::Waiting,
            cron: None,
            recommendations: VecDeque::new(),
            scale_ups: VecDeque::new(),
            last_poll: None,
            active: min > 0,
        }
    }

    const SCALE_UP_PERIOD: f64 = 15.0;
}

impl Scaler for KedaHpa {
    fn period(&self) -> f64 {
        self.sync
    }

    fn decide(&mut self, now: f64, point: &TracePoint, current: u32) -> u32 {
        let metric = self.metric.of(point);
        let cron = self
            .cron
            .filter(|&(start, end, _)| now >= start && now < end)
            .map_or(0, |(_, _, replicas)| replicas);
        // KEDA activation (0 ↔ 1) happens on its own polling interval.
        if self.min == 0 && self.last_poll.is_none_or(|p| now - p >= self.polling) {
            self.last_poll = Some(now);
            self.active = metric > 0.0 || cron > 0;
        }
        if !self.active {
            return 0;
        }
        let current_f = f64::from(current.max(1));
        let ratio = metric / (self.target * current_f);
        let raw = if (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            (metric / self.target).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
        };
        // The cron metric (AverageValue 1 of desiredReplicas) recommends exactly its replicas.
        let raw = raw.max(cron).clamp(self.min.max(1), self.max);

        // Stabilization: scale-up window 0 (raw), scale-down the max over the last 300 s.
        self.recommendations.push_back((now, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t <= now - self.scale_down_window)
        {
            self.recommendations.pop_front();
        }
        let down_rec = self.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(raw);
        let mut stabilized = current;
        if stabilized < raw {
            stabilized = raw;
        }
        if stabilized > down_rec {
            stabilized = down_rec;
        }

        // Rate policies: the largest of +100 % and +4 pods over the period; scale-down 100 %.
        while self
            .scale_ups
            .front()
            .is_some_and(|&(t, _)| t <= now - Self::SCALE_UP_PERIOD)
        {
            self.scale_ups.pop_front();
        }
        let added: u32 = self.scale_ups.iter().map(|&(_, n)| n).sum();
        let period_start = current.saturating_sub(added);
        let up_limit = (period_start.saturating_mul(2)).max(period_start + 4);
        let desired = stabilized.min(up_limit).clamp(self.min, self.max);
        if desired > current {
            self.scale_ups.push_back((now, desired - current));
        }
        desired
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn point(q: f64) -> TracePoint {
        TracePoint {
            secs: 0.0,
            queue_depth: q,
            active_users: None,
            pre_queue_depth: None,
        }
    }

    #[test]
    fn pods_become_ready_after_the_delay_and_unready_ones_go_first() {
        let mut pods = Pods::new(2, 0.0, Duration::from_secs(30));
        pods.scale(5, 10.0);
        assert_eq!((pods.total(), pods.ready(39.0), pods.ready(40.0)), (5, 2, 5));
        pods.scale(3, 20.0);
        assert_eq!((pods.total(), pods.ready(40.0)), (3, 3));
        pods.scale(1, 50.0);
        assert_eq!(pods.ready(50.0), 1);
    }

    #[test]
    fn hpa_scale_up_is_rate_limited_to_max_of_double_and_plus_four() {
        let mut hpa = KedaHpa::new(2_500.0, 2, 100);
        let mut current = 2;
        let mut seen = vec![current];
        for i in 0..6 {
            current = hpa.decide(f64::from(i) * 15.0, &point(150_000.0), current);
            seen.push(current);
        }
        assert_eq!(seen, vec![2, 6, 12, 24, 48, 60, 60]);
    }

    #[test]
    fn hpa_tolerance_and_scale_down_stabilization() {
        let mut hpa = KedaHpa::new(1_000.0, 1, 100);
        // 10 pods, metric 10,500: ratio 1.05 is within tolerance.
        assert_eq!(hpa.decide(0.0, &point(10_500.0), 10), 10);
        // Load drops: the 300 s window keeps the earlier recommendation (10).
        assert_eq!(hpa.decide(15.0, &point(1_000.0), 10), 10);
        assert_eq!(hpa.decide(290.0, &point(1_000.0), 10), 10);
        // After the window has passed, down to the new recommendation at once (100 %/15 s).
        assert_eq!(hpa.decide(300.0, &point(1_000.0), 10), 1);
    }

    #[test]
    fn floor_ramps_in_steps_then_holds_then_drops() {
        let f = Floor {
            min: 2,
            prewarm: Some(10),
            on_sale_at: 1_800.0,
            lead: 1_800.0,
            ramp_steps: 3,
            hold_for: 900.0,
        };
        let got: Vec<u32> = [
            0.0, 1.0, 599.0, 600.0, 1_200.0, 1_799.0, 1_800.0, 2_699.0, 2_700.0,
        ]
        .iter()
        .map(|&t| f.at(t))
        .collect();
        assert_eq!(got, vec![5, 5, 5, 8, 10, 10, 10, 10, 2]);
        let none = Floor { prewarm: None, ..f };
        assert_eq!(none.at(1_800.0), 2);
    }
}
