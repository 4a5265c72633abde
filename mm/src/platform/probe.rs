//! [`Probe`]: a test [`Platform`] that forwards to [`Emulated`] but renumbers its CPUs (to give
//! the sparse ids a machine has when some CPUs fail to start) and lets a test watch shootdowns
//! (to check what is still allocated at the moment one happens).

extern crate std;

use std::boxed::Box;
use std::sync::Mutex;
use std::vec::Vec;

use core::sync::atomic::AtomicU32;

use super::emulated::Emulated;
use super::{CpuMask, PhysAddr, PhysFrame, Platform, VirtAddr};

/// Runs at the start of every shootdown, with the target set.
pub(crate) type ShootdownHook = Box<dyn Fn(CpuMask) + Send + Sync>;

/// [`Emulated`] with emulated CPU `n` reported as CPU `ids[n]`.
///
/// # Invariants
/// `ids` has one distinct entry per emulated CPU, each below [`MAX_CPUS`](super::MAX_CPUS).
pub(crate) struct Probe {
    inner: Emulated,
    ids: Vec<usize>,
    on_shootdown: Mutex<Option<ShootdownHook>>,
}

impl Probe {
    /// `mib` MiB of RAM and one emulated CPU per entry of `ids`, reported under that id.
    pub(crate) fn new(mib: usize, ids: &[usize]) -> Self {
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert!(sorted.len() == ids.len(), "CPU ids must be distinct");
        assert!(ids.iter().all(|&id| id < super::MAX_CPUS));
        // INVARIANT: checked above.
        Probe {
            inner: Emulated::new(mib, ids.len()),
            ids: ids.to_vec(),
            on_shootdown: Mutex::new(None),
        }
    }

    /// The emulated machine underneath (bind threads with its emulated CPU numbers).
    pub(crate) fn emulated(&self) -> &Emulated {
        &self.inner
    }

    /// Calls `hook` at the start of every later shootdown.
    pub(crate) fn on_shootdown(&self, hook: ShootdownHook) {
        *self.on_shootdown.lock().unwrap() = Some(hook);
    }
}

impl crate::platform::mmu::HasTlb for Probe {
    fn emulated(&self) -> &Emulated {
        &self.inner
    }
}

// SAFETY: everything but the CPU numbering and the hook is `Emulated`'s, which keeps the
// promises; 3. `cpu_id` maps the emulated CPU (below `ids.len()`) to a distinct id below
// `nr_cpu_ids`, the bound computed from the same `ids`, and stays put as the emulated one does.
unsafe impl Platform for Probe {
    fn cpu_id(&self) -> usize {
        self.ids[self.inner.cpu_id()]
    }

    fn nr_cpu_ids(&self) -> usize {
        self.ids.iter().max().map_or(1, |&id| id + 1)
    }

    fn phys_to_ptr(&self, frame: PhysAddr) -> *mut u8 {
        self.inner.phys_to_ptr(frame)
    }

    fn frame_range(&self) -> (u64, u64) {
        self.inner.frame_range()
    }

    fn alloc_frame(&self) -> Option<PhysFrame> {
        self.inner.alloc_frame()
    }

    fn free_frame(&self, frame: PhysFrame) {
        self.inner.free_frame(frame)
    }

    fn flush_tlb_local(&self, start: VirtAddr, pages: usize) {
        self.inner.flush_tlb_local(start, pages)
    }

    fn shootdown(&self, cpus: CpuMask, start: VirtAddr, pages: usize) {
        if let Some(hook) = &*self.on_shootdown.lock().unwrap() {
            hook(cpus);
        }
        // The machine underneath numbers its CPUs densely.
        let mut dense = CpuMask::empty();
        for (n, &id) in self.ids.iter().enumerate() {
            if cpus.contains(id) {
                dense.insert(n);
            }
        }
        self.inner.shootdown(dense, start, pages)
    }

    fn preempt_disable(&self) {
        self.inner.preempt_disable()
    }

    fn preempt_enable(&self) {
        self.inner.preempt_enable()
    }

    fn wait(&self, word: &AtomicU32, expected: u32) {
        self.inner.wait(word, expected)
    }

    fn wake(&self, word: &AtomicU32, count: usize) {
        self.inner.wake(word, count)
    }

    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }

    fn relax(&self) {
        self.inner.relax()
    }
}
