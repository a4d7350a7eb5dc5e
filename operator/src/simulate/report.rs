//! The comparison table.

use std::path::Path;

use crate::autoscaler::format;

use super::engine::Outcome;
use super::trace::Trace;
use super::{SimulateArgs, TraceRun};

/// One line describing the trace and the world it was simulated in.
pub fn header(path: &Path, trace: &Trace, args: &SimulateArgs, run: &TraceRun) -> String {
    let peak = trace.points.iter().map(|p| p.queue_depth).fold(0.0, f64::max);
    let target = run.outcomes.first().map_or(0, |o| o.target);
    format!(
        "trace {}: {} min, on-sale at {} s, peak queue {} → {} pods at {}/pod; min {}, max {}, pod start {}",
        path.display(),
        format::value((trace.duration_secs() / 60.0).round()),
        format::value(run.on_sale_at),
        format::value(peak),
        target,
        format::value(args.per_pod_capacity),
        args.min,
        args.max,
        humantime::format_duration(args.pod_start_delay),
    )
}

const COLUMNS: [&str; 6] = [
    "policy",
    "time to target",
    "replica-minutes",
    "under-capacity min",
    "unserved user-min",
    "peak pods",
];

fn row(o: &Outcome) -> [String; 6] {
    let Outcome {
        name,
        target: _,
        time_to_target,
        replica_minutes,
        under_capacity_minutes,
        unserved_user_minutes,
        peak_replicas,
    } = o;
    [
        name.clone(),
        time_to_target.map_or_else(|| "never".to_owned(), |s| format!("{} s", format::value(s))),
        format::value(replica_minutes.round()),
        format::value((under_capacity_minutes * 10.0).round() / 10.0),
        format::value(unserved_user_minutes.round()),
        peak_replicas.to_string(),
    ]
}

/// The outcomes as aligned text or Markdown.
pub fn table(outcomes: &[Outcome], markdown: bool) -> String {
    let rows: Vec<[String; 6]> = outcomes.iter().map(row).collect();
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("| {} |\n", COLUMNS.join(" | ")));
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        for r in &rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        return out;
    }
    let mut widths = COLUMNS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    out.push_str(&line(&COLUMNS.map(str::to_owned)));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}
