//! Per-CPU event counters.
//!
//! Each CPU owns a cache-line-aligned block of counters, indexed by CPU id (sized by
//! `Platform::nr_cpu_ids`, so sparse ids get their own blocks), and is the only writer of it, so
//! counting on the fault fast path writes no shared cache line. Readers sum over all CPUs; a sum taken
//! while CPUs are counting is a consistent-enough snapshot for statistics, not an exact one.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// A counted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Event {
    /// A fault was handled entirely under a per-VMA read lock.
    VmaLockSuccess,
    /// `lock_vma_under_rcu` failed (no VMA, VMA write-locked, address moved): fell back.
    VmaLockAbort,
    /// A fault under the VMA lock could not finish and was retried under `mmap_lock`.
    VmaLockRetry,
    /// The VMA found by the lockless walk was detached meanwhile; the walk was redone.
    VmaLockMiss,
    /// Calls to `handle_mm_fault`.
    Fault,
    /// Faults handled under `mmap_lock` for read.
    MmapLockFallback,
    /// Faults that ended in `Segv`.
    Segv,
    /// Faults that ended in `Oom`.
    Oom,
    /// `do_anonymous_page` mapped a fresh zeroed frame.
    AnonFrameMapped,
    /// `do_anonymous_page` mapped the shared zero frame.
    ZeroFrameMapped,
    /// `do_wp_page` copied into a new frame.
    WpCopy,
    /// `do_wp_page` made the existing frame writable (sole owner).
    WpReuse,
    /// A fault found its page already mapped by a racing CPU and freed its own frame.
    FaultRaceLost,
    /// An upper-level or PTE table was installed.
    PgtableAlloc,
    /// A racing CPU installed the same table first; ours was freed.
    PgtableInstallRaceLost,
    /// An empty PTE table was freed (after an RCU grace period).
    PgtableFree,
    /// `madvise(MADV_DONTNEED)` ran under the per-VMA read lock (range within one VMA).
    MadvDontneedVmaLock,
    /// `madvise(MADV_DONTNEED)` ran under `mmap_lock` for read (several VMAs, holes, or the
    /// VMA lock was not available).
    MadvDontneedMmapLock,
}

const EVENTS: usize = Event::MadvDontneedMmapLock as usize + 1;

impl Event {
    /// Every event, in declaration order.
    pub const ALL: [Event; EVENTS] = [
        Event::VmaLockSuccess,
        Event::VmaLockAbort,
        Event::VmaLockRetry,
        Event::VmaLockMiss,
        Event::Fault,
        Event::MmapLockFallback,
        Event::Segv,
        Event::Oom,
        Event::AnonFrameMapped,
        Event::ZeroFrameMapped,
        Event::WpCopy,
        Event::WpReuse,
        Event::FaultRaceLost,
        Event::PgtableAlloc,
        Event::PgtableInstallRaceLost,
        Event::PgtableFree,
        Event::MadvDontneedVmaLock,
        Event::MadvDontneedMmapLock,
    ];

    /// The Linux-style name (`VMA_LOCK_SUCCESS`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Event::VmaLockSuccess => "VMA_LOCK_SUCCESS",
            Event::VmaLockAbort => "VMA_LOCK_ABORT",
            Event::VmaLockRetry => "VMA_LOCK_RETRY",
            Event::VmaLockMiss => "VMA_LOCK_MISS",
            Event::Fault => "FAULT",
            Event::MmapLockFallback => "MMAP_LOCK_FALLBACK",
            Event::Segv => "SEGV",
            Event::Oom => "OOM",
            Event::AnonFrameMapped => "ANON_FRAME_MAPPED",
            Event::ZeroFrameMapped => "ZERO_FRAME_MAPPED",
            Event::WpCopy => "WP_COPY",
            Event::WpReuse => "WP_REUSE",
            Event::FaultRaceLost => "FAULT_RACE_LOST",
            Event::PgtableAlloc => "PGTABLE_ALLOC",
            Event::PgtableInstallRaceLost => "PGTABLE_INSTALL_RACE_LOST",
            Event::PgtableFree => "PGTABLE_FREE",
            Event::MadvDontneedVmaLock => "MADV_DONTNEED_VMA_LOCK",
            Event::MadvDontneedMmapLock => "MADV_DONTNEED_MMAP_LOCK",
        }
    }
}

/// One CPU's counters, alone on their cache lines.
#[repr(align(64))]
struct CpuCounters([AtomicU64; EVENTS]);

/// Event counters, one block per CPU.
pub struct Stats {
    cpus: Box<[CpuCounters]>,
}

impl Stats {
    /// Counters for CPU ids `0..nr_cpu_ids` (`Platform::nr_cpu_ids`), all zero.
    pub fn new(nr_cpu_ids: usize) -> Self {
        let cpus = (0..nr_cpu_ids.max(1))
            .map(|_| CpuCounters(core::array::from_fn(|_| AtomicU64::new(0))))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Stats { cpus }
    }

    /// Counts `event` on `cpu`'s block (`cpu` below the `nr_cpu_ids` the counters were made
    /// for: each CPU writes only its own block).
    pub fn count(&self, cpu: usize, event: Event) {
        let block = &self.cpus[cpu];
        // Relaxed: nobody orders anything against a statistic. The block is this CPU's own, so
        // the RMW does not bounce a line between CPUs.
        block.0[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of CPU `cpu` alone.
    pub fn cpu(&self, cpu: usize) -> StatsSnapshot {
        let block = &self.cpus[cpu];
        StatsSnapshot(core::array::from_fn(|i| block.0[i].load(Ordering::Relaxed)))
    }

    /// The sum over all CPUs of each event.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut sums = [0u64; EVENTS];
        for cpu in self.cpus.iter() {
            for (sum, c) in sums.iter_mut().zip(cpu.0.iter()) {
                *sum += c.load(Ordering::Relaxed);
            }
        }
        StatsSnapshot(sums)
    }
}

/// Summed counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsSnapshot([u64; EVENTS]);

impl StatsSnapshot {
    /// The count of `event`.
    pub fn get(&self, event: Event) -> u64 {
        self.0[event as usize]
    }

    /// Events counted since `earlier`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot(core::array::from_fn(|i| {
            self.0[i].wrapping_sub(earlier.0[i])
        }))
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in Event::ALL {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={}", e.name(), self.get(e))?;
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_cpu_and_summed() {
        assert_eq!(core::mem::align_of::<CpuCounters>(), 64);
        let s = Stats::new(2);
        s.count(0, Event::Fault);
        s.count(1, Event::Fault);
        s.count(1, Event::VmaLockMiss);
        let snap = s.snapshot();
        assert_eq!(snap.get(Event::Fault), 2);
        assert_eq!(snap.get(Event::VmaLockMiss), 1);
        assert_eq!(snap.since(&snap).get(Event::Fault), 0);
        assert!(std::format!("{snap}").contains("VMA_LOCK_MISS=1"));
    }
}
