//! `simulate --event FILE`: a whole TicketingEvent over a trace, both components, side by side
//! with what a KEDA user would run.
//!
//! Rows, per component and in total:
//! - `tiketi`: the operator's own code path per poll interval — [`crate::schedule::evaluate`]
//!   for the floor, [`crate::autoscaler::plan_component`] for the decision (pre-warm ramp, the
//!   crowd-sized pre-warm from `preQueueDepth`, capacity need, steps, scale-in), memory carried
//!   from one decision to the next as the operator carries it through status;
//! - `keda`: KEDA + HPA on the same signal with the same per-pod target (see [`KedaHpa`]);
//! - `keda-cron`: the same plus a KEDA cron trigger holding the event's configured pre-warm
//!   replicas from `onSaleAt − leadTime` to `onSaleAt + holdFor` (what a KEDA user who knows the
//!   on-sale time configures);
//! - `static`: the trace's peak need provisioned for the whole trace.
//!
//! The world: a Ready pod serves the component's `capacity.perReplica` of its load (the queue
//! depth for the waiting room, the admitted users for reservation); without a capacity in the
//! spec, `--per-pod-capacity` / `--reservation-per-pod-capacity`. Pods are Ready after
//! `--pod-start-delay`.

use std::path::Path;

use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, TimeZone as _, Utc};
use serde::Serialize;

use super::engine::{self, Demand, Outcome, Timeline, World};
use super::model::{InstantReactive, KedaHpa, Scaler, Static};
use super::trace::{Trace, TracePoint};
use super::{SimulateArgs, out_path, print};
use crate::autoscaler::plan::{self as autoscaler, Known};
use crate::autoscaler::{Memory, Policy, Samples, Signal};
use crate::crd::{Component, TicketingEvent};

/// The four kinds of rows, in the order they are printed.
pub const KINDS: [(&str, &str); 4] = [
    ("tiketi", "tiketi"),
    ("keda", "KEDA + HPA"),
    ("keda-cron", "KEDA + HPA + cron pre-warm"),
    ("static", "static peak"),
];

/// Reads the TicketingEvent of `--event` (a multi-document file may hold Secrets too).
pub fn load_event(path: &Path) -> anyhow::Result<TicketingEvent> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading event {}", path.display()))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value =
            serde_yaml::Value::deserialize(doc).with_context(|| format!("parsing {}", path.display()))?;
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some("TicketingEvent") {
            let tev: TicketingEvent = serde_yaml::from_value(value)
                .with_context(|| format!("the TicketingEvent in {}", path.display()))?;
            for c in Component::ALL {
                Policy::try_from(tev.spec.scaling(c)).map_err(|e| anyhow::anyhow!(e.in_component(c)))?;
            }
            return Ok(tev);
        }
    }
    anyhow::bail!("{} holds no TicketingEvent", path.display())
}

use serde::Deserialize as _;

/// The operator's decision path for one component of `tev`, on the simulator's clock.
pub struct EventScaler {
    tev: TicketingEvent,
    component: Component,
    epoch: DateTime<Utc>,
    memory: Memory,
    period: f64,
    prometheus: Vec<String>,
}

impl EventScaler {
    pub fn new(tev: TicketingEvent, component: Component, epoch: DateTime<Utc>) -> anyhow::Result<Self> {
        let period = autoscaler::poll_interval(&tev)
            .map_err(|e| anyhow::anyhow!(e.in_component(component)))?
            .as_secs_f64()
            .max(0.25);
        let prometheus = autoscaler::prometheus_queries(&tev);
        Ok(Self {
            tev,
            component,
            epoch,
            memory: Memory::default(),
            period,
            prometheus,
        })
    }

    fn instant(&self, secs: f64) -> DateTime<Utc> {
        self.epoch + TimeDelta::milliseconds((secs * 1000.0).round() as i64)
    }
}

impl Scaler for EventScaler {
    fn period(&self) -> f64 {
        self.period
    }

    fn decide(&mut self, now: f64, point: &TracePoint, current: u32) -> u32 {
        let at = self.instant(now);
        let mut samples = Samples::new()
            .ok(Signal::QueueDepth, point.queue_depth, at)
            .ok(Signal::ActiveUsers, point.active_users.unwrap_or(0.0), at)
            .ok(Signal::PreQueueDepth, point.pre_queue_depth.unwrap_or(0.0), at);
        // Prometheus steps have no data in a trace: NaN matches nothing and keeps signals healthy.
        for q in &self.prometheus {
            samples = samples.ok(Signal::Prometheus(q.clone()), f64::NAN, at);
        }
        let Ok(schedule) = crate::schedule::evaluate(&self.tev.spec, None, at) else {
            return current;
        };
        let known = Known {
            current: Some(i32::try_from(current).unwrap_or(i32::MAX)),
            memory: Some(&self.memory),
            policy: None,
            quiet: false,
        };
        match autoscaler::plan_component(&self.tev, &schedule, self.component, &samples, known, at) {
            Ok(Some(planned)) => {
                self.memory = planned.decision.memory;
                planned.decision.desired
            }
            // Pinned (Closed): the schedule's floor.
            Ok(None) => {
                let (min, max) = (
                    self.tev.spec.min_replicas(self.component),
                    self.tev.spec.max_replicas(self.component),
                );
                u32::try_from(schedule.replicas(self.component, min, max, None)).unwrap_or(0)
            }
            Err(_) => current,
        }
    }
}

/// One row of the comparison, for JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowFigures {
    pub name: String,
    pub kind: &'static str,
    pub replica_minutes: f64,
    pub under_capacity_minutes: f64,
    pub unserved_user_minutes: f64,
    pub time_to_target_seconds: Option<f64>,
    pub peak_pods: u32,
}

impl RowFigures {
    fn from_outcome(kind: &'static str, o: &Outcome) -> Self {
        Self {
            name: o.name.clone(),
            kind,
            replica_minutes: round1(o.replica_minutes),
            under_capacity_minutes: round2(o.under_capacity_minutes),
            unserved_user_minutes: round1(o.unserved_user_minutes),
            time_to_target_seconds: o.time_to_target,
            peak_pods: o.peak_replicas,
        }
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A row in total (both components) with each component's figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    #[serde(flatten)]
    pub total: RowFigures,
    pub components: std::collections::BTreeMap<String, RowFigures>,
}

/// The bar, measured on the totals.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bar {
    /// tiketi's under-capacity minutes over the better of the two KEDA rows' (0 when both are 0).
    pub under_capacity_ratio: f64,
    pub under_capacity_bar: f64,
    /// tiketi's replica-minutes over the KEDA + HPA + cron row's.
    pub replica_minutes_ratio: f64,
    pub replica_minutes_bar: f64,
    pub met: bool,
    /// Under-capacity minutes of a scaler that sets exactly the replicas the load needs every
    /// second on the same pre-warm floor (see [`InstantReactive`]): what pod start alone costs.
    pub instant_reactive_under_capacity_minutes: f64,
    /// True when tiketi misses the under-capacity bar and even that reference is above it: on
    /// this trace reacting faster cannot meet it, only replicas held before the surge (foresight:
    /// a pre-queue, a known second release) can.
    pub needs_foresight: bool,
}

/// Everything simulated for one trace.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventTraceRun {
    pub trace: String,
    pub on_sale_at_seconds: f64,
    pub minutes: f64,
    pub rows: Vec<Row>,
    pub bar: Bar,
    #[serde(skip)]
    pub timelines: Vec<(Component, Vec<Timeline>, Vec<u32>)>,
}

/// The on-sale second of a trace: `--on-sale-at`, else the last sample before the queue first
/// fills (the pre-queue is shuffled into the queue at the on-sale instant).
pub fn on_sale_of(trace: &Trace, explicit: Option<f64>) -> f64 {
    explicit.unwrap_or_else(|| {
        let first = trace.points.iter().position(|p| p.queue_depth > 0.0).unwrap_or(0);
        trace.points.get(first.saturating_sub(1)).map_or(0.0, |p| p.secs)
    })
}

/// Simulates `tev` over `trace`: the event's onSaleAt is moved to the trace's on-sale second
/// (saleEndsAt keeps its distance).
pub fn simulate(
    args: &SimulateArgs,
    tev: &TicketingEvent,
    trace: &Trace,
    name: &str,
) -> anyhow::Result<EventTraceRun> {
    let on_sale = on_sale_of(trace, args.on_sale_at);
    let epoch = Utc
        .with_ymd_and_hms(2026, 12, 1, 2, 0, 0)
        .single()
        .context("epoch")?;
    let mut tev = tev.clone();
    let on_sale_at = epoch + TimeDelta::milliseconds((on_sale * 1000.0).round() as i64);
    let shift = on_sale_at - tev.spec.on_sale_at;
    tev.spec.sale_ends_at = tev.spec.sale_ends_at.map(|e| e + shift);
    tev.spec.on_sale_at = on_sale_at;
    tev.status = None;
    let has_active = trace.points.iter().any(|p| p.active_users.is_some());
    let components: Vec<Component> = Component::ALL
        .into_iter()
        .filter(|&c| c == Component::Queue || has_active)
        .collect();
    let mut per_kind: Vec<Vec<(Component, Outcome)>> = vec![Vec::new(); KINDS.len()];
    let mut instant_under = 0.0;
    let mut timelines = Vec::new();
    for &c in &components {
        let policy = Policy::try_from(tev.spec.scaling(c)).map_err(|e| anyhow::anyhow!(e.in_component(c)))?;
        let min = u32::try_from(tev.spec.min_replicas(c)).unwrap_or(0);
        let max = u32::try_from(tev.spec.max_replicas(c)).unwrap_or(0).max(min);
        let (demand, fallback_cap) = match c {
            Component::Queue => (Demand::Waiting, args.per_pod_capacity),
            Component::Reservation => (Demand::ActiveUsers, args.reservation_per_pod_capacity),
        };
        let cap = policy
            .capacity
            .as_ref()
            .map_or(fallback_cap, |k| k.per_replica)
            .max(f64::MIN_POSITIVE);
        let world = World {
            min,
            max,
            per_pod_capacity: cap,
            pod_start_delay: args.pod_start_delay,
            demand,
        };
        let peak = trace.points.iter().map(|p| demand.of(p)).fold(0.0, f64::max);
        let peak_need = ((peak / cap).ceil() as u32).clamp(min, max);
        let prewarm = tev.spec.prewarm.as_ref();
        let cron = prewarm.and_then(|p| {
            let lead = crate::crd::parse_duration("spec.prewarm.leadTime", &p.lead_time).ok()?;
            let hold = crate::crd::parse_duration("spec.prewarm.holdFor", &p.hold_for).ok()?;
            let replicas = u32::try_from(tev.spec.prewarm_replicas(c)?).ok()?;
            Some((
                on_sale - lead.as_secs_f64(),
                on_sale + hold.as_secs_f64(),
                replicas.min(max),
            ))
        });
        let mut scalers: Vec<Box<dyn Scaler>> = Vec::new();
        scalers.push(Box::new(EventScaler::new(tev.clone(), c, epoch)?));
        let mut keda = KedaHpa::new(cap, min, max);
        keda.metric = demand;
        scalers.push(Box::new(keda));
        let mut keda_cron = KedaHpa::new(cap, min, max);
        keda_cron.metric = demand;
        keda_cron.cron = cron;
        scalers.push(Box::new(keda_cron));
        scalers.push(Box::new(Static(peak_need)));
        let mut tl = Vec::new();
        for (k, scaler) in scalers.iter_mut().enumerate() {
            let t = engine::run(KINDS[k].1, trace, scaler.as_mut(), &world);
            per_kind[k].push((c, engine::measure(&t, &world)));
            tl.push(t);
        }
        let mut instant = InstantReactive {
            capacity: cap,
            min,
            max,
            metric: demand,
            floor: cron,
        };
        let t = engine::run("instant reactive", trace, &mut instant, &world);
        instant_under += engine::measure(&t, &world).under_capacity_minutes;
        let needed = tl
            .first()
            .map(|t| {
                t.demand
                    .iter()
                    .map(|&d| ((d / cap).ceil() as u32).clamp(min, max))
                    .collect()
            })
            .unwrap_or_default();
        timelines.push((c, tl, needed));
    }
    let rows: Vec<Row> = per_kind
        .iter()
        .enumerate()
        .map(|(k, outcomes)| {
            let (kind, label) = KINDS[k];
            let sum = |f: fn(&Outcome) -> f64| outcomes.iter().map(|(_, o)| f(o)).sum::<f64>();
            let ttt = outcomes
                .iter()
                .map(|(_, o)| o.time_to_target)
                .try_fold(0.0f64, |acc, t| t.map(|t| acc.max(t)));
            Row {
                total: RowFigures {
                    name: label.to_owned(),
                    kind,
                    replica_minutes: round1(sum(|o| o.replica_minutes)),
                    under_capacity_minutes: round2(sum(|o| o.under_capacity_minutes)),
                    unserved_user_minutes: round1(sum(|o| o.unserved_user_minutes)),
                    time_to_target_seconds: ttt,
                    peak_pods: outcomes.iter().map(|(_, o)| o.peak_replicas).sum(),
                },
                components: outcomes
                    .iter()
                    .map(|(c, o)| (c.to_string(), RowFigures::from_outcome(kind, o)))
                    .collect(),
            }
        })
        .collect();
    let bar = bar(&rows, instant_under);
    Ok(EventTraceRun {
        trace: name.to_owned(),
        on_sale_at_seconds: on_sale,
        minutes: (trace.duration_secs() / 60.0).round(),
        rows,
        bar,
        timelines,
    })
}

/// Under-capacity ≤ 0.2× the better KEDA row, replica-minutes ≤ 1.0× the cron row (raw sums,
/// not the rounded figures).
/// The better (lower) under-capacity minutes of the two KEDA rows.
fn better_keda_under_capacity(rows: &[Row]) -> f64 {
    rows.iter()
        .filter(|r| matches!(r.total.kind, "keda" | "keda-cron"))
        .map(|r| r.total.under_capacity_minutes)
        .fold(f64::INFINITY, f64::min)
}

fn bar(rows: &[Row], instant_under: f64) -> Bar {
    let get = |kind: &str| rows.iter().find(|r| r.total.kind == kind).map(|r| &r.total);
    let instant = round2(instant_under);
    let (Some(t), Some(_), Some(kc)) = (get("tiketi"), get("keda"), get("keda-cron")) else {
        return Bar {
            under_capacity_ratio: f64::NAN,
            under_capacity_bar: 0.2,
            replica_minutes_ratio: f64::NAN,
            replica_minutes_bar: 1.0,
            met: false,
            instant_reactive_under_capacity_minutes: instant,
            needs_foresight: false,
        };
    };
    let better = better_keda_under_capacity(rows);
    let under = if t.under_capacity_minutes <= 0.0 {
        0.0
    } else if better <= 0.0 {
        f64::INFINITY
    } else {
        t.under_capacity_minutes / better
    };
    let rm = t.replica_minutes / kc.replica_minutes.max(f64::MIN_POSITIVE);
    Bar {
        under_capacity_ratio: round3(under),
        under_capacity_bar: 0.2,
        replica_minutes_ratio: round3(rm),
        replica_minutes_bar: 1.0,
        met: under <= 0.2 && rm <= 1.0,
        instant_reactive_under_capacity_minutes: instant,
        needs_foresight: under > 0.2 && instant_under > 0.2 * better,
    }
}

fn ratio(v: f64) -> String {
    if v.is_infinite() {
        "∞".to_owned()
    } else {
        format!("{v:.3}×")
    }
}

/// The text (or Markdown) report of one trace.
pub fn report(run: &EventTraceRun, args: &SimulateArgs) -> String {
    let mut out = format!(
        "trace {}: {} min, on-sale at {} s, pod start {}\n",
        run.trace,
        run.minutes,
        crate::autoscaler::format::value(run.on_sale_at_seconds),
        humantime::format_duration(args.pod_start_delay)
    );
    let components: Vec<String> = run
        .rows
        .first()
        .map(|r| r.components.keys().cloned().collect())
        .unwrap_or_default();
    for c in components
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("total"))
    {
        out.push_str(&format!("{c}:\n"));
        let outcomes: Vec<Outcome> = run
            .rows
            .iter()
            .map(|r| {
                let f = if c == "total" { &r.total } else { &r.components[c] };
                Outcome {
                    name: f.name.clone(),
                    target: 0,
                    time_to_target: f.time_to_target_seconds,
                    replica_minutes: f.replica_minutes,
                    under_capacity_minutes: f.under_capacity_minutes,
                    unserved_user_minutes: f.unserved_user_minutes,
                    peak_replicas: f.peak_pods,
                }
            })
            .collect();
        out.push_str(&super::report::table(&outcomes, args.markdown));
    }
    let b = &run.bar;
    out.push_str(&format!(
        "bar: under-capacity {} the better KEDA row (≤ {}×), replica-minutes {} KEDA + HPA + cron (≤ {}×): {}\n",
        ratio(b.under_capacity_ratio),
        b.under_capacity_bar,
        ratio(b.replica_minutes_ratio),
        b.replica_minutes_bar,
        if b.met { "met" } else { "NOT met" }
    ));
    if b.needs_foresight {
        out.push_str(&format!(
            "     even an instant exact reactive scaler on the same pre-warm is under capacity {} min (bar: ≤ {} min): \
             reacting faster cannot meet it on this trace, only replicas held before the surge can\n",
            b.instant_reactive_under_capacity_minutes,
            round2(0.2 * better_keda_under_capacity(&run.rows)),
        ));
    }
    out
}

/// Where a component's timeline goes: the queue's at the template's path, the reservation's
/// next to it as `<stem>-reservation.<ext>`.
fn component_path(
    template: &Path,
    trace: &Path,
    several: bool,
    ext: &str,
    c: Component,
) -> std::path::PathBuf {
    let base = out_path(template, trace, several, ext);
    match c {
        Component::Queue => base,
        Component::Reservation => base.with_file_name(format!(
            "{}-reservation.{ext}",
            base.file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        )),
    }
}

/// `simulate --event`: every trace, printed (text, Markdown or JSON), plots if asked.
pub fn run(args: &SimulateArgs, event: &Path) -> anyhow::Result<()> {
    let tev = load_event(event)?;
    let several = args.traces.len() > 1;
    let mut runs = Vec::new();
    for path in &args.traces {
        let trace = Trace::load(path).with_context(|| format!("reading trace {}", path.display()))?;
        let name = path
            .file_stem()
            .map_or_else(|| "trace".to_owned(), |s| s.to_string_lossy().into_owned());
        let run = simulate(args, &tev, &trace, &name)?;
        if let Some(template) = &args.out_svg {
            for (c, timelines, needed) in &run.timelines {
                let out = component_path(template, path, several, "svg", *c);
                let title = format!(
                    "{name} ({}): {c} load and replicas, pod start {}",
                    event
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
                    humantime::format_duration(args.pod_start_delay)
                );
                let load = match c {
                    Component::Queue => "waiting users (queue + pre-queue)",
                    Component::Reservation => "active users",
                };
                super::plot::render(&out, &title, timelines, needed, load)?;
                if !args.json && !print(&format!("timeline written to {}", out.display()))? {
                    return Ok(());
                }
            }
        }
        if let Some(template) = &args.out_csv {
            for (c, timelines, needed) in &run.timelines {
                let out = component_path(template, path, several, "csv", *c);
                std::fs::write(&out, engine::csv(timelines, needed))
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
        if !args.json && !print(&report(&run, args))? {
            return Ok(());
        }
        runs.push(run);
    }
    if args.json {
        let all_met = runs.iter().all(|r| r.bar.met);
        let doc =
            serde_json::json!({ "event": event.display().to_string(), "traces": runs, "barMet": all_met });
        print(&serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
