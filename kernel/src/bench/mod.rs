//! The fault-scaling benchmark (`make bench`, the `bench` binary): kernel threads of one process
//! fault on user-half addresses through the real #PF path, under each fault policy, and every
//! measurement becomes one `BENCH` line on the serial port (the format is the report tool's,
//! `bench/src/format.rs`, repeated in the README).
//!
//! Workloads ([`workload`]): `page_fault1` (will-it-scale page_fault1, threads), `pft` (mmtests
//! pft, threads), `churn` (`pft` plus a thread that maps, mprotects and unmaps). Policies: `vma`
//! (`FaultPolicy::PerVmaLock`), `mmap` (`FaultPolicy::MmapLockOnly`), `floor` (the minimal
//! handler in [`hook`], the yardstick for the others).
//!
//! One measurement: a fresh process; one worker per thread, pinned to CPU `i % cpus`; a warm-up;
//! a measured window, at whose ends the harness reads the workers' counts, `mm`'s per-CPU event
//! counters and the shootdown statistics, while the workers time every faulting touch into
//! histograms of their own; then the workers stop, everything is unmapped, and every frame must
//! be back. Repetitions interleave the policies (vma mmap floor vma mmap floor ...) so that host
//! noise hits all alike. With profiling on, one more window per workload and policy at one
//! thread stamps the fault path's phases (`mm::fault::profile`, `BENCH-PHASE` lines); it is kept
//! apart so that the stamps' own cost never reaches a `BENCH` line.
//!
//! Last, unless turned off, the fork cost ([`fork`]): µs per fork of a process with N VMAs and M
//! written pages, as `BENCH-FORK` lines.

pub mod config;
pub mod fork;
mod hook;
pub mod record;
pub mod workload;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mm::fault::profile::{self, PHASES};
use mm::memory::FaultPolicy;
use mm::shootdown::ShootdownStats;
use mm::stats::{Event, StatsSnapshot};

use crate::arch::apic::{rdtsc, tsc_mhz};
use crate::arch::percpu::online_count;
use crate::arch::tlb;
use crate::memory::FRAMES;
use crate::platform::memory;
use crate::process::Process;
use crate::{error, info, sched, serial_println};
use config::Config;
use record::{Histogram, PhaseSamples, PhaseSummary};
use workload::{
    Control, Counters, PAGE, Policy, Recorded, SLOT, Worker, WorkerError, Workload, slot,
};

/// Runs every measurement `cfg` asks for, printing the header, a progress line before and a
/// `BENCH` line after each; then the profile windows. Returns whether all went well.
pub fn run(cfg: &Config) -> bool {
    header(cfg);
    hook::install();
    let total = cfg.measurements();
    let (mut n, mut failed) = (0, 0);
    // Under TCG the first run of each code path pays for its translation: run every workload
    // and policy once, briefly and unreported, before measuring anything.
    let widest = cfg.threads.iter().copied().max().unwrap_or(1);
    for &w in &cfg.workloads {
        for &policy in &cfg.policies {
            info!(
                "bench: warming up {} policy={} threads={widest} (not reported)",
                w.name(),
                policy.name()
            );
            if let Err(e) = measure(cfg, w, policy, widest, false, cfg.warmup_ms) {
                error!(
                    "bench: warm-up of {} policy={} failed: {e:?}",
                    w.name(),
                    policy.name()
                );
                failed += 1;
            }
        }
    }
    for &w in &cfg.workloads {
        for &threads in &cfg.threads {
            for rep in 0..cfg.reps {
                for &policy in &cfg.policies {
                    n += 1;
                    info!(
                        "bench: [{n}/{total}] {} policy={} threads={threads} rep={rep} ({} left after this)",
                        w.name(),
                        policy.name(),
                        total - n
                    );
                    match measure(cfg, w, policy, threads, false, cfg.window_ms) {
                        Ok(m) => {
                            print_bench(&m, rep);
                            failed += m.check() as usize;
                        }
                        Err(e) => {
                            error!(
                                "bench: {} policy={} threads={threads} rep={rep} failed: {e:?}",
                                w.name(),
                                policy.name()
                            );
                            failed += 1;
                        }
                    }
                }
            }
        }
    }
    if cfg.profile {
        for &w in &cfg.workloads {
            for &policy in &cfg.policies {
                info!(
                    "bench: profiling {} policy={} threads=1",
                    w.name(),
                    policy.name()
                );
                match measure(cfg, w, policy, 1, true, cfg.window_ms) {
                    Ok(m) => {
                        print_phases(&m);
                        failed += m.check() as usize;
                    }
                    Err(e) => {
                        error!(
                            "bench: profiling {} policy={} failed: {e:?}",
                            w.name(),
                            policy.name()
                        );
                        failed += 1;
                    }
                }
            }
        }
    }
    hook::uninstall();
    if cfg.fork {
        n += fork::VMAS.len() * fork::PAGES.len();
        failed += fork::run(cfg.reps);
    }
    info!("bench: {n} measurements, {failed} failed");
    failed == 0
}

/// Why a measurement could not be made.
#[derive(Debug)]
pub enum BenchError {
    /// The workers' memory would not fit (frames needed, frames free).
    NotEnoughMemory {
        needed: u64,
        free: u64,
    },
    /// Exited threads were not released in time.
    ThreadsLinger,
    Process(mm::frame::FrameAllocError),
    Spawn(crate::memory::stack::StackError),
    Setup(WorkerError),
    /// A worker stopped with an error, or was ended by a fault (exit code).
    Worker(WorkerError),
    WorkerKilled(i64),
    /// Mapping a fork-cost process's regions failed.
    Mmap(mm::ops::MmapError),
    /// A fork-cost `dup_mmap` failed.
    Fork(mm::ops::ForkError),
    /// Free frames before minus after a fork-cost measurement.
    FramesLost(i64),
}

/// One measured window.
struct Measurement {
    workload: Workload,
    policy: Policy,
    threads: usize,
    cpus: usize,
    faults: u64,
    ns: u64,
    latency: Histogram,
    stats: StatsSnapshot,
    tlb: ShootdownStats,
    zaps: u64,
    churn_ops: u64,
    phases: Option<PhaseSamples>,
    /// Free frames before the measurement minus after (0: every frame came back).
    frames_lost: i64,
}

impl Measurement {
    /// Reports a frame-accounting failure; whether there was one.
    fn check(&self) -> bool {
        if self.frames_lost != 0 {
            error!(
                "bench: {} policy={} threads={}: {} frames not back after the measurement",
                self.workload.name(),
                self.policy.name(),
                self.threads,
                self.frames_lost
            );
        }
        self.frames_lost != 0
    }
}

/// What the harness reads at each end of the window.
struct Snapshot {
    tsc: u64,
    faults: u64,
    zaps: u64,
    churn_ops: u64,
    stats: StatsSnapshot,
    tlb: ShootdownStats,
}

fn snapshot(workers: &[Arc<Counters>], churn: Option<&Arc<Counters>>) -> Snapshot {
    Snapshot {
        tsc: rdtsc(),
        faults: workers
            .iter()
            .map(|c| c.faults.load(Ordering::Relaxed))
            .sum(),
        zaps: workers.iter().map(|c| c.ops.load(Ordering::Relaxed)).sum(),
        churn_ops: churn.map_or(0, |c| c.ops.load(Ordering::Relaxed)),
        stats: memory().stats().snapshot(),
        tlb: tlb::stats(),
    }
}

type ResultSlot = Arc<spin::Mutex<Option<Result<Recorded, WorkerError>>>>;

/// One measurement of `w` under `policy` with `threads` workers and a window of `window_ms`.
fn measure(
    cfg: &Config,
    w: Workload,
    policy: Policy,
    threads: usize,
    profiling: bool,
    window_ms: u64,
) -> Result<Measurement, BenchError> {
    let cpus = online_count();
    let baseline = free_frames()?;
    let per_thread = if w == Workload::PageFault1 {
        cfg.region_mib << 20
    } else {
        cfg.piece_mib << 20
    };
    let needed = threads as u64 * (per_thread / PAGE) * 513 / 512;
    if needed * 5 / 4 > baseline {
        return Err(BenchError::NotEnoughMemory {
            needed,
            free: baseline,
        });
    }
    let process = Process::new("bench").map_err(BenchError::Process)?;
    let mm = process.mm().clone();
    let shared_len = threads as u64 * per_thread;
    // page_fault1: worker i maps slot i. pft, churn: one region from slot 0, the workers'
    // pieces one after the other; the churn thread in the next free slot.
    let (region_of, worker_span, churn_base) = match w {
        Workload::PageFault1 => (
            (0..threads as u64).map(slot).collect::<Vec<_>>(),
            slot(0)..slot(threads as u64),
            None,
        ),
        Workload::Pft | Workload::Churn => {
            let flags = mm::ops::MapFlags::PRIVATE
                | mm::ops::MapFlags::ANONYMOUS
                | mm::ops::MapFlags::FIXED_NOREPLACE;
            mm.mmap(
                slot(0),
                shared_len,
                mm::vma::Prot::READ | mm::vma::Prot::WRITE,
                flags,
            )
            .map_err(|e| BenchError::Setup(WorkerError::Mmap(e)))?;
            (
                (0..threads as u64)
                    .map(|i| slot(0) + i * per_thread)
                    .collect(),
                slot(0)..slot(0) + shared_len,
                (w == Workload::Churn).then(|| slot(shared_len.div_ceil(SLOT))),
            )
        }
    };

    memory().set_fault_policy(if policy == Policy::Mmap {
        FaultPolicy::MmapLockOnly
    } else {
        FaultPolicy::PerVmaLock
    });
    if policy == Policy::Floor {
        // The workers' memory is `worker_span`: whole page-table blocks per worker (1 GiB slots,
        // pieces of 2 MiB multiples); `pft` zaps with DONTNEED, which never unhooks a table.
        // SAFETY: a worker's range is unmapped only by that worker between its own faults, or by
        // this thread after every worker stopped: no unhook races a floor fault.
        unsafe { hook::set_floor_range(worker_span.clone()) };
    }
    let ctl = Arc::new(Control::new());
    let mut counters = Vec::new();
    let mut slots: Vec<ResultSlot> = Vec::new();
    let mut handles = Vec::new();
    let mut spawn_error = None;
    for (i, &base) in region_of.iter().enumerate() {
        let cpu = i % cpus;
        profile::enable(cpu, profiling);
        let c = Arc::new(Counters::default());
        let result: ResultSlot = Arc::new(spin::Mutex::new(None));
        let mut worker = Worker {
            mm: mm.clone(),
            ctl: ctl.clone(),
            counters: c.clone(),
            cpu,
            rec: Recorded {
                latency: Histogram::new(),
                phases: profiling.then(PhaseSamples::new),
            },
        };
        let out = result.clone();
        let spawned = process.spawn_on(cpu, format!("bench/{i}"), move || {
            let r = match w {
                Workload::PageFault1 => worker.page_fault1(base, per_thread),
                Workload::Pft | Workload::Churn => worker.pft(base, per_thread),
            };
            // The entry runs once; the record moves out, leaving an empty one behind.
            let empty = Recorded {
                latency: Histogram::new(),
                phases: None,
            };
            *out.lock() = Some(r.map(|()| core::mem::replace(&mut worker.rec, empty)));
            0
        });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_error = Some(BenchError::Spawn(e));
                break;
            }
        }
        counters.push(c);
        slots.push(result);
    }
    let mut churn = None;
    if let (Some(base), None) = (churn_base, &spawn_error) {
        let c = Arc::new(Counters::default());
        let result: ResultSlot = Arc::new(spin::Mutex::new(None));
        let (m, ctl, cc, out) = (mm.clone(), ctl.clone(), c.clone(), result.clone());
        let spawned = process.spawn_on(cpus - 1, "bench/churn", move || {
            let r = workload::churn(&m, &ctl, &cc, base);
            *out.lock() = Some(r.map(|()| Recorded {
                latency: Histogram::new(),
                phases: None,
            }));
            0
        });
        match spawned {
            Ok(h) => {
                handles.push(h);
                slots.push(result);
                churn = Some(c);
            }
            Err(e) => spawn_error = Some(BenchError::Spawn(e)),
        }
    }

    let (mut s0, mut s1) = (None, None);
    if spawn_error.is_none() {
        sched::sleep_ns(cfg.warmup_ms * 1_000_000);
        ctl.measure();
        s0 = Some(snapshot(&counters, churn.as_ref()));
        sched::sleep_ns(window_ms * 1_000_000);
        s1 = Some(snapshot(&counters, churn.as_ref()));
    }
    ctl.stop();
    let codes: Vec<i64> = handles.into_iter().map(|h| h.join()).collect();
    let outcomes: Vec<_> = slots.iter().map(|s| s.lock().take()).collect();

    for cpu in 0..threads.min(cpus) {
        profile::enable(cpu, false);
    }
    // SAFETY: an empty floor range promises nothing.
    unsafe { hook::set_floor_range(0..0) };
    memory().set_fault_policy(FaultPolicy::PerVmaLock);
    if w != Workload::PageFault1 {
        // Every worker has stopped: nothing faults in the region any more.
        mm.munmap(slot(0), shared_len)
            .map_err(|e| BenchError::Setup(WorkerError::Munmap(e)))?;
    }
    drop(mm);
    drop(process);
    let frames_lost = baseline as i64 - free_frames()? as i64;

    if let Some(e) = spawn_error {
        return Err(e);
    }
    let mut latency = Histogram::new();
    let mut phases = profiling.then(PhaseSamples::new);
    for (code, outcome) in codes.iter().zip(outcomes) {
        match outcome {
            Some(Ok(rec)) => {
                latency.merge(&rec.latency);
                if let (Some(all), Some(p)) = (&mut phases, &rec.phases) {
                    all.append(p);
                }
            }
            Some(Err(e)) => return Err(BenchError::Worker(e)),
            None => return Err(BenchError::WorkerKilled(*code)),
        }
    }
    let (Some(s0), Some(s1)) = (s0, s1) else {
        return Err(BenchError::ThreadsLinger);
    };
    Ok(Measurement {
        workload: w,
        policy,
        threads,
        cpus,
        faults: s1.faults - s0.faults,
        ns: (s1.tsc - s0.tsc) * 1000 / tsc_mhz().max(1),
        latency,
        stats: s1.stats.since(&s0.stats),
        tlb: s1.tlb.since(&s0.tlb),
        zaps: s1.zaps - s0.zaps,
        churn_ops: s1.churn_ops - s0.churn_ops,
        phases,
        frames_lost,
    })
}

/// Free frames once every exited thread is gone and its stack unmapped, and `mm`'s deferred
/// frees and per-CPU caches are flushed (kernel page tables made meanwhile count as free).
fn free_frames() -> Result<u64, BenchError> {
    let resident = sched::resident_threads();
    let deadline = crate::arch::apic::now_ns() + 10_000_000_000;
    while sched::live_threads() > resident {
        if crate::arch::apic::now_ns() > deadline {
            return Err(BenchError::ThreadsLinger);
        }
        sched::sleep_ns(5_000_000);
    }
    crate::memory::stack::reap();
    memory().quiesce();
    Ok(FRAMES.stats().1 + crate::memory::kernel_table_frames())
}

fn cycles_to_ns(c: u64) -> u64 {
    c * 1000 / tsc_mhz().max(1)
}

fn print_bench(m: &Measurement, rep: usize) {
    // Tenths of a fault per second, in integers.
    let tenths = (m.faults as u128 * 10_000_000_000 / m.ns.max(1) as u128) as u64;
    serial_println!(
        "BENCH workload={} policy={} threads={} cpus={} rep={rep} faults={} ns={} faults_per_sec={}.{} p50_ns={} p99_ns={} max_ns={} vma_lock_success={} vma_lock_abort={} vma_lock_retry={} vma_lock_miss={} churn_ops={} shootdowns={} ipis={} munmaps={}",
        m.workload.name(),
        m.policy.name(),
        m.threads,
        m.cpus,
        m.faults,
        m.ns,
        tenths / 10,
        tenths % 10,
        cycles_to_ns(m.latency.quantile(500)),
        cycles_to_ns(m.latency.quantile(990)),
        cycles_to_ns(m.latency.max()),
        m.stats.get(Event::VmaLockSuccess),
        m.stats.get(Event::VmaLockAbort),
        m.stats.get(Event::VmaLockRetry),
        m.stats.get(Event::VmaLockMiss),
        m.churn_ops,
        m.tlb.shootdowns,
        m.tlb.ipis,
        m.zaps,
    );
}

fn print_phases(m: &Measurement) {
    let Some(samples) = &m.phases else { return };
    let summary: [PhaseSummary; PHASES.len()] = samples.summary();
    for (name, s) in PHASES.iter().zip(summary) {
        serial_println!(
            "BENCH-PHASE workload={} policy={} threads={} phase={name} samples={} median_cycles={} p99_cycles={}",
            m.workload.name(),
            m.policy.name(),
            m.threads,
            s.samples,
            s.median,
            s.p99
        );
    }
}

/// The `BENCH-HEADER` line: what the numbers were measured on.
fn header(cfg: &Config) {
    let accel = detect_accel()
        .map(String::from)
        .or_else(|| cfg.accel.clone())
        .unwrap_or_else(|| {
            error!("bench: cannot tell TCG from KVM (build with BENCH_ACCEL); assuming TCG");
            String::from("TCG")
        });
    let host = cfg
        .host_cores
        .map(|n| format!(" host_cores={n}"))
        .unwrap_or_default();
    serial_println!(
        "BENCH-HEADER cpu_model=\"{}\" tsc_mhz={} accel={accel} cpus={} mem_mib={}{host} warmup_ms={} window_ms={} reps={} region_mib={} piece_mib={}",
        cpu_model(),
        tsc_mhz(),
        online_count(),
        crate::boot().memory.usable_bytes >> 20,
        cfg.warmup_ms,
        cfg.window_ms,
        cfg.reps,
        cfg.region_mib,
        cfg.piece_mib
    );
}

/// The CPUID brand string, quoted for the header (`"` and `\` escaped).
fn cpu_model() -> String {
    use core::arch::x86_64::__cpuid;
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return String::from("unknown");
    }
    let mut bytes = Vec::with_capacity(48);
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        let r = __cpuid(leaf);
        for reg in [r.eax, r.ebx, r.ecx, r.edx] {
            bytes.extend_from_slice(&reg.to_le_bytes());
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut out = String::new();
    for ch in text
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .chars()
    {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        if !ch.is_control() {
            out.push(ch);
        }
    }
    out
}

/// QEMU's accelerator, from the hypervisor's CPUID signature.
fn detect_accel() -> Option<&'static str> {
    use core::arch::x86_64::__cpuid;
    if __cpuid(1).ecx & (1 << 31) == 0 {
        return None;
    }
    let r = __cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    for (i, reg) in [r.ebx, r.ecx, r.edx].into_iter().enumerate() {
        sig[4 * i..4 * i + 4].copy_from_slice(&reg.to_le_bytes());
    }
    match &sig {
        b"KVMKVMKVM\0\0\0" => Some("KVM"),
        b"TCGTCGTCGTCG" => Some("TCG"),
        _ => None,
    }
}
