//! The workloads' threads: what each worker does in its loop, and where its memory lies.
//!
//! Every region lives in its own slot of the user half, aligned to [`SLOT`] (1 GiB) and mapped
//! with `MAP_FIXED_NOREPLACE` there, so no page table below the PDPT level is shared between
//! two workers' regions (Linux aligns large anonymous mappings to 2 MiB as well). The floor probe
//! relies on it: its lockless PTE install is safe only if nobody else can unhook the table.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use mm::fault::profile;
use mm::ops::{MADV_DONTNEED, MadviseError, MapFlags, MmapError, MprotectError, MunmapError};
use mm::vma::Prot;

use super::record::{Histogram, PhaseSamples};
use crate::arch::apic::rdtsc;
use crate::platform::Mm;

pub const PAGE: u64 = 4096;
/// The alignment and spacing of regions.
pub const SLOT: u64 = 1 << 30;
/// Slot 0: far above anything else the process maps, far below the top of the user half.
pub const SLOT_BASE: u64 = 0x100_0000_0000;
/// The churn thread's region: small, and in a slot of its own.
pub const CHURN_PAGES: u64 = 16;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const FIXED: MapFlags = MapFlags::PRIVATE
    .union(MapFlags::ANONYMOUS)
    .union(MapFlags::FIXED_NOREPLACE);

/// A workload, named after what it mirrors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// will-it-scale `page_fault1` (threads): mmap, touch every page, munmap, in a loop.
    PageFault1,
    /// mmtests `pft` (threads): touch every page of one's piece of a shared region, then
    /// `madvise(MADV_DONTNEED)` it, in a loop.
    Pft,
    /// `pft` plus a thread that maps, mprotects and unmaps an unrelated small region.
    Churn,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::PageFault1, Workload::Pft, Workload::Churn];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PageFault1 => "page_fault1",
            Workload::Pft => "pft",
            Workload::Churn => "churn",
        }
    }
}

/// How faults are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The per-VMA lock fast path, `mmap_lock` as its fallback.
    Vma,
    /// Every fault under `mmap_lock`.
    Mmap,
    /// The floor probe: take a frame, zero it, set the PTE.
    Floor,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Vma, Policy::Mmap, Policy::Floor];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Vma => "vma",
            Policy::Mmap => "mmap",
            Policy::Floor => "floor",
        }
    }
}

/// Where a measurement is: workers record latencies only while it is `MEASURE`.
pub struct Control(AtomicU8);

impl Control {
    const WARMUP: u8 = 0;
    const MEASURE: u8 = 1;
    const STOP: u8 = 2;

    pub fn new() -> Self {
        Control(AtomicU8::new(Self::WARMUP))
    }

    pub fn measure(&self) {
        self.0.store(Self::MEASURE, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.0.store(Self::STOP, Ordering::Relaxed);
    }

    fn measuring(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::MEASURE
    }

    fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::STOP
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker's running counts, on a line of their own and written only by the worker (the
/// harness reads them at the window's ends).
#[repr(align(64))]
#[derive(Default)]
pub struct Counters {
    /// Faulting touches.
    pub faults: AtomicU64,
    /// munmap or MADV_DONTNEED calls (what shoots down); for the churn thread, its cycles.
    pub ops: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// What a worker hands back when it stops.
pub struct Recorded {
    pub latency: Histogram,
    /// Present when the fault path is profiled.
    pub phases: Option<PhaseSamples>,
}

/// Why a worker stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerError {
    Mmap(MmapError),
    Munmap(MunmapError),
    Mprotect(MprotectError),
    Madvise(MadviseError),
}

/// What one worker thread works with.
pub struct Worker {
    pub mm: Arc<Mm>,
    pub ctl: Arc<Control>,
    pub counters: Arc<Counters>,
    /// The CPU it is pinned to (its profile slot).
    pub cpu: usize,
    pub rec: Recorded,
}

impl Worker {
    /// Writes one byte to the (unpopulated) page at `addr`, timing the fault it takes.
    fn touch(&mut self, addr: u64) {
        let profiling = self.rec.phases.is_some();
        if profiling {
            // Drop stamps of anything else this CPU did (an madvise walks the tree too).
            profile::take(self.cpu);
        }
        let t0 = rdtsc();
        // SAFETY: `addr` lies in a private anonymous read-write mapping of this thread's address
        // space that only this worker touches; the write faults the page in.
        unsafe { (addr as *mut u8).write_volatile(1) };
        let t1 = rdtsc();
        bump(&self.counters.faults);
        if self.ctl.measuring() {
            self.rec.latency.record(t1.saturating_sub(t0));
            if let Some(samples) = &mut self.rec.phases
                && let Some(p) = profile::take(self.cpu).phases(t0, t1)
            {
                samples.push(p);
            }
        }
    }

    /// Touches every page of `[start, start + len)` until told to stop; whether it finished.
    fn touch_all(&mut self, start: u64, len: u64) -> bool {
        for addr in (start..start + len).step_by(PAGE as usize) {
            if self.ctl.stopped() {
                return false;
            }
            self.touch(addr);
        }
        true
    }

    /// `page_fault1`: { mmap `len` bytes at `base`, write a byte per page, munmap } until
    /// stopped.
    pub fn page_fault1(&mut self, base: u64, len: u64) -> Result<(), WorkerError> {
        while !self.ctl.stopped() {
            let a = self
                .mm
                .mmap(base, len, RW, FIXED)
                .map_err(WorkerError::Mmap)?;
            self.touch_all(a, len);
            self.mm.munmap(a, len).map_err(WorkerError::Munmap)?;
            bump(&self.counters.ops);
        }
        Ok(())
    }
}

impl Worker {
    /// `pft`: { write a byte per page of `[base, base + len)` (this worker's piece of the shared
    /// region), zap it with `madvise(MADV_DONTNEED)` } until stopped. The zap runs under the
    /// VMA's read lock, so the other workers keep faulting on the same VMA meanwhile.
    pub fn pft(&mut self, base: u64, len: u64) -> Result<(), WorkerError> {
        while !self.ctl.stopped() {
            self.touch_all(base, len);
            self.mm
                .madvise(base, len, MADV_DONTNEED)
                .map_err(WorkerError::Madvise)?;
            bump(&self.counters.ops);
        }
        Ok(())
    }
}

/// The churn thread: { mmap a small region in its slot, mprotect part of it read-only (a VMA
/// split and a merge-back), munmap } until stopped; counts cycles in `counters.ops`.
pub fn churn(mm: &Mm, ctl: &Control, counters: &Counters, base: u64) -> Result<(), WorkerError> {
    let len = CHURN_PAGES * PAGE;
    while !ctl.stopped() {
        let a = mm.mmap(base, len, RW, FIXED).map_err(WorkerError::Mmap)?;
        mm.mprotect(a + 4 * PAGE, 4 * PAGE, Prot::READ)
            .map_err(WorkerError::Mprotect)?;
        mm.munmap(a, len).map_err(WorkerError::Munmap)?;
        bump(&counters.ops);
    }
    Ok(())
}

/// The start of slot `i`.
pub fn slot(i: u64) -> u64 {
    SLOT_BASE + i * SLOT
}
