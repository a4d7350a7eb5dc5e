//! The SVG timeline: the load (right axis: queue depth, or active users) and desired/ready
//! replicas per scaler (left axis).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::engine::Timeline;

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Renders `timelines` (all over the same trace) to an SVG file.
pub fn render(
    path: &Path,
    title: &str,
    timelines: &[Timeline],
    needed: &[u32],
    load: &str,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    draw(&root, title, timelines, needed, load)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A step function as the points where it changes (keeps the SVG small: one vertex per change).
fn steps(secs: &[f64], values: &[u32]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut last: Option<u32> = None;
    for (&s, &v) in secs.iter().zip(values) {
        if let Some(prev) = last
            && prev != v
        {
            out.push((s / 60.0, f64::from(prev)));
        }
        if last != Some(v) {
            out.push((s / 60.0, f64::from(v)));
        }
        last = Some(v);
    }
    if let (Some(&s), Some(v)) = (secs.last(), last) {
        out.push((s / 60.0, f64::from(v)));
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    timelines: &[Timeline],
    needed: &[u32],
    load: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let Some(first) = timelines.first() else {
        return Ok(());
    };
    let minutes = |s: f64| s / 60.0;
    let x0 = first.secs.first().copied().map_or(0.0, minutes);
    let x1 = first.secs.last().copied().map_or(1.0, minutes).max(x0 + 1.0);
    let max_replicas = timelines
        .iter()
        .flat_map(|t| t.desired.iter().copied())
        .chain(needed.iter().copied())
        .max()
        .unwrap_or(1);
    let y1 = f64::from(max_replicas) * 1.1 + 1.0;
    let max_depth = first.demand.iter().copied().fold(1.0, f64::max) * 1.1;

    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .right_y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)?
        .set_secondary_coord(x0..x1, 0.0..max_depth);
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("replicas")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(load)
        .y_label_formatter(&|v| crate::autoscaler::format::value(v.round()))
        .draw()?;

    let grey = RGBColor(170, 170, 170);
    chart
        .draw_secondary_series(std::iter::once(Polygon::new(
            std::iter::once((x0, 0.0))
                .chain(
                    first
                        .secs
                        .iter()
                        .zip(&first.demand)
                        .step_by(10)
                        .map(|(&s, &d)| (minutes(s), d)),
                )
                .chain(std::iter::once((x1, 0.0)))
                .collect::<Vec<_>>(),
            grey.mix(0.3).filled(),
        )))?
        .label(format!("{load} (right axis)"))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], grey.mix(0.4).filled()));
    chart
        .draw_series(LineSeries::new(
            steps(&first.secs, needed),
            BLACK.mix(0.7).stroke_width(1),
        ))?
        .label("replicas needed (demand / per-pod capacity)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.7)));

    for (i, t) in timelines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(steps(&t.secs, &t.ready), color.stroke_width(2)))?
            .label(format!("{}: ready", t.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                steps(&t.secs, &t.desired),
                6,
                3,
                color.mix(0.6).stroke_width(1),
            ))?
            .label(format!("{}: desired", t.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}
