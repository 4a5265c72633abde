//! `benchreport`: the host side of the fault-scaling benchmark. It reads the `BENCH` lines of any
//! set of logs (the kernel's serial log, the Linux program's output; [`format`] defines the
//! lines), summarizes the repetitions ([`stats`]) and writes `report.md` ([`report`]) and two SVG
//! plots ([`plot`]).

pub mod format;
pub mod log;
pub mod plot;
pub mod report;
pub mod stats;

use log::Log;
use stats::Dataset;

/// The file names of the outputs.
pub const REPORT_MD: &str = "report.md";
pub const SCALING_SVG: &str = "fault-scaling.svg";
pub const LATENCY_SVG: &str = "fault-latency.svg";

/// What [`render`] produces.
#[derive(Debug)]
pub struct Outputs {
    pub report: String,
    pub scaling_svg: String,
    pub latency_svg: String,
}

/// The report and the plots of `logs`; `report_cores` is the writing machine's core count.
pub fn render(logs: &[Log], report_cores: Option<usize>) -> Result<Outputs, plot::PlotError> {
    let data = Dataset::new(logs);
    Ok(Outputs {
        report: report::markdown(logs, &data, report_cores),
        scaling_svg: plot::scaling_svg(&data)?,
        latency_svg: plot::latency_svg(&data)?,
    })
}

#[cfg(test)]
mod tests;
