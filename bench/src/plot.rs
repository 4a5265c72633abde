//! The SVG plots, drawn with `plotters`' SVG backend: one panel per workload, one line per
//! policy (and CPU count), colored by policy the same way in every plot.
//!
//! - `fault-scaling.svg`: median faults/s against threads.
//! - `fault-latency.svg`: the p50 (top row) and p99 (bottom row) fault latency against threads:
//!   where the scaling plot shows a drop, this shows whether every fault got slower or a tail of
//!   faults waits (on a lock, a shootdown).

use core::fmt;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::format::Policy;
use crate::report;
use crate::stats::{Dataset, Series};

const PANEL: (u32, u32) = (440, 340);

/// The share of a panel's plot height its legend takes (in the top left corner), so that the
/// data can be kept below it: a rough measure of plotters' legend box, 4 to 5 series.
fn legend_share(series: usize) -> f64 {
    let legend = 14.0 + 17.0 * series as f64;
    let plot = f64::from(PANEL.1) - 95.0;
    (legend / plot).min(0.6)
}

/// Drawing failed (in the SVG backend: writing to a string, so only on a plotters error).
#[derive(Debug)]
pub enum PlotError {
    Draw(String),
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Draw(e) => write!(f, "drawing a plot: {e}"),
        }
    }
}

impl std::error::Error for PlotError {}

fn draw_err(e: impl fmt::Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

fn policy_color(p: Policy) -> RGBColor {
    match p {
        Policy::Vma => RGBColor(0x1f, 0x77, 0xb4),
        Policy::Mmap => RGBColor(0xd6, 0x27, 0x28),
        Policy::Floor => RGBColor(0x2c, 0xa0, 0x2c),
        Policy::User => RGBColor(0x94, 0x67, 0xbd),
        Policy::Linux => RGBColor(0x44, 0x44, 0x44),
    }
}

/// The style of the `k`-th series of a policy in one panel: later ones paler.
fn style(s: &Series, k: usize) -> ShapeStyle {
    policy_color(s.key.policy)
        .mix(1.0 - 0.3 * (k.min(2) as f64))
        .stroke_width(2)
}

/// Series of one workload with the index of each among those of its policy.
fn panel_series<'a>(data: &'a Dataset, workload: &'a str) -> Vec<(&'a Series, usize)> {
    let series: Vec<&Series> = data.series_of(workload).collect();
    series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let k = series[..i]
                .iter()
                .filter(|o| o.key.policy == s.key.policy)
                .count();
            (*s, k)
        })
        .collect()
}

fn workloads_with_series(data: &Dataset) -> Vec<&str> {
    data.workloads()
        .into_iter()
        .filter(|w| data.series_of(w).next().is_some())
        .collect()
}

fn max_threads(data: &Dataset) -> f64 {
    data.series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| p.threads)
        .max()
        .unwrap_or(1) as f64
}

/// `fault-scaling.svg`.
pub fn scaling_svg(data: &Dataset) -> Result<String, PlotError> {
    let workloads = workloads_with_series(data);
    let mut svg = String::new();
    {
        let size = (PANEL.0 * workloads.len().max(1) as u32, PANEL.1);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let panels = root.split_evenly((1, workloads.len().max(1)));
        for (area, w) in panels.iter().zip(&workloads) {
            scaling_panel(area, data, w)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn scaling_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    data: &Dataset,
    workload: &str,
) -> Result<(), PlotError> {
    let series = panel_series(data, workload);
    let top = series
        .iter()
        .flat_map(|(s, _)| &s.points)
        .map(|p| p.rate.max)
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{workload}: faults/s"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(
            0.5..max_threads(data) + 0.5,
            0.0..(top * 1.05 / (1.0 - legend_share(series.len()))).max(1.0),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .x_labels(max_threads(data) as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| report::rate(*y))
        .draw()
        .map_err(draw_err)?;
    for (s, k) in series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.threads as f64, p.rate.median))
            .collect();
        let st = style(s, k);
        chart
            .draw_series(LineSeries::new(pts.clone(), st))
            .map_err(draw_err)?
            .label(data.label(s))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], st));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, st.filled())))
            .map_err(draw_err)?;
        // The repetitions' range, as a vertical bar at each point.
        chart
            .draw_series(s.points.iter().map(|p| {
                let x = p.threads as f64;
                PathElement::new(vec![(x, p.rate.min), (x, p.rate.max)], st.stroke_width(1))
            }))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// `fault-latency.svg`.
pub fn latency_svg(data: &Dataset) -> Result<String, PlotError> {
    let workloads = workloads_with_series(data);
    let mut svg = String::new();
    {
        let cols = workloads.len().max(1);
        let size = (PANEL.0 * cols as u32, PANEL.1 * 2);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let panels = root.split_evenly((2, cols));
        for (i, w) in workloads.iter().enumerate() {
            latency_panel(&panels[i], data, w, Quantile::P50)?;
            latency_panel(&panels[cols + i], data, w, Quantile::P99)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[derive(Clone, Copy)]
enum Quantile {
    P50,
    P99,
}

fn latency_panel(
    area: &DrawingArea<SVGBackend, Shift>,
    data: &Dataset,
    workload: &str,
    q: Quantile,
) -> Result<(), PlotError> {
    let series = panel_series(data, workload);
    let value = |p: &crate::stats::Point| match q {
        Quantile::P50 => p.p50_ns,
        Quantile::P99 => p.p99_ns,
    };
    let top = series
        .iter()
        .flat_map(|(s, _)| &s.points)
        .map(value)
        .fold(0.0, f64::max);
    let name = match q {
        Quantile::P50 => "p50",
        Quantile::P99 => "p99",
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{workload}: {name} fault latency"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.5..max_threads(data) + 0.5,
            0.0..(top * 1.05 / (1.0 - legend_share(series.len()))).max(1.0),
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("threads")
        .x_labels(max_threads(data) as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| report::time(*y))
        .draw()
        .map_err(draw_err)?;
    for (s, k) in series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.threads as f64, value(p)))
            .collect();
        let st = style(s, k);
        chart
            .draw_series(LineSeries::new(pts.clone(), st))
            .map_err(draw_err)?
            .label(data.label(s))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], st));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, st.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}
