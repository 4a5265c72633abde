//! The kernel heap: a `linked_list_allocator` over one physically contiguous block taken from
//! the memory map and reached through the physical-memory mapping. [`inject`](super::inject) can
//! make the allocations of `mm`'s maple nodes fail.

use core::ops::Range;

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;
use spin::Mutex;
use x86_64::instructions::interrupts;
use x86_64::{PhysAddr, VirtAddr};

/// Heap size: enough for the VMA tree, thread stacks' bookkeeping and test data.
pub const HEAP_SIZE: u64 = 64 * 1024 * 1024;

#[global_allocator]
static ALLOCATOR: IrqSafeHeap = IrqSafeHeap(Mutex::new(Heap::empty()));

/// The heap behind a spinlock taken with interrupts off: interrupt handlers (the scheduler's
/// tick) allocate too, and must not spin on a lock the code they interrupted holds.
struct IrqSafeHeap(Mutex<Heap>);

// SAFETY: allocation and deallocation are delegated to `Heap` under its lock, which returns
// blocks of the requested layout that do not overlap live ones.
unsafe impl GlobalAlloc for IrqSafeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if super::inject::fail_heap(layout) {
            return core::ptr::null_mut();
        }
        interrupts::without_interrupts(|| {
            self.0
                .lock()
                .allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), |p| p.as_ptr())
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(ptr) = NonNull::new(ptr) else { return };
        // SAFETY: the caller passes a block this allocator handed out with this layout.
        interrupts::without_interrupts(|| unsafe { self.0.lock().deallocate(ptr, layout) });
    }
}

/// Takes `HEAP_SIZE` bytes off the end of the first region that has room. Returns the block's
/// physical start and end.
pub(super) fn carve(regions: &mut [Range<u64>]) -> Option<HeapBlock> {
    let r = regions.iter_mut().find(|r| r.end - r.start >= HEAP_SIZE)?;
    r.end -= HEAP_SIZE;
    Some(HeapBlock {
        start: PhysAddr::new(r.end),
        end: r.end + HEAP_SIZE,
    })
}

/// A physical block set aside for the heap.
pub(super) struct HeapBlock {
    pub start: PhysAddr,
    pub end: u64,
}

pub(super) fn init(start: VirtAddr, size: usize) {
    // SAFETY: the block was removed from the memory map handed to the frame pool, so
    // nothing else uses it, and the physical-memory mapping makes it writable at `start`.
    interrupts::without_interrupts(|| unsafe { ALLOCATOR.0.lock().init(start.as_mut_ptr(), size) });
}

/// Bytes in use and bytes free on the heap.
pub fn usage() -> (usize, usize) {
    interrupts::without_interrupts(|| {
        let heap = ALLOCATOR.0.lock();
        (heap.used(), heap.free())
    })
}
