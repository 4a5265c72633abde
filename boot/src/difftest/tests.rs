use super::*;

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn outcome(stdout: &[&str], stderr: &[&str], status: Status) -> Outcome {
    Outcome {
        stdout: lines(stdout),
        stderr: lines(stderr),
        status,
    }
}

#[test]
fn parse_interleaved_processes_among_kernel_lines() {
    let log = "\
[INFO  kernel] booting
user 1 start hello one two\r
user 1 out| hello, world
[WARN  mm] user 2 segmentation fault at 0x0
user 1 err| oops
user 1 out|
user 1 out| 
user 1 out|  two spaces kept after the one that separates
user 1 exit 0
user 2 start segv_jump
user 2 out| before
user 2 killed 11
user 3 start abort
";
    let procs = parse_kernel_log(log).unwrap();
    assert_eq!(procs.len(), 3);
    assert_eq!((procs[0].pid, procs[0].name.as_deref()), (1, Some("hello")));
    assert_eq!(procs[0].args, "one two");
    assert_eq!(
        procs[0].outcome,
        outcome(
            &[
                "hello, world",
                "",
                "",
                " two spaces kept after the one that separates"
            ],
            &["oops"],
            Status::Exit(0)
        )
    );
    assert_eq!(
        procs[1].outcome,
        outcome(&["before"], &[], Status::Signal(11))
    );
    assert_eq!(procs[2].outcome, outcome(&[], &[], Status::Unfinished));
}

#[test]
fn parse_pid_reuse_is_a_new_process_and_output_before_start_counts() {
    let log = "user 7 out| early\nuser 7 exit 3\nuser 7 start again\nuser 7 exit 0\n";
    let procs = parse_kernel_log(log).unwrap();
    assert_eq!(procs.len(), 2);
    assert_eq!(procs[0].name, None);
    assert_eq!(procs[0].outcome, outcome(&["early"], &[], Status::Exit(3)));
    assert_eq!(procs[1].name.as_deref(), Some("again"));
    assert_eq!(procs[1].outcome.status, Status::Exit(0));
}

#[test]
fn parse_forked_processes_join_their_program() {
    let log = "\
user 1 start fork_cow
user 1 out| parent before
user 2 fork 1
user 2 out| child
user 3 fork 2
user 3 err| grandchild
user 2 exit 7
user 1 out| parent after
user 1 exit 0
user 3 out| orphan
user 3 exit 0
user 4 start next
user 4 exit 0
";
    let procs = parse_kernel_log(log).unwrap();
    assert_eq!(
        procs.len(),
        2,
        "a forked process is not a program of its own"
    );
    assert_eq!(procs[0].name.as_deref(), Some("fork_cow"));
    assert_eq!(
        procs[0].outcome,
        outcome(
            &["parent before", "child", "parent after", "orphan"],
            &["grandchild"],
            Status::Exit(0)
        )
    );
    assert_eq!(procs[1].name.as_deref(), Some("next"));
}

#[test]
fn parse_rejects_a_fork_of_no_running_process() {
    for (log, line, cause) in [
        ("user 2 fork 1", 1, LogErrorCause::UnknownParent),
        (
            "user 1 start a\nuser 1 exit 0\nuser 2 fork 1",
            3,
            LogErrorCause::UnknownParent,
        ),
        (
            "user 1 start a\nuser 2 fork x",
            2,
            LogErrorCause::BadArgument,
        ),
        (
            "user 1 start a\nuser 2 fork 1\nuser 2 fork 1",
            3,
            LogErrorCause::DoubleStart,
        ),
        (
            "user 1 start a\nuser 2 fork 1\nuser 2 wrote",
            3,
            LogErrorCause::UnknownKind,
        ),
    ] {
        let e = parse_kernel_log(log).unwrap_err();
        assert_eq!((e.line, &e.cause), (line, &cause), "log {log:?}");
    }
}

#[test]
fn parse_lines_drops_carriage_returns_of_a_serial_line() {
    let procs =
        parse_kernel_lines(["user 1 start a\r", "user 1 out| x\r", "user 1 exit 0\r"]).unwrap();
    assert_eq!(procs[0].name.as_deref(), Some("a"));
    assert_eq!(procs[0].outcome, outcome(&["x"], &[], Status::Exit(0)));
}

#[test]
fn parse_ignores_lines_not_of_a_process() {
    let log = "user space is up\nusers 1 out| x\n user 1 out| x\nuser -1 out| x\nuser\n";
    assert_eq!(parse_kernel_log(log).unwrap(), Vec::new());
}

#[test]
fn parse_rejects_broken_process_lines() {
    let cases = [
        (
            "user 1 start a\nuser 1 wrote x",
            2,
            LogErrorCause::UnknownKind,
        ),
        ("user 1 exit", 1, LogErrorCause::UnknownKind),
        ("user 1 exit zero", 1, LogErrorCause::BadArgument),
        ("user 1 killed 11x", 1, LogErrorCause::BadArgument),
        ("user 1 start ", 1, LogErrorCause::BadArgument),
        (
            "user 1 start a\nuser 1 exit 0\nuser 1 out| late",
            3,
            LogErrorCause::AfterEnd,
        ),
        (
            "user 1 start a\nuser 1 exit 0\nuser 1 exit 1",
            3,
            LogErrorCause::AfterEnd,
        ),
        (
            "user 1 start a\nuser 1 start b",
            2,
            LogErrorCause::DoubleStart,
        ),
    ];
    for (log, line, cause) in cases {
        let e = parse_kernel_log(log).unwrap_err();
        assert_eq!((e.line, &e.cause), (line, &cause), "log {log:?}");
        assert!(e.to_string().contains(&format!("line {line}")), "{e}");
    }
}

#[test]
fn compare_equal_outcomes() {
    let a = outcome(&["x", "y"], &["e"], Status::Exit(0));
    assert_eq!(compare(&a, &a.clone(), Compare { stderr: true }), Ok(()));
}

#[test]
fn compare_reports_each_difference_with_a_diff() {
    let expected = outcome(&["a", "b", "c"], &["e1"], Status::Exit(0));
    let got = outcome(&["a", "x", "c", "d"], &["e2"], Status::Signal(11));
    let report = compare(&expected, &got, Compare { stderr: true }).unwrap_err();
    assert_eq!(
        report,
        "termination: expected exit 0, got killed by signal 11 (SIGSEGV)\n\
         stdout differs:\n  a\n- b\n+ x\n  c\n+ d\n\
         stderr differs:\n- e1\n+ e2\n"
    );
}

#[test]
fn compare_skips_stderr_only_when_told() {
    let expected = outcome(
        &["before"],
        &["thread 'main' has overflowed its stack"],
        Status::Signal(11),
    );
    let got = outcome(&["before"], &[], Status::Signal(11));
    assert_eq!(compare(&expected, &got, Compare { stderr: false }), Ok(()));
    assert!(compare(&expected, &got, Compare { stderr: true }).is_err());
    let cut = outcome(&[], &[], Status::Unfinished);
    let report = compare(&expected, &cut, Compare { stderr: false }).unwrap_err();
    assert!(
        report.contains("got no end") && report.contains("- before"),
        "{report}"
    );
}

#[test]
fn line_diff_of_disjoint_and_empty_lists() {
    assert_eq!(line_diff(&lines(&["a"]), &lines(&["b"])), "- a\n+ b\n");
    assert_eq!(line_diff(&[], &lines(&["b"])), "+ b\n");
    assert_eq!(line_diff(&lines(&["a"]), &[]), "- a\n");
    assert_eq!(line_diff(&[], &[]), "");
}

#[test]
fn check_run_pairs_processes_with_programs_in_order() {
    let progs = &PROGRAMS[..3];
    let host: Vec<Outcome> = (0..3)
        .map(|i| outcome(&[&format!("line {i}")], &[], Status::Exit(0)))
        .collect();
    let kproc = |i: usize, name: &str, o: &Outcome| KernelProcess {
        pid: i as u64 + 1,
        name: Some(name.into()),
        args: String::new(),
        outcome: o.clone(),
    };
    let good: Vec<KernelProcess> = (0..3).map(|i| kproc(i, progs[i].name, &host[i])).collect();
    assert!(
        check_run(progs, &host, &good)
            .iter()
            .all(|v| v.result.is_ok())
    );

    let mut bad = good.clone();
    bad[1].outcome.stdout[0] = "changed".into();
    bad.swap(0, 2);
    bad.push(kproc(3, "stray", &host[0]));
    let v = check_run(progs, &host, &bad);
    assert_eq!(v.len(), 4);
    assert_eq!(
        v.iter().map(|v| v.name).collect::<Vec<_>>(),
        ["hello", "threads", "futex_timeout", "(extra process)"]
    );
    assert!(v[0].result.as_ref().unwrap_err().contains("not \"hello\""));
    assert!(v[1].result.as_ref().unwrap_err().contains("+ changed"));
    assert!(v[3].result.as_ref().unwrap_err().contains("stray"));

    let v = check_run(progs, &host[..2], &good[..1]);
    assert!(v[1].result.as_ref().unwrap_err().contains("no process"));
    assert!(
        v[2].result
            .as_ref()
            .unwrap_err()
            .contains("no host outcome")
    );
}

fn sh(script: &str) -> Result<Outcome, HostRunError> {
    run_on_host_within(
        Path::new("/bin/sh"),
        &["-c", script],
        Duration::from_secs(20),
    )
}

#[test]
fn run_on_host_captures_lines_and_exit_code() {
    let o = sh("printf 'a\\n\\nb'; printf 'e\\n' >&2; exit 3").unwrap();
    assert_eq!(o, outcome(&["a", "", "b"], &["e"], Status::Exit(3)));
}

#[test]
fn run_on_host_reports_the_killing_signal() {
    let o = sh("echo before; kill -SEGV $$; echo after").unwrap();
    assert_eq!(o, outcome(&["before"], &[], Status::Signal(11)));
}

#[test]
fn run_on_host_gives_no_environment_and_an_empty_stdin() {
    let o = sh("echo \"${HOME:-no home}\"; cat; echo end").unwrap();
    assert_eq!(o.stdout, lines(&["no home", "end"]));
}

#[test]
fn run_on_host_kills_at_the_deadline() {
    let t = Instant::now();
    let r = run_on_host_within(Path::new("/bin/sleep"), &["30"], Duration::from_millis(200));
    assert!(matches!(r, Err(HostRunError::Timeout { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn run_on_host_of_a_missing_program_is_an_error() {
    let r = run_on_host(Path::new("/nonexistent/difftest"), &[]);
    assert!(matches!(r, Err(HostRunError::Spawn { .. })), "{r:?}");
}

#[test]
fn the_table_names_every_program_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../user/difftest/src/bin");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_owned))
        .collect();
    files.sort();
    let mut names: Vec<String> = PROGRAMS.iter().map(|p| p.name.to_owned()).collect();
    names.sort();
    assert_eq!(names, files);
}

/// A program whose stderr is not compared says why.
#[test]
fn every_exception_to_a_full_comparison_is_explained() {
    for p in PROGRAMS.iter().filter(|p| !p.compare.stderr) {
        assert!(
            !p.note.is_empty(),
            "{} does not compare stderr and does not say why",
            p.name
        );
    }
}

/// The built programs, or `None` (with the reason printed) when `make user-progs` has not run.
fn built_programs() -> Option<PathBuf> {
    let dir = programs_dir();
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .map(|p| p.name)
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if missing.is_empty() {
        Some(dir)
    } else {
        println!(
            "skipped: user programs {missing:?} are not built in {} (make user-progs)",
            dir.display()
        );
        None
    }
}

/// Every program on this host: it ends as the table says, twice the same way (nothing that
/// differs between runs is printed), and what it checks holds on Linux.
#[test]
fn every_program_runs_on_the_host_as_the_table_says() {
    let Some(dir) = built_programs() else {
        return;
    };
    for p in PROGRAMS {
        let path = dir.join(p.name);
        let first = run_on_host(&path, p.args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.status, p.expect, "{}: {first:?}", p.name);
        let second = run_on_host(&path, p.args).unwrap_or_else(|e| panic!("{e}"));
        if let Err(diff) = compare(&first, &second, p.compare) {
            panic!("{} printed differently on a second run:\n{diff}", p.name);
        }
        for line in &first.stdout {
            assert!(
                !line.ends_with("=false"),
                "{}: a check failed on Linux: {line}",
                p.name
            );
            assert!(
                !line.starts_with("after"),
                "{}: ran on after the fault: {line}",
                p.name
            );
        }
        if let Status::Signal(_) = p.expect {
            assert_eq!(
                first.stdout.last().map(String::as_str),
                Some("before"),
                "{}",
                p.name
            );
        }
    }
}

#[test]
fn host_outputs_of_hello_efault_and_abort() {
    let Some(dir) = built_programs() else {
        return;
    };
    let hello = &PROGRAMS[0];
    let o = run_on_host(&dir.join(hello.name), hello.args).unwrap();
    let mut want = vec![
        "hello, world".to_owned(),
        format!("argc-1={}", hello.args.len()),
    ];
    want.extend(
        hello
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| format!("arg[{}]={a}", i + 1)),
    );
    assert_eq!(o.stdout, want);

    let o = run_on_host(&dir.join("efault"), &[]).unwrap();
    let efaults = o
        .stdout
        .iter()
        .filter(|l| l.ends_with(": EFAULT(14)"))
        .count();
    assert_eq!(efaults, o.stdout.len() - 3, "{:?}", o.stdout);
    assert_eq!(
        o.stdout.last().map(String::as_str),
        Some("still running after every bad pointer")
    );

    let o = run_on_host(&dir.join("abort"), &[]).unwrap();
    assert_eq!(o.stdout, lines(&["before"]));
    assert!(
        o.stderr.iter().any(|l| l.ends_with(": deliberate panic")),
        "{:?}",
        o.stderr
    );
}

#[test]
fn frame_accounting_reads_the_kernels_programs_line() {
    let log = |line: &str| vec!["[INFO  cpu0] booted".to_string(), line.to_string()];
    assert!(
        frame_accounting(&log(
            "[INFO  cpu1] programs: 15 ran; free frames before 242067, after 242067"
        ))
        .is_ok()
    );
    let lost = frame_accounting(&log(
        "[INFO  cpu1] programs: 2 ran; free frames before 100, after 98",
    ));
    assert!(lost.is_err_and(|e| e.contains("100") && e.contains("98")));
    assert!(frame_accounting(&log("[INFO  cpu0] something else")).is_err());
    assert!(frame_accounting(&log("[INFO  cpu0] programs: 2 ran; garbled")).is_err());
}
