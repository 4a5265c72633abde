//! `fault_bench`: the fault-scaling benchmark's workloads (`page_fault1`, `pft`, `churn`) as a
//! plain static program, printing the same `BENCH` lines as the kernel's benchmark (the format
//! is defined by the host crate `benchreport`, module `format`, and the README). On Linux its
//! lines say `policy=linux` (header `accel=linux`); the same binary runs on `mmkernel` as a
//! user program, where it says `policy=user` and the header's `accel` is QEMU's accelerator
//! ([`system`] tells the two apart by `uname`, as any program could).
//!
//! ```text
//! fault_bench [--workloads page_fault1,pft,churn] [--threads 1,2,4,8] [--reps 3]
//!             [--warmup-ms 1000] [--window-ms 1000] [--region-mib 128] [--pft-mib 512]
//!             [--churn-kib 64]
//! ```
//! `BENCH` lines go to stdout, progress and errors to stderr. The default thread counts are
//! those of 1, 2, 4, 8 that do not exceed the CPUs the program may use. Besides the common keys
//! the lines carry `ipis` (the system-wide `TLB:` count of `/proc/interrupts`, so other programs'
//! shootdowns count too), `munmaps`, `cpu_ns` (the workers' CPU time in the window) and
//! `minflt` (the workers' minor faults by `getrusage`: each page touch should be one).

mod clock;
mod hist;
mod machine;
mod sys;
mod system;
mod workloads;

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use system::System;
use workloads::{Params, Window, Workload};

const USAGE: &str = "usage: fault_bench [--workloads page_fault1,pft,churn] [--threads 1,2,4,8] \
    [--reps N] [--warmup-ms MS] [--window-ms MS] [--region-mib MIB] [--pft-mib MIB] [--churn-kib KIB]";

#[derive(Debug)]
enum Error {
    Usage(String),
    Tsc,
    Run(workloads::RunError),
    Output(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}\n{USAGE}"),
            Error::Tsc => f.write_str("the TSC does not tick with the monotonic clock"),
            Error::Run(e) => e.fmt(f),
            Error::Output(e) => write!(f, "writing the results: {e}"),
        }
    }
}

impl From<sys::SysError> for Error {
    fn from(e: sys::SysError) -> Self {
        Error::Run(e.into())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Usage(_)) => {
            eprintln!("fault_bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("fault_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line.
#[derive(Debug)]
struct Options {
    workloads: Vec<Workload>,
    threads: Option<Vec<usize>>,
    params: Params,
}

fn parse_args(args: &[String], cpus: Vec<usize>) -> Result<Options, Error> {
    let mut o = Options {
        workloads: Workload::ALL.to_vec(),
        threads: None,
        params: Params {
            warmup: Duration::from_millis(1000),
            window: Duration::from_millis(1000),
            reps: 3,
            region: 128 << 20,
            pft_region: 512 << 20,
            churn_region: 64 << 10,
            cpus,
        },
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
        let number = |min: u64, max: u64| -> Result<u64, Error> {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{flag} takes a number from {min} to {max}, not {value:?}"
                    ))
                })
        };
        let p = &mut o.params;
        match flag.as_str() {
            "--workloads" => {
                o.workloads = list(value, Workload::parse)
                    .ok_or_else(|| Error::Usage(format!("unknown workload in {value:?}")))?;
            }
            "--threads" => {
                let ts = list(value, |s| {
                    s.parse().ok().filter(|&t| (1..=1024).contains(&t))
                });
                o.threads = Some(ts.ok_or_else(|| {
                    Error::Usage(format!(
                        "--threads takes counts from 1 to 1024, not {value:?}"
                    ))
                })?);
            }
            "--reps" => p.reps = number(1, 1000)? as u32,
            "--warmup-ms" => p.warmup = Duration::from_millis(number(0, 3_600_000)?),
            "--window-ms" => p.window = Duration::from_millis(number(1, 3_600_000)?),
            "--region-mib" => p.region = (number(1, 1 << 20)? as usize) << 20,
            "--pft-mib" => p.pft_region = (number(1, 1 << 20)? as usize) << 20,
            "--churn-kib" => p.churn_region = (number(12, 1 << 20)? as usize) << 10,
            _ => return Err(Error::Usage(format!("unknown option {flag}"))),
        }
    }
    Ok(o)
}

/// A non-empty comma-separated list, each item through `item`.
fn list<T>(s: &str, item: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let v: Option<Vec<T>> = s.split(',').map(|w| item(w.trim())).collect();
    v.filter(|v| !v.is_empty())
}

fn run(args: &[String]) -> Result<(), Error> {
    let cpus = sys::allowed_cpus()?;
    let opts = parse_args(args, cpus)?;
    let p = &opts.params;
    let ncpus = p.cpus.len();
    let threads = opts.threads.clone().unwrap_or_else(|| {
        [1, 2, 4, 8]
            .into_iter()
            .filter(|&t| t <= ncpus.max(1))
            .collect()
    });
    if let Some(&t) = threads.iter().find(|&&t| t > ncpus) {
        eprintln!("fault_bench: {t} threads on {ncpus} CPUs: oversubscribed, CPUs are shared");
    }
    let tsc = clock::Tsc::calibrate(Duration::from_millis(200)).map_err(|_| Error::Tsc)?;
    let system = sys::uname().map_or(System::Linux, |u| System::from_uname(&u));

    let mut out = std::io::stdout().lock();
    let mut emit = |line: String| -> Result<(), Error> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    };
    emit(header(&opts, tsc, system))?;
    for &w in &opts.workloads {
        for &t in &threads {
            let windows = workloads::run(w, t, p).map_err(Error::Run)?;
            for (rep, win) in windows.iter().enumerate() {
                emit(bench_line(w, system, t, ncpus, rep, win, tsc))?;
            }
            let mut rates: Vec<f64> = windows
                .iter()
                .map(|win| win.faults as f64 * 1e9 / win.ns.max(1) as f64)
                .collect();
            rates.sort_by(f64::total_cmp);
            eprintln!(
                "fault_bench: {} T={t}: {:.0} faults/s (median of {})",
                w.name(),
                rates[rates.len() / 2],
                rates.len()
            );
        }
    }
    Ok(())
}

/// The `BENCH-HEADER` line.
fn header(o: &Options, tsc: clock::Tsc, system: System) -> String {
    let p = &o.params;
    // A system without `/proc` still has the brand string Linux shows there.
    let model = machine::cpu_model()
        .or_else(system::cpu_brand)
        .unwrap_or_else(|| "unknown".into());
    let mut s = format!(
        "BENCH-HEADER cpu_model={} tsc_mhz={} accel={} cpus={} mem_mib={}",
        quote(&model),
        tsc.mhz(),
        system.accel(),
        p.cpus.len(),
        sys::memory_mib().unwrap_or(0),
    );
    // Inside a virtual machine the CPUs online are the guest's, not the host's cores.
    if let (System::Linux, Some(n)) = (system, sys::online_cpus()) {
        let _ = write!(s, " host_cores={n}");
    }
    if let Some(r) = sys::kernel_release() {
        let _ = write!(s, " kernel={}", quote(&r));
    }
    let _ = write!(
        s,
        " clock=rdtsc warmup_ms={} window_ms={} reps={} region_mib={} pft_mib={} churn_kib={} page_size={}",
        p.warmup.as_millis(),
        p.window.as_millis(),
        p.reps,
        p.region >> 20,
        p.pft_region >> 20,
        p.churn_region >> 10,
        sys::page_size(),
    );
    s
}

/// One `BENCH` line.
fn bench_line(
    w: Workload,
    system: System,
    threads: usize,
    cpus: usize,
    rep: usize,
    win: &Window,
    tsc: clock::Tsc,
) -> String {
    debug_assert_eq!(win.latency.count(), win.faults);
    let ns = win.ns.max(1);
    let mut s = format!(
        "BENCH workload={} policy={} threads={threads} cpus={cpus} rep={rep} faults={} ns={ns} \
         faults_per_sec={:.1} p50_ns={} p99_ns={} max_ns={} vma_lock_success=0 vma_lock_abort=0 \
         vma_lock_retry=0 vma_lock_miss=0 churn_ops={} munmaps={}",
        w.name(),
        system.policy(),
        win.faults,
        win.faults as f64 * 1e9 / ns as f64,
        tsc.to_ns(win.latency.quantile(0.5)),
        tsc.to_ns(win.latency.quantile(0.99)),
        tsc.to_ns(win.latency.max()),
        win.churn_ops,
        win.munmaps,
    );
    if let Some(n) = win.ipis {
        let _ = write!(s, " ipis={n}");
    }
    if let Some(n) = win.cpu_ns {
        let _ = write!(s, " cpu_ns={n}");
    }
    if let Some(n) = win.minflt {
        let _ = write!(s, " minflt={n}");
    }
    s
}

/// A header value in quotes, `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            q.push('\\');
        }
        q.push(if c.is_control() { ' ' } else { c });
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(
            &args("--threads 1,2 --workloads pft,churn --reps 5"),
            vec![0, 1],
        )
        .unwrap();
        assert_eq!(o.threads, Some(vec![1, 2]));
        assert_eq!(o.workloads, vec![Workload::Pft, Workload::Churn]);
        assert_eq!(o.params.reps, 5);
        for bad in [
            "--threads 0",
            "--threads 1,,2",
            "--workloads fork",
            "--reps",
            "--reps 0",
            "--churn-kib 4",
            "--bogus 1",
        ] {
            assert!(
                matches!(parse_args(&args(bad), vec![0]), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
