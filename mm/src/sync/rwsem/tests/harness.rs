//! The test harness: acquisition counting, [`TestPark`], a watchdog.

use core::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering as O};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::super::*;

/// Acquisitions of a semaphore, counted in test builds so a waiter can tell how many others got
/// the lock while it was queued.
#[derive(Default)]
pub(in crate::sync::rwsem) struct Acquisitions {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// Acquisitions by others between a waiter's queueing and its own acquisition. Holders whose
/// acquisition was not yet counted when the waiter queued are included, so each holder at that
/// time adds at most one.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Overtaken {
    pub(super) reads: u64,
    pub(super) writes: u64,
}

std::thread_local! {
    static LAST_WAIT: Cell<Option<Overtaken>> = const { Cell::new(None) };
}

impl Acquisitions {
    pub(in crate::sync::rwsem) fn note(&self, kind: Kind) {
        match kind {
            Kind::Read => self.reads.fetch_add(1, O::SeqCst),
            Kind::Write => self.writes.fetch_add(1, O::SeqCst),
        };
    }

    pub(in crate::sync::rwsem) fn snapshot(&self) -> [u64; 2] {
        [self.reads.load(O::SeqCst), self.writes.load(O::SeqCst)]
    }

    pub(in crate::sync::rwsem) fn record_wait(&self, _kind: Kind, seen: [u64; 2]) {
        let [reads, writes] = self.snapshot();
        LAST_WAIT.with(|w| {
            w.set(Some(Overtaken {
                reads: reads - seen[0],
                writes: writes - seen[1],
            }))
        });
    }
}

/// What the calling thread's last acquisition waited through, if it had to queue.
pub(super) fn take_last_wait() -> Option<Overtaken> {
    LAST_WAIT.with(|w| w.take())
}

#[derive(Default)]
struct ParkState {
    /// For each word ever unparked (by address), how many times it was.
    unparks: Vec<(usize, u64)>,
    /// Threads blocked in `park`.
    parked: usize,
    /// Woken threads stay blocked while set, as if the scheduler did not run them.
    frozen: bool,
    /// The next `clock_ns` call blocks (while set, once a caller took it) until `resume_clock`.
    clock_pause: ClockPause,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ClockPause {
    #[default]
    Off,
    Armed,
    Holding,
}

/// A [`Park`] with exact futex semantics and a test-controlled clock.
pub(super) struct TestPark {
    state: Mutex<ParkState>,
    changed: Condvar,
    /// Manual clock in ns; `None`: real time since `start`.
    manual: Option<AtomicU64>,
    start: Instant,
}

impl TestPark {
    fn new(manual: bool) -> Arc<Self> {
        Arc::new(TestPark {
            state: Mutex::default(),
            changed: Condvar::new(),
            manual: manual.then(|| AtomicU64::new(0)),
            start: Instant::now(),
        })
    }

    pub(super) fn manual() -> Arc<Self> {
        Self::new(true)
    }

    pub(super) fn real_time() -> Arc<Self> {
        Self::new(false)
    }

    fn lock(&self) -> MutexGuard<'_, ParkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, ParkState>) -> MutexGuard<'a, ParkState> {
        self.changed.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn advance(&self, ns: u64) {
        self.manual
            .as_ref()
            .expect("a manual clock")
            .fetch_add(ns, O::SeqCst);
    }

    pub(super) fn parked(&self) -> usize {
        self.lock().parked
    }

    pub(super) fn set_frozen(&self, frozen: bool) {
        self.lock().frozen = frozen;
        self.changed.notify_all();
    }

    pub(super) fn arm_clock_pause(&self) {
        self.lock().clock_pause = ClockPause::Armed;
    }

    pub(super) fn clock_is_paused(&self) -> bool {
        self.lock().clock_pause == ClockPause::Holding
    }

    pub(super) fn resume_clock(&self) {
        self.lock().clock_pause = ClockPause::Off;
        self.changed.notify_all();
    }
}

fn unparks_of(unparks: &[(usize, u64)], key: usize) -> u64 {
    unparks
        .iter()
        .find(|&&(k, _)| k == key)
        .map_or(0, |&(_, n)| n)
}

impl Park for TestPark {
    fn park(&self, word: &AtomicU32, expected: u32) {
        let key = word as *const AtomicU32 as usize;
        let mut g = self.lock();
        if word.load(O::SeqCst) != expected {
            return;
        }
        let seen = unparks_of(&g.unparks, key);
        g.parked += 1;
        while unparks_of(&g.unparks, key) == seen || g.frozen {
            g = self.wait(g);
        }
        g.parked -= 1;
    }

    fn unpark_all(&self, word: &AtomicU32) {
        let key = word as *const AtomicU32 as usize;
        let mut g = self.lock();
        match g.unparks.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => g.unparks.push((key, 1)),
        }
        drop(g);
        self.changed.notify_all();
    }

    fn clock_ns(&self) -> u64 {
        let mut g = self.lock();
        if g.clock_pause == ClockPause::Armed {
            g.clock_pause = ClockPause::Holding;
            self.changed.notify_all();
            while g.clock_pause == ClockPause::Holding {
                g = self.wait(g);
            }
        }
        drop(g);
        match &self.manual {
            Some(ns) => ns.load(O::SeqCst),
            None => self.start.elapsed().as_nanos() as u64,
        }
    }
}

pub(super) type Sem = RwSemaphore<TestPark>;

pub(super) fn sem(park: &Arc<TestPark>) -> Arc<Sem> {
    Arc::new(RwSemaphore::new(park.clone()))
}

impl<W: Park> RwSemaphore<W> {
    pub(super) fn queued(&self) -> usize {
        self.wait_lock.lock().len()
    }

    pub(super) fn readers(&self) -> u32 {
        self.state.load(Ordering::Relaxed) >> READER_SHIFT
    }
}

/// Runs `f` on a thread and fails if it has not finished within `secs` (a lost wake-up or a
/// deadlock leaves it blocked forever).
pub(super) fn within(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => t.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // `f` panicked: report its panic.
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("no progress in {secs} s: a lost wake-up or a deadlock")
        }
    }
}

/// Spins until `cond` holds (the watchdog of `within` bounds it).
pub(super) fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::yield_now();
    }
}

/// Runs `f` on a new thread that reports `id` in `order` once it holds the lock.
pub(super) fn spawn_recorded(
    order: &Arc<Mutex<Vec<u32>>>,
    id: u32,
    f: impl FnOnce(&dyn Fn()) + Send + 'static,
) -> thread::JoinHandle<()> {
    let order = order.clone();
    thread::spawn(move || f(&|| order.lock().unwrap().push(id)))
}
