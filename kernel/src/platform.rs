//! `mm`'s view of this machine: [`KernelPlatform`] implements `mm::platform::Platform` on the
//! real hardware (frames from the boot memory map, the physical-memory mapping, `invlpg` and
//! shootdown IPIs, the per-CPU preemption count, futex-style wait queues, the TSC clock), and
//! [`memory`] is the machine-wide `mm` state (frame allocator with per-CPU caches, event
//! counters, fault policy, and the RCU domain, advanced by the scheduler's tick and drained by
//! the `rcuc` callback thread).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, Ordering};

use mm::memory::Memory;
use mm::platform::{CpuMask, PhysAddr, PhysFrame, Platform, SpinlockPreemption, VirtAddr};
use mm::rcu::Rcu;

use crate::arch::{apic, percpu, tlb};
use crate::memory::{FRAMES, phys_to_virt};

pub use crate::memory::{KernelPlatform, Mm};

// SAFETY: 1. all physical memory is mapped at the bootloader's offset for the kernel's lifetime;
// 2. `FRAMES` hands out each frame once until freed, and never the heap, the kernel image or
// page tables it does not own; 3. `cpu_id` reads the per-CPU area, which a thread cannot leave
// while `preempt_disable` holds, and is below `nr_cpu_ids` (every running CPU is online, and the
// set is fixed before mm is set up); 4. `tlb::shootdown` returns after every target acknowledged.
unsafe impl Platform for KernelPlatform {
    fn cpu_id(&self) -> usize {
        percpu::cpu_id()
    }

    /// CPU numbers are indexes into the firmware's CPU list, and a CPU that failed to start keeps
    /// its number, so the bound is the highest online number + 1, not the online count. No CPU
    /// comes online after `smp::start_all`, which runs before `init_memory`.
    fn nr_cpu_ids(&self) -> usize {
        percpu::PERCPU
            .iter()
            .rposition(|c| c.online.load(Ordering::Acquire))
            .map_or(1, |id| id + 1)
    }

    fn phys_to_ptr(&self, frame: PhysAddr) -> *mut u8 {
        phys_to_virt(frame).as_mut_ptr()
    }

    fn frame_range(&self) -> (u64, u64) {
        FRAMES.frame_range()
    }

    fn alloc_frame(&self) -> Option<PhysFrame> {
        FRAMES.alloc()
    }

    fn free_frame(&self, frame: PhysFrame) {
        // SAFETY: `mm` gives back only frames it got from `alloc_frame` and no longer uses.
        unsafe { FRAMES.free(frame) }
    }

    fn flush_tlb_local(&self, start: VirtAddr, pages: usize) {
        tlb::flush_local(start, pages as u64);
    }

    fn shootdown(&self, cpus: CpuMask, start: VirtAddr, pages: usize) {
        tlb::shootdown(cpus.0, start, pages as u64);
    }

    #[track_caller]
    /// The per-CPU preemption count, through hooks that record the lock's callers (a plain
    /// `fn()` cannot carry `#[track_caller]`).
    fn spinlock_preemption() -> Option<&'static SpinlockPreemption> {
        static PREEMPTION: SpinlockPreemption = SpinlockPreemption {
            disable: percpu::preempt_disable_hook,
            enable: percpu::preempt_enable_hook,
        };
        Some(&PREEMPTION)
    }

    fn preempt_disable(&self) {
        percpu::preempt_disable();
    }

    fn preempt_enable(&self) {
        percpu::preempt_enable();
    }

    #[track_caller]
    fn wait(&self, word: &AtomicU32, expected: u32) {
        crate::sched::futex_wait(word, expected);
    }

    fn wake(&self, word: &AtomicU32, count: usize) {
        crate::sched::futex_wake(word, count);
    }

    fn now_ns(&self) -> u64 {
        apic::now_ns()
    }

    fn cycles(&self) -> u64 {
        apic::rdtsc()
    }
}

static MEMORY: spin::Once<Arc<Memory<KernelPlatform>>> = spin::Once::new();

/// Creates the machine-wide `mm` state (once every CPU is online: it keeps state per CPU), has
/// the scheduler advance its RCU domain from the timer tick and at context switch, and starts
/// the thread that runs RCU callbacks.
///
/// RCU callbacks free page tables, tree nodes and VMAs through the frame caches and the heap:
/// they run in that thread (interrupts on, preemptible), never in interrupt context or with
/// interrupts off. The tick only notices finished grace periods and wakes the thread; a busy CPU
/// that never switches threads still gets preempted for it.
pub(crate) fn init_memory() {
    MEMORY.call_once(|| Memory::new(Arc::new(KernelPlatform)).expect("a frame for the zero page"));
    crate::sched::set_rcu_hook(|| {
        if let Some(mem) = MEMORY.get() {
            mem.rcu().advance();
        }
    });
    // Runs for the kernel's lifetime (`callback_thread` returns only when told to stop).
    crate::sched::spawn_daemon("rcuc", || {
        rcu().callback_thread(|| false);
        0
    })
    .expect("a stack for the RCU callback thread");
}

/// The machine-wide `mm` state.
pub fn memory() -> &'static Arc<Memory<KernelPlatform>> {
    MEMORY.get().expect("kernel::init sets up mm")
}

/// The kernel's RCU domain.
pub fn rcu() -> &'static Arc<Rcu<KernelPlatform>> {
    memory().rcu()
}

/// Free frames once the machine has settled: every exited thread released (a CPU releases the
/// last thread it ran at its next switch) and its stack unmapped, `mm`'s deferred frees run and
/// its per-CPU caches flushed. Kernel page tables made meanwhile (for new stack slots) stay for
/// good, so they count as free. Two calls with nothing alive in between give equal counts: the
/// exact accounting the tests and the program runner check. Blocks (up to 10 s, then panics).
pub fn settled_free_frames() -> u64 {
    settled_free_frames_beside(0)
}

/// [`settled_free_frames`] with `others` threads still alive (say a user process blocked in a
/// sleep): waits until every thread but those and the resident ones is released. The frames
/// those threads hold count as used.
pub fn settled_free_frames_beside(others: usize) -> u64 {
    let resident = crate::sched::resident_threads() + others;
    let deadline = crate::arch::apic::now_ns() + 10_000_000_000;
    while crate::sched::live_threads() > resident {
        assert!(
            crate::arch::apic::now_ns() < deadline,
            "exited threads are never released"
        );
        crate::sched::sleep_ns(5_000_000);
    }
    crate::memory::stack::reap();
    memory().quiesce();
    FRAMES.stats().1 + crate::memory::kernel_table_frames()
}
