//! The test suite: `boot runner` runs one kernel test binary under QEMU (cargo's target runner),
//! `boot test` runs everything and ends with one line `N passed, N failed`.
//!
//! A host `cargo test` is built first, then run under a deadline (`HOST_TEST_TIMEOUT` seconds,
//! default [`HOST_TEST_TIMEOUT`]): a test that hangs gets it and everything below it killed and
//! counted as failed, named when libtest has reported it running for over 60 seconds.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::image::{self, Firmware};
use crate::qemu;
use crate::testlog::{self, Counts};

/// Test kernels that must pass on several CPU counts, by binary name; the rest run on
/// `KTEST_SMP` CPUs (default 8).
const SMP_MATRIX: &[(&str, &[u32])] = &[
    ("smp", &[1, 2, 8]),
    ("rcu", &[1, 2, 8]),
    ("affinity", &[1, 2, 8]),
];

/// Test kernels that need more than the default timeout, by binary name, with the least they
/// get (`KTEST_TIMEOUT` may give more): the bounded soak runs to a number of faults, whose time
/// depends on the host.
const MIN_TIMEOUT: &[(&str, u64)] = &[("soak", 900)];

/// Seconds a host `cargo test` run may take once built, unless `HOST_TEST_TIMEOUT` says otherwise.
const HOST_TEST_TIMEOUT: u64 = 300;

/// `boot runner <ELF> [libtest args, ignored]`.
pub fn runner(args: &[String]) -> Result<bool, String> {
    let elf = PathBuf::from(args.first().ok_or("runner needs the test kernel's path")?);
    let name = binary_name(&elf);
    let least = MIN_TIMEOUT
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, s)| s);
    let timeout = env_u64("KTEST_TIMEOUT", 300)?.max(least);
    let smps: Vec<u32> = match SMP_MATRIX.iter().find(|(n, _)| *n == name) {
        Some((_, smps)) => smps.to_vec(),
        None => vec![env_u64("KTEST_SMP", 8)? as u32],
    };
    let image = image::build(&elf, Firmware::Bios, None)?;
    if !is_test_binary(&elf) {
        // `cargo run` of a kernel binary: boot it as `boot run` does; there are no tests to count.
        let opts = qemu::Options {
            smp: env_u64("KTEST_SMP", 8)? as u32,
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        };
        let out = qemu::run(&image, &opts)?;
        if !out.success {
            eprintln!("boot: {}", out.reason);
        }
        return Ok(out.success);
    }
    let mut all_ok = true;
    for smp in smps {
        let opts = qemu::Options {
            smp,
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        };
        let out = qemu::run(&image, &opts)?;
        let mut counts = testlog::kernel_counts(&out.log, out.success);
        if let Some(seen) = testlog::cpus_online(&out.log).filter(|&n| n != smp) {
            println!("ktest {name}: the kernel reports {seen} CPUs online, QEMU was given {smp}");
            counts.failed += 1;
        }
        let ok = out.success && counts.failed == 0;
        all_ok &= ok;
        println!(
            "ktest {name} smp={smp}: {} ok, {} failed ({}, {:.1} s)",
            counts.passed,
            counts.failed,
            out.reason,
            out.elapsed.as_secs_f64()
        );
        if let Ok(path) = std::env::var("KTEST_RESULTS") {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open KTEST_RESULTS file {path}: {e}"))?;
            writeln!(f, "{name} {smp} {} {}", counts.passed, counts.failed)
                .map_err(|e| format!("cannot write {path}: {e}"))?;
        }
    }
    Ok(all_ok)
}

/// `boot test`: host tests of `mm`, `exec`, `boot` and `benchreport`, then every test kernel
/// under QEMU.
pub fn all() -> Result<bool, String> {
    let root = workspace_root();
    let mut total = Counts::default();

    let host_runs: [&[&str]; 4] = [
        &["test", "-p", "mm"],
        &["test", "-p", "exec"],
        &["test", "--release", "-p", "boot"],
        &["test", "-p", "benchreport"],
    ];
    for args in host_runs {
        let c = host_suite(&root, args)?;
        println!(
            "== host `cargo {}`: {} passed, {} failed",
            args.join(" "),
            c.passed,
            c.failed
        );
        total += c;
    }

    let results = std::env::temp_dir().join(format!("ktest-results-{}", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let status = Command::new("cargo")
        .current_dir(&root)
        .args([
            "test",
            "-p",
            "kernel",
            "-p",
            "ktests",
            "--target",
            "x86_64-unknown-none",
        ])
        .arg("--no-fail-fast")
        .env("KTEST_RESULTS", &results)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let _ = std::fs::remove_file(&results);
    let mut kernel = Counts::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [_, _, passed, failed] = f[..] {
            kernel += Counts {
                passed: passed.parse().unwrap_or(0),
                failed: failed.parse().unwrap_or(1),
            };
        }
    }
    if !status.success() && kernel.failed == 0 {
        // cargo failed without a test kernel failing: the build broke.
        kernel.failed += 1;
    }
    println!(
        "== in-QEMU tests: {} passed, {} failed",
        kernel.passed, kernel.failed
    );
    total += kernel;

    let diff = differential(&root);
    println!(
        "== differential tests (Linux and the kernel on {:?} CPUs): {} passed, {} failed",
        crate::difftest::SMPS,
        diff.passed,
        diff.failed
    );
    total += diff;

    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(total.failed == 0)
}

/// The differential tests (`difftest::run`) with the plain kernel, built here in release. A
/// failure to get that far counts as one failed test.
fn differential(root: &Path) -> Counts {
    let built = Command::new("cargo")
        .current_dir(root)
        .args([
            "build",
            "-p",
            "kernel",
            "--target",
            "x86_64-unknown-none",
            "--release",
        ])
        .status();
    if !built.is_ok_and(|s| s.success()) {
        println!("difftest: cannot build the kernel");
        return Counts {
            passed: 0,
            failed: 1,
        };
    }
    let kernel = root.join("target/x86_64-unknown-none/release/kernel");
    match crate::difftest::run(&kernel) {
        Ok(checks) => {
            for c in checks.iter().filter(|c| c.result.is_err()) {
                println!("difftest: failed: {} on {} CPUs", c.name, c.smp);
            }
            let failed = checks.iter().filter(|c| c.result.is_err()).count() as u64;
            Counts {
                passed: checks.len() as u64 - failed,
                failed,
            }
        }
        Err(e) => {
            println!("difftest: {e}");
            Counts {
                passed: 0,
                failed: 1,
            }
        }
    }
}

/// Builds a host `cargo test`, then runs it under the deadline, echoing its output, and counts
/// its results.
fn host_suite(root: &Path, args: &[&str]) -> Result<Counts, String> {
    let what = format!("cargo {}", args.join(" "));
    // The build is not timed: only running the tests can hang.
    let built = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .arg("--no-run")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !built.success() {
        println!("== host `{what}`: the build failed");
        return Ok(Counts {
            passed: 0,
            failed: 1,
        });
    }
    let limit = Duration::from_secs(env_u64("HOST_TEST_TIMEOUT", HOST_TEST_TIMEOUT)?);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args(args);
    let run = run_with_deadline(cmd, limit, true)?;
    Ok(suite_counts(&run, &what, limit))
}

/// What a command run by [`run_with_deadline`] printed, and how it ended.
#[derive(Debug)]
struct Finished {
    lines: Vec<String>,
    /// `None`: killed at the deadline.
    status: Option<ExitStatus>,
}

/// Runs `cmd` with its stdout captured line by line (and echoed if `echo`); at `limit` it is
/// killed with every process below it.
fn run_with_deadline(mut cmd: Command, limit: Duration, echo: bool) -> Result<Finished, String> {
    let deadline = Instant::now() + limit;
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the child's stdout was not piped")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_string(),
                )
                .is_err()
            {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if echo {
                    println!("{line}");
                }
                lines.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                kill_tree(&mut child);
                return Ok(Finished {
                    lines,
                    status: None,
                });
            }
        }
    }
    // Its stdout is closed: it is exiting (or closed stdout and went on, which the deadline
    // still covers).
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for {cmd:?}: {e}"))?
        {
            return Ok(Finished {
                lines,
                status: Some(status),
            });
        }
        if Instant::now() >= deadline {
            kill_tree(&mut child);
            return Ok(Finished {
                lines,
                status: None,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` and every process below it: cargo runs the test binaries as its children, and
/// killing cargo alone would leave a hung test spinning. `child` is stopped first so that it
/// starts nothing new while they are collected.
fn kill_tree(child: &mut Child) {
    let pid = child.id();
    let _ = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status();
    let mut pids = descendants(pid);
    pids.push(pid);
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(u32::to_string))
        .status();
    // Where there is no `kill` command, at least the child goes.
    let _ = child.kill();
    let _ = child.wait();
}

/// Every process below `root`, read from `/proc` (none where there is no `/proc`).
fn descendants(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`, where comm may itself hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
                todo.push(pid);
            }
        }
    }
    found
}

/// The counts of a host run; a run killed at the deadline fails each test still running (or
/// once, when libtest named none).
fn suite_counts(run: &Finished, what: &str, limit: Duration) -> Counts {
    let mut c = testlog::libtest_counts(run.lines.iter().map(String::as_str)).unwrap_or_default();
    match run.status {
        Some(status) => {
            if !status.success() && c.failed == 0 {
                c.failed += 1;
            }
        }
        None => {
            let stuck = still_running(&run.lines);
            let names = if stuck.is_empty() {
                "none named".to_string()
            } else {
                stuck.join(", ")
            };
            println!(
                "== host `{what}` killed after {} s; tests still running: {names}",
                limit.as_secs()
            );
            c.failed += (stuck.len() as u64).max(1);
        }
    }
    c
}

/// Tests libtest reported as running for over 60 seconds and not as finished since.
fn still_running(lines: &[String]) -> Vec<String> {
    let mut running: Vec<String> = Vec::new();
    for line in lines {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        if let Some((name, _)) = rest.split_once(" has been running for over ") {
            if !running.iter().any(|r| r == name) {
                running.push(name.to_string());
            }
        } else if let Some((name, _)) = rest.rsplit_once(" ... ") {
            running.retain(|r| r != name);
        }
    }
    running
}

/// Whether cargo built `elf` as a test (its name carries cargo's hash), not as a plain binary
/// (`target/x86_64-unknown-none/debug/kernel`, what `cargo run` hands the runner).
fn is_test_binary(elf: &Path) -> bool {
    let stem = elf.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    binary_name(elf) != stem
}

/// `target/.../deps/basic_boot-0123abcd` -> `basic_boot`.
fn binary_name(elf: &Path) -> String {
    let stem = elf.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.into(),
        _ => stem.into(),
    }
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("boot/ has a parent")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    /// Whether `pid` is gone (or a zombie, which runs nothing), waiting up to 5 s for it.
    fn dies(pid: u32) -> bool {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat)
                    if stat
                        .rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) =>
                {
                    return true;
                }
                Ok(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    #[test]
    fn a_command_within_its_deadline_returns_its_output_and_status() {
        let run = run_with_deadline(
            sh("echo one; echo two; exit 3"),
            Duration::from_secs(60),
            false,
        )
        .unwrap();
        assert_eq!(run.lines, lines(&["one", "two"]));
        assert_eq!(run.status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_with_the_processes_below_it() {
        // The shell (cargo's stand-in) waits for a child (a test binary's stand-in) that hangs.
        let start = Instant::now();
        let run = run_with_deadline(
            sh("sleep 120 & echo $!; wait"),
            Duration::from_millis(500),
            false,
        )
        .unwrap();
        assert!(run.status.is_none(), "not reported as killed: {run:?}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the deadline was not kept"
        );
        let pid: u32 = run.lines[0].parse().unwrap();
        assert!(dies(pid), "the hung grandchild {pid} was left running");
    }

    #[test]
    fn a_command_that_closes_its_output_and_hangs_is_still_killed() {
        let start = Instant::now();
        let run = run_with_deadline(
            sh("exec >/dev/null; sleep 120"),
            Duration::from_millis(500),
            false,
        )
        .unwrap();
        assert!(run.status.is_none());
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_killed_run_fails_the_tests_still_running_by_name() {
        let out = lines(&[
            "running 3 tests",
            "test a ... ok",
            "test b has been running for over 60 seconds",
            "test c has been running for over 60 seconds",
            "test c ... ok",
            "test d has been running for over 60 seconds",
        ]);
        assert_eq!(still_running(&out), ["b", "d"]);
        let killed = Finished {
            lines: out,
            status: None,
        };
        assert_eq!(
            suite_counts(&killed, "cargo test", Duration::from_secs(1)),
            Counts {
                passed: 0,
                failed: 2
            }
        );
        // Killed before libtest named anyone: one failure for the run.
        let killed = Finished {
            lines: lines(&["running 1 test"]),
            status: None,
        };
        assert_eq!(
            suite_counts(&killed, "cargo test", Duration::from_secs(1)),
            Counts {
                passed: 0,
                failed: 1
            }
        );
    }

    #[test]
    fn a_finished_run_is_counted_from_its_summary_lines() {
        let status = |code| sh(&format!("exit {code}")).status().unwrap();
        let out = lines(&[
            "test result: ok. 3 passed; 0 failed; 0 ignored",
            "test result: FAILED. 1 passed; 2 failed;",
        ]);
        let run = Finished {
            lines: out,
            status: Some(status(101)),
        };
        assert_eq!(
            suite_counts(&run, "cargo test", Duration::from_secs(1)),
            Counts {
                passed: 4,
                failed: 2
            }
        );
        // A failed run that printed no failure (a crash) still fails.
        let run = Finished {
            lines: lines(&["test result: ok. 3 passed; 0 failed;"]),
            status: Some(status(1)),
        };
        assert_eq!(
            suite_counts(&run, "cargo test", Duration::from_secs(1)),
            Counts {
                passed: 3,
                failed: 1
            }
        );
    }

    #[test]
    fn plain_binaries_are_told_from_test_binaries() {
        assert!(is_test_binary(Path::new("t/deps/kernel-0a1b2c3d4e5f6789")));
        assert!(is_test_binary(Path::new(
            "t/build/ktests/0a1b/out/smp-0a1b2c3d4e5f6789"
        )));
        assert!(!is_test_binary(Path::new(
            "t/x86_64-unknown-none/debug/kernel"
        )));
        assert!(!is_test_binary(Path::new(
            "t/x86_64-unknown-none/release/bench"
        )));
    }

    #[test]
    fn binary_names_lose_cargo_hashes() {
        assert_eq!(
            binary_name(Path::new("t/deps/basic_boot-0a1b2c3d4e5f6789")),
            "basic_boot"
        );
        assert_eq!(binary_name(Path::new("t/deps/kernel-0a1b")), "kernel");
        assert_eq!(
            binary_name(Path::new("t/x86_64-unknown-none/debug/kernel")),
            "kernel"
        );
        assert_eq!(binary_name(Path::new("t/deps/page-fault-ab")), "page-fault");
    }
}
