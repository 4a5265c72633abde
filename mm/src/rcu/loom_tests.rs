//! Loom models of grace-period detection: a writer unpublishes an object, waits for a grace period
//! and poisons it, while readers on other CPUs use what they loaded. Loom explores the
//! interleavings and weak-memory outcomes and fails on a poisoned read or on an access to the cell
//! that is not ordered after the reader's (its `UnsafeCell` tracks causality).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p mm --release --lib loom`

extern crate std;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::AtomicU32;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};

use super::Rcu;
use crate::platform::{CpuMask, PhysAddr, PhysFrame, Platform, VirtAddr};

const POISON: u64 = 0xdead;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// Loom threads as CPUs: only what RCU uses is provided.
struct LoomCpus(usize);

// SAFETY: 3. `cpu_id` is the thread's own binding, set once before it runs RCU code; the
// memory and TLB methods are never called by RCU and panic.
unsafe impl Platform for LoomCpus {
    fn cpu_id(&self) -> usize {
        CPU.with(|c| c.get())
    }
    fn nr_cpu_ids(&self) -> usize {
        self.0
    }
    fn phys_to_ptr(&self, _: PhysAddr) -> *mut u8 {
        unreachable!("RCU does not touch memory through the platform")
    }
    fn frame_range(&self) -> (u64, u64) {
        (0, 0)
    }
    fn alloc_frame(&self) -> Option<PhysFrame> {
        None
    }
    fn free_frame(&self, _: PhysFrame) {
        unreachable!("RCU does not free frames")
    }
    fn flush_tlb_local(&self, _: VirtAddr, _: usize) {}
    fn shootdown(&self, _: CpuMask, _: VirtAddr, _: usize) {}
    fn preempt_disable(&self) {}
    fn preempt_enable(&self) {}
    fn wait(&self, _: &AtomicU32, _: u32) {
        loom::thread::yield_now();
    }
    fn wake(&self, _: &AtomicU32, _: usize) {}
    fn now_ns(&self) -> u64 {
        0
    }
    fn relax(&self) {
        loom::thread::yield_now();
    }
}

struct Shared {
    rcu: Rcu<LoomCpus>,
    /// Index of the published object.
    slot: AtomicUsize,
    objs: Vec<UnsafeCell<u64>>,
}

fn shared(cpus: usize) -> Arc<Shared> {
    Arc::new(Shared {
        rcu: Rcu::new(Arc::new(LoomCpus(cpus))),
        slot: AtomicUsize::new(0),
        objs: (0..2).map(|_| UnsafeCell::new(7)).collect(),
    })
}

/// Reads the published object inside one read section (with a nested section around the use).
fn reader(s: &Shared, cpu: usize, sections: usize) {
    CPU.with(|c| c.set(cpu));
    for _ in 0..sections {
        let g = s.rcu.read_lock();
        let i = s.slot.load(Ordering::Acquire);
        let inner = s.rcu.read_lock();
        s.objs[i].with(|v| {
            // SAFETY: loom's cell checks this read against the writer's poisoning.
            assert_ne!(unsafe { *v }, POISON, "reader saw a freed object");
        });
        drop(inner);
        drop(g);
    }
}

fn writer(s: &Shared) {
    CPU.with(|c| c.set(0));
    s.slot.store(1, Ordering::Release);
    s.rcu.synchronize();
    s.objs[0].with_mut(|v| {
        // SAFETY: loom's cell fails the model if a reader's access is not ordered before this.
        unsafe { *v = POISON }
    });
}

#[test]
fn loom_grace_period_two_cpus() {
    loom::model(|| {
        let s = shared(2);
        let r = s.clone();
        let t = loom::thread::spawn(move || reader(&r, 1, 2));
        writer(&s);
        t.join().unwrap();
    });
}

#[test]
fn loom_grace_period_three_cpus() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(|| {
        let s = shared(3);
        let (r1, r2) = (s.clone(), s.clone());
        let t1 = loom::thread::spawn(move || reader(&r1, 1, 1));
        let t2 = loom::thread::spawn(move || reader(&r2, 2, 1));
        writer(&s);
        t1.join().unwrap();
        t2.join().unwrap();
    });
}
