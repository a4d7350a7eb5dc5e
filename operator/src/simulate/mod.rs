//! `tiketi-operator simulate`: replays a queue-depth trace through tiketi's policy and a KEDA + HPA model.
//!
//! tiketi's rows run the real [`crate::autoscaler::decide`] with the schedule's pre-warm floor
//! (and once without it, to show what the policy alone does); the KEDA + HPA row is a model built
//! from their documented defaults (see [`model::KedaHpa`]). Pods become Ready after a fixed start
//! delay. Demand is the queue depth; a Ready pod serves `--per-pod-capacity` of it.

mod engine;
pub mod event;
mod model;
mod plot;
mod report;
mod trace;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{TimeZone as _, Utc};

use crate::autoscaler::{Memory, Policy};
pub use engine::{Outcome, Timeline, World};
pub use model::{Floor, InstantReactive, KedaHpa, Pods, Scaler, Tiketi};
pub use trace::{Trace, TraceError, TracePoint};

/// Arguments of `tiketi-operator simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// CSV trace(s) to replay: `seconds,queueDepth[,activeUsers]`, one row per sample, optional
    /// header row, `#` comments. Each trace is simulated and reported on its own.
    #[arg(long = "trace", required = true, num_args = 1.., value_delimiter = ',', env = "TIKETI_SIMULATE_TRACE")]
    pub traces: Vec<PathBuf>,
    /// YAML file(s) holding a TicketingEvent `scaling:` block (docs/contracts.md, "Scaling policy
    /// syntax"); each is simulated. Without it, the default policy (the source documents' numbers).
    #[arg(long = "policy", num_args = 1.., value_delimiter = ',', env = "TIKETI_SIMULATE_POLICY")]
    pub policies: Vec<PathBuf>,
    /// minReplicas (both tiketi and KEDA's minReplicaCount).
    #[arg(long, default_value_t = 2, env = "TIKETI_SIMULATE_MIN")]
    pub min: u32,
    /// maxReplicas (both tiketi and KEDA's maxReplicaCount).
    #[arg(long, default_value_t = 100, env = "TIKETI_SIMULATE_MAX")]
    pub max: u32,
    /// Time from a pod's creation until it is Ready (image pull, start, readiness probe).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "TIKETI_SIMULATE_POD_START_DELAY")]
    pub pod_start_delay: Duration,
    /// Queue depth one Ready pod serves; demand above Ready pods × this is under-capacity.
    #[arg(long, default_value_t = 2_500.0, env = "TIKETI_SIMULATE_PER_POD_CAPACITY")]
    pub per_pod_capacity: f64,
    /// KEDA redis trigger `listLength` target (queue depth per pod). Default: --per-pod-capacity.
    #[arg(long, env = "TIKETI_SIMULATE_KEDA_LIST_LENGTH")]
    pub keda_list_length: Option<f64>,
    /// On-sale time, in seconds of the trace. Default: the last sample with an empty queue before
    /// the queue first fills.
    #[arg(long, env = "TIKETI_SIMULATE_ON_SALE_AT")]
    pub on_sale_at: Option<f64>,
    /// Pre-warm replicas reached by the on-sale time (0: no pre-warm).
    #[arg(long, default_value_t = 10, env = "TIKETI_SIMULATE_PREWARM_REPLICAS")]
    pub prewarm_replicas: u32,
    /// Pre-warm lead time before the on-sale time.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, env = "TIKETI_SIMULATE_PREWARM_LEAD")]
    pub prewarm_lead: Duration,
    /// Pre-warm ramp steps.
    #[arg(long, default_value_t = 3, env = "TIKETI_SIMULATE_PREWARM_RAMP_STEPS")]
    pub prewarm_ramp_steps: u32,
    /// How long after the on-sale time the pre-warm replicas stay the floor.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration, env = "TIKETI_SIMULATE_PREWARM_HOLD")]
    pub prewarm_hold: Duration,
    /// Write an SVG timeline here. With several traces, `{trace}` in the path is replaced by the
    /// trace's file stem (else the stem is appended).
    #[arg(long, env = "TIKETI_SIMULATE_OUT_SVG")]
    pub out_svg: Option<PathBuf>,
    /// Write each timeline as CSV here (per second: the load, the replicas it needs, and per row
    /// the replicas that exist and those Ready), for plotting elsewhere. `{trace}` as for SVG.
    #[arg(long, env = "TIKETI_SIMULATE_OUT_CSV")]
    pub out_csv: Option<PathBuf>,
    /// Print the comparison as a Markdown table instead of aligned text.
    #[arg(long, env = "TIKETI_SIMULATE_MARKDOWN")]
    pub markdown: bool,
    /// Simulate a whole TicketingEvent (YAML; other documents in the file, e.g. Secrets, are
    /// skipped): its schedule, pre-warm and both components' policies, against KEDA + HPA, KEDA +
    /// HPA with a cron pre-warm, and static peak provisioning. `--policy`, `--min`, `--max` and
    /// the `--prewarm-*` flags are then taken from the event instead.
    #[arg(long, env = "TIKETI_SIMULATE_EVENT")]
    pub event: Option<PathBuf>,
    /// Admitted users one Ready reservation pod serves, when the event's reservation policy has
    /// no capacity (the source documents: about 1,000 concurrent users per instance).
    #[arg(
        long,
        default_value_t = 1_000.0,
        env = "TIKETI_SIMULATE_RESERVATION_PER_POD_CAPACITY"
    )]
    pub reservation_per_pod_capacity: f64,
    /// With --event: print the results as JSON (per trace, per row: name, kind, replicaMinutes,
    /// underCapacityMinutes, unservedUserMinutes, timeToTargetSeconds, peakPods, components).
    #[arg(long, requires = "event", env = "TIKETI_SIMULATE_JSON")]
    pub json: bool,
}

/// A named tiketi policy to simulate.
struct NamedPolicy {
    name: String,
    policy: Policy,
}

fn load_policy(path: &Path) -> anyhow::Result<NamedPolicy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading policy {}", path.display()))?;
    let spec: crate::crd::ScalingPolicy =
        serde_yaml::from_str(&text).with_context(|| format!("parsing policy {}", path.display()))?;
    let policy = Policy::try_from(&spec).with_context(|| format!("policy {}", path.display()))?;
    let name = path
        .file_stem()
        .map_or_else(|| "policy".to_owned(), |s| s.to_string_lossy().into_owned());
    Ok(NamedPolicy { name, policy })
}

fn svg_path(template: &Path, trace: &Path, several: bool) -> PathBuf {
    out_path(template, trace, several, "svg")
}

fn out_path(template: &Path, trace: &Path, several: bool, ext: &str) -> PathBuf {
    let stem = trace
        .file_stem()
        .map_or_else(|| "trace".into(), |s| s.to_string_lossy().into_owned());
    let raw = template.to_string_lossy();
    if raw.contains("{trace}") {
        return PathBuf::from(raw.replace("{trace}", &stem));
    }
    if !several {
        return template.to_path_buf();
    }
    let base = template.with_extension("");
    PathBuf::from(format!("{}-{stem}.{ext}", base.display()))
}

/// Everything simulated for one trace.
pub struct TraceRun {
    pub timelines: Vec<Timeline>,
    pub outcomes: Vec<Outcome>,
    /// Replicas needed each second: ceil(demand / per-pod capacity) within [min, max].
    pub needed: Vec<u32>,
    pub on_sale_at: f64,
}

/// Simulates every scaler over one trace.
pub fn simulate_trace(args: &SimulateArgs, policies: &[(String, Policy)], trace: &Trace) -> TraceRun {
    let world = World {
        min: args.min,
        max: args.max,
        per_pod_capacity: args.per_pod_capacity,
        pod_start_delay: args.pod_start_delay,
        demand: engine::Demand::Waiting,
    };
    let on_sale_at = args.on_sale_at.unwrap_or_else(|| {
        // The last empty sample before the queue first fills: the queue opens right after it.
        let first = trace.points.iter().position(|p| p.queue_depth > 0.0).unwrap_or(0);
        trace.points.get(first.saturating_sub(1)).map_or(0.0, |p| p.secs)
    });
    let floor = Floor {
        min: args.min,
        prewarm: (args.prewarm_replicas > args.min).then_some(args.prewarm_replicas.min(args.max)),
        on_sale_at,
        lead: args.prewarm_lead.as_secs_f64(),
        ramp_steps: args.prewarm_ramp_steps,
        hold_for: args.prewarm_hold.as_secs_f64(),
    };
    let epoch = Utc
        .with_ymd_and_hms(2026, 12, 1, 2, 0, 0)
        .single()
        .unwrap_or_else(Utc::now);
    let mut timelines = Vec::new();
    for (name, policy) in policies {
        let mut variants = Vec::new();
        if let Some(p) = floor.prewarm {
            variants.push((format!("tiketi {name} + pre-warm {p}"), floor));
        }
        variants.push((
            format!("tiketi {name}, no pre-warm"),
            Floor {
                prewarm: None,
                ..floor
            },
        ));
        for (label, floor) in variants {
            let mut scaler = Tiketi {
                policy: policy.clone(),
                floor,
                max: args.max,
                epoch,
                memory: Memory::default(),
            };
            timelines.push(engine::run(&label, trace, &mut scaler, &world));
        }
    }
    let mut keda = KedaHpa::new(
        args.keda_list_length.unwrap_or(args.per_pod_capacity),
        args.min,
        args.max,
    );
    timelines.push(engine::run("KEDA + HPA", trace, &mut keda, &world));
    let outcomes = timelines.iter().map(|t| engine::measure(t, &world)).collect();
    let cap = args.per_pod_capacity.max(f64::MIN_POSITIVE);
    let needed = timelines
        .first()
        .map(|t| {
            t.demand
                .iter()
                .map(|&d| ((d / cap).ceil() as u32).clamp(args.min, args.max))
                .collect()
        })
        .unwrap_or_default();
    TraceRun {
        timelines,
        outcomes,
        needed,
        on_sale_at,
    }
}

/// Writes a report line; `false` when stdout was closed (e.g. piped into `head`), which ends the
/// run quietly instead of panicking like `println!`.
fn print(text: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("writing the report")),
    }
}

/// Runs the simulation described by `args`, printing a report on stdout.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.min > args.max {
        bail!("--min {} must not exceed --max {}", args.min, args.max);
    }
    if !(args.per_pod_capacity.is_finite() && args.per_pod_capacity > 0.0) {
        bail!("--per-pod-capacity must be a positive number");
    }
    if !(args.reservation_per_pod_capacity.is_finite() && args.reservation_per_pod_capacity > 0.0) {
        bail!("--reservation-per-pod-capacity must be a positive number");
    }
    if let Some(event) = &args.event {
        return event::run(&args, event);
    }
    let policies: Vec<(String, Policy)> = if args.policies.is_empty() {
        vec![("defaults".to_owned(), Policy::default())]
    } else {
        args.policies
            .iter()
            .map(|p| load_policy(p).map(|n| (n.name, n.policy)))
            .collect::<anyhow::Result<_>>()?
    };
    let several = args.traces.len() > 1;
    for path in &args.traces {
        let trace = Trace::load(path).with_context(|| format!("reading trace {}", path.display()))?;
        let run = simulate_trace(&args, &policies, &trace);
        let text = format!(
            "{}\n{}",
            report::header(path, &trace, &args, &run),
            report::table(&run.outcomes, args.markdown)
        );
        if !print(&text)? {
            return Ok(());
        }
        if let Some(template) = &args.out_svg {
            let out = svg_path(template, path, several);
            let title = format!(
                "{}: queue depth and replicas (pod start {}, {} per pod)",
                path.file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
                humantime::format_duration(args.pod_start_delay),
                crate::autoscaler::format::value(args.per_pod_capacity),
            );
            plot::render(&out, &title, &run.timelines, &run.needed, "queue depth")?;
            if !print(&format!("timeline written to {}\n", out.display()))? {
                return Ok(());
            }
        }
    }
    Ok(())
}
