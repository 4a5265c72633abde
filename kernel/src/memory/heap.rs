//! The kernel heap: a `linked_list_allocator` over one physically contiguous block taken from
//! the memory map and reached through the physical-memory mapping.

use core::ops::Range;

use linked_list_allocator::LockedHeap;
use x86_64::{PhysAddr, VirtAddr};

/// Heap size: enough for the VMA tree, thread stacks' bookkeeping and test data.
pub const HEAP_SIZE: u64 = 64 * 1024 * 1024;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Takes `HEAP_SIZE` bytes off the end of the first region that has room. Returns the block's
/// physical start and end.
pub(super) fn carve(regions: &mut [Range<u64>]) -> Option<HeapBlock> {
    let r = regions.iter_mut().find(|r| r.end - r.start >= HEAP_SIZE)?;
    r.end -= HEAP_SIZE;
    Some(HeapBlock { start: PhysAddr::new(r.end), end: r.end + HEAP_SIZE })
}

/// A physical block set aside for the heap.
pub(super) struct HeapBlock {
    pub start: PhysAddr,
    pub end: u64,
}

pub(super) fn init(start: VirtAddr, size: usize) {
    // SAFETY: the block was removed from the memory map handed to the frame allocator, so
    // nothing else uses it, and the physical-memory mapping makes it writable at `start`.
    unsafe { ALLOCATOR.lock().init(start.as_mut_ptr(), size) };
}

/// Bytes in use and bytes free on the heap.
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.lock();
    (heap.used(), heap.free())
}
