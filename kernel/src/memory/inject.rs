//! Fault injection: while enabled, allocations fail at random, decided by a seeded xorshift
//! generator, so tests can drive every out-of-memory path of the fault path and the
//! address-space operations and check that each fails cleanly, leaks nothing and leaves the
//! address space valid.
//!
//! Two kinds of allocation can be made to fail, the two whose failure `mm` handles:
//! - frames: [`FRAMES.alloc`](super::FRAMES) returns `None` (`mm` sees an empty pool; its
//!   per-CPU caches still serve frames they hold, so a test that wants failures to surface
//!   drains them first);
//! - maple-tree nodes: the heap returns null for [`MAPLE_NODE_LAYOUT`] only; `mm` allocates its
//!   nodes with the fallible `alloc::alloc::alloc` and turns null into `OutOfMemory`.
//!
//! Every other heap allocation goes through Rust's infallible interfaces (`Arc::new` for VMAs,
//! `Box` for RCU callbacks, `Vec` growth, thread structures): a null there ends in the
//! allocation error handler, which aborts, so those are never made to fail.
//!
//! One generator serves every CPU: with allocations made in a fixed order (one thread at a
//! time) a seed replays the same failures; with several CPUs allocating at once the decisions
//! are the same sequence but which allocation gets which depends on timing.

use core::alloc::Layout;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The layout of one `mm` maple-tree node (256 bytes, 256-aligned): the only heap allocation
/// whose failure is injected. Nothing else in the kernel asks for this alignment; if something
/// did, an injected failure would abort in its allocation error handler, not go unnoticed.
pub const MAPLE_NODE_LAYOUT: Layout = match Layout::from_size_align(256, 256) {
    Ok(l) => l,
    Err(_) => panic!("bad maple node layout"),
};

/// A probability, in units of 1/65536.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u32);

impl Rate {
    /// Never fail.
    pub const NEVER: Rate = Rate(0);
    /// Fail every allocation.
    pub const ALWAYS: Rate = Rate(1 << 16);

    /// One in `n` (`n` at least 1).
    pub const fn one_in(n: u32) -> Rate {
        Rate((1 << 16) / if n == 0 { 1 } else { n })
    }
}

/// How many allocations were made to fail since [`enable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectStats {
    pub frames: u64,
    pub heap: u64,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static STATE: AtomicU64 = AtomicU64::new(1);
static FRAME_RATE: AtomicU32 = AtomicU32::new(0);
static HEAP_RATE: AtomicU32 = AtomicU32::new(0);
static FRAME_FAILS: AtomicU64 = AtomicU64::new(0);
static HEAP_FAILS: AtomicU64 = AtomicU64::new(0);

/// Starts failing frame allocations with probability `frames` and maple-node allocations with
/// probability `heap`, decided by a generator seeded with `seed`; resets the counts.
pub fn enable(seed: u64, frames: Rate, heap: Rate) {
    ENABLED.store(false, Ordering::SeqCst);
    // splitmix64 of the seed: any seed (0 too) gives a well-mixed, non-zero xorshift state.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    STATE.store(if z == 0 { 1 } else { z }, Ordering::SeqCst);
    FRAME_RATE.store(frames.0, Ordering::SeqCst);
    HEAP_RATE.store(heap.0, Ordering::SeqCst);
    FRAME_FAILS.store(0, Ordering::SeqCst);
    HEAP_FAILS.store(0, Ordering::SeqCst);
    ENABLED.store(true, Ordering::SeqCst);
}

/// Stops injecting failures (the counts stay readable).
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// Whether injection is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Failures injected since the last [`enable`].
pub fn stats() -> InjectStats {
    InjectStats {
        frames: FRAME_FAILS.load(Ordering::Relaxed),
        heap: HEAP_FAILS.load(Ordering::Relaxed),
    }
}

/// The next number of the xorshift64 sequence (one step per decision, shared by all CPUs).
fn next() -> u64 {
    let mut x = STATE.load(Ordering::Relaxed);
    loop {
        let mut y = x;
        y ^= y << 13;
        y ^= y >> 7;
        y ^= y << 17;
        match STATE.compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return y,
            Err(now) => x = now,
        }
    }
}

fn roll(rate: &AtomicU32) -> bool {
    let rate = rate.load(Ordering::Relaxed);
    rate != 0 && (next() >> 48) < u64::from(rate)
}

/// Whether this frame allocation is to fail.
pub(super) fn fail_frame() -> bool {
    if !ENABLED.load(Ordering::Relaxed) || !roll(&FRAME_RATE) {
        return false;
    }
    FRAME_FAILS.fetch_add(1, Ordering::Relaxed);
    true
}

/// Whether this heap allocation is to fail (only maple nodes ever are).
pub(super) fn fail_heap(layout: Layout) -> bool {
    if !ENABLED.load(Ordering::Relaxed) || layout != MAPLE_NODE_LAYOUT || !roll(&HEAP_RATE) {
        return false;
    }
    HEAP_FAILS.fetch_add(1, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed fails the same allocations; the rate is roughly kept; disabling stops it.
    #[test_case]
    fn a_seed_replays_the_same_decisions() {
        let decide = |seed| {
            enable(seed, Rate::one_in(4), Rate::NEVER);
            let picks: alloc::vec::Vec<bool> = (0..256).map(|_| fail_frame()).collect();
            disable();
            picks
        };
        let a = decide(42);
        assert_eq!(a, decide(42));
        assert_ne!(a, decide(43));
        let fails = a.iter().filter(|&&f| f).count();
        assert!(
            (32..=96).contains(&fails),
            "{fails} of 256 failed at a rate of 1/4"
        );
        let again = decide(42);
        assert_eq!(stats().frames, again.iter().filter(|&&f| f).count() as u64);
        assert!(!fail_frame(), "disabled");
        enable(1, Rate::NEVER, Rate::ALWAYS);
        assert!(!fail_frame());
        assert!(!fail_heap(Layout::new::<u64>()), "only maple nodes fail");
        assert!(fail_heap(MAPLE_NODE_LAYOUT));
        disable();
    }
}
