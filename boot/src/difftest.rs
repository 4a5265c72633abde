//! The differential test: the programs of `user/difftest` run on this host's Linux and on the
//! kernel, and what they print and how they end must match line for line. Linux is the oracle:
//! where the two disagree the kernel is wrong, unless the table below says why not.
//!
//! The host half is here: the table of programs, [`run_on_host`], [`parse_kernel_log`] for the
//! kernel's serial log, and [`compare`] with a readable diff. The kernel tags every line a user
//! process writes, and its end:
//!
//! ```text
//! user <pid> start <name> <argv...>
//! user <pid> out| <text>          one per line written to fd 1 (a partial last line at exit)
//! user <pid> err| <text>          one per line written to fd 2
//! user <pid> exit <code>          or: user <pid> killed <signo>
//! user <pid> fork <ppid>          a process that <ppid> forked, instead of a start line
//! ```
//!
//! Other lines carry their own prefixes and are skipped. Programs run one at a time, in the
//! table's order (the next starts once every process of the last has ended), so the n-th
//! process of the log is the n-th program. A forked process belongs to its parent's program:
//! its `out|`/`err|` lines join that program's output in log order, as they would share its
//! stdout and stderr on Linux, and its end is its parent's business (`wait4`), not the
//! program's status.
//!
//! The QEMU half, [`run`], packs every program into one ramdisk, boots the kernel with it on 1, 2
//! and 8 CPUs, and compares each run with the host's outcomes; each run also checks that every
//! frame came back once all the processes were gone (the kernel's `programs:` line).

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It exited (`exit_group`) with this code.
    Exit(i32),
    /// A signal's default action ended it.
    Signal(i32),
    /// The log ends without the process's end (the kernel died or hung first).
    Unfinished,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Status::Exit(c) => write!(f, "exit {c}"),
            Status::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(s)),
            Status::Unfinished => f.write_str("no end (the log stops first)"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        _ => "?",
    }
}

/// What a program printed, line by line (a partial last line counts as a line), and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub status: Status,
}

/// What of two outcomes must match besides stdout and the status, which always must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compare {
    pub stderr: bool,
}

/// One program of the differential test.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    /// Its binary's name (`user/difftest/src/bin/<name>.rs`).
    pub name: &'static str,
    /// Its arguments after `argv[0]`.
    pub args: &'static [&'static str],
    pub compare: Compare,
    /// How it ends on Linux: a host run that ends otherwise means the program is broken.
    pub expect: Status,
    /// Why it is compared as it is, where that is not obvious.
    pub note: &'static str,
}

const ALL: Compare = Compare { stderr: true };

/// Every program, in the order the kernel runs them.
pub const PROGRAMS: &[Program] = &[
    Program {
        name: "hello",
        args: &["one", "two words", "3"],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "threads",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "futex_timeout",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "faults",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "efault",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "mmap_ops",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "fd 0 must be readable and not mappable: the host run gives it /dev/null",
    },
    Program {
        name: "mremap_ops",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "brk_basic",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "brk_ops",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "mmap_flags",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "stack_growth",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "stack_guard_segv",
        args: &[],
        compare: ALL,
        expect: Status::Signal(11),
        note: "",
    },
    Program {
        name: "segv_write_ro",
        args: &[],
        compare: ALL,
        expect: Status::Signal(11),
        note: "",
    },
    Program {
        name: "segv_jump",
        args: &[],
        compare: ALL,
        expect: Status::Signal(11),
        note: "",
    },
    Program {
        name: "segv_kernel_read",
        args: &[],
        compare: ALL,
        expect: Status::Signal(11),
        note: "",
    },
    Program {
        name: "stack_overflow",
        args: &[],
        compare: Compare { stderr: false },
        expect: Status::Signal(11),
        note: "stderr is not compared: with signal delivery Rust's SIGSEGV handler may report \
               the overflow on stderr (\"thread 'main' has overflowed its stack\"); the kernel \
               delivers no signals, so only stdout and the signal are compared",
    },
    Program {
        name: "exit_code",
        args: &[],
        compare: ALL,
        expect: Status::Exit(42),
        note: "",
    },
    Program {
        name: "exit_group_threads",
        args: &[],
        compare: ALL,
        expect: Status::Exit(3),
        note: "",
    },
    Program {
        name: "futex_requeue",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "abort",
        args: &[],
        compare: ALL,
        expect: Status::Signal(6),
        note: "the program's own panic hook prints the message: the default one prints the \
               thread id",
    },
    Program {
        name: "fork_cow",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "shared_anon",
        args: &[],
        compare: ALL,
        expect: Status::Exit(0),
        note: "",
    },
    Program {
        name: "fork_race",
        args: &["10"],
        compare: ALL,
        expect: Status::Exit(0),
        note: "10 forks: on one CPU its four spinning threads stretch each fork to a few \
               timeslices (half a second); the long run of the same race is \
               tests/fork_stress.rs",
    },
];

/// Where `make user-progs` puts the programs: `target/user/x86_64-unknown-linux-musl/release`.
pub fn programs_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    root.join("target/user/x86_64-unknown-linux-musl/release")
}

/// How long a program may run on the host before it counts as hung.
pub const HOST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a program could not be run on the host to its end.
#[derive(Debug)]
pub enum HostRunError {
    Spawn {
        path: PathBuf,
        err: io::Error,
    },
    Wait {
        path: PathBuf,
        err: io::Error,
    },
    /// Still running at the deadline: killed.
    Timeout {
        path: PathBuf,
        limit: Duration,
    },
    /// Neither an exit code nor a signal (cannot happen for a child that was waited for).
    NoStatus {
        path: PathBuf,
        status: ExitStatus,
    },
}

impl fmt::Display for HostRunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRunError::Spawn { path, err } => write!(f, "cannot run {}: {err}", path.display()),
            HostRunError::Wait { path, err } => {
                write!(f, "cannot wait for {}: {err}", path.display())
            }
            HostRunError::Timeout { path, limit } => {
                write!(f, "{} still ran after {limit:?}: killed", path.display())
            }
            HostRunError::NoStatus { path, status } => {
                write!(
                    f,
                    "{} ended with an unexplained status {status:?}",
                    path.display()
                )
            }
        }
    }
}

/// Runs the program at `path` with `args` after `argv[0]` on this host as the kernel runs it:
/// no environment, fd 0 at end of file (`/dev/null`), fds 1 and 2 captured. Killed after
/// [`HOST_TIMEOUT`].
pub fn run_on_host(path: &Path, args: &[&str]) -> Result<Outcome, HostRunError> {
    run_on_host_within(path, args, HOST_TIMEOUT)
}

/// [`run_on_host`] with a deadline of `limit`.
pub fn run_on_host_within(
    path: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<Outcome, HostRunError> {
    let mut child = Command::new(path)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| HostRunError::Spawn {
            path: path.into(),
            err,
        })?;
    // Both pipes are drained while the child runs, or a full one would block it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                // A read error ends the capture; what was read so far is still compared.
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let waited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                // Killing a child that exited meanwhile fails harmlessly; it is reaped either way.
                let _ = child.kill();
                let _ = child.wait();
                break Err(HostRunError::Timeout {
                    path: path.into(),
                    limit,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(HostRunError::Wait {
                    path: path.into(),
                    err,
                });
            }
        }
    };
    // The pipes close when the child is gone (unless it left a descendant holding them, which
    // none of the programs does), so the readers end.
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = waited?;
    Ok(Outcome {
        stdout: split_lines(&stdout),
        stderr: split_lines(&stderr),
        status: exit_status(path, status)?,
    })
}

fn exit_status(path: &Path, status: ExitStatus) -> Result<Status, HostRunError> {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ok(Status::Exit(code)),
        (None, Some(sig)) => Ok(Status::Signal(sig)),
        (None, None) => Err(HostRunError::NoStatus {
            path: path.into(),
            status,
        }),
    }
}

/// Output split as the kernel logs it: one entry per `\n`, and a partial last line as a line.
fn split_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    // `split` yields an empty piece after a final newline (or for no output at all).
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// One process of a kernel log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelProcess {
    pub pid: u64,
    /// The name on its `start` line, if the log has one.
    pub name: Option<String>,
    /// The rest of the `start` line: the arguments as the kernel logged them.
    pub args: String,
    pub outcome: Outcome,
}

/// A kernel log line that has the shape of a process line (`user <pid> ...`) but breaks the
/// format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogError {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub cause: LogErrorCause,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogErrorCause {
    /// Neither `start`, `out|`, `err|`, `exit` nor `killed`.
    UnknownKind,
    /// `exit` or `killed` without a number, or `start` without a name.
    BadArgument,
    /// A line for a process after its `exit` or `killed` line (other than a new `start`).
    AfterEnd,
    /// A second `start` for a process still running.
    DoubleStart,
    /// A `fork` line whose parent is not a running process of the log.
    UnknownParent,
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match self.cause {
            LogErrorCause::UnknownKind => "unknown kind of process line",
            LogErrorCause::BadArgument => "missing or malformed argument",
            LogErrorCause::AfterEnd => "line for a process that already ended",
            LogErrorCause::DoubleStart => "second start of a running process",
            LogErrorCause::UnknownParent => "fork of a process that is not running",
        };
        write!(f, "kernel log line {}: {cause}: {:?}", self.line, self.text)
    }
}

/// The processes of a kernel serial log, in the order they first appear (their `start` lines).
/// A pid that starts again after it ended is a new process.
pub fn parse_kernel_log(log: &str) -> Result<Vec<KernelProcess>, LogError> {
    parse_kernel_lines(log.lines())
}

/// [`parse_kernel_log`] over lines already split (as `qemu::run` returns them).
pub fn parse_kernel_lines<'a>(
    lines: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<KernelProcess>, LogError> {
    let mut procs: Vec<KernelProcess> = Vec::new();
    // Forked processes still running: (pid, index of their program in `procs`).
    let mut forked: Vec<(u64, usize)> = Vec::new();
    for (i, raw) in lines.into_iter().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let Some((pid, rest)) = process_line(line) else {
            continue;
        };
        let error = |cause| LogError {
            line: i + 1,
            text: line.to_owned(),
            cause,
        };
        if let Some(ppid) = rest.strip_prefix("fork ") {
            let ppid: u64 = ppid
                .trim()
                .parse()
                .map_err(|_| error(LogErrorCause::BadArgument))?;
            let program = forked
                .iter()
                .find(|&&(p, _)| p == ppid)
                .map(|&(_, prog)| prog)
                .or_else(|| {
                    procs
                        .iter()
                        .rposition(|p| p.pid == ppid && p.outcome.status == Status::Unfinished)
                })
                .ok_or_else(|| error(LogErrorCause::UnknownParent))?;
            if forked.iter().any(|&(p, _)| p == pid) {
                return Err(error(LogErrorCause::DoubleStart));
            }
            forked.push((pid, program));
            continue;
        }
        if let Some(at) = forked.iter().position(|&(p, _)| p == pid) {
            let out = &mut procs[forked[at].1].outcome;
            if let Some(text) = tagged_text(rest, "out|") {
                out.stdout.push(text.to_owned());
            } else if let Some(text) = tagged_text(rest, "err|") {
                out.stderr.push(text.to_owned());
            } else if rest.starts_with("exit ") || rest.starts_with("killed ") {
                forked.swap_remove(at);
            } else {
                return Err(error(LogErrorCause::UnknownKind));
            }
            continue;
        }
        // The process this line belongs to: the latest with this pid.
        let current = procs.iter().rposition(|p| p.pid == pid);
        let running = current.filter(|&c| procs[c].outcome.status == Status::Unfinished);
        if let Some(start) = rest.strip_prefix("start ") {
            if running.is_some() {
                return Err(error(LogErrorCause::DoubleStart));
            }
            let (name, args) = start.split_once(' ').unwrap_or((start, ""));
            if name.is_empty() {
                return Err(error(LogErrorCause::BadArgument));
            }
            procs.push(new_process(pid, Some(name.to_owned()), args.to_owned()));
            continue;
        }
        let idx = match (current, running) {
            (_, Some(r)) => r,
            (Some(_), None) => return Err(error(LogErrorCause::AfterEnd)),
            // Output before any start line (the start line was lost): a process all the same.
            (None, None) => {
                procs.push(new_process(pid, None, String::new()));
                procs.len() - 1
            }
        };
        let out = &mut procs[idx].outcome;
        if let Some(text) = tagged_text(rest, "out|") {
            out.stdout.push(text.to_owned());
        } else if let Some(text) = tagged_text(rest, "err|") {
            out.stderr.push(text.to_owned());
        } else if let Some(code) = rest.strip_prefix("exit ") {
            let code = code
                .trim()
                .parse()
                .map_err(|_| error(LogErrorCause::BadArgument))?;
            out.status = Status::Exit(code);
        } else if let Some(sig) = rest.strip_prefix("killed ") {
            let sig = sig
                .trim()
                .parse()
                .map_err(|_| error(LogErrorCause::BadArgument))?;
            out.status = Status::Signal(sig);
        } else {
            return Err(error(LogErrorCause::UnknownKind));
        }
    }
    Ok(procs)
}

fn new_process(pid: u64, name: Option<String>, args: String) -> KernelProcess {
    KernelProcess {
        pid,
        name,
        args,
        outcome: Outcome {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: Status::Unfinished,
        },
    }
}

/// `user <pid> <rest>` -> `(pid, rest)`; `None` for any other line.
fn process_line(line: &str) -> Option<(u64, &str)> {
    let (pid, rest) = line.strip_prefix("user ")?.split_once(' ')?;
    Some((pid.parse().ok()?, rest))
}

/// The text after `tag` and the one space that follows it (absent for an empty line whose
/// trailing space was trimmed on the way).
fn tagged_text<'a>(rest: &'a str, tag: &str) -> Option<&'a str> {
    let text = rest.strip_prefix(tag)?;
    Some(text.strip_prefix(' ').unwrap_or(text))
}

/// Whether `got` matches `expected` in stdout, the status and, if `what` says so, stderr; the
/// error is a readable report with a line diff (`-` expected, `+` got) of each part that differs.
pub fn compare(expected: &Outcome, got: &Outcome, what: Compare) -> Result<(), String> {
    let mut report = String::new();
    if expected.status != got.status {
        report += &format!(
            "termination: expected {}, got {}\n",
            expected.status, got.status
        );
    }
    if expected.stdout != got.stdout {
        report += &format!(
            "stdout differs:\n{}",
            line_diff(&expected.stdout, &got.stdout)
        );
    }
    if what.stderr && expected.stderr != got.stderr {
        report += &format!(
            "stderr differs:\n{}",
            line_diff(&expected.stderr, &got.stderr)
        );
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

/// A unified-style diff of two line lists through their longest common subsequence: `  ` for a
/// common line, `- ` for a line only in `a`, `+ ` for one only in `b`.
fn line_diff(a: &[String], b: &[String]) -> String {
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            (i, j) = (i + 1, j + 1);
        } else if j == b.len() || (i < a.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

/// The verdict on one program of a kernel run.
#[derive(Debug)]
pub struct Verdict {
    pub name: &'static str,
    /// `Err`: the report of what differs, or why there is nothing to compare.
    pub result: Result<(), String>,
}

/// Compares a kernel run of `programs` with their host outcomes (`host[i]` for `programs[i]`):
/// the n-th process of the log is the n-th program, and must carry its name.
pub fn check_run(programs: &[Program], host: &[Outcome], kernel: &[KernelProcess]) -> Vec<Verdict> {
    let mut verdicts: Vec<Verdict> = programs
        .iter()
        .enumerate()
        .map(|(i, prog)| {
            let result = match (host.get(i), kernel.get(i)) {
                (None, _) => Err("no host outcome to compare with".into()),
                (Some(_), None) => Err("the kernel log has no process for it".into()),
                (Some(_), Some(p)) if p.name.as_deref() != Some(prog.name) => Err(format!(
                    "process {} of the kernel log (pid {}) is {:?}, not {:?}",
                    i + 1,
                    p.pid,
                    p.name,
                    prog.name
                )),
                (Some(expected), Some(p)) => compare(expected, &p.outcome, prog.compare),
            };
            Verdict {
                name: prog.name,
                result,
            }
        })
        .collect();
    for p in kernel.iter().skip(programs.len()) {
        verdicts.push(Verdict {
            name: "(extra process)",
            result: Err(format!("pid {} ({:?}) is not in the table", p.pid, p.name)),
        });
    }
    verdicts
}

/// CPU counts every kernel run of the programs is made with.
pub const SMPS: [u32; 3] = [1, 2, 8];

/// How long one kernel run of all the programs may take.
const KERNEL_TIMEOUT: Duration = Duration::from_secs(600);

/// One check of a run: a program's comparison, or the run's frame accounting.
pub struct Check {
    pub smp: u32,
    pub name: String,
    pub result: Result<(), String>,
}

/// The QEMU half: every program on this host, then the kernel (`kernel`, a plain kernel ELF)
/// with all of them in its ramdisk on each of [`SMPS`] CPUs. One [`Check`] per program per run,
/// and one for each run's frame accounting.
pub fn run(kernel: &Path) -> Result<Vec<Check>, String> {
    let dir = programs_dir();
    let mut host = Vec::new();
    for p in PROGRAMS {
        let args: Vec<&str> = p.args.to_vec();
        let outcome = run_on_host(&dir.join(p.name), &args).map_err(|e| e.to_string())?;
        if outcome.status != p.expect {
            return Err(format!(
                "{} ends with {:?} on this Linux, not {:?}: the program is broken",
                p.name, outcome.status, p.expect
            ));
        }
        host.push(outcome);
    }
    let progs: Vec<crate::ramdisk::Prog> = PROGRAMS
        .iter()
        .map(|p| crate::ramdisk::Prog {
            path: dir.join(p.name),
            args: p.args.iter().map(|a| a.to_string()).collect(),
        })
        .collect();
    let ramdisk = crate::ramdisk::pack(&progs, false)?;
    let image = crate::image::build(kernel, crate::image::Firmware::Bios, Some(&ramdisk))?;
    let mut checks = Vec::new();
    for smp in SMPS {
        let opts = crate::qemu::Options {
            smp,
            timeout: Some(KERNEL_TIMEOUT),
            ..Default::default()
        };
        let out = crate::qemu::run(&image, &opts)?;
        let log = out.log.join("\n");
        let verdicts = match parse_kernel_log(&log) {
            Ok(procs) => check_run(PROGRAMS, &host, &procs),
            Err(e) => PROGRAMS
                .iter()
                .map(|p| Verdict {
                    name: p.name,
                    result: Err(format!("the kernel log is malformed: {e}")),
                })
                .collect(),
        };
        let ok = verdicts.iter().filter(|v| v.result.is_ok()).count();
        let accounting = frame_accounting(&out.log);
        println!(
            "difftest smp={smp}: {ok} of {} programs match Linux, frames {} ({}, {:.1} s)",
            verdicts.len(),
            if accounting.is_ok() {
                "all back"
            } else {
                "LOST"
            },
            out.reason,
            out.elapsed.as_secs_f64()
        );
        for v in verdicts {
            if let Err(e) = &v.result {
                println!("difftest smp={smp} {}: FAILED\n{e}", v.name);
                if let Some(p) = PROGRAMS
                    .iter()
                    .find(|p| p.name == v.name && !p.note.is_empty())
                {
                    println!("  (note: {})", p.note);
                }
            }
            checks.push(Check {
                smp,
                name: v.name.to_string(),
                result: v.result,
            });
        }
        if let Err(e) = &accounting {
            println!("difftest smp={smp} frame accounting: FAILED: {e}");
        }
        checks.push(Check {
            smp,
            name: "frame accounting".into(),
            result: accounting,
        });
    }
    Ok(checks)
}

/// The kernel's `programs: N ran; free frames before B, after A` line, with `B == A`.
fn frame_accounting(log: &[String]) -> Result<(), String> {
    let line = log
        .iter()
        .find_map(|l| l.split_once("programs: ").map(|(_, rest)| rest))
        .ok_or("the kernel printed no `programs:` line (it did not finish)")?;
    let number = |key: &str| -> Option<u64> {
        let (_, rest) = line.split_once(key)?;
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (number("before"), number("after")) {
        (Some(b), Some(a)) if a == b => Ok(()),
        (Some(b), Some(a)) => Err(format!("{b} frames free before the programs, {a} after")),
        _ => Err(format!("cannot read the line `programs: {line}`")),
    }
}

#[cfg(test)]
mod tests;
