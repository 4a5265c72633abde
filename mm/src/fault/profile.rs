//! The fault-phase profile: where a fault's cycles go.
//!
//! The fault path calls [`stamp`] at the boundaries of its phases. With the `fault-profile`
//! feature, a stamp stores [`Platform::cycles`] into the running CPU's slot if profiling is
//! switched on for that CPU (`enable`); without the feature `stamp` is empty and the fault path
//! pays nothing. A slot is one cache line written only by its own CPU (and by whoever reads it
//! back on that same CPU), so profiling adds no shared write either.
//!
//! The caller that times an access (a benchmark worker pinned to its CPU) reads the counter
//! before the access, makes it, reads the counter again, and collects the stamps with `take`;
//! `Stamps::phases` turns the five values into phase lengths. Aggregating them (samples,
//! medians) is the caller's business: `mm` keeps no buffers.
//!
//! ```text
//! stamp     taken when                                          phase ending there
//! Entry     the kernel's #PF hook starts (stamped by the kernel) entry   (exception delivery)
//! Walk      the lockless walk found the VMA, or the fault       walk    (RCU + maple walk)
//!           falls back to mmap_lock
//! Lock      the VMA read lock is held, or mmap_lock + lookup    vma_lock
//! Pgtable   the page-table levels exist and the PTE is empty    pgtable (walk/alloc, PTE check)
//! Frame     a zeroed frame is allocated                         frame   (alloc + zero)
//! Pte       the PTE is set and its lock dropped                 pte     (PTE lock + set)
//! (after)   the access completed                                exit    (return, iret, retry)
//! ```
//! A stamp that a path skips (the floor probe has no VMA lock) makes its phase zero.

use crate::platform::Platform;

/// A phase boundary of the fault path (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stamp {
    /// The kernel's #PF hook starts: ends exception delivery.
    Entry,
    /// The lockless walk found the VMA, or the fault falls back to `mmap_lock`.
    Walk,
    /// The VMA read lock is held, or `mmap_lock` and the lookup.
    Lock,
    /// The page-table levels exist and the PTE was found empty.
    Pgtable,
    /// A zeroed frame is allocated.
    Frame,
    /// The PTE is set and its lock dropped.
    Pte,
}

/// Records the cycle counter for `s` on this CPU if profiling is on for it. Without the
/// `fault-profile` feature this is empty.
#[inline(always)]
pub fn stamp<P: Platform + ?Sized>(platform: &P, s: Stamp) {
    #[cfg(any(test, feature = "fault-profile"))]
    imp::stamp(platform, s);
    #[cfg(not(any(test, feature = "fault-profile")))]
    let _ = (platform, s);
}

#[cfg(any(test, feature = "fault-profile"))]
pub use imp::{PHASES, Stamps, enable, take};

#[cfg(any(test, feature = "fault-profile"))]
mod imp {
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::Stamp;
    use crate::platform::{MAX_CPUS, Platform};

    const STAMPS: usize = Stamp::Pte as usize + 1;
    const ENABLED: usize = STAMPS;

    /// The phases [`Stamps::phases`] reports, in order: one per stamp, then `exit` (from the
    /// last stamp to the end of the access) and `total` (the whole access).
    pub const PHASES: [&str; 8] = [
        "entry", "walk", "vma_lock", "pgtable", "frame", "pte", "exit", "total",
    ];

    /// One CPU's stamps and its on/off word, alone on a cache line.
    #[repr(align(64))]
    struct Slot([AtomicU64; 8]);

    static SLOTS: [Slot; MAX_CPUS] = [const { Slot([const { AtomicU64::new(0) }; 8]) }; MAX_CPUS];

    fn slot(cpu: usize) -> Option<&'static Slot> {
        SLOTS.get(cpu)
    }

    pub(super) fn stamp<P: Platform + ?Sized>(platform: &P, s: Stamp) {
        // The CPU may change under a preemptible fault; a stamp then lands in another CPU's
        // slot, and the reader drops the sample as incomplete or out of order.
        if let Some(slot) = slot(platform.cpu_id())
            && slot.0[ENABLED].load(Ordering::Relaxed) != 0
        {
            slot.0[s as usize].store(platform.cycles(), Ordering::Relaxed);
        }
    }

    /// Switches stamping on or off for `cpu` (and clears its stamps).
    pub fn enable(cpu: usize, on: bool) {
        if let Some(slot) = slot(cpu) {
            for w in &slot.0[..STAMPS] {
                w.store(0, Ordering::Relaxed);
            }
            slot.0[ENABLED].store(on as u64, Ordering::Relaxed);
        }
    }

    /// The stamps `cpu` recorded since the last `take`, and clears them. Call on `cpu` itself
    /// (the stamps of a fault taken on this CPU are then ordered before this read).
    pub fn take(cpu: usize) -> Stamps {
        let mut out = [0; STAMPS];
        if let Some(slot) = slot(cpu) {
            for (o, w) in out.iter_mut().zip(&slot.0[..STAMPS]) {
                *o = w.swap(0, Ordering::Relaxed);
            }
        }
        Stamps(out)
    }

    /// The cycle counts one fault recorded (0: not stamped).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Stamps(pub [u64; STAMPS]);

    impl Stamps {
        /// The length of each of [`PHASES`] for an access that began at cycle `start` and
        /// ended at `end`, or `None` if the fault did not reach the entry and the PTE, or the
        /// stamps are out of order (the thread moved to another CPU meanwhile). A skipped
        /// intermediate stamp makes its phase zero.
        pub fn phases(&self, start: u64, end: u64) -> Option<[u64; PHASES.len()]> {
            let s = self.0;
            if s[Stamp::Entry as usize] == 0 || s[Stamp::Pte as usize] == 0 {
                return None;
            }
            let mut out = [0; PHASES.len()];
            let mut prev = start;
            for (i, &t) in s.iter().enumerate() {
                let t = if t == 0 { prev } else { t };
                out[i] = t.checked_sub(prev)?;
                prev = t;
            }
            out[STAMPS] = end.checked_sub(prev)?;
            out[STAMPS + 1] = end.checked_sub(start)?;
            Some(out)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
    use crate::testutil::{Env, PAGE, PIC_BASE, fixed};
    use crate::vma::Prot;

    /// Other tests run concurrently on emulated CPUs with low numbers; this one profiles the
    /// highest, which nothing else enables.
    const CPU: usize = crate::platform::MAX_CPUS - 1;

    #[test]
    fn a_profiled_write_fault_stamps_every_phase_in_order() {
        let env = Env::new(4, crate::platform::MAX_CPUS);
        env.p.bind_cpu(CPU);
        let mm = env.mm();
        mm.mmap(PIC_BASE, 2 * PAGE, Prot::READ | Prot::WRITE, fixed())
            .unwrap();
        let write = Access::user(AccessKind::Write);

        // Off: nothing is recorded.
        enable(CPU, false);
        assert_eq!(handle_mm_fault(&mm, PIC_BASE, write), FaultResult::Resolved);
        assert_eq!(take(CPU).0, [0; 6]);

        enable(CPU, true);
        let start = env.p.cycles();
        stamp(&*env.p, Stamp::Entry);
        assert_eq!(
            handle_mm_fault(&mm, PIC_BASE + PAGE, write),
            FaultResult::Resolved
        );
        let end = env.p.cycles();
        let stamps = take(CPU);
        enable(CPU, false);
        assert!(
            stamps.0.iter().all(|&t| t != 0),
            "a first write under the VMA lock passes every stamp: {stamps:?}"
        );
        let phases = stamps.phases(start, end).expect("stamps in order");
        assert_eq!(phases[7], end - start);
        assert_eq!(phases[..7].iter().sum::<u64>(), end - start);
        assert_eq!(take(CPU).0, [0; 6], "take clears");
        drop(mm);
        env.assert_baseline();
    }

    #[test]
    fn incomplete_or_disordered_stamps_give_no_sample() {
        let s = Stamps([10, 0, 0, 0, 0, 0]);
        assert_eq!(s.phases(5, 20), None, "no PTE stamp");
        let s = Stamps([10, 0, 0, 14, 16, 18]);
        assert_eq!(s.phases(5, 20), Some([5, 0, 0, 4, 2, 2, 2, 15]));
        let s = Stamps([10, 12, 11, 14, 16, 18]);
        assert_eq!(s.phases(5, 20), None, "out of order");
        let s = Stamps([10, 12, 13, 14, 16, 18]);
        assert_eq!(s.phases(5, 17), None, "ends before the last stamp");
    }
}
