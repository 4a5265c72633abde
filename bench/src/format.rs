//! The benchmark's line format: the one contract between the programs that measure (the
//! kernel's `bench` module on the serial port, `user/fault_bench` on Linux or as a user program
//! on the kernel) and this crate.
//! The README's "Benchmark" section repeats it for people.
//!
//! A record is one line: a tag, then `key=value` words. Four tags:
//!
//! ```text
//! BENCH-HEADER cpu_model="<text>" tsc_mhz=<n> accel=<TCG|KVM|qemu|linux> cpus=<n> mem_mib=<n> [host_cores=<n>] ...
//! BENCH workload=<w> policy=<vma|mmap|floor|user|linux> threads=<T> cpus=<N> rep=<i> faults=<n> ns=<n>
//!       faults_per_sec=<x> p50_ns=<n> p99_ns=<n> max_ns=<n> vma_lock_success=<n> vma_lock_abort=<n>
//!       vma_lock_retry=<n> vma_lock_miss=<n> churn_ops=<n> [ipis=<n>] [munmaps=<n>] [cpu_ns=<n>] ...
//! BENCH-PHASE workload=<w> policy=<p> threads=<T> phase=<name> samples=<n> median_cycles=<n> p99_cycles=<n> ...
//! BENCH-FORK vmas=<N> pages=<M> rep=<i> forks=<n> ns=<n> ...
//! ```
//! (a `BENCH` record is one line; it is wrapped here only to be read).
//!
//! Syntax:
//! - The tag is the line's first word. A log prefix that ends in `] ` may stand before it (the
//!   kernel's `[INFO  cpu0] `) and is skipped; a trailing `\r` is ignored. Lines whose first word is
//!   not a tag are not records and are ignored; a first word that starts with `BENCH` but is no
//!   tag is an error.
//! - Words are separated by spaces or tabs. A value is either a run of characters without
//!   whitespace or `"`, or a double-quoted string in which `\"` and `\\` stand for `"` and `\`.
//! - The keys shown come first, in the order shown. `vma_lock_*` and `churn_ops` may be left out
//!   (they then count as 0), but those present keep their order. Keys in `[]` and any further
//!   keys follow, in any order, each at most once; keys this crate does not know are kept and
//!   listed in the report. Key names are `[a-z0-9_]+`.
//! - Numbers are unsigned decimal integers, except `faults_per_sec`, which may have a fraction.
//! - `<w>` and `<name>` are `[a-z0-9_]+`. The workloads are `page_fault1`, `pft`, `churn`; others
//!   are reported after them.
//!
//! Meaning of the header keys: `cpu_model` the CPU's model name (CPUID brand string, or
//! `/proc/cpuinfo`); `tsc_mhz` the TSC frequency the measuring program uses to turn cycles into
//! ns; `accel` how the measured system ran: QEMU's `TCG` or `KVM`, `qemu` when a program in
//! the guest cannot tell which, or `linux` for the host itself; `cpus` CPUs online in the measured system; `mem_mib` its memory; `host_cores` the
//! cores of the physical (or outermost) machine, when the measuring program knows it (`make
//! bench` hands it to the kernel). Suggested further keys: `warmup_ms`, `window_ms`, `reps`.
//!
//! Meaning of the `BENCH` keys, one line per measured repetition:
//! - `policy`: `vma` faults take the per-VMA lock (falling back to `mmap_lock`); `mmap` every fault
//!   takes `mmap_lock` (`FaultPolicy::MmapLockOnly`); `floor` a minimal fault handler (take a
//!   frame, zero it, set the PTE) as the physical floor (these three: the kernel's own threads
//!   faulting on user addresses); `user` the kernel's faults taken by `fault_bench` running as a
//!   user program on it (ring 3, system calls; per-VMA locks as under `vma`); `linux` the host's
//!   Linux running the same program.
//! - `threads`: worker threads that fault (the churn thread of `churn` is not counted); `cpus`:
//!   CPUs online; `rep`: the repetition's index from 0 (warm-ups print no line).
//! - `faults`: page faults taken by all workers in the measured window; `ns`: the window's
//!   wall-clock length; `faults_per_sec` = `faults * 1e9 / ns` (checked to within 1%).
//! - `p50_ns`, `p99_ns`, `max_ns`: the latency of one faulting page touch, over every fault of
//!   every worker in the window (`p50 <= p99 <= max`).
//! - `vma_lock_success`, `_abort`, `_retry`, `_miss`: how much `mm::stats`' counters of the same
//!   names grew during the window (0 for `floor` and `linux`).
//! - `churn_ops`: map, mprotect, unmap cycles the churn thread completed in the window.
//! - `ipis`: TLB shootdown IPIs sent in the window, one per target CPU; `munmaps`: the munmap and
//!   `MADV_DONTNEED` calls in the window (what shoots down). The report divides the two.
//! - `cpu_ns`: CPU time the workers ran in the window, summed; the report shows it as the share
//!   of `threads * ns` they got ("busy"), which says whether anything else took the CPUs.
//!
//! Meaning of the `BENCH-PHASE` keys, for a fault path profiled phase by phase (usually at
//! `threads=1`): `phase` one step (for example `entry`, `lock_vma`, `alloc`, `zero`, `pte`,
//! `exit`), or `total` for the whole fault, from exception entry to return; `samples` how many
//! faults were timed; `median_cycles`, `p99_cycles` in TSC cycles. The report turns cycles into
//! ns with the header's `tsc_mhz` and gives each phase's share of `total`. Several lines for the
//! same phase (one per repetition) are summarized by their median.
//!
//! Meaning of the `BENCH-FORK` keys, one line per repetition of a fork-cost measurement: a
//! process with `vmas` separate read-write private mappings and `pages` pages written in them
//! (spread evenly, in address order) is forked `forks` times (`dup_mmap` into a new address
//! space, whose teardown is not timed); `ns` the time of all of them together. The report gives
//! `ns / forks` in µs, the median over the repetitions.

use core::fmt;

/// The tag of a measurement line.
pub const TAG_BENCH: &str = "BENCH";
/// The tag of the header line.
pub const TAG_HEADER: &str = "BENCH-HEADER";
/// The tag of a phase-profile line.
pub const TAG_PHASE: &str = "BENCH-PHASE";
/// The tag of a fork-cost line.
pub const TAG_FORK: &str = "BENCH-FORK";

/// The keys of a `BENCH` line, in order. Those after `max_ns` may be left out (they count as 0).
pub const BENCH_KEYS: [&str; 16] = [
    "workload",
    "policy",
    "threads",
    "cpus",
    "rep",
    "faults",
    "ns",
    "faults_per_sec",
    "p50_ns",
    "p99_ns",
    "max_ns",
    "vma_lock_success",
    "vma_lock_abort",
    "vma_lock_retry",
    "vma_lock_miss",
    "churn_ops",
];
/// How many of [`BENCH_KEYS`] every line must have.
pub const BENCH_REQUIRED: usize = 11;
/// The optional keys of a `BENCH` line that this crate understands.
pub const BENCH_OPTIONAL: [&str; 3] = ["ipis", "munmaps", "cpu_ns"];
/// The keys of a `BENCH-HEADER` line, in order.
pub const HEADER_KEYS: [&str; 5] = ["cpu_model", "tsc_mhz", "accel", "cpus", "mem_mib"];
/// The optional keys of a `BENCH-HEADER` line that this crate understands.
pub const HEADER_OPTIONAL: [&str; 1] = ["host_cores"];
/// The keys of a `BENCH-PHASE` line, in order.
pub const PHASE_KEYS: [&str; 7] = [
    "workload",
    "policy",
    "threads",
    "phase",
    "samples",
    "median_cycles",
    "p99_cycles",
];

/// The keys of a `BENCH-FORK` line, in order.
pub const FORK_KEYS: [&str; 5] = ["vmas", "pages", "rep", "forks", "ns"];

/// How the measured system ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Accel {
    Tcg,
    Kvm,
    /// QEMU, with an accelerator the guest could not tell.
    Qemu,
    Linux,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "TCG",
            Accel::Kvm => "KVM",
            Accel::Qemu => "qemu",
            Accel::Linux => "linux",
        }
    }

    fn parse(s: &str) -> Option<Accel> {
        match s {
            "TCG" | "tcg" => Some(Accel::Tcg),
            "KVM" | "kvm" => Some(Accel::Kvm),
            "qemu" => Some(Accel::Qemu),
            "linux" => Some(Accel::Linux),
            _ => None,
        }
    }
}

/// How faults were handled. The order is the report's row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// Per-VMA locks, `mmap_lock` as the fallback.
    Vma,
    /// Every fault under `mmap_lock`.
    Mmap,
    /// The minimal fault handler.
    Floor,
    /// The kernel's faults, taken by the benchmark program running on it in ring 3.
    User,
    /// The host's Linux.
    Linux,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Vma,
        Policy::Mmap,
        Policy::Floor,
        Policy::User,
        Policy::Linux,
    ];

    /// What measured it, as the report and plots name it.
    pub fn system(self) -> &'static str {
        match self {
            Policy::Vma | Policy::Mmap | Policy::Floor => "mmkernel, kernel threads",
            Policy::User => "mmkernel, user program",
            Policy::Linux => "Linux",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Vma => "vma",
            Policy::Mmap => "mmap",
            Policy::Floor => "floor",
            Policy::User => "user",
            Policy::Linux => "linux",
        }
    }

    fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `BENCH-HEADER` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub cpu_model: String,
    pub tsc_mhz: u64,
    pub accel: Accel,
    pub cpus: u64,
    pub mem_mib: u64,
    pub host_cores: Option<u64>,
    /// Keys this crate does not know, in line order.
    pub extra: Vec<(String, String)>,
}

/// A `BENCH` line: one measured repetition.
///
/// # Invariants
/// `threads >= 1`, `ns >= 1`, `p50_ns <= p99_ns <= max_ns`, and `faults_per_sec` agrees with
/// `faults` and `ns` to within 1%.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub workload: String,
    pub policy: Policy,
    pub threads: u64,
    pub cpus: u64,
    pub rep: u64,
    pub faults: u64,
    pub ns: u64,
    pub faults_per_sec: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub vma_lock_success: u64,
    pub vma_lock_abort: u64,
    pub vma_lock_retry: u64,
    pub vma_lock_miss: u64,
    pub churn_ops: u64,
    pub ipis: Option<u64>,
    pub munmaps: Option<u64>,
    pub cpu_ns: Option<u64>,
    /// Keys this crate does not know, in line order.
    pub extra: Vec<(String, String)>,
}

/// A `BENCH-PHASE` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub workload: String,
    pub policy: Policy,
    pub threads: u64,
    pub phase: String,
    pub samples: u64,
    pub median_cycles: u64,
    pub p99_cycles: u64,
    /// Keys this crate does not know, in line order.
    pub extra: Vec<(String, String)>,
}

/// A `BENCH-FORK` line: one repetition of a fork-cost measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct ForkCost {
    pub vmas: u64,
    pub pages: u64,
    pub rep: u64,
    pub forks: u64,
    pub ns: u64,
    /// Keys this crate does not know, in line order.
    pub extra: Vec<(String, String)>,
}

impl ForkCost {
    /// Microseconds per fork.
    pub fn us_per_fork(&self) -> f64 {
        self.ns as f64 / self.forks as f64 / 1000.0
    }
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Header(Header),
    Measurement(Measurement),
    Phase(Phase),
    Fork(ForkCost),
}

/// Why a line that looks like a record is not one.
#[derive(Clone, Debug, PartialEq)]
pub enum LineError {
    /// The first word starts with `BENCH` but is none of the tags.
    UnknownTag(String),
    /// A word without `=`, or with an empty or badly spelled key.
    BadWord(String),
    /// A quoted value that does not end.
    UnterminatedQuote,
    /// `\` followed by something other than `"` or `\` inside quotes.
    BadEscape(char),
    /// A required key is missing where it should stand (`found` is the key there instead).
    MissingKey {
        expected: &'static str,
        found: Option<String>,
    },
    /// A key given twice, or a fixed key out of its place.
    DuplicateKey(String),
    /// A value that is not what its key takes.
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    /// `threads=0`, `ns=0` or `forks=0`.
    Zero(&'static str),
    /// Latency percentiles out of order.
    LatencyOrder { p50: u64, p99: u64, max: u64 },
    /// `faults_per_sec` does not agree with `faults` and `ns`.
    RateMismatch { stated: f64, computed: f64 },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::UnknownTag(t) => write!(
                f,
                "unknown tag `{t}` (the tags are {TAG_BENCH}, {TAG_HEADER}, {TAG_PHASE}, {TAG_FORK})"
            ),
            LineError::BadWord(w) => write!(f, "`{w}` is not a key=value word"),
            LineError::UnterminatedQuote => f.write_str("a quoted value does not end"),
            LineError::BadEscape(c) => write!(f, "`\\{c}` in a quoted value (only \\\" and \\\\)"),
            LineError::MissingKey {
                expected,
                found: Some(k),
            } => write!(
                f,
                "expected key `{expected}` here, found `{k}` (keys come in the documented order)"
            ),
            LineError::MissingKey {
                expected,
                found: None,
            } => write!(f, "missing key `{expected}`"),
            LineError::DuplicateKey(k) => write!(f, "key `{k}` given twice or out of its place"),
            LineError::BadValue {
                key,
                value,
                expected,
            } => write!(f, "`{key}={value}`: expected {expected}"),
            LineError::Zero(k) => write!(f, "`{k}` must not be 0"),
            LineError::LatencyOrder { p50, p99, max } => write!(
                f,
                "latencies out of order: p50_ns={p50} p99_ns={p99} max_ns={max} (need p50 <= p99 <= max)"
            ),
            LineError::RateMismatch { stated, computed } => write!(
                f,
                "faults_per_sec={stated} but faults*1e9/ns = {computed:.1} (more than 1% apart)"
            ),
        }
    }
}

impl std::error::Error for LineError {}

/// Parses one line. `Ok(None)`: the line is not a record (any other log output).
pub fn parse_line(line: &str) -> Result<Option<Record>, LineError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let body = match line.strip_prefix('[') {
        // A log prefix `[...] ` before the tag.
        Some(rest) => match rest.find("] ") {
            Some(end) => &rest[end + 2..],
            None => return Ok(None),
        },
        None => line,
    };
    let body = body.trim_start();
    let (tag, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    if !tag.starts_with(TAG_BENCH) {
        return Ok(None);
    }
    let parse = match tag {
        TAG_BENCH => |f: &mut Fields| parse_measurement(f).map(Record::Measurement),
        TAG_HEADER => |f: &mut Fields| parse_header(f).map(Record::Header),
        TAG_PHASE => |f: &mut Fields| parse_phase(f).map(Record::Phase),
        TAG_FORK => |f: &mut Fields| parse_fork(f).map(Record::Fork),
        _ => return Err(LineError::UnknownTag(tag.into())),
    };
    parse(&mut Fields::new(split_words(rest)?)).map(Some)
}

fn parse_header(f: &mut Fields) -> Result<Header, LineError> {
    let cpu_model = f.required("cpu_model")?.to_owned();
    let tsc_mhz = f.number("tsc_mhz")?;
    let accel_s = f.required("accel")?;
    let accel = Accel::parse(accel_s).ok_or_else(|| LineError::BadValue {
        key: "accel",
        value: accel_s.into(),
        expected: "TCG, KVM, qemu or linux",
    })?;
    let cpus = f.number("cpus")?;
    let mem_mib = f.number("mem_mib")?;
    let mut extra = f.rest(&HEADER_KEYS)?;
    let host_cores = take_number(&mut extra, "host_cores")?;
    Ok(Header {
        cpu_model,
        tsc_mhz,
        accel,
        cpus,
        mem_mib,
        host_cores,
        extra,
    })
}

fn parse_measurement(f: &mut Fields) -> Result<Measurement, LineError> {
    let workload = f.ident("workload")?;
    let policy = f.policy()?;
    let threads = f.nonzero("threads")?;
    let cpus = f.number("cpus")?;
    let rep = f.number("rep")?;
    let faults = f.number("faults")?;
    let ns = f.nonzero("ns")?;
    let rate_s = f.required("faults_per_sec")?;
    let faults_per_sec = rate_s
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0 && !rate_s.starts_with(['+', '-']))
        .ok_or_else(|| LineError::BadValue {
            key: "faults_per_sec",
            value: rate_s.into(),
            expected: "a decimal number",
        })?;
    let p50_ns = f.number("p50_ns")?;
    let p99_ns = f.number("p99_ns")?;
    let max_ns = f.number("max_ns")?;
    let vma_lock_success = f.optional_number("vma_lock_success")?;
    let vma_lock_abort = f.optional_number("vma_lock_abort")?;
    let vma_lock_retry = f.optional_number("vma_lock_retry")?;
    let vma_lock_miss = f.optional_number("vma_lock_miss")?;
    let churn_ops = f.optional_number("churn_ops")?;
    let mut extra = f.rest(&BENCH_KEYS)?;
    let ipis = take_number(&mut extra, "ipis")?;
    let munmaps = take_number(&mut extra, "munmaps")?;
    let cpu_ns = take_number(&mut extra, "cpu_ns")?;

    if !(p50_ns <= p99_ns && p99_ns <= max_ns) {
        return Err(LineError::LatencyOrder {
            p50: p50_ns,
            p99: p99_ns,
            max: max_ns,
        });
    }
    let computed = faults as f64 * 1e9 / ns as f64;
    if (faults_per_sec - computed).abs() > 0.01 * computed.max(faults_per_sec) + 1.0 {
        return Err(LineError::RateMismatch {
            stated: faults_per_sec,
            computed,
        });
    }
    // INVARIANT: threads and ns are non-zero (`nonzero`), the latencies and the rate checked.
    Ok(Measurement {
        workload,
        policy,
        threads,
        cpus,
        rep,
        faults,
        ns,
        faults_per_sec,
        p50_ns,
        p99_ns,
        max_ns,
        vma_lock_success,
        vma_lock_abort,
        vma_lock_retry,
        vma_lock_miss,
        churn_ops,
        ipis,
        munmaps,
        cpu_ns,
        extra,
    })
}

fn parse_phase(f: &mut Fields) -> Result<Phase, LineError> {
    let workload = f.ident("workload")?;
    let policy = f.policy()?;
    let threads = f.nonzero("threads")?;
    let phase = f.ident("phase")?;
    let samples = f.number("samples")?;
    let median_cycles = f.number("median_cycles")?;
    let p99_cycles = f.number("p99_cycles")?;
    let extra = f.rest(&PHASE_KEYS)?;
    Ok(Phase {
        workload,
        policy,
        threads,
        phase,
        samples,
        median_cycles,
        p99_cycles,
        extra,
    })
}

fn parse_fork(f: &mut Fields) -> Result<ForkCost, LineError> {
    let vmas = f.number("vmas")?;
    let pages = f.number("pages")?;
    let rep = f.number("rep")?;
    let forks = f.nonzero("forks")?;
    let ns = f.nonzero("ns")?;
    let extra = f.rest(&FORK_KEYS)?;
    Ok(ForkCost {
        vmas,
        pages,
        rep,
        forks,
        ns,
        extra,
    })
}

/// Splits `key=value key="quoted value" ...` into pairs.
fn split_words(s: &str) -> Result<Vec<(String, String)>, LineError> {
    let first_word = |s: &str| s.split(char::is_whitespace).next().unwrap_or(s).to_owned();
    let mut words = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let (key, after) = match rest.split_once('=') {
            Some((k, a)) if is_ident(k) => (k, a),
            _ => return Err(LineError::BadWord(first_word(rest))),
        };
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (value, len) = unquote(quoted)?;
                let after = &quoted[len..];
                if !after.is_empty() && !after.starts_with(char::is_whitespace) {
                    return Err(LineError::BadWord(first_word(rest)));
                }
                (value, after)
            }
            None => {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                if after[..end].contains('"') {
                    return Err(LineError::BadWord(first_word(rest)));
                }
                (after[..end].to_owned(), &after[end..])
            }
        };
        words.push((key.to_owned(), value));
        rest = after.trim_start();
    }
    Ok(words)
}

/// The value of a quoted string whose opening `"` is gone, and the bytes it took with the
/// closing `"`.
fn unquote(s: &str) -> Result<(String, usize), LineError> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, i + 1)),
            '\\' => match chars.next() {
                Some((_, c @ ('"' | '\\'))) => value.push(c),
                Some((_, c)) => return Err(LineError::BadEscape(c)),
                None => return Err(LineError::UnterminatedQuote),
            },
            c => value.push(c),
        }
    }
    Err(LineError::UnterminatedQuote)
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn parse_u64(key: &'static str, value: &str) -> Result<u64, LineError> {
    // `u64::from_str` takes a leading `+`; the format does not.
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| LineError::BadValue {
            key,
            value: value.into(),
            expected: "an unsigned integer",
        })
}

/// Removes an optional known key from the free keys and parses it.
fn take_number(
    extra: &mut Vec<(String, String)>,
    key: &'static str,
) -> Result<Option<u64>, LineError> {
    match extra.iter().position(|(k, _)| k == key) {
        Some(i) => {
            let (_, v) = extra.remove(i);
            parse_u64(key, &v).map(Some)
        }
        None => Ok(None),
    }
}

/// The words of one line, consumed in order.
struct Fields {
    words: Vec<(String, String)>,
    next: usize,
}

impl Fields {
    fn new(words: Vec<(String, String)>) -> Fields {
        Fields { words, next: 0 }
    }

    fn peek_key(&self) -> Option<&str> {
        self.words.get(self.next).map(|(k, _)| k.as_str())
    }

    fn required(&mut self, key: &'static str) -> Result<&str, LineError> {
        match self.peek_key() {
            Some(k) if k == key => {
                self.next += 1;
                Ok(&self.words[self.next - 1].1)
            }
            found => Err(LineError::MissingKey {
                expected: key,
                found: found.map(str::to_owned),
            }),
        }
    }

    fn number(&mut self, key: &'static str) -> Result<u64, LineError> {
        let v = self.required(key)?;
        parse_u64(key, v)
    }

    fn nonzero(&mut self, key: &'static str) -> Result<u64, LineError> {
        match self.number(key)? {
            0 => Err(LineError::Zero(key)),
            n => Ok(n),
        }
    }

    fn optional_number(&mut self, key: &'static str) -> Result<u64, LineError> {
        if self.peek_key() == Some(key) {
            self.number(key)
        } else {
            Ok(0)
        }
    }

    fn ident(&mut self, key: &'static str) -> Result<String, LineError> {
        let v = self.required(key)?;
        if is_ident(v) {
            Ok(v.to_owned())
        } else {
            Err(LineError::BadValue {
                key,
                value: v.into(),
                expected: "a name of [a-z0-9_]",
            })
        }
    }

    fn policy(&mut self) -> Result<Policy, LineError> {
        let v = self.required("policy")?;
        Policy::parse(v).ok_or_else(|| LineError::BadValue {
            key: "policy",
            value: v.into(),
            expected: "vma, mmap, floor, user or linux",
        })
    }

    /// The words after the fixed keys: none may repeat a fixed key or another word.
    fn rest(&mut self, fixed: &[&str]) -> Result<Vec<(String, String)>, LineError> {
        let rest = self.words.split_off(self.next);
        for (i, (k, _)) in rest.iter().enumerate() {
            if fixed.contains(&k.as_str()) || rest[..i].iter().any(|(p, _)| p == k) {
                return Err(LineError::DuplicateKey(k.clone()));
            }
        }
        Ok(rest)
    }
}

#[cfg(test)]
mod tests;
