//! [`FramePool`]: the machine's pool of physical frames, over the boot memory map. It is what
//! `mm`'s `Platform::alloc_frame` draws from; `mm`'s own `FrameAllocator` is a per-CPU cache in
//! front of it.
//!
//! Frames are handed out first by bumping through the usable regions, then from a free list
//! threaded through the freed frames themselves (the first 8 bytes of a free frame hold the
//! physical address of the next one). One spinlock guards it; per-CPU caches in front of it are
//! `mm`'s business.
//!
//! With the `poison` feature (the test kernels and the soak turn it on), `free` fills the rest of
//! the frame with [`POISON`] and stores a check word beside the link, and `alloc` checks both
//! before it hands the frame out again: a write into a freed frame (through a stale TLB entry, by
//! the MMU setting an Accessed bit in a freed page table, a use after free) panics with the
//! frame, the offset and the value found. Only frames that come back to this pool are checked: a
//! frame `mm` frees into its per-CPU cache and hands out again from there never passes here, and
//! a stale write is found only when its frame is next allocated from here, not when it happens.
//!
//! [`inject`](super::inject) can make `alloc` fail at random (seeded) to test out-of-memory paths.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::instructions::interrupts;
use x86_64::structures::paging::PhysFrame;

/// Memory below this stays with the SMP trampoline.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// The most usable regions the pool keeps.
pub const MAX_REGIONS: usize = 256;

/// Whether freed frames are poisoned and checked (the kernel's `poison` feature).
pub const POISONING: bool = cfg!(feature = "poison");

/// What a freed frame holds past its link and check words: not a present page-table entry (bit 0
/// clear) and not a canonical address, so a stale walk or pointer load through it faults.
pub const POISON: u64 = 0xaaaa_aaaa_aaaa_aaaa;

const WORDS: usize = 512;
/// Word 0 of a free frame holds the link; with poisoning, word 1 holds the link XOR [`POISON`].
const LINK_WORD: usize = 0;
const CHECK_WORD: usize = 1;

/// The machine's frame pool.
pub static FRAMES: FramePool = FramePool {
    inner: Mutex::new(Inner::EMPTY),
    checked: AtomicU64::new(0),
};

/// The pool of every usable 4 KiB physical frame (one lock; `mm` caches per CPU in front of it).
pub struct FramePool {
    inner: Mutex<Inner>,
    /// Frames whose poison was checked when they were allocated again.
    checked: AtomicU64,
}

/// # Invariants
/// Frames in `regions[region..]` at or above `next` have never been handed out; frames on the
/// free list have been freed and not handed out since; `free` counts both kinds. With poisoning,
/// a frame on the free list holds its link, the link XOR [`POISON`], and [`POISON`] in every other
/// word, unless something wrote to it after it was freed (a bug `alloc` reports).
struct Inner {
    regions: [Range<u64>; MAX_REGIONS],
    count: usize,
    region: usize,
    next: u64,
    free_list: u64,
    total: u64,
    free: u64,
    lowest: u64,
    highest: u64,
}

impl Inner {
    const EMPTY: Inner = Inner {
        regions: [const { 0..0 }; MAX_REGIONS],
        count: 0,
        region: 0,
        next: 0,
        free_list: 0,
        total: 0,
        free: 0,
        lowest: u64::MAX,
        highest: 0,
    };
}

/// A freed frame was written to before it was allocated again: a kernel bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonError {
    /// The frame. When the damage is past the check word it has been taken off the free list and
    /// is the caller's; when the link or check word is damaged the list is left as it was.
    pub frame: PhysFrame,
    /// Byte offset of the first word that differs.
    pub offset: usize,
    /// What that word holds.
    pub found: u64,
    /// What it should hold.
    pub expected: u64,
}

impl fmt::Display for PoisonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame {:#x} was written after it was freed: offset {:#x} holds {:#x}, not {:#x}",
            self.frame.start_address().as_u64(),
            self.offset,
            self.found,
            self.expected
        )
    }
}

/// The words of the frame at `pa`, through the physical-memory mapping.
///
/// # Safety
/// The pool owns the frame (on the free list under the lock, or being taken off or put on
/// it by the only code that knows about it), so no other reference to its memory is used
/// meanwhile.
unsafe fn words<'a>(pa: u64) -> &'a mut [u64; WORDS] {
    // SAFETY: all physical memory is mapped at the offset; exclusivity is the caller's contract.
    unsafe { &mut *super::phys_to_virt(PhysAddr::new(pa)).as_mut_ptr::<[u64; WORDS]>() }
}

fn frame_at(pa: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(pa))
}

impl FramePool {
    /// Hands the pool the usable, frame-aligned regions. Runs once.
    pub(super) fn init(&self, regions: &[Range<u64>]) {
        let mut inner = self.inner.lock();
        assert!(inner.count == 0, "frame pool initialized twice");
        for r in regions.iter().filter(|r| r.start < r.end) {
            let i = inner.count;
            inner.regions[i] = r.clone();
            inner.count += 1;
            inner.total += (r.end - r.start) / 4096;
            inner.lowest = inner.lowest.min(r.start);
            inner.highest = inner.highest.max(r.end);
        }
        inner.free = inner.total;
        inner.next = inner.regions[0].start;
    }

    /// A frame (contents undefined), or `None` when memory is out or an injected failure hits.
    ///
    /// Panics when poisoning finds the frame was written after it was freed.
    pub fn alloc(&self) -> Option<PhysFrame> {
        if super::inject::fail_frame() {
            return None;
        }
        self.alloc_checked().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`alloc`](Self::alloc) without injected failures, returning a poison mismatch instead of
    /// panicking on it.
    pub fn alloc_checked(&self) -> Result<Option<PhysFrame>, PoisonError> {
        let recycled = interrupts::without_interrupts(|| {
            let mut a = self.inner.lock();
            if a.free_list != 0 {
                let pa = a.free_list;
                // SAFETY: free-list frames belong to the pool, which is locked.
                let w = unsafe { words(pa) };
                let link = w[LINK_WORD];
                if POISONING && w[CHECK_WORD] != link ^ POISON {
                    // The damaged word may be the link: do not follow it.
                    return Err(PoisonError {
                        frame: frame_at(pa),
                        offset: CHECK_WORD * 8,
                        found: w[CHECK_WORD],
                        expected: link ^ POISON,
                    });
                }
                a.free_list = link;
                a.free -= 1;
                return Ok(Some((pa, true)));
            }
            while a.region < a.count {
                let r = a.regions[a.region].clone();
                if a.next < r.end {
                    let pa = a.next;
                    a.next += 4096;
                    a.free -= 1;
                    return Ok(Some((pa, false)));
                }
                a.region += 1;
                if a.region < a.count {
                    a.next = a.regions[a.region].start;
                }
            }
            Ok(None)
        })?;
        let Some((pa, from_free_list)) = recycled else {
            return Ok(None);
        };
        if POISONING && from_free_list {
            // Checked outside the lock: 4 KiB of reads need not serialize every CPU.
            self.checked.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the frame was just taken off the free list; nobody else knows it.
            let w = unsafe { words(pa) };
            if let Some(i) = (CHECK_WORD + 1..WORDS).find(|&i| w[i] != POISON) {
                return Err(PoisonError {
                    frame: frame_at(pa),
                    offset: i * 8,
                    found: w[i],
                    expected: POISON,
                });
            }
        }
        Ok(Some(frame_at(pa)))
    }

    /// Gives a frame back.
    ///
    /// # Safety
    /// `frame` came from [`alloc`](Self::alloc), has not been freed since, and nothing uses it.
    pub unsafe fn free(&self, frame: PhysFrame) {
        let pa = frame.start_address().as_u64();
        let (lowest, highest) = self.bounds();
        assert!(
            (lowest..highest).contains(&pa),
            "freeing frame {pa:#x} the pool never owned"
        );
        if POISONING {
            // SAFETY: by the caller's contract the frame is ours now.
            let w = unsafe { words(pa) };
            w[CHECK_WORD + 1..].fill(POISON);
        }
        interrupts::without_interrupts(|| {
            let mut a = self.inner.lock();
            // SAFETY: as above; the link and check words are written under the lock that
            // publishes the frame on the list.
            let w = unsafe { words(pa) };
            w[LINK_WORD] = a.free_list;
            if POISONING {
                w[CHECK_WORD] = a.free_list ^ POISON;
            }
            a.free_list = pa;
            a.free += 1;
        });
    }

    fn bounds(&self) -> (u64, u64) {
        interrupts::without_interrupts(|| {
            let a = self.inner.lock();
            (a.lowest, a.highest)
        })
    }

    /// Frames managed in total, and frames free now.
    pub fn stats(&self) -> (u64, u64) {
        interrupts::without_interrupts(|| {
            let a = self.inner.lock();
            (a.total, a.free)
        })
    }

    /// Frames whose poison was checked as they were allocated again (0 without poisoning).
    pub fn poison_checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }

    /// Physical frame numbers `[first, end)` the pool can return.
    pub fn frame_range(&self) -> (u64, u64) {
        let (lowest, highest) = self.bounds();
        (lowest / 4096, highest / 4096)
    }
}

// SAFETY: `alloc` returns each frame at most once until it is freed.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for &FramePool
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self.alloc()?;
        // Page tables must start zeroed; frames from here may hold old data.
        // SAFETY: the frame was just handed out to us and is reachable through the offset mapping.
        unsafe {
            super::phys_to_virt(frame.start_address())
                .as_mut_ptr::<u8>()
                .write_bytes(0, 4096)
        };
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::{FRAMES, POISON, POISONING, PoisonError, words};

    #[test_case]
    fn alloc_free_round_trip_restores_free_count() {
        let (_, before) = FRAMES.stats();
        let frames: alloc::vec::Vec<_> = (0..64).map(|_| FRAMES.alloc().expect("frame")).collect();
        assert_eq!(FRAMES.stats().1, before - 64);
        let mut sorted: alloc::vec::Vec<_> = frames.iter().map(|f| f.start_address()).collect();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 64, "a frame was handed out twice");
        for f in frames {
            // SAFETY: allocated above, unused.
            unsafe { FRAMES.free(f) };
        }
        assert_eq!(FRAMES.stats().1, before);
    }

    #[test_case]
    fn frames_are_above_low_memory() {
        let f = FRAMES.alloc().expect("frame");
        assert!(f.start_address().as_u64() >= super::LOW_MEMORY_END);
        // SAFETY: allocated above, unused.
        unsafe { FRAMES.free(f) };
    }

    /// Allocates until the poison check fails; frees what it got before. Other CPUs may free
    /// frames meanwhile (idle CPUs reap stacks), which land on top of the damaged one.
    fn alloc_until_poison_error() -> PoisonError {
        let mut popped = alloc::vec::Vec::new();
        let err = loop {
            match FRAMES.alloc_checked() {
                Ok(f) => popped.push(f.expect("the damaged frame is still on the free list")),
                Err(e) => break e,
            }
        };
        for f in popped {
            // SAFETY: allocated above, unused.
            unsafe { FRAMES.free(f) };
        }
        err
    }

    /// A write into a freed frame is reported when the frame is allocated again, with where and
    /// what was written.
    #[test_case]
    fn a_write_after_free_is_caught_when_the_frame_is_reused() {
        if !POISONING {
            return;
        }
        let f = FRAMES.alloc().expect("frame");
        let pa = f.start_address().as_u64();
        // SAFETY: allocated above, unused.
        unsafe { FRAMES.free(f) };
        // SAFETY: deliberately writes the freed frame, as a CPU with a stale TLB entry would.
        unsafe { words(pa)[100] = 0x1234 };
        let err = alloc_until_poison_error();
        assert_eq!(
            err,
            PoisonError {
                frame: f,
                offset: 800,
                found: 0x1234,
                expected: POISON
            }
        );
        // The frame was taken off the list with the error: it goes back poisoned afresh.
        // SAFETY: the pool handed it over with the error; nothing uses it.
        unsafe { FRAMES.free(err.frame) };
        let again = FRAMES.alloc().expect("frame");
        // SAFETY: allocated above, unused.
        unsafe { FRAMES.free(again) };
    }

    /// A write over the link is reported without following the damaged link.
    #[test_case]
    fn a_write_over_the_link_is_caught_without_following_it() {
        if !POISONING {
            return;
        }
        let f = FRAMES.alloc().expect("frame");
        let pa = f.start_address().as_u64();
        // SAFETY: allocated above, unused.
        unsafe { FRAMES.free(f) };
        // SAFETY: deliberately damages the freed frame's link; restored below.
        let old = unsafe { core::mem::replace(&mut words(pa)[0], 0xdead_b000) };
        let err = alloc_until_poison_error();
        assert_eq!((err.frame, err.offset, err.found), (f, 8, old ^ POISON));
        // SAFETY: the frame is still on the free list; this restores the link the pool
        // wrote.
        unsafe { words(pa)[0] = old };
        let again = FRAMES.alloc().expect("frame");
        // SAFETY: allocated above, unused.
        unsafe { FRAMES.free(again) };
    }
}
