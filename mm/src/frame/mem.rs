//! Frame contents, as the one place `mm` turns a physical frame into memory it can touch.
//!
//! Every access `mm` makes to frame memory (page-table entries, zeroing, copying, the emulated
//! MMU's loads and stores) goes through [`words`], as atomic words. That matches the hardware
//! (the MMU sets Accessed/Dirty bits in page-table entries behind the kernel's back, and user
//! code may be writing a page while the kernel copies it) and makes concurrent access to a frame
//! well-defined in Rust, so the users above need no `unsafe`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::platform::{PhysFrame, Platform};

/// 64-bit words in a 4 KiB frame.
pub const WORDS: usize = 512;

/// The words of `frame`, for as long as the platform is borrowed.
pub fn words<P: Platform>(platform: &P, frame: PhysFrame) -> &[AtomicU64; WORDS] {
    let ptr = platform.phys_to_ptr(frame.start_address());
    assert!(
        (ptr as usize).is_multiple_of(8),
        "platform maps frames to unaligned pointers"
    );
    // Conditions: 1. `Platform` promises `ptr` addresses the whole 4 KiB frame for as long as
    // the platform lives, which outlives the returned borrow of `platform`; 2. it is 8-aligned
    // (checked), and `AtomicU64` has the size and alignment of `u64`; 3. `mm` accesses frame
    // memory only through such atomics (this module's rule).
    // SAFETY: by 1-2 the frame is a valid `[AtomicU64; 512]` for the borrow; by 3 shared
    // references to it never meet a non-atomic write from `mm`.
    unsafe { &*(ptr as *const [AtomicU64; WORDS]) }
}

/// Fills `frame` with zeros. The caller owns the frame (nobody else writes it).
pub fn zero<P: Platform>(platform: &P, frame: PhysFrame) {
    for w in words(platform, frame) {
        w.store(0, Ordering::Relaxed);
    }
}

/// Copies `src` into `dst`. The caller owns `dst`; `src` may be written concurrently (the copy
/// then has each word from before or after that write).
pub fn copy<P: Platform>(platform: &P, dst: PhysFrame, src: PhysFrame) {
    let (d, s) = (words(platform, dst), words(platform, src));
    for (d, s) in d.iter().zip(s.iter()) {
        d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}
