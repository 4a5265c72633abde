//! loom models of the rwsem (`RUSTFLAGS="--cfg loom" cargo test -p mm --release --lib loom`).
//! They run the real `RwSemaphore` on loom atomics, its `wait_lock` included; [`LoomPark`]
//! blocks a parked thread until its word is unparked, so a lost wake-up is a deadlock that loom
//! reports, and its clock moves only when a model advances it, which is how a model puts the
//! head of the queue past its wait timeout. The data each lock protects is a loom `UnsafeCell`,
//! so loom also reports any access the lock fails to order.

use alloc::sync::Arc as StdArc;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::park::loom_clock_advance;
use super::{LoomPark, RWSEM_WAIT_TIMEOUT_NS, RwSemaphore};

fn model(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = preemptions;
    b.max_branches = 50_000;
    b.check(f);
}

struct Model {
    sem: RwSemaphore<LoomPark>,
    data: UnsafeCell<u32>,
    /// Hands out the order in which threads got the lock.
    turn: AtomicUsize,
}

// SAFETY: `data` is only accessed under the semaphore being checked; loom verifies that.
unsafe impl Sync for Model {}

fn new_model() -> Arc<Model> {
    Arc::new(Model {
        sem: RwSemaphore::new(StdArc::new(LoomPark)),
        data: UnsafeCell::new(0),
        turn: AtomicUsize::new(0),
    })
}

impl Model {
    fn read(&self) -> u32 {
        self.sem.down_read();
        // SAFETY: read-locked (what loom checks).
        let v = self.data.with(|p| unsafe { *p });
        self.sem.up_read();
        v
    }

    fn increment(&self) {
        self.sem.down_write();
        // SAFETY: write-locked (what loom checks).
        self.data.with_mut(|p| unsafe { *p += 1 });
        self.sem.up_write();
    }

    /// Takes the lock (`write` or not), returns its turn.
    fn take_turn(&self, write: bool) -> usize {
        if write {
            self.sem.down_write();
        } else {
            self.sem.down_read();
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        if write {
            self.sem.up_write();
        } else {
            self.sem.up_read();
        }
        turn
    }

    fn wait_for(&self, cond: impl Fn(&RwSemaphore<LoomPark>) -> bool) {
        while !cond(&self.sem) {
            thread::yield_now();
        }
    }
}

/// A reader that queued behind a writer is woken by its release (drop the wake in `up_write`
/// and the reader sleeps forever: loom reports the deadlock).
#[test]
fn loom_rwsem_up_write_wakes_a_queued_reader() {
    model(Some(3), || {
        let m = new_model();
        m.sem.down_write();
        let r = m.clone();
        let reader = thread::spawn(move || r.read());
        // SAFETY: write-locked.
        m.data.with_mut(|p| unsafe { *p = 1 });
        m.sem.up_write();
        assert_eq!(reader.join().unwrap(), 1);
        assert!(!m.sem.is_locked());
    });
}

/// A writer that queued behind a reader keeps new readers out and is woken by the last
/// reader's release.
#[test]
fn loom_rwsem_up_read_wakes_a_queued_writer() {
    model(Some(3), || {
        let m = new_model();
        m.sem.down_read();
        let w = m.clone();
        let writer = thread::spawn(move || w.increment());
        m.wait_for(|s| s.has_waiters());
        assert!(!m.sem.try_down_read(), "a reader got past a queued writer");
        // SAFETY: read-locked.
        let v = m.data.with(|p| unsafe { *p });
        m.sem.up_read();
        writer.join().unwrap();
        assert_eq!(v, 0, "the writer got in while the reader held the lock");
        assert_eq!(m.read(), 1);
    });
}

/// Two writers and a reader: updates are exclusive and none is lost, the reader sees a whole
/// number of them, and everyone gets the lock.
#[test]
fn loom_rwsem_two_writers_and_a_reader() {
    model(Some(2), || {
        let m = new_model();
        let writers: [_; 2] = core::array::from_fn(|_| {
            let w = m.clone();
            thread::spawn(move || w.increment())
        });
        let v = m.read();
        assert!(v <= 2);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(m.read(), 2);
        assert!(!m.sem.is_locked());
    });
}

/// `downgrade_write` keeps readers out of the write and lets the queued reader in.
#[test]
fn loom_rwsem_downgrade_admits_a_queued_reader() {
    model(Some(3), || {
        let m = new_model();
        m.sem.down_write();
        let r = m.clone();
        let reader = thread::spawn(move || r.read());
        // SAFETY: write-locked.
        m.data.with_mut(|p| unsafe { *p = 1 });
        m.sem.downgrade_write();
        // SAFETY: read-locked.
        assert_eq!(m.data.with(|p| unsafe { *p }), 1);
        assert_eq!(
            reader.join().unwrap(),
            1,
            "the reader got in before the write"
        );
        m.sem.up_read();
        assert!(!m.sem.is_locked());
    });
}

/// A writer at the head of the queue past its timeout while readers hold the lock: HANDOFF is
/// set, so a writer arriving as the last reader leaves cannot steal the lock; the head gets it
/// first.
#[test]
fn loom_rwsem_handoff_to_a_writer_keeps_a_stealer_out() {
    model(Some(3), || {
        let m = new_model();
        m.sem.down_write();
        let h = m.clone();
        let head = thread::spawn(move || h.take_turn(true));
        m.wait_for(|s| s.has_waiters());
        loom_clock_advance(RWSEM_WAIT_TIMEOUT_NS);
        // The head cannot have the lock while we read it, so this marks the handoff.
        m.sem.downgrade_write();
        assert!(m.sem.has_handoff());
        let c = m.clone();
        let stealer = thread::spawn(move || c.take_turn(true));
        m.sem.up_read();
        let (head, stealer) = (head.join().unwrap(), stealer.join().unwrap());
        assert!(head < stealer, "a writer stole the lock owed to the head");
    });
}

/// Readers at the head past their timeout while a writer holds the lock: a writer queueing
/// behind them sets HANDOFF, so a writer arriving as the holder leaves cannot steal the lock;
/// the readers get it first.
#[test]
fn loom_rwsem_handoff_to_a_reader_keeps_a_stealer_out() {
    model(Some(1), || {
        let m = new_model();
        m.sem.down_write();
        let h = m.clone();
        let head = thread::spawn(move || h.take_turn(false));
        m.wait_for(|s| s.has_waiters());
        loom_clock_advance(RWSEM_WAIT_TIMEOUT_NS);
        let x = m.clone();
        let second = thread::spawn(move || x.take_turn(true));
        m.wait_for(|s| s.has_handoff());
        let c = m.clone();
        let stealer = thread::spawn(move || c.take_turn(true));
        m.sem.up_write();
        let (head, second, stealer) = (
            head.join().unwrap(),
            second.join().unwrap(),
            stealer.join().unwrap(),
        );
        assert!(
            head < stealer,
            "a writer stole the lock owed to the readers"
        );
        assert!(head < second, "the queue was not served in order");
    });
}
