//! Blocking, waking and a clock: what the sleeping locks need from the machine.
//!
//! Normally this is [`Platform::wait`]/[`Platform::wake`]/[`Platform::now_ns`]. Under
//! `--cfg loom` the lock words are loom atomics, which the platform cannot wait on, so parking is
//! modelled with a loom mutex and condition variable: a parked thread blocks until someone
//! unparks the same word (futex semantics, and no spurious wake-ups), so a lost wake-up leaves
//! it blocked and loom reports the deadlock. The clock of [`LoomPark`] stands still until a model
//! advances it ([`loom_clock_advance`]), which is how models reach the rwsem's wait timeout.

#[cfg(not(loom))]
use crate::platform::Platform;
use crate::primitive::AtomicU32;

/// Futex-like blocking on a 32-bit word, and the clock that bounds waits.
pub trait Park: Send + Sync + 'static {
    /// Blocks while `*word == expected`. May return spuriously; callers re-check.
    fn park(&self, word: &AtomicU32, expected: u32);

    /// Wakes every thread parked on `word`.
    fn unpark_all(&self, word: &AtomicU32);

    /// Monotonic time in nanoseconds, for wait timeouts (the rwsem's lock handoff).
    fn clock_ns(&self) -> u64;
}

#[cfg(not(loom))]
impl<P: Platform> Park for P {
    fn park(&self, word: &AtomicU32, expected: u32) {
        self.wait(word, expected);
    }

    fn unpark_all(&self, word: &AtomicU32) {
        self.wake(word, usize::MAX);
    }

    fn clock_ns(&self) -> u64 {
        self.now_ns()
    }
}

#[cfg(loom)]
impl<P: crate::platform::Platform> Park for P {
    fn park(&self, word: &AtomicU32, expected: u32) {
        model::park(word, expected);
    }

    fn unpark_all(&self, word: &AtomicU32) {
        model::unpark_all(word);
    }

    fn clock_ns(&self) -> u64 {
        self.now_ns()
    }
}

/// The platform stand-in of the loom models: parking blocks until an unpark of the same word,
/// and the clock is [`loom_clock_advance`]'s.
#[cfg(all(test, loom))]
#[derive(Debug, Default)]
pub(crate) struct LoomPark;

#[cfg(all(test, loom))]
impl Park for LoomPark {
    fn park(&self, word: &AtomicU32, expected: u32) {
        model::park(word, expected);
    }

    fn unpark_all(&self, word: &AtomicU32) {
        model::unpark_all(word);
    }

    fn clock_ns(&self) -> u64 {
        model::clock_ns()
    }
}

/// Moves [`LoomPark`]'s clock forward by `ns` (it starts at 0 in every execution).
#[cfg(all(test, loom))]
pub(crate) fn loom_clock_advance(ns: u64) {
    model::clock_advance(ns);
}

#[cfg(loom)]
mod model {
    use std::sync::PoisonError;
    #[cfg(test)]
    use std::sync::atomic::AtomicU64;
    use std::vec::Vec;

    use loom::sync::{Condvar, Mutex};

    use crate::primitive::{AtomicU32, Ordering};

    /// The parking state of one model execution.
    struct Parking {
        /// For each word ever unparked (by address), how many times it was.
        unparks: Mutex<Vec<(usize, u64)>>,
        unparked: Condvar,
        /// Not a loom atomic: reading the clock is not a synchronisation the models explore.
        #[cfg(test)]
        clock: AtomicU64,
    }

    loom::lazy_static! {
        static ref PARKING: Parking = Parking {
            unparks: Mutex::new(Vec::new()),
            unparked: Condvar::new(),
            #[cfg(test)]
            clock: AtomicU64::new(0),
        };
    }

    fn unparks_of(unparks: &[(usize, u64)], key: usize) -> u64 {
        unparks
            .iter()
            .find(|&&(k, _)| k == key)
            .map_or(0, |&(_, n)| n)
    }

    pub(super) fn park(word: &AtomicU32, expected: u32) {
        let key = word as *const AtomicU32 as usize;
        let mut unparks = PARKING
            .unparks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked under the mutex that `unpark_all` takes after changing the word: either we
        // see the change, or we are waiting when the unpark comes.
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        let seen = unparks_of(&unparks, key);
        while unparks_of(&unparks, key) == seen {
            unparks = PARKING
                .unparked
                .wait(unparks)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(super) fn unpark_all(word: &AtomicU32) {
        let key = word as *const AtomicU32 as usize;
        let mut unparks = PARKING
            .unparks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match unparks.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => unparks.push((key, 1)),
        }
        PARKING.unparked.notify_all();
    }

    #[cfg(test)]
    pub(super) fn clock_ns() -> u64 {
        PARKING.clock.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn clock_advance(ns: u64) {
        PARKING
            .clock
            .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }
}
