//! A [`Platform`] for host tests: "physical memory" is one page-aligned host buffer of 4 KiB
//! frames (page tables live in it in the real x86-64 entry format), and std threads stand in for
//! CPUs. A thread becomes CPU `n` with [`Emulated::bind_cpu`] or [`Emulated::spawn_cpu`].
//!
//! It checks what a real machine would not: handing out a frame twice or freeing one that is not
//! allocated panics, and it counts frames and shootdowns so tests can assert on them.

extern crate std;

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::{CpuMask, MAX_CPUS, PhysAddr, PhysFrame, Platform, VirtAddr};

const FRAME: usize = 4096;
/// Physical address of the first emulated frame; frame 0 stays invalid, as on real machines.
const BASE: u64 = 0x10_0000;

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Emulated RAM and CPUs.
///
/// # Invariants
/// `ram` points to `frames * 4096` bytes aligned to 4096, owned by this value. `allocated[i]` is
/// true exactly when frame `i` has been handed out by `alloc_frame` and not given back.
pub struct Emulated {
    ram: *mut u8,
    frames: usize,
    cpus: usize,
    pool: Mutex<Pool>,
    parking: Mutex<()>,
    parked: Condvar,
    shootdowns: AtomicU64,
    flushed_pages: AtomicU64,
    fail_allocs_after: AtomicU64,
    start: Instant,
}

struct Pool {
    free: Vec<u32>,
    allocated: Vec<bool>,
}

// SAFETY: `ram` is only reached through `phys_to_ptr`, whose users synchronize among themselves as
// they would on real memory; everything else is atomics or behind mutexes.
unsafe impl Send for Emulated {}
// SAFETY: as for `Send`.
unsafe impl Sync for Emulated {}

impl Emulated {
    /// `mib` MiB of RAM and `cpus` CPUs.
    pub fn new(mib: usize, cpus: usize) -> Self {
        assert!((1..=MAX_CPUS).contains(&cpus), "1..={MAX_CPUS} CPUs");
        let frames = mib * 256;
        assert!(frames > 0);
        let layout = Layout::from_size_align(frames * FRAME, FRAME).expect("RAM layout");
        // SAFETY: the layout has a non-zero size.
        let ram = unsafe { alloc_zeroed(layout) };
        assert!(
            !ram.is_null(),
            "host out of memory for {mib} MiB of emulated RAM"
        );
        // Hand out low frames first, like a fresh allocator would.
        let free = (0..frames as u32).rev().collect();
        Emulated {
            ram,
            frames,
            cpus,
            pool: Mutex::new(Pool {
                free,
                allocated: std::vec![false; frames],
            }),
            parking: Mutex::new(()),
            parked: Condvar::new(),
            shootdowns: AtomicU64::new(0),
            flushed_pages: AtomicU64::new(0),
            fail_allocs_after: AtomicU64::new(u64::MAX),
            start: Instant::now(),
        }
    }

    /// Makes the calling thread CPU `cpu` (for the rest of its life, or until bound again).
    pub fn bind_cpu(&self, cpu: usize) {
        assert!(cpu < self.cpus, "CPU {cpu} of {}", self.cpus);
        CPU.with(|c| c.set(cpu));
    }

    /// Runs `f` on a new thread bound to CPU `cpu`.
    pub fn spawn_cpu<'scope, 'env, F, T>(
        &'env self,
        scope: &'scope thread::Scope<'scope, 'env>,
        cpu: usize,
        f: F,
    ) -> thread::ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        scope.spawn(move || {
            self.bind_cpu(cpu);
            f()
        })
    }

    /// Frames not handed out.
    pub fn free_frames(&self) -> usize {
        self.pool.lock().unwrap().free.len()
    }

    /// All frames of the emulated RAM.
    pub fn total_frames(&self) -> usize {
        self.frames
    }

    /// Shootdowns requested so far, and pages they covered.
    pub fn shootdown_stats(&self) -> (u64, u64) {
        (
            self.shootdowns.load(Ordering::Relaxed),
            self.flushed_pages.load(Ordering::Relaxed),
        )
    }

    /// Makes every `alloc_frame` after the next `n` fail, to test out-of-memory paths;
    /// `u64::MAX` turns that off.
    pub fn fail_allocs_after(&self, n: u64) {
        self.fail_allocs_after.store(n, Ordering::Relaxed);
    }

    fn index(&self, pa: PhysAddr) -> usize {
        let off = pa
            .as_u64()
            .checked_sub(BASE)
            .expect("physical address below emulated RAM");
        let i = (off / FRAME as u64) as usize;
        assert!(
            i < self.frames,
            "physical address {pa:?} above emulated RAM"
        );
        i
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.frames * FRAME, FRAME).expect("RAM layout");
        // SAFETY: `ram` was allocated in `new` with this layout and is freed once, here.
        unsafe { dealloc(self.ram, layout) };
    }
}

// SAFETY: 1. pointers are inside the owned buffer, which lives as long as `self`; 2. the pool's
// `allocated` bitmap rules out handing a frame out twice; 3. `cpu_id` is the thread's binding,
// checked against `cpus`, and a thread never changes CPU by itself; 4. there is no TLB to flush.
unsafe impl Platform for Emulated {
    fn cpu_id(&self) -> usize {
        let cpu = CPU.with(|c| c.get());
        assert!(
            cpu < self.cpus,
            "thread is not bound to an emulated CPU (Emulated::bind_cpu)"
        );
        cpu
    }

    fn nr_cpu_ids(&self) -> usize {
        self.cpus
    }

    fn phys_to_ptr(&self, frame: PhysAddr) -> *mut u8 {
        let i = self.index(frame);
        let off = (frame.as_u64() - BASE) as usize;
        debug_assert!(off / FRAME == i);
        // SAFETY: `off` is inside the buffer (checked by `index`).
        unsafe { self.ram.add(off) }
    }

    fn frame_range(&self) -> (u64, u64) {
        (
            BASE / FRAME as u64,
            BASE / FRAME as u64 + self.frames as u64,
        )
    }

    fn alloc_frame(&self) -> Option<PhysFrame> {
        let budget = self.fail_allocs_after.load(Ordering::Relaxed);
        if budget == 0 {
            return None;
        }
        if budget != u64::MAX {
            self.fail_allocs_after.store(budget - 1, Ordering::Relaxed);
        }
        let mut pool = self.pool.lock().unwrap();
        let i = pool.free.pop()? as usize;
        assert!(!pool.allocated[i], "frame {i} handed out twice");
        pool.allocated[i] = true;
        Some(PhysFrame::containing_address(PhysAddr::new(
            BASE + (i * FRAME) as u64,
        )))
    }

    fn free_frame(&self, frame: PhysFrame) {
        let i = self.index(frame.start_address());
        let mut pool = self.pool.lock().unwrap();
        assert!(
            pool.allocated[i],
            "double free of frame {:#x}",
            frame.start_address().as_u64()
        );
        pool.allocated[i] = false;
        pool.free.push(i as u32);
    }

    fn flush_tlb_local(&self, _start: VirtAddr, _pages: usize) {}

    fn shootdown(&self, _cpus: CpuMask, _start: VirtAddr, pages: usize) {
        self.shootdowns.fetch_add(1, Ordering::Relaxed);
        self.flushed_pages
            .fetch_add(pages as u64, Ordering::Relaxed);
    }

    fn preempt_disable(&self) {}

    fn preempt_enable(&self) {}

    fn wait(&self, word: &AtomicU32, expected: u32) {
        let guard = self.parking.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        // A bounded wait: futex semantics allow spurious returns, and it keeps a lost wake-up
        // (a bug elsewhere) from hanging a test forever.
        let _ = self
            .parked
            .wait_timeout(guard, Duration::from_millis(50))
            .unwrap();
    }

    fn wake(&self, _word: &AtomicU32, _count: usize) {
        let _guard = self.parking.lock().unwrap();
        self.parked.notify_all();
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn relax(&self) {
        // Host threads stand in for CPUs and share few real cores: let the awaited one run.
        thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_double_free_is_caught() {
        let p = Emulated::new(1, 1);
        let before = p.free_frames();
        let f = p.alloc_frame().unwrap();
        let ptr = p.phys_to_ptr(f.start_address());
        // SAFETY: the frame is ours and 4 KiB long.
        unsafe { ptr.write_bytes(0xAB, FRAME) };
        assert_eq!(p.free_frames(), before - 1);
        p.free_frame(f);
        assert_eq!(p.free_frames(), before);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.free_frame(f)));
        assert!(r.is_err());
    }

    #[test]
    fn allocation_failure_can_be_injected() {
        let p = Emulated::new(1, 1);
        p.fail_allocs_after(1);
        assert!(p.alloc_frame().is_some());
        assert!(p.alloc_frame().is_none());
    }
}
