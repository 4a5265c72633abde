use super::*;

const LINE: &str = "BENCH workload=pft policy=vma threads=2 cpus=2 rep=1 faults=1000 ns=2000000 \
    faults_per_sec=500000 p50_ns=1500 p99_ns=4000 max_ns=90000 vma_lock_success=990 \
    vma_lock_abort=10 vma_lock_retry=1 vma_lock_miss=0 churn_ops=0";

fn measurement(line: &str) -> Measurement {
    match parse_line(line) {
        Ok(Some(Record::Measurement(m))) => m,
        other => panic!("{line:?} gave {other:?}"),
    }
}

fn error(line: &str) -> LineError {
    match parse_line(line) {
        Err(e) => e,
        Ok(r) => panic!("{line:?} parsed as {r:?}"),
    }
}

#[test]
fn a_full_bench_line() {
    let m = measurement(LINE);
    assert_eq!(m.workload, "pft");
    assert_eq!(m.policy, Policy::Vma);
    assert_eq!((m.threads, m.cpus, m.rep), (2, 2, 1));
    assert_eq!((m.faults, m.ns), (1000, 2_000_000));
    assert_eq!(m.faults_per_sec, 5e5);
    assert_eq!((m.p50_ns, m.p99_ns, m.max_ns), (1500, 4000, 90000));
    assert_eq!(
        (
            m.vma_lock_success,
            m.vma_lock_abort,
            m.vma_lock_retry,
            m.vma_lock_miss
        ),
        (990, 10, 1, 0)
    );
    assert_eq!((m.ipis, m.munmaps), (None, None));
    assert!(m.extra.is_empty());
}

#[test]
fn bench_keys_list_the_parsed_order() {
    let words: Vec<&str> = LINE.split_whitespace().skip(1).collect();
    let keys: Vec<&str> = words.iter().map(|w| w.split('=').next().unwrap()).collect();
    assert_eq!(keys, BENCH_KEYS);
}

#[test]
fn log_prefix_carriage_return_and_other_lines() {
    let m = measurement(&format!("[INFO  cpu3] {LINE}\r"));
    assert_eq!(m.threads, 2);
    for other in [
        "",
        "[INFO  cpu0] mm (PerVmaLock): 16 threads",
        "BENCHMARK done",
        "test foo ... ok",
        "[unterminated prefix BENCH x=1",
    ] {
        // "BENCHMARK" starts with BENCH: it is reported, not silently dropped.
        if other.starts_with("BENCHMARK") {
            assert_eq!(error(other), LineError::UnknownTag("BENCHMARK".into()));
        } else {
            assert_eq!(parse_line(other), Ok(None), "{other:?}");
        }
    }
}

#[test]
fn optional_counters_count_as_zero_and_known_extras_are_read() {
    let m = measurement(
        "BENCH workload=page_fault1 policy=linux threads=1 cpus=2 rep=0 faults=10 ns=1000 \
         faults_per_sec=10000000 p50_ns=1 p99_ns=2 max_ns=3 munmaps=4 minflt=10 ipis=12",
    );
    assert_eq!(m.vma_lock_success + m.vma_lock_abort + m.churn_ops, 0);
    assert_eq!((m.ipis, m.munmaps), (Some(12), Some(4)));
    assert_eq!(m.extra, vec![("minflt".to_owned(), "10".to_owned())]);
}

#[test]
fn header_with_quotes_and_extras() {
    let line = r#"BENCH-HEADER cpu_model="AMD \"EPYC\" 7B13 \\ 64-Core" tsc_mhz=2600 accel=TCG cpus=8 mem_mib=1024 window_ms=2000 host_cores=2"#;
    let Ok(Some(Record::Header(h))) = parse_line(line) else {
        panic!("{line}")
    };
    assert_eq!(h.cpu_model, r#"AMD "EPYC" 7B13 \ 64-Core"#);
    assert_eq!(
        (h.tsc_mhz, h.accel, h.cpus, h.mem_mib),
        (2600, Accel::Tcg, 8, 1024)
    );
    assert_eq!(h.host_cores, Some(2));
    assert_eq!(h.extra, vec![("window_ms".to_owned(), "2000".to_owned())]);
}

#[test]
fn phase_line() {
    let line = "BENCH-PHASE workload=pft policy=vma threads=1 phase=zero samples=5000 \
                median_cycles=2600 p99_cycles=5200";
    let Ok(Some(Record::Phase(p))) = parse_line(line) else {
        panic!("{line}")
    };
    assert_eq!((p.phase.as_str(), p.samples), ("zero", 5000));
    assert_eq!((p.median_cycles, p.p99_cycles), (2600, 5200));
}

#[test]
fn malformed_lines_are_errors_that_say_why() {
    let swap = LINE.replace("faults=1000 ns=2000000", "ns=2000000 faults=1000");
    assert_eq!(
        error(&swap),
        LineError::MissingKey {
            expected: "faults",
            found: Some("ns".into())
        }
    );
    let cut = "BENCH workload=pft policy=vma threads=2 cpus=2 rep=1 faults=1000 ns=2000000";
    assert_eq!(
        error(cut),
        LineError::MissingKey {
            expected: "faults_per_sec",
            found: None
        }
    );
    let late = LINE.replace("vma_lock_success=990 ", "") + " vma_lock_success=990";
    assert_eq!(
        error(&late),
        LineError::DuplicateKey("vma_lock_success".into())
    );
    assert_eq!(
        error(&format!("{LINE} ipis=1 ipis=2")),
        LineError::DuplicateKey("ipis".into())
    );
    assert!(matches!(
        error(&LINE.replace("policy=vma", "policy=rcu")),
        LineError::BadValue { key: "policy", .. }
    ));
    assert!(matches!(
        error(&LINE.replace("rep=1", "rep=-1")),
        LineError::BadValue { key: "rep", .. }
    ));
    assert!(matches!(
        error(&LINE.replace("rep=1", "rep=+1")),
        LineError::BadValue { key: "rep", .. }
    ));
    assert!(matches!(
        error(&LINE.replace("=500000", "=NaN")),
        LineError::BadValue {
            key: "faults_per_sec",
            ..
        }
    ));
    assert!(matches!(
        error(&LINE.replace("workload=pft", "workload=PFT")),
        LineError::BadValue {
            key: "workload",
            ..
        }
    ));
    assert_eq!(
        error(&LINE.replace("threads=2", "threads=0")),
        LineError::Zero("threads")
    );
    assert_eq!(
        error(&LINE.replace("p99_ns=4000", "p99_ns=400")),
        LineError::LatencyOrder {
            p50: 1500,
            p99: 400,
            max: 90000
        }
    );
    assert!(matches!(
        error(&LINE.replace("=500000", "=400000")),
        LineError::RateMismatch { .. }
    ));
    // Within 1%: integer rounding by the emitter is fine.
    measurement(&LINE.replace("=500000", "=499999.5"));
    assert_eq!(
        error(&format!("{LINE} garbage")),
        LineError::BadWord("garbage".into())
    );
    assert_eq!(
        error(&format!("{LINE} =3")),
        LineError::BadWord("=3".into())
    );
    assert_eq!(
        error(&format!("{LINE} note=\"open")),
        LineError::UnterminatedQuote
    );
    assert_eq!(
        error(&format!("{LINE} note=\"a\\nb\"")),
        LineError::BadEscape('n')
    );
    assert_eq!(
        error(&format!("{LINE} note=a\"b")),
        LineError::BadWord("note=a\"b".into())
    );
    assert!(matches!(
        error("BENCH-HEADER cpu_model=x tsc_mhz=1 accel=QEMU cpus=1 mem_mib=1"),
        LineError::BadValue { key: "accel", .. }
    ));
    assert_eq!(
        error("BENCH-RESULT x=1"),
        LineError::UnknownTag("BENCH-RESULT".into())
    );
    // Every error reads as a sentence naming what is wrong.
    let text = error(&swap).to_string();
    assert!(text.contains("`faults`") && text.contains("`ns`"), "{text}");
}

#[test]
fn interleaved_serial_output_is_an_error_not_a_panic() {
    // Two CPUs writing at once can splice lines; whatever comes out must not panic.
    let spliced = "BENCH workload=pft policy=vma thre[INFO  cpu1] xads=2 cpus=2 rep=1 ü=1 \"";
    assert!(parse_line(spliced).is_err());
    for cut in 0..LINE.len() {
        if LINE.is_char_boundary(cut) {
            let _ = parse_line(&LINE[..cut]);
        }
    }
}

#[test]
fn fork_line() {
    let line = "[INFO  cpu0] BENCH-FORK vmas=16 pages=256 rep=2 forks=20 ns=3000000 note=x";
    let Ok(Some(Record::Fork(f))) = parse_line(line) else {
        panic!("{line}")
    };
    assert_eq!(
        (f.vmas, f.pages, f.rep, f.forks, f.ns),
        (16, 256, 2, 20, 3_000_000)
    );
    assert_eq!(f.us_per_fork(), 150.0);
    assert_eq!(f.extra, [("note".to_owned(), "x".to_owned())]);
}

#[test]
fn malformed_fork_lines_are_errors() {
    assert_eq!(
        error("BENCH-FORK vmas=1 pages=0 rep=0 forks=0 ns=5"),
        LineError::Zero("forks")
    );
    assert_eq!(
        error("BENCH-FORK pages=0 vmas=1 rep=0 forks=1 ns=5"),
        LineError::MissingKey {
            expected: "vmas",
            found: Some("pages".into())
        }
    );
    assert_eq!(
        error("BENCH-FORK vmas=1 pages=0 rep=0 forks=1"),
        LineError::MissingKey {
            expected: "ns",
            found: None
        }
    );
    assert!(matches!(
        error("BENCH-FORK vmas=1 pages=-3 rep=0 forks=1 ns=5"),
        LineError::BadValue { key: "pages", .. }
    ));
    assert_eq!(
        error("BENCH-FORKS vmas=1"),
        LineError::UnknownTag("BENCH-FORKS".into())
    );
}
