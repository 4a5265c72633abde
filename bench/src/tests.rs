//! The report tool on recorded logs: `testdata/linux.log` is real `fault_bench` output from this
//! project's development machine; `testdata/kernel-sample.log` is a kernel serial log in the
//! same format, written by hand (figures of the size TCG gives), with log prefixes, other
//! kernel output and one line cut by another CPU's output; `testdata/user.log` is real
//! `fault_bench` output from `make bench USER=1` (the program on the kernel under TCG, 2 CPUs),
//! two of its `churn` windows without a fault (the worker did not run in them).

use crate::format::{Accel, Policy};
use crate::log::{Log, Problem};
use crate::report::{rate, time};
use crate::stats::{Dataset, Summary};

const KERNEL: &str = include_str!("../testdata/kernel-sample.log");
const LINUX: &str = include_str!("../testdata/linux.log");
const USER: &str = include_str!("../testdata/user.log");

fn kernel() -> Log {
    Log::parse("kernel-sample.log", KERNEL)
}

fn linux() -> Log {
    Log::parse("linux.log", LINUX)
}

fn user() -> Log {
    Log::parse("user.log", USER)
}

/// An independent reading of one key of the `BENCH` lines that contain all of `filters`.
fn values(text: &str, filters: &[&str], key: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains("] BENCH ") || l.starts_with("BENCH "))
        .filter(|l| {
            filters
                .iter()
                .all(|f| l.split_whitespace().any(|w| w == *f))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn the_kernel_sample_parses_with_one_line_skipped() {
    let log = kernel();
    let h = &log.headers[0];
    assert_eq!(log.headers.len(), 1);
    assert_eq!(
        (h.accel, h.cpus, h.tsc_mhz, h.host_cores),
        (Accel::Tcg, 2, 2600, Some(2))
    );
    assert_eq!(h.cpu_model, "AMD EPYC 7B13 64-Core Processor");
    assert_eq!(log.measurements.len(), 14 * 3);
    assert_eq!(log.phases.len(), 14);
    assert_eq!(log.skipped(), 1);
    assert_eq!(log.warnings.len(), 1);
    let w = &log.warnings[0];
    assert_eq!(w.line, Some(33));
    assert!(matches!(w.problem, Problem::BadLine(_)));
    assert!(
        w.to_string().starts_with("kernel-sample.log:33: skipped: "),
        "{w}"
    );
    // The unknown key is kept, the known optional ones read.
    let m = &log.measurements[0];
    assert_eq!(
        m.extra,
        vec![("mmap_lock_fallback".to_owned(), "12".to_owned())]
    );
    assert!(m.ipis.is_some() && m.munmaps.is_some());
}

#[test]
fn the_linux_log_parses_cleanly() {
    let log = linux();
    assert!(log.warnings.is_empty(), "{:?}", log.warnings);
    assert_eq!(log.headers[0].accel, Accel::Linux);
    assert_eq!(log.measurements.len(), values(LINUX, &[], "faults").len());
    for m in &log.measurements {
        assert_eq!(m.policy, Policy::Linux);
        assert_eq!(m.vma_lock_success + m.vma_lock_abort, 0);
        assert!(m.cpu_ns.is_some() && m.munmaps.is_some());
    }
}

#[test]
fn aggregates_are_medians_ranges_and_ratios() {
    let data = Dataset::new(&[kernel(), linux()]);
    let pft_vma = data.find("pft", Policy::Vma, 2).expect("pft/vma");
    let one = pft_vma.at(1).expect("T=1");
    let f = ["workload=pft", "policy=vma", "threads=1"];
    let rates = values(KERNEL, &f, "faults_per_sec");
    assert_eq!(rates.len(), 3);
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(one.reps, 3);
    assert!(close(one.rate.median, sorted[1]));
    assert!(close(one.rate.min, sorted[0]) && close(one.rate.max, sorted[2]));
    assert!((one.rate.median - 155_000.0).abs() < 1.0);
    let mut p50 = values(KERNEL, &f, "p50_ns");
    p50.sort_by(f64::total_cmp);
    assert_eq!(one.p50_ns, p50[1]);
    let max = values(KERNEL, &f, "max_ns").into_iter().fold(0.0, f64::max);
    assert_eq!(one.max_ns as f64, max);

    // Scaling and ratios between medians.
    let two = pft_vma.at(2).expect("T=2").rate.median;
    assert!(close(pft_vma.scaling(2).unwrap(), two / one.rate.median));
    assert!((pft_vma.scaling(2).unwrap() - 290.0 / 155.0).abs() < 1e-3);
    let vma_mmap = data.ratio("pft", Policy::Vma, Policy::Mmap, 2, 2).unwrap();
    assert!((vma_mmap - 290.0 / 180.0).abs() < 1e-3, "{vma_mmap}");
    let vma_floor = data.ratio("pft", Policy::Vma, Policy::Floor, 2, 1).unwrap();
    assert!((vma_floor - 155.0 / 500.0).abs() < 1e-3, "{vma_floor}");
    assert_eq!(data.ratio("pft", Policy::Vma, Policy::Floor, 2, 2), None);
    let linux_pft = data.find("pft", Policy::Linux, 2).unwrap().at(1).unwrap();
    let vma_linux = data.ratio("pft", Policy::Vma, Policy::Linux, 2, 1).unwrap();
    assert!(close(vma_linux, one.rate.median / linux_pft.rate.median));

    // Shootdowns per munmap over all repetitions; busy from cpu_ns.
    let ipis: f64 = values(KERNEL, &["workload=pft", "policy=vma", "threads=2"], "ipis")
        .iter()
        .sum();
    let munmaps: f64 = values(
        KERNEL,
        &["workload=pft", "policy=vma", "threads=2"],
        "munmaps",
    )
    .iter()
    .sum();
    let p2 = pft_vma.at(2).unwrap();
    assert!(close(p2.ipis_per_munmap.unwrap(), ipis / munmaps));
    assert_eq!(p2.busy, None);
    assert!(linux_pft.busy.is_some_and(|b| b > 0.0 && b <= 1.05));

    // Churn operations per second from churn_ops and ns.
    let churn = data.find("churn", Policy::Vma, 2).unwrap().at(1).unwrap();
    assert!(
        (churn.churn_per_sec - 2917.0).abs() < 20.0,
        "{}",
        churn.churn_per_sec
    );
}

#[test]
fn phase_rows_keep_log_order_and_take_medians() {
    let data = Dataset::new(&[kernel()]);
    let vma: Vec<_> = data
        .phases
        .iter()
        .filter(|p| p.policy == Policy::Vma)
        .collect();
    let names: Vec<&str> = vma.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        names,
        ["entry", "lock_vma", "alloc", "zero", "pte", "exit", "total"]
    );
    let total = vma.last().unwrap();
    // Two `total` lines, 8000 and 8400 cycles: the median of two is their mean.
    assert_eq!((total.median_cycles, total.samples), (8200.0, 40000));
    assert!((total.median_ns().unwrap() - 8200.0 / 2.6).abs() < 1e-6);
    assert_eq!(data.phases[0].policy, Policy::Vma, "vma before floor");
}

#[test]
fn the_report_shows_both_logs_side_by_side() {
    let logs = [kernel(), linux()];
    let out = crate::render(&logs, Some(2)).unwrap();
    let md = &out.report;
    for needle in [
        "## Measured systems",
        "| kernel-sample.log | TCG | AMD EPYC 7B13 64-Core Processor | 2600 | 2 | 1024 MiB | 2 | 57 | 1 |",
        "## page_fault1",
        "## pft",
        "## churn",
        "| vma/mmap | vma/floor | vma/linux | mmap/linux |",
        "| vma | 2 | 1 | 155k | 150k-160k | 155k | 1.00x |",
        "| vma | 2 | 2 | 290k | 280k-300k | 145k | 1.87x |",
        "| 2 | 2 | 1.61x | — |",
        "| 2 | 1 | 1.07x | 0.31x |",
        "| vma | 1 | total | 40000 | 8200 | 3.15 µs | 15200 | 100% |",
        "| vma | 1 | zero | 20000 | 2700 | 1.04 µs | 3900 | 33% |",
        "IPIs/munmap",
        "busy | per CPU-s",
        "further keys in its lines, not shown: `mmap_lock_fallback`",
        "## Warnings (1)",
        "- kernel-sample.log:33: skipped:",
        "written on a machine with 2 cores",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    let linux_rows = md
        .lines()
        .filter(|l| l.starts_with("| linux | 2 |"))
        .count();
    assert_eq!(linux_rows, 6, "{md}");
    // Workloads in order.
    let at = |s: &str| md.find(s).unwrap();
    assert!(at("## page_fault1") < at("## pft") && at("## pft") < at("## churn"));
}

#[test]
fn svgs_hold_every_series() {
    let out = crate::render(&[kernel(), linux()], None).unwrap();
    for svg in [&out.scaling_svg, &out.latency_svg] {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.len() > 10_000, "{} bytes", svg.len());
        for series in [
            "page_fault1/vma",
            "page_fault1/mmap",
            "page_fault1/floor",
            "page_fault1/linux",
            "pft/vma",
            "pft/floor",
            "pft/linux",
            "churn/vma",
            "churn/mmap",
            "churn/linux",
        ] {
            assert!(svg.contains(series), "no {series}");
        }
        assert!(!svg.contains("churn/floor"));
    }
    assert!(out.scaling_svg.contains("faults/s"));
    assert!(out.latency_svg.contains("p99 fault latency"));
}

#[test]
fn any_subset_of_logs_makes_a_report() {
    let only_linux = crate::render(&[linux()], None).unwrap();
    assert!(!only_linux.report.contains("Ratios"));
    assert!(!only_linux.report.contains("Phase profile"));
    assert!(only_linux.scaling_svg.contains("pft/linux"));
    assert!(!only_linux.scaling_svg.contains("pft/vma"));

    let only_kernel = crate::render(&[kernel()], None).unwrap();
    assert!(only_kernel.report.contains("| vma/mmap | vma/floor |"));
    assert!(!only_kernel.report.contains("vma/linux"));
    assert!(!only_kernel.report.contains("| linux |"));

    let nothing = crate::render(&[Log::parse("empty.log", "boot\nno bench here\n")], None).unwrap();
    assert!(nothing.report.contains("| empty.log | — |"));
    assert!(nothing.scaling_svg.starts_with("<svg"));
}

#[test]
fn kernel_and_linux_on_different_cpu_counts() {
    let kernel8 = "BENCH-HEADER cpu_model=x tsc_mhz=2600 accel=TCG cpus=8 mem_mib=1024\n\
        BENCH workload=pft policy=vma threads=1 cpus=8 rep=0 faults=300 ns=1000 faults_per_sec=300000000 p50_ns=1 p99_ns=2 max_ns=3\n\
        BENCH workload=pft policy=vma threads=1 cpus=2 rep=0 faults=100 ns=1000 faults_per_sec=100000000 p50_ns=1 p99_ns=2 max_ns=3\n";
    let host = "BENCH workload=pft policy=linux threads=1 cpus=2 rep=0 faults=200 ns=1000 faults_per_sec=200000000 p50_ns=1 p99_ns=2 max_ns=3\n";
    let logs = [Log::parse("k", kernel8), Log::parse("l", host)];
    assert_eq!(logs[1].warnings[0].problem, Problem::NoHeader);
    let data = Dataset::new(&logs);
    // Linux on its own CPU count stands in at any: 300/200 at 8 CPUs, 100/200 at 2.
    assert_eq!(
        data.ratio("pft", Policy::Vma, Policy::Linux, 8, 1),
        Some(1.5)
    );
    assert_eq!(
        data.ratio("pft", Policy::Vma, Policy::Linux, 2, 1),
        Some(0.5)
    );
    // Same workload and policy on two CPU counts: labels say which.
    let labels: Vec<String> = data.series.iter().map(|s| data.label(s)).collect();
    assert_eq!(
        labels,
        [
            "pft/vma@2cpu (mmkernel, kernel threads)",
            "pft/vma@8cpu (mmkernel, kernel threads)",
            "pft/linux (Linux)"
        ]
    );
}

#[test]
fn duplicate_repetitions_and_changed_tsc_are_warned_about() {
    let text = "BENCH-HEADER cpu_model=x tsc_mhz=2600 accel=KVM cpus=2 mem_mib=1\n\
        BENCH workload=pft policy=mmap threads=1 cpus=2 rep=0 faults=1 ns=1000 faults_per_sec=1000000 p50_ns=1 p99_ns=2 max_ns=3\n\
        BENCH-HEADER cpu_model=x tsc_mhz=2700 accel=KVM cpus=2 mem_mib=1\n\
        BENCH workload=pft policy=mmap threads=1 cpus=2 rep=0 faults=3 ns=1000 faults_per_sec=3000000 p50_ns=1 p99_ns=2 max_ns=3\n";
    let log = Log::parse("dup.log", text);
    let problems: Vec<_> = log.warnings.iter().map(|w| (w.line, &w.problem)).collect();
    assert!(matches!(
        problems[..],
        [
            (
                Some(3),
                Problem::TscChanged {
                    first: 2600,
                    later: 2700
                }
            ),
            (Some(4), Problem::DuplicateRep { rep: 0, .. })
        ]
    ));
    assert_eq!(log.skipped(), 0);
    assert_eq!(log.tsc_mhz(), Some(2600));
    // Both repetitions count: the median of 1M and 3M is 2M.
    let data = Dataset::new(&[log]);
    assert_eq!(data.series[0].points[0].rate.median, 2e6);
}

#[test]
fn summaries_and_number_formats() {
    assert_eq!(Summary::of(&[]), None);
    let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    assert_eq!(Summary::of(&[5.0, 1.0, 3.0]).unwrap().median, 3.0);
    assert_eq!(rate(950.0), "950");
    assert_eq!(rate(99_999.6), "100k");
    assert_eq!(rate(155_000.0), "155k");
    assert_eq!(rate(999_960.0), "1.00M");
    assert_eq!(rate(12_345_678.0), "12.3M");
    assert_eq!(time(850.0), "850 ns");
    assert_eq!(time(1500.0), "1.50 µs");
    assert_eq!(time(999_999.0), "1.00 ms");
}

/// The median of `v` (odd length).
fn median3(mut v: Vec<f64>) -> f64 {
    assert_eq!(v.len() % 2, 1);
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn the_user_program_log_parses_as_its_own_policy() {
    let log = user();
    assert!(log.warnings.is_empty(), "{:?}", log.warnings);
    let h = &log.headers[0];
    assert_eq!((h.accel, h.cpus, h.host_cores), (Accel::Tcg, 2, None));
    assert_eq!(log.measurements.len(), values(USER, &[], "faults").len());
    assert_eq!(log.measurements.len(), 18);
    for m in &log.measurements {
        assert_eq!(m.policy, Policy::User);
        assert_eq!(m.vma_lock_success + m.ipis.unwrap_or(0), 0);
    }
    // A guest that cannot tell its accelerator says `qemu`; the policy name round-trips.
    let q = Log::parse(
        "q.log",
        "BENCH-HEADER cpu_model=x tsc_mhz=1 accel=qemu cpus=2 mem_mib=1\n\
         BENCH workload=pft policy=user threads=1 cpus=2 rep=0 faults=1 ns=1000000000 faults_per_sec=1 p50_ns=1 p99_ns=1 max_ns=1\n",
    );
    assert!(q.warnings.is_empty(), "{:?}", q.warnings);
    assert_eq!(q.headers[0].accel, Accel::Qemu);
    assert_eq!(q.measurements[0].policy.to_string(), "user");
    assert_eq!(Policy::User.system(), "mmkernel, user program");
}

#[test]
fn user_program_series_stand_beside_kernel_threads_and_linux() {
    let data = Dataset::new(&[kernel(), user(), linux()]);
    for w in ["page_fault1", "pft", "churn"] {
        let s = data.find(w, Policy::User, 2).expect(w);
        assert_eq!(data.label(s), format!("{w}/user (mmkernel, user program)"));
        for t in [1, 2] {
            let p = s.at(t).expect("T");
            let (wk, tk) = (format!("workload={w}"), format!("threads={t}"));
            let rates = values(USER, &[&wk, "policy=user", &tk], "faults_per_sec");
            assert_eq!(p.reps, 3);
            assert!(close(p.rate.median, median3(rates)), "{w} T={t}");
        }
        // Kernel policies, then the user program, then Linux.
        let order: Vec<Policy> = data.series_of(w).map(|s| s.key.policy).collect();
        let at = |p| order.iter().position(|&o| o == p).unwrap();
        assert!(at(Policy::Vma) < at(Policy::User) && at(Policy::User) < at(Policy::Linux));
    }
    let user_pft = data.find("pft", Policy::User, 2).unwrap().at(1).unwrap();
    let vma_pft = data.find("pft", Policy::Vma, 2).unwrap().at(1).unwrap();
    let linux_pft = data.find("pft", Policy::Linux, 2).unwrap().at(1).unwrap();
    let uv = data.ratio("pft", Policy::User, Policy::Vma, 2, 1).unwrap();
    assert!(close(uv, user_pft.rate.median / vma_pft.rate.median));
    let ul = data
        .ratio("pft", Policy::User, Policy::Linux, 2, 1)
        .unwrap();
    assert!(close(ul, user_pft.rate.median / linux_pft.rate.median));
    // The user program's windows carry cpu_ns: busy is known.
    assert!(user_pft.busy.is_some_and(|b| b > 0.5 && b <= 1.05));

    let out = crate::render(&[kernel(), user(), linux()], None).unwrap();
    let md = &out.report;
    assert!(md.contains("| user/vma | user/linux |"), "{md}");
    assert!(md.contains("mmkernel, user program"));
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| user | 2 |")).count(),
        6,
        "{md}"
    );
    for svg in [&out.scaling_svg, &out.latency_svg] {
        for label in [
            "pft/user (mmkernel, user program)",
            "pft/vma (mmkernel, kernel threads)",
            "pft/linux (Linux)",
        ] {
            assert!(svg.contains(label), "no {label}");
        }
    }
    // Without the kernel threads' log: the user program against Linux alone.
    let ul_only = crate::render(&[user(), linux()], None).unwrap();
    assert!(ul_only.report.contains("| user/linux |"));
    assert!(!ul_only.report.contains("user/vma"));
}

#[test]
fn a_series_without_faults_at_one_thread_has_no_scaling() {
    // The user program's churn at T=1: two of three windows without a fault, median 0.
    let data = Dataset::new(&[user()]);
    let churn = data.find("churn", Policy::User, 2).unwrap();
    assert_eq!(churn.at(1).unwrap().rate.median, 0.0);
    assert_eq!(churn.scaling(2), None);
    assert_eq!(churn.scaling(1), None);
    let md = crate::render(&[user()], None).unwrap().report;
    assert!(!md.contains("NaN") && !md.contains("infx"), "{md}");
}

#[test]
fn fork_cost_rows_take_the_median_over_repetitions() {
    let text = "BENCH-HEADER cpu_model=\"x\" tsc_mhz=1000 accel=TCG cpus=8 mem_mib=1024\n\
                BENCH-FORK vmas=64 pages=4096 rep=0 forks=10 ns=90000000\n\
                BENCH-FORK vmas=1 pages=0 rep=0 forks=10 ns=1000000\n\
                BENCH-FORK vmas=1 pages=0 rep=1 forks=10 ns=3000000\n\
                BENCH-FORK vmas=1 pages=0 rep=2 forks=20 ns=4000000\n\
                BENCH-FORK vmas=1 pages=0 rep=3 forks=10 ns=1500000\n";
    let log = Log::parse("fork.log", text);
    assert!(log.warnings.is_empty(), "{:?}", log.warnings);
    assert_eq!(log.forks.len(), 5);
    assert_eq!(log.records(), 6);
    let report = crate::render(&[log], None).unwrap().report;
    assert!(report.contains("## Fork cost"), "{report}");
    // µs per fork 100, 300, 200, 150: median 175, range 100-300, 50 forks in 4 repetitions.
    assert!(
        report.contains("| fork.log | 1 | 0 | 175 | 100–300 | 50 × 4 |"),
        "{report}"
    );
    assert!(
        report.contains("| fork.log | 64 | 4096 | 9000 | 9000–9000 | 10 × 1 |"),
        "{report}"
    );
    // Rows by VMAs, then pages.
    assert!(report.find("| fork.log | 1 | 0 |") < report.find("| fork.log | 64 | 4096 |"));
    // No fork lines, no section.
    assert!(
        !crate::render(&[linux()], None)
            .unwrap()
            .report
            .contains("Fork cost")
    );
}
