//! A writer-preferring reader-writer semaphore that blocks through [`Park`].
//!
//! One 32-bit word holds the whole state, so every transition is a single compare-and-swap:
//!
//! ```text
//!  31        30       29..20                 19..0
//!  SLEEPERS  WRITER   writers waiting (count) readers holding (count)
//! ```
//!
//! - A reader enters only when there is no writer *and no writer waiting*: a writer announces
//!   itself by incrementing the waiting count, after which no new reader gets in, the readers
//!   inside drain, and the writer takes over. So a stream of page faults (readers) cannot starve
//!   `mmap` (a writer). Readers can be starved by a stream of writers; `mmap` writers are rare.
//! - A blocked thread first spins a bounded number of times, then sets `SLEEPERS` and parks on
//!   the word with the exact value it saw (futex semantics: no lost wake-up, since any change of
//!   the word makes the park return). Whoever releases the lock and sees `SLEEPERS` clears it and
//!   wakes everyone; the woken re-check and re-park if they still cannot enter.

use alloc::sync::Arc;

use super::Park;
use crate::primitive::{AtomicU32, Ordering, spin_loop};

const READER: u32 = 1;
const READER_MASK: u32 = (1 << 20) - 1;
const WAITING_WRITER: u32 = 1 << 20;
const WAITING_WRITER_MASK: u32 = ((1 << 10) - 1) << 20;
const WRITER: u32 = 1 << 30;
const SLEEPERS: u32 = 1 << 31;

/// Spins before parking. Under loom a spin is a scheduling point, so keep the model small.
const SPINS: u32 = if cfg!(loom) { 1 } else { 128 };

/// A reader-writer semaphore: readers share, writers are exclusive, waiting writers keep new
/// readers out.
///
/// # Invariants
/// `state` is encoded as in the module header. `WRITER` set implies the reader count is zero;
/// the reader count is the number of `down_read`s not yet matched by `up_read`.
pub struct RwSemaphore<W: Park> {
    state: AtomicU32,
    park: Arc<W>,
}

impl<W: Park> RwSemaphore<W> {
    /// An unlocked semaphore that blocks through `park`.
    pub fn new(park: Arc<W>) -> Self {
        RwSemaphore {
            state: AtomicU32::new(0),
            park,
        }
    }

    /// Acquires for reading, waiting while a writer holds or wants the lock.
    pub fn down_read(&self) {
        let mut spins = 0;
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & (WRITER | WAITING_WRITER_MASK) == 0 {
                debug_assert!(
                    s & READER_MASK != READER_MASK,
                    "rwsem reader count overflow"
                );
                match self.state.compare_exchange_weak(
                    s,
                    s + READER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            s = self.wait_a_little(s, &mut spins);
        }
    }

    /// Acquires for reading if that needs no waiting.
    pub fn try_down_read(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        while s & (WRITER | WAITING_WRITER_MASK) == 0 {
            match self.state.compare_exchange_weak(
                s,
                s + READER,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    /// Releases one read hold.
    pub fn up_read(&self) {
        let prev = self.state.fetch_sub(READER, Ordering::Release);
        debug_assert!(prev & READER_MASK != 0, "up_read without down_read");
        if prev & READER_MASK == READER && prev & SLEEPERS != 0 {
            self.wake_sleepers();
        }
    }

    /// Acquires for writing, waiting until every reader and writer has left.
    pub fn down_write(&self) {
        let s = self.state.load(Ordering::Relaxed);
        if s & !SLEEPERS == 0
            && self
                .state
                .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
        // Announce ourselves: from here on no new reader enters.
        let mut s = self.state.fetch_add(WAITING_WRITER, Ordering::Relaxed) + WAITING_WRITER;
        debug_assert!(
            s & WAITING_WRITER_MASK != 0,
            "rwsem waiting-writer count overflow"
        );
        let mut spins = 0;
        loop {
            if s & (WRITER | READER_MASK) == 0 {
                match self.state.compare_exchange_weak(
                    s,
                    (s - WAITING_WRITER) | WRITER,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            s = self.wait_a_little(s, &mut spins);
        }
    }

    /// Acquires for writing if that needs no waiting.
    pub fn try_down_write(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        s & !SLEEPERS == 0
            && self
                .state
                .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Releases the write hold.
    pub fn up_write(&self) {
        let prev = self
            .state
            .fetch_and(!(WRITER | SLEEPERS), Ordering::Release);
        debug_assert!(prev & WRITER != 0, "up_write without down_write");
        if prev & SLEEPERS != 0 {
            self.park.unpark_all(&self.state);
        }
    }

    /// Whether some thread holds the lock for writing (for assertions).
    pub fn is_write_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & WRITER != 0
    }

    /// Whether some thread holds the lock for reading or writing (for assertions).
    pub fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & (WRITER | READER_MASK) != 0
    }

    fn wake_sleepers(&self) {
        self.state.fetch_and(!SLEEPERS, Ordering::Relaxed);
        self.park.unpark_all(&self.state);
    }

    /// Spins, or marks the word as having sleepers and parks on it; returns the fresh state.
    fn wait_a_little(&self, s: u32, spins: &mut u32) -> u32 {
        if *spins < SPINS {
            *spins += 1;
            spin_loop();
            return self.state.load(Ordering::Relaxed);
        }
        if s & SLEEPERS == 0
            && let Err(now) =
                self.state
                    .compare_exchange(s, s | SLEEPERS, Ordering::Relaxed, Ordering::Relaxed)
        {
            return now;
        }
        self.park.park(&self.state, s | SLEEPERS);
        self.state.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::platform::emulated::Emulated;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as O};
    use std::time::{Duration, Instant};

    #[test]
    fn readers_share_writers_exclude() {
        let sem = RwSemaphore::new(Arc::new(Emulated::new(1, 1)));
        sem.down_read();
        assert!(sem.try_down_read());
        assert!(!sem.try_down_write());
        sem.up_read();
        sem.up_read();
        assert!(sem.try_down_write());
        assert!(!sem.try_down_read());
        assert!(sem.is_write_locked());
        sem.up_write();
        assert!(!sem.is_locked());
    }

    #[test]
    fn waiting_writer_keeps_new_readers_out() {
        let sem = RwSemaphore::new(Arc::new(Emulated::new(1, 2)));
        sem.down_read();
        std::thread::scope(|s| {
            let w = s.spawn(|| {
                sem.down_write();
                sem.up_write();
            });
            // Wait until the writer has announced itself.
            while sem.state.load(Ordering::Relaxed) & WAITING_WRITER_MASK == 0 {
                std::thread::yield_now();
            }
            assert!(!sem.try_down_read(), "a reader overtook a waiting writer");
            sem.up_read();
            w.join().unwrap();
        });
        assert!(!sem.is_locked());
    }

    #[test]
    fn a_stream_of_readers_does_not_starve_a_writer() {
        let sem = RwSemaphore::new(Arc::new(Emulated::new(1, 4)));
        let stop = AtomicBool::new(false);
        let inside = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while !stop.load(O::Relaxed) {
                        sem.down_read();
                        inside.fetch_add(1, O::SeqCst);
                        std::thread::sleep(Duration::from_micros(50));
                        inside.fetch_sub(1, O::SeqCst);
                        sem.up_read();
                    }
                });
            }
            let t = Instant::now();
            for _ in 0..20 {
                sem.down_write();
                assert_eq!(inside.load(O::SeqCst), 0, "a reader inside with a writer");
                sem.up_write();
            }
            assert!(t.elapsed() < Duration::from_secs(5), "writer starved");
            stop.store(true, O::Relaxed);
        });
        assert!(!sem.is_locked());
    }
}
