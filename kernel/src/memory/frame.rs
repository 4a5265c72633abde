//! The physical frame allocator over the boot memory map.
//!
//! Frames are handed out first by bumping through the usable regions, then from a free list
//! threaded through the freed frames themselves (the first 8 bytes of a free frame hold the
//! physical address of the next one). One spinlock guards it; per-CPU caches in front of it are
//! `mm`'s business.

use core::ops::Range;

use spin::Mutex;
use x86_64::PhysAddr;
use x86_64::instructions::interrupts;
use x86_64::structures::paging::PhysFrame;

/// Memory below this stays with the SMP trampoline.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// The most usable regions the allocator keeps.
pub const MAX_REGIONS: usize = 256;

/// The global frame allocator.
pub static FRAMES: FrameAllocator = FrameAllocator { inner: Mutex::new(Inner::EMPTY) };

/// Allocator of 4 KiB physical frames.
pub struct FrameAllocator {
    inner: Mutex<Inner>,
}

/// # Invariants
/// Frames in `regions[region..]` at or above `next` have never been handed out; frames on the
/// free list have been freed and not handed out since; `free` counts both kinds.
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

impl FrameAllocator {
    /// Hands the allocator the usable, frame-aligned regions. Runs once.
    pub(super) fn init(&self, regions: &[Range<u64>]) {
        let mut inner = self.inner.lock();
        assert!(inner.count == 0, "frame allocator initialized twice");
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

    /// A frame (contents undefined), or `None` when memory is out.
    pub fn alloc(&self) -> Option<PhysFrame> {
        interrupts::without_interrupts(|| {
            let mut a = self.inner.lock();
            if a.free_list != 0 {
                let pa = a.free_list;
                // SAFETY: free-list frames are owned by the allocator and their first word holds
                // the next link (written by `free`).
                a.free_list = unsafe { *super::phys_to_virt(PhysAddr::new(pa)).as_ptr::<u64>() };
                a.free -= 1;
                return Some(PhysFrame::containing_address(PhysAddr::new(pa)));
            }
            while a.region < a.count {
                let r = a.regions[a.region].clone();
                if a.next < r.end {
                    let pa = a.next;
                    a.next += 4096;
                    a.free -= 1;
                    return Some(PhysFrame::containing_address(PhysAddr::new(pa)));
                }
                a.region += 1;
                if a.region < a.count {
                    a.next = a.regions[a.region].start;
                }
            }
            None
        })
    }

    /// Gives a frame back.
    ///
    /// # Safety
    /// `frame` came from [`alloc`](Self::alloc), has not been freed since, and nothing uses it.
    pub unsafe fn free(&self, frame: PhysFrame) {
        let pa = frame.start_address().as_u64();
        interrupts::without_interrupts(|| {
            let mut a = self.inner.lock();
            assert!(
                (a.lowest..a.highest).contains(&pa),
                "freeing frame {pa:#x} the allocator never owned"
            );
            // SAFETY: by the caller's contract the frame is ours now; its first word becomes the
            // free-list link.
            unsafe { *super::phys_to_virt(frame.start_address()).as_mut_ptr::<u64>() = a.free_list };
            a.free_list = pa;
            a.free += 1;
        });
    }

    /// Frames managed in total, and frames free now.
    pub fn stats(&self) -> (u64, u64) {
        interrupts::without_interrupts(|| {
            let a = self.inner.lock();
            (a.total, a.free)
        })
    }

    /// Physical frame numbers `[first, end)` the allocator can return.
    pub fn frame_range(&self) -> (u64, u64) {
        interrupts::without_interrupts(|| {
            let a = self.inner.lock();
            (a.lowest / 4096, a.highest / 4096)
        })
    }
}

// SAFETY: `alloc` returns each frame at most once until it is freed.
unsafe impl x86_64::structures::paging::FrameAllocator<x86_64::structures::paging::Size4KiB>
    for &FrameAllocator
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self.alloc()?;
        // Page tables must start zeroed; frames from here may hold old data.
        // SAFETY: the frame was just handed out to us and is reachable through the offset mapping.
        unsafe { super::phys_to_virt(frame.start_address()).as_mut_ptr::<u8>().write_bytes(0, 4096) };
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::FRAMES;

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
}
