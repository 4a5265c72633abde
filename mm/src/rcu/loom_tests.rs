//! Loom models of grace-period detection: a writer unpublishes an object, waits for a grace period
//! and poisons it, while readers on other CPUs use what they loaded. Loom explores the
//! interleavings and weak-memory outcomes and fails on a poisoned read or on an access to the cell
//! that is not ordered after the reader's (its `UnsafeCell` tracks causality). The same with the
//! poisoning deferred through `call_rcu`, grace periods advanced by a "tick" on another CPU and
//! the callback run by the callback thread; and the callback thread's sleep and wake-up, where a
//! lost wake-up leaves the thread waiting forever and fails the model.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p mm --release --lib loom`

extern crate std;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::AtomicU32;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::Rcu;
use crate::platform::{CpuMask, PhysAddr, PhysFrame, Platform, VirtAddr};

const POISON: u64 = 0xdead;

loom::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// Loom threads as CPUs: only what RCU uses is provided. Waiting on a word is a futex as the
/// kernel has it: the word is checked and the waiter queued under one lock, which the waker
/// takes too (so a wake-up also orders the waker's work before the woken thread's).
struct LoomCpus {
    cpus: usize,
    futex: loom::sync::Mutex<()>,
    woken: loom::sync::Condvar,
}

impl LoomCpus {
    fn new(cpus: usize) -> Self {
        LoomCpus {
            cpus,
            futex: loom::sync::Mutex::new(()),
            woken: loom::sync::Condvar::new(),
        }
    }
}

// SAFETY: 3. `cpu_id` is the thread's own binding, set once before it runs RCU code; the
// memory and TLB methods are never called by RCU and panic.
unsafe impl Platform for LoomCpus {
    fn cpu_id(&self) -> usize {
        CPU.with(|c| c.get())
    }
    fn nr_cpu_ids(&self) -> usize {
        self.cpus
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
    fn wait(&self, word: &AtomicU32, expected: u32) {
        // A wake-up that never comes leaves every thread blocked: loom reports the deadlock.
        let queued = self.futex.lock().unwrap();
        if word.load(core::sync::atomic::Ordering::SeqCst) == expected {
            drop(self.woken.wait(queued).unwrap());
        }
    }
    fn wake(&self, _: &AtomicU32, _: usize) {
        let _queued = self.futex.lock().unwrap();
        self.woken.notify_all();
    }
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
    shared_with(Rcu::new(Arc::new(LoomCpus::new(cpus))))
}

// Loom runs the model's threads one at a time and its spawn does not ask for `Send`.
#[allow(clippy::arc_with_non_send_sync)]
fn shared_with(rcu: Rcu<LoomCpus>) -> Arc<Shared> {
    Arc::new(Shared {
        rcu,
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

/// A handle on the model's state that a callback (which must be `Send`) can own.
struct Model(Arc<Shared>);

// SAFETY: loom runs the model's threads one at a time, and checks every access to the cells
// (the only non-`Sync` part) for causality itself.
unsafe impl Send for Model {}

/// `call_rcu` on CPU 0 poisons the old object after a grace period; a "tick" on CPU 2 advances
/// grace periods and the callback thread on CPU 3 runs what is due. Whichever thread starts
/// the grace period, sees it end and runs the callback, the poisoning is ordered after the
/// reader's use of the object.
#[test]
fn loom_callbacks_run_by_the_callback_thread_after_the_tick() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    // Waiting for a grace period spins, yielding at every round.
    b.max_branches = 20_000;
    b.check(|| {
        let s = shared(4);
        let stop = Arc::new(AtomicBool::new(false));
        let r = s.clone();
        let reader_t = loom::thread::spawn(move || reader(&r, 1, 1));
        let t = s.clone();
        let tick = loom::thread::spawn(move || {
            CPU.with(|c| c.set(2));
            t.rcu.advance();
        });
        let (c, stop2) = (s.clone(), stop.clone());
        let callback_thread = loom::thread::spawn(move || {
            CPU.with(|cpu| cpu.set(3));
            c.rcu.callback_thread(|| stop2.load(Ordering::Acquire));
        });
        CPU.with(|c| c.set(0));
        s.slot.store(1, Ordering::Release);
        let w = Model(s.clone());
        s.rcu.call_rcu(Box::new(move || {
            let w = w;
            w.0.objs[0].with_mut(|v| {
                // SAFETY: loom's cell fails the model if a reader's access is not ordered
                // before this.
                unsafe { *v = POISON }
            });
        }));
        reader_t.join().unwrap();
        tick.join().unwrap();
        stop.store(true, Ordering::Release);
        s.rcu.wake_callback_thread();
        callback_thread.join().unwrap();
        // Whatever the callback thread left runs here (and drops the callback's `Arc`).
        s.rcu.barrier();
    });
}

/// The callback thread goes to sleep while `call_rcu` queues past the expedite mark on another
/// CPU: either it sees the work before sleeping or `call_rcu` sees it sleeping and wakes it.
#[test]
fn loom_call_rcu_wakes_the_callback_thread() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.max_branches = 20_000;
    b.check(|| {
        let s = shared_with(Rcu::with_backlog_limits(
            Arc::new(LoomCpus::new(2)),
            0,
            usize::MAX,
        ));
        let ran = Arc::new(AtomicBool::new(false));
        let c = s.clone();
        let callback_thread = loom::thread::spawn(move || {
            CPU.with(|cpu| cpu.set(1));
            c.rcu.wait_for_callback_work(&|| false);
            c.rcu.run_callbacks()
        });
        CPU.with(|c| c.set(0));
        let r = ran.clone();
        s.rcu
            .call_rcu(Box::new(move || r.store(true, Ordering::Release)));
        assert_eq!(callback_thread.join().unwrap(), 1);
        assert!(ran.load(Ordering::Acquire));
    });
}
