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
//!   "the writer saw nesting 0 and the reader saw the old pointer". Whoever checks whether `G` is
//!   over (maybe another CPU than the one that started it) fences first, too.
//! * A CPU that is not in a read section thus never holds up a grace period, and one that keeps
//!   entering short sections is seen with a fresh snapshot: only a section that began before `G`
//!   and is still running can delay it. No IPIs and no explicit reports are needed for progress.
//!
//! # Callbacks
//! [`Rcu::call_rcu`] queues a callback in `next`; a batch moves to `wait` when a grace period is
//! started for it, and to `done` once that grace period is seen complete. `call_rcu` never runs
//! callbacks and never blocks (it may be called under any lock). Two kinds of context drive them:
//!
//! * **Advancing** ([`Rcu::advance`]): the kernel calls it from the timer tick on every CPU (and
//!   at context switch): it notices a finished grace period and starts the next one, without
//!   blocking, allocating or running anything, and wakes the callback thread when callbacks are
//!   due. Interrupt context never runs callbacks: they free frames through the per-CPU cache
//!   locks and the heap, and may take their time.
//! * **Running**: the callback thread ([`Rcu::callback_thread`], Linux's `rcuc`) sleeps until
//!   callbacks are due (or the backlog is long) and runs them with interrupts on and preemption
//!   enabled. Threads that may block also run them: [`Rcu::quiescent_state`] (host threads
//!   between operations), [`Rcu::barrier`], [`Rcu::throttle`], and dropping the domain.
//!
//! **Backlog bound.** A CPU producing callbacks without pause (one busy thread per CPU, never
//! switching) must not outrun reclamation. Above [`BACKLOG_EXPEDITE`] queued callbacks,
//! `call_rcu` wakes the callback thread, which then waits for one grace period itself and runs
//! the whole queue instead of waiting for the tick; above [`BACKLOG_LIMIT`], [`Rcu::throttle`]
//! (called by `mmap`, `munmap` and `mprotect` once they hold no lock) makes the producer do that
//! work itself. So the queue stays near `BACKLOG_LIMIT` plus what the CPUs add during one pass.
//!
//! Cost: a reader's outermost entry pays one full fence (`mfence`); removing it would need the
//! writer to force a barrier on other CPUs (IPI or membarrier), which the platform cannot yet do.
//! See `LOCKING.md` for the rules users follow.

#[allow(unsafe_code)]
mod callbacks;
// The tests free objects by hand to show that readers never see them freed.
#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests;
mod percpu;
#[cfg(all(test, not(loom)))]
#[allow(unsafe_code)]
mod tests;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::AtomicU32;

use crate::platform::Platform;
use crate::primitive::{AtomicBool, AtomicU64, Ordering, fence};
pub use callbacks::RcuCallback;
use callbacks::{Batch, CallbackQueue};
use percpu::{CpuWord, NEST_MASK, seq_ge};

/// Queued callbacks above which `call_rcu` wakes the callback thread to expedite: wait for a
/// grace period itself and run the whole queue.
pub const BACKLOG_EXPEDITE: usize = 256;

/// Queued callbacks above which [`Rcu::throttle`] makes its caller reclaim them.
pub const BACKLOG_LIMIT: usize = 1024;

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
    /// Bumped to wake the callback thread (the word it waits on through the platform).
    kick: AtomicU32,
    /// The callback thread is (about to be) waiting on `kick`.
    sleeping: AtomicBool,
    expedite_at: usize,
    limit: usize,
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
        Self::with_backlog_limits(platform, BACKLOG_EXPEDITE, BACKLOG_LIMIT)
    }

    /// A domain that expedites above `expedite_at` queued callbacks and throttles above `limit`.
    pub(crate) fn with_backlog_limits(platform: Arc<P>, expedite_at: usize, limit: usize) -> Self {
        let cpus = (0..platform.nr_cpu_ids())
            .map(|_| CpuWord::new())
            .collect::<Vec<_>>();
        // INVARIANT: one word per possible CPU id, none yet written.
        Rcu {
            platform,
            cpus: cpus.into_boxed_slice(),
            gp_seq: AtomicU64::new(0),
            callbacks: CallbackQueue::new(),
            kick: AtomicU32::new(0),
            sleeping: AtomicBool::new(false),
            expedite_at,
            limit,
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
    /// the caller unpublished before this call has ended. Never blocks and never runs callbacks,
    /// so it may be called under any lock; may wake the callback thread.
    pub fn call_rcu(&self, f: RcuCallback) {
        // Orders the caller's unpublishing stores before whatever grace period will cover `f`,
        // even when another CPU starts it (the queue lock carries the happens-before).
        fence(Ordering::SeqCst);
        self.callbacks.push(self, f);
        if self.has_callback_work() {
            self.wake_callback_thread();
        }
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

    /// Advances grace-period processing (Linux's `rcu_sched_clock_irq`): notices that the grace
    /// period of waiting callbacks is over and starts one for newly queued callbacks, and wakes
    /// the callback thread if callbacks are due. Never blocks, allocates or runs callbacks: the
    /// kernel calls it from the timer interrupt on every CPU and at context switch. Callable
    /// from any context, inside a read section or under any lock.
    pub fn advance(&self) {
        self.callbacks.advance(self);
        if self.has_callback_work() {
            self.wake_callback_thread();
        }
    }

    /// Reports that this thread is outside any read section at a point where it may take its
    /// time (no spinlock held, interrupts on): advances and runs the callbacks that are due.
    /// Never blocks. Host test threads call it between operations; the kernel leaves the
    /// running to the callback thread.
    pub fn quiescent_state(&self) {
        debug_assert!(
            !self.in_read_section(),
            "quiescent_state() inside an RCU read section"
        );
        if let Some(batch) = self.callbacks.take_ready(self) {
            self.run_batch(batch);
        }
    }

    /// The body of the callback thread (Linux's `rcuc`): runs due callbacks, then sleeps (through
    /// [`Platform::wait`]) until more are due or the backlog passes `BACKLOG_EXPEDITE`, until
    /// `stop()` says so. Runs callbacks with whatever the thread's context is: it should be a
    /// thread of its own, preemptible, holding no lock. One per domain is enough.
    pub fn callback_thread(&self, stop: impl Fn() -> bool) {
        while !stop() {
            self.run_callbacks();
            self.wait_for_callback_work(&stop);
        }
    }

    /// Wakes the callback thread if it sleeps (and sees work, or `stop()`, when it wakes).
    pub fn wake_callback_thread(&self) {
        // The other half of the Dekker pair in `wait_for_callback_work`: the work this caller
        // queued is visible before we look at `sleeping`, or the thread sees it itself. Only
        // the thread writes `sleeping`, so several wakers may all wake it: harmless.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.kick.fetch_add(1, Ordering::SeqCst);
            self.platform.wake(&self.kick, usize::MAX);
        }
    }

    /// Runs the callbacks that are due, or, with more than `BACKLOG_EXPEDITE` queued, waits for
    /// a grace period and runs them all. Returns how many ran. May block; not inside a read
    /// section or under a spinlock.
    pub fn run_callbacks(&self) -> usize {
        debug_assert!(
            !self.in_read_section(),
            "run_callbacks() inside an RCU read section"
        );
        if self.callbacks.len() > self.expedite_at {
            return self.reclaim();
        }
        match self.callbacks.take_ready(self) {
            Some(batch) => self.run_batch(batch),
            None => 0,
        }
    }

    /// Bounds the backlog from the producers' side: with more than `BACKLOG_LIMIT` callbacks
    /// queued, waits for a grace period and runs them all here. Call at the end of an operation
    /// that queued callbacks, where it may block: outside read sections and spinlocks. This is
    /// what keeps CPUs that produce garbage without pause from outrunning the callback thread.
    pub fn throttle(&self) {
        if self.callbacks.len() > self.limit {
            self.reclaim();
        }
    }

    /// Waits until every callback queued before the call has run (`rcu_barrier`).
    pub fn barrier(&self) {
        debug_assert!(
            !self.in_read_section(),
            "barrier() inside an RCU read section"
        );
        while self.reclaim() != 0 {}
        // A batch another thread took off the queue was queued before us too.
        while self.callbacks.running() {
            self.platform.relax();
        }
    }

    /// Callbacks queued and not yet taken off to run.
    pub fn pending_callbacks(&self) -> usize {
        self.callbacks.len()
    }

    /// Takes every queued callback, waits for a grace period that covers them all, runs them.
    /// Returns how many ran.
    fn reclaim(&self) -> usize {
        let Some(batch) = self.callbacks.take_all() else {
            return 0;
        };
        // Every callback of the batch was queued (after its caller's fence) before we took it
        // under the lock, so a grace period started now covers them all.
        self.synchronize();
        self.run_batch(batch)
    }

    fn run_batch(&self, mut batch: Batch) -> usize {
        let n = batch.len();
        batch.run();
        self.callbacks.finish(batch);
        n
    }

    fn has_callback_work(&self) -> bool {
        self.callbacks.has_ready() || self.callbacks.len() > self.expedite_at
    }

    /// Sleeps until there is callback work or `stop()`.
    fn wait_for_callback_work(&self, stop: &impl Fn() -> bool) {
        loop {
            // Read before we announce the sleep: a waker that sees `sleeping` bumps it after.
            let seen = self.kick.load(Ordering::SeqCst);
            self.sleeping.store(true, Ordering::Relaxed);
            // Our half of the Dekker pair with `wake_callback_thread`: either we see the work
            // (or the stop) queued before its fence, or it sees `sleeping` and bumps `kick`,
            // and then `wait` returns at once or is woken.
            fence(Ordering::SeqCst);
            // No tick on the host: keep grace periods moving from here too.
            self.callbacks.advance(self);
            if self.has_callback_work() || stop() {
                self.sleeping.store(false, Ordering::Relaxed);
                return;
            }
            self.platform.wait(&self.kick, seen);
        }
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
        // This thread may not be the one that started `gp`: the writer's half of the Dekker
        // pair must precede our loads of the words too (see the module header).
        fence(Ordering::SeqCst);
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
            self.run_batch(batch);
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
