//! `benchreport [--out DIR] [--strict] LOG...`: reads the logs (kernel serial logs, Linux
//! `fault_bench` output, in any number and combination), and writes `report.md`,
//! `fault-scaling.svg` and `fault-latency.svg` into DIR (default: the first log's directory).
//! Malformed `BENCH` lines are skipped with a warning on stderr and in the report; with
//! `--strict` they are an error and nothing is written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use benchreport::log::Log;
use benchreport::{LATENCY_SVG, REPORT_MD, SCALING_SVG};

const USAGE: &str = "usage: benchreport [--out DIR] [--strict] LOG...";

#[derive(Debug)]
enum Error {
    Usage(String),
    Read(PathBuf, std::io::Error),
    Write(PathBuf, std::io::Error),
    NoRecords,
    Strict(usize),
    Plot(benchreport::plot::PlotError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}\n{USAGE}"),
            Error::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Error::Write(p, e) => write!(f, "cannot write {}: {e}", p.display()),
            Error::NoRecords => f.write_str("no BENCH lines in the logs"),
            Error::Strict(n) => write!(f, "{n} warning(s) and --strict: nothing written"),
            Error::Plot(e) => e.fmt(f),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchreport: {e}");
            ExitCode::from(if matches!(e, Error::Usage(_)) { 2 } else { 1 })
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let mut out = None;
    let mut strict = false;
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => {
                let dir = it
                    .next()
                    .ok_or(Error::Usage("--out needs a directory".into()))?;
                out = Some(PathBuf::from(dir));
            }
            "--strict" => strict = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with("--") => return Err(Error::Usage(format!("unknown option {s}"))),
            s => paths.push(PathBuf::from(s)),
        }
    }
    let first = paths.first().ok_or(Error::Usage("no log given".into()))?;
    let out = out.unwrap_or_else(|| first.parent().unwrap_or(Path::new(".")).to_path_buf());

    let mut logs = Vec::new();
    for p in &paths {
        let bytes = std::fs::read(p).map_err(|e| Error::Read(p.clone(), e))?;
        // Serial logs can hold stray bytes; they only spoil the lines they are on.
        let text = String::from_utf8_lossy(&bytes);
        let name = p
            .file_name()
            .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
        logs.push(Log::parse(&name, &text));
    }
    let warnings: Vec<_> = logs.iter().flat_map(|l| &l.warnings).collect();
    for w in &warnings {
        eprintln!("benchreport: warning: {w}");
    }
    if logs
        .iter()
        .all(|l| l.measurements.is_empty() && l.phases.is_empty())
    {
        return Err(Error::NoRecords);
    }
    if strict && !warnings.is_empty() {
        return Err(Error::Strict(warnings.len()));
    }
    let cores = std::thread::available_parallelism().ok().map(|n| n.get());
    let o = benchreport::render(&logs, cores).map_err(Error::Plot)?;
    std::fs::create_dir_all(&out).map_err(|e| Error::Write(out.clone(), e))?;
    for (name, text) in [
        (REPORT_MD, &o.report),
        (SCALING_SVG, &o.scaling_svg),
        (LATENCY_SVG, &o.latency_svg),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| Error::Write(path.clone(), e))?;
        eprintln!("benchreport: wrote {}", path.display());
    }
    Ok(())
}
