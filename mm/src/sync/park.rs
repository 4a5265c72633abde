//! Blocking and waking, the one thing the sleeping locks need from the machine.
//!
//! Normally this is [`Platform::wait`]/[`Platform::wake`]. Under `--cfg loom` the lock words are
//! loom atomics, which the platform cannot wait on, so parking becomes a yield to loom's
//! scheduler: the models then explore every interleaving of the spin-and-recheck loops.

#[cfg(not(loom))]
use crate::platform::Platform;
use crate::primitive::AtomicU32;

/// Futex-like blocking on a 32-bit word.
pub trait Park: Send + Sync + 'static {
    /// Blocks while `*word == expected`. May return spuriously; callers re-check.
    fn park(&self, word: &AtomicU32, expected: u32);

    /// Wakes every thread parked on `word`.
    fn unpark_all(&self, word: &AtomicU32);
}

#[cfg(not(loom))]
impl<P: Platform> Park for P {
    fn park(&self, word: &AtomicU32, expected: u32) {
        self.wait(word, expected);
    }

    fn unpark_all(&self, word: &AtomicU32) {
        self.wake(word, usize::MAX);
    }
}

#[cfg(loom)]
impl<P: crate::platform::Platform> Park for P {
    fn park(&self, _word: &AtomicU32, _expected: u32) {
        loom::thread::yield_now();
    }

    fn unpark_all(&self, _word: &AtomicU32) {}
}

/// The platform stand-in of the loom models: parking yields to the model's scheduler.
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct LoomPark;

#[cfg(loom)]
impl Park for LoomPark {
    fn park(&self, _word: &AtomicU32, _expected: u32) {
        loom::thread::yield_now();
    }

    fn unpark_all(&self, _word: &AtomicU32) {}
}
