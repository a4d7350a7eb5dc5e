//! Runs a scaler over a trace on a one-second clock and measures the outcome.

use super::model::{Pods, Scaler};
use super::trace::{Trace, TracePoint};

/// Which trace column is a component's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// The waiting room serves everyone waiting: the users in line and, before the on-sale, those
    /// in the pre-queue (each holds a stream or polls, exactly like a queued user).
    Waiting,
    /// The reservation service serves the admitted users.
    ActiveUsers,
}

impl Demand {
    pub fn of(self, p: &TracePoint) -> f64 {
        match self {
            Self::Waiting => p.queue_depth + p.pre_queue_depth.unwrap_or(0.0),
            Self::ActiveUsers => p.active_users.unwrap_or(0.0),
        }
    }
}

/// What one scaler did over one trace, sampled every second.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub name: String,
    pub secs: Vec<f64>,
    pub demand: Vec<f64>,
    pub desired: Vec<u32>,
    pub ready: Vec<u32>,
}

/// The figures the report prints for one scaler on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    /// Replicas that serve the trace's peak: `ceil(peak / per-pod capacity)`, within [min, max].
    pub target: u32,
    /// Seconds from the surge start (demand first above what `min` pods serve) until `target`
    /// pods were Ready; None if never.
    pub time_to_target: Option<f64>,
    /// ∫ pods that exist (Ready or starting) dt, in minutes: what the capacity costs.
    pub replica_minutes: f64,
    /// Minutes during which demand was above what the Ready pods serve.
    pub under_capacity_minutes: f64,
    /// ∫ max(0, demand − Ready pods × capacity) dt, in user-minutes: how much, not only how long.
    pub unserved_user_minutes: f64,
    /// The most pods at once.
    pub peak_replicas: u32,
}

/// Simulation parameters shared by every scaler.
#[derive(Debug, Clone, Copy)]
pub struct World {
    pub min: u32,
    pub max: u32,
    pub per_pod_capacity: f64,
    pub pod_start_delay: std::time::Duration,
    pub demand: Demand,
}

/// Replays `trace` through `scaler`. Decisions happen every `scaler.period()` seconds starting at
/// the trace's first sample; the clock advances by one second.
pub fn run(name: &str, trace: &Trace, scaler: &mut dyn Scaler, world: &World) -> Timeline {
    let start = trace.points.first().map_or(0.0, |p| p.secs);
    let end = trace.points.last().map_or(0.0, |p| p.secs);
    let period = scaler.period();
    let mut pods = Pods::new(
        scaler.initial().unwrap_or(world.min),
        start,
        world.pod_start_delay,
    );
    let mut next_decision = start;
    let mut timeline = Timeline {
        name: name.to_owned(),
        secs: Vec::new(),
        demand: Vec::new(),
        desired: Vec::new(),
        ready: Vec::new(),
    };
    let steps = (end - start).floor() as u64;
    for i in 0..=steps {
        let now = start + i as f64;
        let point = trace.at(now);
        while next_decision <= now {
            let desired = scaler.decide(next_decision, &point, pods.total());
            pods.scale(desired, next_decision);
            next_decision += period;
        }
        timeline.secs.push(now);
        timeline.demand.push(world.demand.of(&point));
        timeline.desired.push(pods.total());
        timeline.ready.push(pods.ready(now));
    }
    timeline
}

/// The timelines of one component as CSV: `seconds,load,needed`, then per row
/// `<name> desired,<name> ready`.
pub fn csv(timelines: &[Timeline], needed: &[u32]) -> String {
    let mut out = String::from("seconds,load,needed");
    for t in timelines {
        let name = t.name.replace(',', " ");
        out.push_str(&format!(",{name} desired,{name} ready"));
    }
    out.push('\n');
    let Some(first) = timelines.first() else {
        return out;
    };
    for (i, secs) in first.secs.iter().enumerate() {
        let need = needed.get(i).copied().unwrap_or(0);
        out.push_str(&format!("{secs},{},{need}", first.demand[i]));
        for t in timelines {
            let (d, r) = (
                t.desired.get(i).copied().unwrap_or(0),
                t.ready.get(i).copied().unwrap_or(0),
            );
            out.push_str(&format!(",{d},{r}"));
        }
        out.push('\n');
    }
    out
}

/// Measures a timeline.
pub fn measure(t: &Timeline, world: &World) -> Outcome {
    let cap = world.per_pod_capacity.max(f64::MIN_POSITIVE);
    let peak = t.demand.iter().copied().fold(0.0, f64::max);
    let target = ((peak / cap).ceil() as u32).clamp(world.min, world.max);
    let base_capacity = f64::from(world.min) * cap;
    let surge = t.demand.iter().position(|&d| d > base_capacity);
    // No surge (what `min` pods serve was always enough): at the target from the start.
    let time_to_target = surge.map_or(Some(0.0), |s| {
        t.ready[s..]
            .iter()
            .position(|&r| r >= target)
            .map(|k| t.secs[s + k] - t.secs[s])
    });
    let (mut replica_secs, mut under_secs, mut unserved) = (0.0, 0.0, 0.0);
    for i in 1..t.secs.len() {
        let dt = t.secs[i] - t.secs[i - 1];
        replica_secs += f64::from(t.desired[i - 1]) * dt;
        let served = f64::from(t.ready[i - 1]) * cap;
        if t.demand[i - 1] > served {
            under_secs += dt;
            unserved += (t.demand[i - 1] - served) * dt;
        }
    }
    Outcome {
        name: t.name.clone(),
        target,
        time_to_target,
        replica_minutes: replica_secs / 60.0,
        under_capacity_minutes: under_secs / 60.0,
        unserved_user_minutes: unserved / 60.0,
        peak_replicas: t.desired.iter().copied().max().unwrap_or(0),
    }
}
