//! The simulator over the shipped traces: it runs the real policy, writes an SVG, and the figures
//! it reports hold together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tiketi_operator::autoscaler::Policy;
use tiketi_operator::simulate::{self, SimulateArgs, Trace};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/traces")
}

fn args(extra: &[&str]) -> SimulateArgs {
    let flash = traces_dir().join("flash-surge.csv");
    let mut argv = vec![
        "simulate".to_owned(),
        "--trace".to_owned(),
        flash.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn cli_arguments_are_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let a = args(&[
        "--pod-start-delay",
        "45s",
        "--per-pod-capacity",
        "1000",
        "--max",
        "50",
    ]);
    assert_eq!(a.pod_start_delay, Duration::from_secs(45));
    assert_eq!(
        (a.per_pod_capacity, a.max, a.min, a.prewarm_replicas),
        (1000.0, 50, 2, 10)
    );
}

#[test]
fn shipped_traces_parse() {
    for name in ["flash-surge.csv", "double-peak.csv", "slow-ramp.csv"] {
        let t = Trace::load(&traces_dir().join(name)).unwrap();
        assert!(t.duration_secs() >= 3_600.0, "{name}");
        assert!(
            t.points.iter().any(|p| p.queue_depth > 20_000.0),
            "{name} should cross the top step"
        );
        assert!(t.points.iter().all(|p| p.active_users.is_some()), "{name}");
    }
}

#[test]
fn flash_surge_figures_hold_together() {
    let a = args(&[]);
    let trace = Trace::load(&a.traces[0]).unwrap();
    let run = simulate::simulate_trace(&a, &[("defaults".into(), Policy::default())], &trace);
    let names: Vec<_> = run.outcomes.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tiketi defaults + pre-warm 10",
            "tiketi defaults, no pre-warm",
            "KEDA + HPA"
        ]
    );
    assert_eq!(
        run.on_sale_at, 1_800.0,
        "the last empty sample before the queue fills"
    );
    let prewarm = &run.outcomes[0];
    let bare = &run.outcomes[1];
    let keda = &run.outcomes[2];
    // 60,000 / 2,500 per pod.
    assert_eq!(prewarm.target, 24);
    // Pre-warm never serves less than the same policy without it.
    assert!(prewarm.unserved_user_minutes <= bare.unserved_user_minutes);
    assert!(prewarm.under_capacity_minutes <= bare.under_capacity_minutes);
    // Every timeline stays within [min, max] and Ready never exceeds what exists.
    for t in &run.timelines {
        assert!(t.desired.iter().all(|&d| (2..=100).contains(&d)), "{}", t.name);
        assert!(t.ready.iter().zip(&t.desired).all(|(r, d)| r <= d), "{}", t.name);
    }
    // The KEDA model reaches the target (HPA chases ceil(depth / target)).
    assert!(keda.time_to_target.is_some());
    // Replica-minutes are at least min replicas over the whole trace.
    for o in &run.outcomes {
        assert!(
            o.replica_minutes >= 2.0 * trace.duration_secs() / 60.0 - 1.0,
            "{}",
            o.name
        );
    }
}

#[test]
fn run_writes_one_svg_per_trace() {
    let dir = std::env::temp_dir().join(format!("tiketi-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let traces: Vec<String> = ["flash-surge.csv", "slow-ramp.csv"]
        .iter()
        .map(|n| traces_dir().join(n).display().to_string())
        .collect();
    let out = dir.join("{trace}.svg");
    let argv = vec![
        "simulate".to_owned(),
        "--trace".to_owned(),
        traces.join(","),
        "--out-svg".to_owned(),
        out.display().to_string(),
        "--markdown".to_owned(),
    ];
    simulate::run(Cli::try_parse_from(argv).unwrap().args).unwrap();
    for stem in ["flash-surge", "slow-ramp"] {
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("KEDA + HPA"),
            "{stem}.svg"
        );
        assert!(svg.contains("queue depth"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let err = simulate::run(args(&["--min", "5", "--max", "3"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--min 5 must not exceed --max 3"), "{err}");
    let dir = std::env::temp_dir().join(format!("tiketi-sim-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.yaml");
    std::fs::write(&policy, "scaleOut: {cooldown: soon}\n").unwrap();
    let err = format!(
        "{:#}",
        simulate::run(args(&["--policy", policy.to_str().unwrap()])).unwrap_err()
    );
    assert!(err.contains("p.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_prewarm_sized_to_the_crowd_has_no_under_capacity_where_keda_has_some() {
    // The README's headline: the surge time is known, so tiketi has the pods Ready at the
    // on-sale; KEDA + HPA can only react once the queue has filled.
    for name in ["flash-surge.csv", "double-peak.csv", "slow-ramp.csv"] {
        let mut a = args(&["--prewarm-replicas", "25", "--max", "30"]);
        a.traces = vec![traces_dir().join(name)];
        let trace = Trace::load(&a.traces[0]).unwrap();
        let run = simulate::simulate_trace(&a, &[("defaults".into(), Policy::default())], &trace);
        let (tiketi, keda) = (&run.outcomes[0], &run.outcomes[2]);
        assert_eq!(tiketi.name, "tiketi defaults + pre-warm 25");
        assert_eq!(tiketi.under_capacity_minutes, 0.0, "{name}: {tiketi:?}");
        assert_eq!(tiketi.time_to_target, Some(0.0), "{name}");
        assert!(keda.under_capacity_minutes > 1.0, "{name}: {keda:?}");
        // The price: more replica-minutes.
        assert!(tiketi.replica_minutes > keda.replica_minutes, "{name}");
    }
}

fn example_event() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/iu-2026-seoul.yaml")
}

#[test]
fn the_event_mode_reports_four_rows_per_component_and_the_bar() {
    let tev = simulate::event::load_event(&example_event()).unwrap();
    let mut a = args(&[]);
    a.event = Some(example_event());
    for name in ["prequeue-surge.csv", "sellout-4min.csv", "flash-surge.csv"] {
        let trace = Trace::load(&traces_dir().join(name)).unwrap();
        let run = simulate::event::simulate(&a, &tev, &trace, name).unwrap();
        let kinds: Vec<&str> = run.rows.iter().map(|r| r.total.kind).collect();
        assert_eq!(kinds, vec!["tiketi", "keda", "keda-cron", "static"], "{name}");
        for r in &run.rows {
            assert_eq!(r.components.len(), 2, "{name}: both components simulated");
            let sum: f64 = r.components.values().map(|c| c.replica_minutes).sum();
            assert!(
                (sum - r.total.replica_minutes).abs() < 0.5,
                "{name}: total is the sum"
            );
        }
        let get = |k: &str| &run.rows.iter().find(|r| r.total.kind == k).unwrap().total;
        // Static peak provisioning is never under capacity, and costs the peak all along.
        assert_eq!(get("static").under_capacity_minutes, 0.0, "{name}");
        // The bar is computed from the rows.
        let (t, kc) = (get("tiketi"), get("keda-cron"));
        let rm = t.replica_minutes / kc.replica_minutes;
        assert!(
            (run.bar.replica_minutes_ratio - rm).abs() < 0.02,
            "{name}: {:?}",
            run.bar
        );
    }
    // With a pre-queue, the crowd-sized pre-warm has the queue pods Ready for the on-sale: far
    // less under-capacity than the cron pre-warm of the same configured replicas.
    let trace = Trace::load(&traces_dir().join("sellout-4min.csv")).unwrap();
    let run = simulate::event::simulate(&a, &tev, &trace, "sellout").unwrap();
    let queue = |k: &str| run.rows.iter().find(|r| r.total.kind == k).unwrap().components["queue"].clone();
    assert!(
        queue("keda-cron").under_capacity_minutes > 0.5,
        "{:?}",
        queue("keda-cron")
    );
    assert!(
        queue("tiketi").under_capacity_minutes < 0.1,
        "{:?}",
        queue("tiketi")
    );
    assert!(
        queue("tiketi").peak_pods > 10,
        "the pre-warm followed the pre-queue"
    );
}

#[test]
fn the_event_mode_prints_json_with_the_documented_keys() {
    let dir = std::env::temp_dir().join(format!("tiketi-sim-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("{trace}.svg");
    let argv = vec![
        "simulate".to_owned(),
        "--event".to_owned(),
        example_event().display().to_string(),
        "--trace".to_owned(),
        traces_dir().join("prequeue-surge.csv").display().to_string(),
        "--out-svg".to_owned(),
        out.display().to_string(),
        "--json".to_owned(),
    ];
    simulate::run(Cli::try_parse_from(argv).unwrap().args).unwrap();
    for f in ["prequeue-surge.svg", "prequeue-surge-reservation.svg"] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("KEDA + HPA + cron"),
            "{f}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // The JSON shape itself (what outside checks read).
    let tev = simulate::event::load_event(&example_event()).unwrap();
    let mut a = args(&[]);
    a.event = Some(example_event());
    let trace = Trace::load(&traces_dir().join("prequeue-surge.csv")).unwrap();
    let run = simulate::event::simulate(&a, &tev, &trace, "prequeue-surge").unwrap();
    let v = serde_json::to_value(&run).unwrap();
    for key in ["trace", "onSaleAtSeconds", "rows", "bar"] {
        assert!(v.get(key).is_some(), "{key} in {v}");
    }
    let row = &v["rows"][0];
    for key in [
        "name",
        "kind",
        "replicaMinutes",
        "underCapacityMinutes",
        "unservedUserMinutes",
        "timeToTargetSeconds",
        "peakPods",
        "components",
    ] {
        assert!(row.get(key).is_some(), "{key} in {row}");
    }
    assert!(v["bar"]["met"].is_boolean());
}
