//! `benchreport`: the host side of the fault-scaling benchmark. It reads the `BENCH` lines of any
//! set of logs (the kernel's serial log, the Linux program's output; see [`format`] for the line
//! format) and writes `report.md` and SVG plots.

pub mod format;
