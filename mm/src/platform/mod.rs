//! The one seam between `mm` and the machine.
//!
//! Everything `mm` needs from hardware comes through [`Platform`]: where a physical frame lives in
//! the kernel's address space, raw frames from the boot memory map, TLB maintenance, which CPU is
//! running, preemption (also for `mm`'s spinlocks: [`Platform::spinlock_preemption`]), blocking
//! and waking, and a clock. The kernel implements it on real x86-64; host tests
//! use `emulated::Emulated` (RAM in a host buffer, std threads standing in for CPUs), so the same
//! code runs under `cargo test` and on eight CPUs in QEMU.
//!
//! `mm` code is generic over `P: Platform` and holds a `&'static P` or an `Arc<P>`; the kernel's
//! implementation is a zero-sized type, so the indirection costs nothing there.

#[cfg(any(test, feature = "emulated"))]
pub mod emulated;
#[cfg(all(not(loom), any(test, feature = "emulated")))]
#[deny(unsafe_code)]
pub mod mmu;
#[cfg(all(test, not(loom)))]
pub(crate) mod probe;
#[cfg(all(test, not(loom)))]
#[deny(unsafe_code)]
mod tests;

use core::sync::atomic::AtomicU32;

pub use x86_64::structures::paging::{PageTableFlags, PhysFrame, Size4KiB};
pub use x86_64::{PhysAddr, VirtAddr};

/// The most CPUs `mm` keeps per-CPU state for.
pub const MAX_CPUS: usize = 64;

/// A set of CPUs, one bit each (for shootdowns and "CPUs that ran this address space").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMask(pub u64);

impl CpuMask {
    /// The empty set.
    pub const fn empty() -> Self {
        CpuMask(0)
    }

    /// The first `n` CPUs.
    pub const fn first(n: usize) -> Self {
        if n >= 64 {
            CpuMask(u64::MAX)
        } else {
            CpuMask((1u64 << n) - 1)
        }
    }

    /// Adds `cpu` to the set.
    pub fn insert(&mut self, cpu: usize) {
        self.0 |= 1 << cpu;
    }

    /// Whether `cpu` is in the set.
    pub const fn contains(&self, cpu: usize) -> bool {
        self.0 & (1 << cpu) != 0
    }

    /// Iterates over the CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..64).filter(move |&c| self.contains(c))
    }
}

/// `preempt_disable` and `preempt_enable` as plain functions, for `mm`'s spinlocks (see
/// [`Platform::spinlock_preemption`]). A plain `fn()` cannot carry its caller's location: a
/// platform that records where preemption was disabled must find it another way (the kernel
/// records the return addresses).
#[derive(Debug)]
pub struct SpinlockPreemption {
    /// Disables preemption (nests).
    pub disable: fn(),
    /// Undoes one `disable`; may be a preemption point.
    pub enable: fn(),
}

/// What `mm` needs from the machine.
///
/// # Safety
/// Implementors promise that:
/// 1. [`phys_to_ptr`](Platform::phys_to_ptr) returns a pointer through which the whole 4 KiB frame
///    at that address can be read and written for as long as the platform lives;
/// 2. [`alloc_frame`](Platform::alloc_frame) never hands out a frame that is already handed out
///    (and not yet given back by [`free_frame`](Platform::free_frame)), nor one the kernel uses;
/// 3. [`cpu_id`](Platform::cpu_id) is below [`nr_cpu_ids`](Platform::nr_cpu_ids) and stays the
///    same between [`preempt_disable`](Platform::preempt_disable) and the matching
///    [`preempt_enable`](Platform::preempt_enable); `nr_cpu_ids` is at most [`MAX_CPUS`] and
///    returns the same value for the platform's lifetime;
/// 4. [`shootdown`](Platform::shootdown) returns only after every CPU in the mask has flushed.
pub unsafe trait Platform: Send + Sync + 'static {
    /// The CPU this code runs on, in `0..nr_cpu_ids()`. Stable only while preemption is
    /// disabled.
    fn cpu_id(&self) -> usize;

    /// One more than the highest id [`cpu_id`](Platform::cpu_id) can return (Linux's
    /// `nr_cpu_ids`), at most [`MAX_CPUS`]. Not a count of CPUs: ids may have holes (a CPU that
    /// failed to start keeps its number), so per-CPU arrays are sized by this and indexed by id,
    /// and an id that never runs just leaves its slot untouched.
    fn nr_cpu_ids(&self) -> usize;

    /// Where the 4 KiB frame at `frame` can be accessed.
    fn phys_to_ptr(&self, frame: PhysAddr) -> *mut u8;

    /// The range of physical frame numbers `alloc_frame` can return, `[first, end)`, so that frame
    /// metadata can be a flat array indexed by frame number.
    fn frame_range(&self) -> (u64, u64);

    /// A raw frame from the machine's pool (contents undefined), or `None` when memory is out.
    fn alloc_frame(&self) -> Option<PhysFrame>;

    /// Gives a frame back to the machine's pool.
    fn free_frame(&self, frame: PhysFrame);

    /// Flushes `pages` pages from `start` out of this CPU's TLB.
    fn flush_tlb_local(&self, start: VirtAddr, pages: usize);

    /// Flushes `pages` pages from `start` out of the TLBs of every CPU in `cpus` (including this
    /// one, if it is in the set) and waits until they all have.
    fn shootdown(&self, cpus: CpuMask, start: VirtAddr, pages: usize);

    /// The preemption switch `mm`'s spinlocks use, which have no platform value at hand (a lock
    /// lives in a page-table page's metadata, in a tree, in a frame cache): every lock disables
    /// preemption from before it is taken until after it is released. `None` (the default)
    /// where threads are not preempted behind a lock's back (host tests: each CPU is a thread).
    /// [`Memory::new`](crate::Memory::new) installs it, once per machine: the first machine's
    /// choice holds.
    fn spinlock_preemption() -> Option<&'static SpinlockPreemption>
    where
        Self: Sized,
    {
        None
    }

    /// Keeps the current thread on this CPU until [`preempt_enable`](Platform::preempt_enable).
    /// Nests.
    fn preempt_disable(&self);

    /// Undoes one [`preempt_disable`](Platform::preempt_disable).
    fn preempt_enable(&self);

    /// Blocks the current thread while `*word == expected` (futex semantics: returns at once if
    /// the value differs; may return spuriously).
    fn wait(&self, word: &AtomicU32, expected: u32);

    /// Wakes up to `count` threads blocked in [`wait`](Platform::wait) on `word`.
    fn wake(&self, word: &AtomicU32, count: usize);

    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;

    /// Called in each round of a busy-wait (e.g. waiting for an RCU grace period). A CPU spins;
    /// a platform whose "CPUs" are preemptible host threads yields, so that the thread being
    /// waited for gets to run.
    fn relax(&self) {
        core::hint::spin_loop();
    }

    /// A cheap cycle counter for profiling (the TSC on x86), monotonic on each CPU. Only the
    /// fault-phase profile reads it; platforms without one count nanoseconds.
    fn cycles(&self) -> u64 {
        self.now_ns()
    }
}
