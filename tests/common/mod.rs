//! Helpers shared by the test kernels (each uses a part of them).

#![allow(dead_code)]

use kernel::arch::apic::now_ns;
use kernel::memory::FRAMES;
use kernel::platform::memory;

/// Free frames once every exited thread is gone (a CPU releases the last thread it ran at its
/// next switch) and its stack unmapped, and `mm`'s deferred frees and per-CPU caches are flushed.
/// Kernel page tables made meanwhile (for new stack slots) stay for good: they count as free.
pub fn free_frames() -> u64 {
    let resident = kernel::sched::resident_threads();
    let deadline = now_ns() + 10_000_000_000;
    while kernel::sched::live_threads() > resident {
        assert!(now_ns() < deadline, "exited threads are never released");
        kernel::sched::sleep_ns(5_000_000);
    }
    kernel::memory::stack::reap();
    memory().quiesce();
    FRAMES.stats().1 + kernel::memory::kernel_table_frames()
}

/// Heap bytes in use.
pub fn heap_used() -> usize {
    kernel::memory::heap::usage().0
}
