//! `report.md`: the measured systems at the top, then per workload a table of policy x threads
//! (faults/s median, min-max, per thread, scaling against one thread, latencies, shootdown IPIs
//! per munmap), the ratios between policies, the per-VMA lock counters and the phase profile,
//! then the fork cost, and last the lines that were skipped.

use std::fmt::Write;

use crate::format::Policy;
use crate::log::Log;
use crate::stats::{Dataset, Series};

/// At most this many warnings are listed; the rest are counted.
const MAX_WARNINGS: usize = 30;

const NONE: &str = "—";

/// The whole report. `report_cores`: the cores of the machine writing it.
pub fn markdown(logs: &[Log], data: &Dataset, report_cores: Option<usize>) -> String {
    let mut out = String::new();
    let o = &mut out;
    line(o, "# Fault-scaling benchmark");
    line(o, "");
    systems(o, logs, report_cores);
    line(
        o,
        "faults/s: faults of all threads in the measured window over its length; the median over \
         the repetitions, their range beside it. Per thread: the median over T. vs T=1: against \
         the same policy's median at one thread. Latency of one fault: the medians over the \
         repetitions of each window's p50 and p99, and the largest max. Busy: the CPU time the \
         workers got over T times the window (below 100%: something else ran on their CPUs, or \
         they slept); per CPU-s: faults per second of that CPU time. Under TCG every guest \
         instruction is emulated: compare the rows of one run with each other, not with \
         hardware (README, \"Benchmark\"). Series: `vma`, `mmap`, `floor` are the kernel's \
         own threads faulting on user addresses (mmkernel, kernel threads); `user` is the \
         benchmark program running on the kernel in ring 3 (mmkernel, user program); `linux` \
         the same program on the host's Linux.",
    );
    line(o, "");
    for w in data.workloads() {
        workload(o, data, w);
    }
    fork_cost(o, logs);
    warnings(o, logs);
    out
}

fn line(o: &mut String, s: &str) {
    o.push_str(s);
    o.push('\n');
}

fn systems(o: &mut String, logs: &[Log], report_cores: Option<usize>) {
    line(o, "## Measured systems");
    line(o, "");
    line(
        o,
        "| log | accel | CPU model | TSC MHz | CPUs | memory | host cores | records | skipped |",
    );
    line(o, "|---|---|---|---:|---:|---:|---:|---:|---:|");
    for log in logs {
        let h = log.headers.first();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&log.name),
            h.map_or(NONE, |h| h.accel.name()),
            h.map_or(NONE.into(), |h| cell(&h.cpu_model)),
            opt(h.map(|h| h.tsc_mhz)),
            opt(h.map(|h| h.cpus)),
            h.map_or(NONE.into(), |h| format!("{} MiB", h.mem_mib)),
            opt(h.and_then(|h| h.host_cores)),
            log.records(),
            log.skipped(),
        );
    }
    line(o, "");
    for log in logs {
        for (i, h) in log.headers.iter().enumerate() {
            if h.extra.is_empty() {
                continue;
            }
            let keys: Vec<String> = h.extra.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
            let which = if log.headers.len() > 1 {
                format!(" (header {})", i + 1)
            } else {
                String::new()
            };
            let _ = writeln!(o, "- {}{which}: {}", cell(&log.name), keys.join(" "));
        }
        let mut unknown: Vec<&str> = log
            .measurements
            .iter()
            .flat_map(|m| m.extra.iter().map(|(k, _)| k.as_str()))
            .chain(
                log.phases
                    .iter()
                    .flat_map(|p| p.extra.iter().map(|(k, _)| k.as_str())),
            )
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let keys: Vec<String> = unknown.iter().map(|k| format!("`{k}`")).collect();
            let _ = writeln!(
                o,
                "- {}: further keys in its lines, not shown: {}",
                cell(&log.name),
                keys.join(", ")
            );
        }
    }
    if let Some(n) = report_cores {
        let _ = writeln!(o, "- this report was written on a machine with {n} cores");
    }
    line(o, "");
}

fn workload(o: &mut String, data: &Dataset, w: &str) {
    let _ = writeln!(o, "## {w}\n");
    let series: Vec<&Series> = data.series_of(w).collect();
    if !series.is_empty() {
        throughput(o, &series);
        ratios(o, data, w, &series);
        counters(o, data, &series, w == "churn");
    }
    phases(o, data, w);
}

fn throughput(o: &mut String, series: &[&Series]) {
    let ipis = series
        .iter()
        .flat_map(|s| &s.points)
        .any(|p| p.ipis_per_munmap.is_some());
    let busy = series
        .iter()
        .flat_map(|s| &s.points)
        .any(|p| p.busy.is_some());
    let mut head = String::from(
        "| policy | CPUs | T | faults/s | min-max | per thread | vs T=1 | p50 | p99 | max |",
    );
    let mut rule = String::from("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    if ipis {
        head.push_str(" IPIs/munmap |");
        rule.push_str("---:|");
    }
    if busy {
        head.push_str(" busy | per CPU-s |");
        rule.push_str("---:|---:|");
    }
    head.push_str(" reps |");
    rule.push_str("---:|");
    line(o, &head);
    line(o, &rule);
    for s in series {
        for p in &s.points {
            let _ = write!(
                o,
                "| {} | {} | {} | {} | {}-{} | {} | {} | {} | {} | {} |",
                s.key.policy,
                s.key.cpus,
                p.threads,
                rate(p.rate.median),
                rate(p.rate.min),
                rate(p.rate.max),
                rate(p.per_thread()),
                s.scaling(p.threads).map_or(NONE.into(), times),
                time(p.p50_ns),
                time(p.p99_ns),
                time(p.max_ns as f64),
            );
            if ipis {
                let v = p.ipis_per_munmap.map_or(NONE.into(), |v| format!("{v:.2}"));
                let _ = write!(o, " {v} |");
            }
            if busy {
                let v = p.busy.map_or(NONE.into(), |v| format!("{:.0}%", 100.0 * v));
                let _ = write!(o, " {v} | {} |", p.per_cpu_sec.map_or(NONE.into(), rate));
            }
            let _ = writeln!(o, " {} |", p.reps);
        }
    }
    line(o, "");
}

/// The ratio columns: (numerator, denominator). `user/vma`: the benchmark as a user program
/// against the kernel's own threads on the same fault path; `user/linux`: the same program on
/// this kernel and on Linux.
const RATIOS: [(Policy, Policy); 6] = [
    (Policy::Vma, Policy::Mmap),
    (Policy::Vma, Policy::Floor),
    (Policy::Vma, Policy::Linux),
    (Policy::Mmap, Policy::Linux),
    (Policy::User, Policy::Vma),
    (Policy::User, Policy::Linux),
];

fn ratios(o: &mut String, data: &Dataset, w: &str, series: &[&Series]) {
    // Rows: the kernel's (CPUs, T); Linux rows only when there is no kernel run to compare.
    let mut rows: Vec<(u64, u64)> = series
        .iter()
        .filter(|s| s.key.policy != Policy::Linux)
        .flat_map(|s| s.points.iter().map(|p| (s.key.cpus, p.threads)))
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let cells: Vec<Vec<Option<f64>>> = rows
        .iter()
        .map(|&(cpus, t)| {
            RATIOS
                .iter()
                .map(|&(a, b)| data.ratio(w, a, b, cpus, t))
                .collect()
        })
        .collect();
    let used: Vec<bool> = (0..RATIOS.len())
        .map(|c| cells.iter().any(|r| r[c].is_some()))
        .collect();
    if !used.contains(&true) {
        return;
    }
    line(
        o,
        "Ratios of median faults/s at the same CPU count and T (Linux: its own CPU count):",
    );
    line(o, "");
    let mut head = String::from("| CPUs | T |");
    let mut rule = String::from("|---:|---:|");
    for (&(a, b), _) in RATIOS.iter().zip(&used).filter(|(_, u)| **u) {
        let _ = write!(head, " {a}/{b} |");
        rule.push_str("---:|");
    }
    line(o, &head);
    line(o, &rule);
    for (&(cpus, t), r) in rows.iter().zip(&cells) {
        if r.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(o, "| {cpus} | {t} |");
        for (v, _) in r.iter().zip(&used).filter(|(_, u)| **u) {
            let _ = write!(o, " {} |", v.map_or(NONE.into(), times));
        }
        line(o, "");
    }
    line(o, "");
}

fn counters(o: &mut String, data: &Dataset, series: &[&Series], churn: bool) {
    let any = series
        .iter()
        .flat_map(|s| &s.points)
        .any(|p| p.vma_lock.iter().any(|&c| c > 0.0) || (churn && p.churn_per_sec > 0.0));
    if !any {
        return;
    }
    line(
        o,
        "Per-VMA lock outcomes per window (medians), and the churn thread's map-mprotect-unmap \
         cycles per second:",
    );
    line(o, "");
    line(
        o,
        "| series | T | success | abort | retry | miss | on VMA lock | churn ops/s |",
    );
    line(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in series {
        for p in &s.points {
            if !p.vma_lock.iter().any(|&c| c > 0.0) && !(churn && p.churn_per_sec > 0.0) {
                continue;
            }
            let [success, abort, retry, miss] = p.vma_lock;
            let tried = success + abort + miss;
            let share = if tried > 0.0 {
                format!("{:.1}%", 100.0 * success / tried)
            } else {
                NONE.into()
            };
            let churn_cell = if churn {
                format!("{:.0}", p.churn_per_sec)
            } else {
                NONE.into()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {success:.0} | {abort:.0} | {retry:.0} | {miss:.0} | {share} | {churn_cell} |",
                cell(&data.label(s)),
                p.threads,
            );
        }
    }
    line(o, "");
}

fn phases(o: &mut String, data: &Dataset, w: &str) {
    let rows: Vec<_> = data.phases.iter().filter(|p| p.workload == w).collect();
    if rows.is_empty() {
        return;
    }
    line(
        o,
        "Phase profile (medians over the phase lines; share: of the `total` phase's median):",
    );
    line(o, "");
    line(
        o,
        "| policy | T | phase | samples | median cycles | median | p99 cycles | share |",
    );
    line(o, "|---|---:|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let total = rows
            .iter()
            .find(|t| t.policy == r.policy && t.threads == r.threads && t.phase == "total")
            .map(|t| t.median_cycles)
            .filter(|&t| t > 0.0);
        let share = total.map_or(NONE.into(), |t| {
            format!("{:.0}%", 100.0 * r.median_cycles / t)
        });
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} | {} | {:.0} | {share} |",
            r.policy,
            r.threads,
            r.phase,
            r.samples,
            r.median_cycles,
            r.median_ns().map_or(NONE.into(), time),
            r.p99_cycles,
        );
    }
    line(o, "");
}

/// The "Fork cost" section: per log, a row per (VMAs, pages) with the median µs per fork over
/// the repetitions and their range.
fn fork_cost(o: &mut String, logs: &[Log]) {
    if logs.iter().all(|l| l.forks.is_empty()) {
        return;
    }
    line(
        o,
        "## Fork cost
",
    );
    line(
        o,
        "µs per fork of a process with N VMAs and M pages written in them (`dup_mmap` into a \
         new address space; its teardown not counted): the median over the repetitions, their \
         range beside it.",
    );
    line(o, "");
    line(
        o,
        "| log | VMAs | pages | µs per fork | min–max | forks × reps |",
    );
    line(o, "|---|---:|---:|---:|---:|---:|");
    for log in logs {
        let mut keys: Vec<(u64, u64)> = log.forks.iter().map(|f| (f.vmas, f.pages)).collect();
        keys.sort_unstable();
        keys.dedup();
        for (vmas, pages) in keys {
            let reps: Vec<_> = log
                .forks
                .iter()
                .filter(|f| (f.vmas, f.pages) == (vmas, pages))
                .collect();
            let mut us: Vec<f64> = reps.iter().map(|f| f.us_per_fork()).collect();
            us.sort_by(f64::total_cmp);
            let mid = us.len() / 2;
            let median = if us.len() % 2 == 1 {
                us[mid]
            } else {
                (us[mid - 1] + us[mid]) / 2.0
            };
            let forks: u64 = reps.iter().map(|f| f.forks).sum();
            let _ = writeln!(
                o,
                "| {} | {vmas} | {pages} | {} | {}–{} | {forks} × {} |",
                cell(&log.name),
                sig3(median),
                sig3(us[0]),
                sig3(us[us.len() - 1]),
                reps.len(),
            );
        }
    }
    line(o, "");
}

fn warnings(o: &mut String, logs: &[Log]) {
    let all: Vec<_> = logs.iter().flat_map(|l| &l.warnings).collect();
    if all.is_empty() {
        return;
    }
    let _ = writeln!(o, "## Warnings ({})\n", all.len());
    for w in all.iter().take(MAX_WARNINGS) {
        let _ = writeln!(o, "- {}", cell(&w.to_string()));
    }
    if all.len() > MAX_WARNINGS {
        let _ = writeln!(o, "- and {} more", all.len() - MAX_WARNINGS);
    }
    line(o, "");
}

/// Text safe inside a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn opt(v: Option<u64>) -> String {
    v.map_or(NONE.into(), |v| v.to_string())
}

/// A rate with three significant digits and a k/M/G suffix.
pub fn rate(v: f64) -> String {
    for (scale, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        // 999.96k rounds to 1.00M, not 1000k.
        if v.abs() >= scale * 0.9995 {
            return format!("{}{suffix}", sig3(v / scale));
        }
    }
    sig3(v)
}

/// A time in ns, in the unit that keeps it short.
pub fn time(ns: f64) -> String {
    if ns >= 0.9995e6 {
        format!("{} ms", sig3(ns / 1e6))
    } else if ns >= 999.5 {
        format!("{} µs", sig3(ns / 1e3))
    } else {
        format!("{ns:.0} ns")
    }
}

fn times(v: f64) -> String {
    format!("{v:.2}x")
}

/// Three significant digits (more left of the point from 1000 on).
fn sig3(v: f64) -> String {
    match v.abs() {
        a if a >= 99.95 => format!("{v:.0}"),
        a if a >= 9.995 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}
