//! Read-copy-update: lock-free readers, and reclamation deferred until no reader can still see
//! what was unpublished.
//!
//! # Protocol
//! Each CPU owns one cache-line-padded word, `ctr = (snapshot << NEST_BITS) | nesting`, written
//! only by that CPU with preemption disabled. There is one shared counter, `gp_seq`, the number of
//! the newest grace period started.
//!
//! * **Reader entry** (outermost): `ctr = (gp_seq << NEST_BITS) | 1`, then a full fence, then the
//!   protected loads. Nested entries just bump the nesting. **Exit** stores the decremented word.
//!   Every store of the word is a release (a plain `mov` on x86): whichever value the writer's
//!   acquire load sees, the loads of every section that ended before it are ordered before the
//!   writer's free (loom found the version with relaxed entry stores wrong under the Rust memory
//!   model: a later section's entry word said "passed" without ordering the earlier section's
//!   loads). No shared cache line is written.
//! * **Grace period** `G` (writer): after unpublishing, a full fence, then `G = ++gp_seq`, then for
//!   every CPU read its word until it shows nesting 0 (the CPU is outside any read section, or
//!   left the one it was in: the release/acquire pair orders its loads before our free) or a
//!   snapshot `>= G` (its section began after `G` started, so it reads only the new pointers: the
//!   acquire load of `gp_seq` on entry pairs with the release of `++gp_seq`). The two full fences
//!   (reader after setting nesting, writer before reading it) are the Dekker pair that rules out
//!   "the writer saw nesting 0 and the reader saw the old pointer".
//! * A CPU that is not in a read section thus never holds up a grace period, and one that keeps
//!   entering short sections is seen with a fresh snapshot: only a section that began before `G`
//!   and is still running can delay it. No IPIs and no explicit reports are needed for progress.
//! * **Quiescent states.** The kernel calls [`Rcu::quiescent_state`] at context switch and idle
//!   (host tests between operations): it checks the CPU is outside any read section and is where
//!   deferred callbacks are advanced and run, like Linux's RCU softirq.
//! * **Callbacks** ([`Rcu::call_rcu`]) wait in `next`; a batch moves to `wait` when a grace
//!   period is started for it, and runs once that grace period is seen complete. `call_rcu` never
//!   runs callbacks itself (it may be called under any lock); they run in `quiescent_state`,
//!   [`Rcu::barrier`], and when the domain is dropped.
//!
//! Cost: a reader's outermost entry pays one full fence (`mfence`); removing it would need the
//! writer to force a barrier on other CPUs (IPI or membarrier), which the platform cannot yet do.
//! See `LOCKING.md` for the rules users follow.

mod callbacks;
#[cfg(all(test, loom))]
mod loom_tests;
mod percpu;
#[cfg(all(test, not(loom)))]
mod tests;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;

use crate::platform::Platform;
use crate::primitive::{AtomicU64, Ordering, fence};
use callbacks::CallbackQueue;
pub use callbacks::RcuCallback;
use percpu::{CpuWord, NEST_MASK, seq_ge};

/// One RCU domain: the per-CPU reader state of every CPU of `P` and the deferred callbacks.
///
/// # Invariants
/// `cpus.len() == platform.nr_cpu_ids()` (indexed by CPU id; an id that never runs keeps a
/// never-written word, nesting 0, which every grace period passes); `cpus[c]` is written only by
/// code running on CPU `c` with preemption disabled.
pub struct Rcu<P: Platform> {
    platform: Arc<P>,
    cpus: Box<[CpuWord]>,
    gp_seq: AtomicU64,
    callbacks: CallbackQueue,
}

/// Proof that the current CPU is inside an RCU read section; references obtained under it may be
/// used until it is dropped. Nests; pins the thread to its CPU (preemption is disabled), hence not
/// `Send`.
#[must_use = "the read section ends when the guard is dropped"]
pub struct RcuReadGuard<'a, P: Platform> {
    rcu: &'a Rcu<P>,
    cpu: usize,
    _not_send: PhantomData<*mut ()>,
}

impl<P: Platform> Rcu<P> {
    /// A domain for every CPU of `platform`.
    pub fn new(platform: Arc<P>) -> Self {
        let cpus = (0..platform.nr_cpu_ids())
            .map(|_| CpuWord::new())
            .collect::<Vec<_>>();
        // INVARIANT: one word per possible CPU id, none yet written.
        Rcu {
            platform,
            cpus: cpus.into_boxed_slice(),
            gp_seq: AtomicU64::new(0),
            callbacks: CallbackQueue::new(),
        }
    }

    /// The platform this domain runs on.
    pub fn platform(&self) -> &Arc<P> {
        &self.platform
    }

    /// Enters a read section (nests). Never blocks; writes only this CPU's word.
    pub fn read_lock(&self) -> RcuReadGuard<'_, P> {
        self.platform.preempt_disable();
        let cpu = self.platform.cpu_id();
        let word = &self.cpus[cpu].ctr;
        let c = word.load(Ordering::Relaxed);
        if c & NEST_MASK == 0 {
            // Acquire pairs with the release in `start_gp`: a section that records a snapshot
            // >= G sees everything unpublished before G started.
            let gp = self.gp_seq.load(Ordering::Acquire);
            word.store(percpu::pack(gp, 1), Ordering::Release);
            // The reader half of the Dekker pair: our nesting is visible before any protected
            // load, or the writer's fence comes first and we see its new pointers.
            fence(Ordering::SeqCst);
        } else {
            debug_assert!(
                c & NEST_MASK < NEST_MASK,
                "RCU read sections nested too deep"
            );
            word.store(c + 1, Ordering::Release);
        }
        RcuReadGuard {
            rcu: self,
            cpu,
            _not_send: PhantomData,
        }
    }

    /// Queues `f` to run after a grace period: once every read section that may have seen what
    /// the caller unpublished before this call has ended. Never blocks and never runs callbacks.
    pub fn call_rcu(&self, f: RcuCallback) {
        // Orders the caller's unpublishing stores before whatever grace period will cover `f`,
        // even when another CPU starts it (the queue lock carries the happens-before).
        fence(Ordering::SeqCst);
        self.callbacks.push(f);
        self.callbacks.advance(self, false);
    }

    /// Waits until a full grace period has passed. Must not be called inside a read section.
    pub fn synchronize(&self) {
        debug_assert!(
            !self.in_read_section(),
            "synchronize() inside an RCU read section"
        );
        let gp = self.start_gp();
        self.wait_gp(gp);
    }

    /// Reports that this CPU is outside any read section (context switch, idle, or between
    /// operations of a host thread), and advances and runs deferred callbacks that are due.
    pub fn quiescent_state(&self) {
        debug_assert!(
            !self.in_read_section(),
            "quiescent_state() inside an RCU read section"
        );
        self.callbacks.advance(self, true);
    }

    /// Waits until every callback queued before the call has run (`rcu_barrier`).
    pub fn barrier(&self) {
        debug_assert!(
            !self.in_read_section(),
            "barrier() inside an RCU read section"
        );
        while let Some(batch) = self.callbacks.take_all() {
            self.synchronize();
            callbacks::run(batch);
        }
        // A batch another CPU took off the queue in `quiescent_state` was queued before us too.
        while self.callbacks.running() {
            self.platform.relax();
        }
    }

    /// Callbacks queued and not yet run.
    pub fn pending_callbacks(&self) -> usize {
        self.callbacks.len()
    }

    /// Starts a new grace period and returns its number.
    fn start_gp(&self) -> u64 {
        // The writer half of the Dekker pair (see the module header).
        fence(Ordering::SeqCst);
        // Release: a reader whose entry loads this value (or a later one) sees our unpublishing.
        self.gp_seq.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    /// Whether CPU `cpu` has been outside any read section that began before grace period `gp`.
    fn cpu_passed(&self, cpu: usize, gp: u64) -> bool {
        let c = self.cpus[cpu].ctr.load(Ordering::Acquire);
        c & NEST_MASK == 0 || seq_ge(percpu::snapshot(c), gp)
    }

    /// Whether grace period `gp` is over, looking once at each CPU.
    fn gp_done(&self, gp: u64) -> bool {
        (0..self.cpus.len()).all(|cpu| self.cpu_passed(cpu, gp))
    }

    /// Blocks (busy-waits through [`Platform::relax`]) until grace period `gp` is over.
    fn wait_gp(&self, gp: u64) {
        for cpu in 0..self.cpus.len() {
            while !self.cpu_passed(cpu, gp) {
                self.platform.relax();
            }
        }
    }

    fn in_read_section(&self) -> bool {
        self.platform.preempt_disable();
        let nested = self.cpus[self.platform.cpu_id()]
            .ctr
            .load(Ordering::Relaxed)
            & NEST_MASK
            != 0;
        self.platform.preempt_enable();
        nested
    }
}

impl<P: Platform> Drop for Rcu<P> {
    fn drop(&mut self) {
        // No guard can exist (each borrows `self`), so every queued callback is due.
        while let Some(batch) = self.callbacks.take_all() {
            callbacks::run(batch);
        }
    }
}

impl<P: Platform> RcuReadGuard<'_, P> {
    /// The CPU this read section runs on.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The domain this guard belongs to.
    pub fn rcu(&self) -> &Rcu<P> {
        self.rcu
    }
}

impl<P: Platform> Drop for RcuReadGuard<'_, P> {
    fn drop(&mut self) {
        let word = &self.rcu.cpus[self.cpu].ctr;
        let c = word.load(Ordering::Relaxed);
        debug_assert!(c & NEST_MASK != 0);
        word.store(c - 1, Ordering::Release);
        self.rcu.platform.preempt_enable();
    }
}
