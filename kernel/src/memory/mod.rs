//! Physical memory: the boot memory map, the frame pool over it, the kernel heap, and
//! fault injection into both.
//!
//! The bootloader maps all physical memory at a fixed offset, so every frame is reachable at
//! `phys + offset` and neither the heap nor the frame pool has to create mappings.

pub mod frame;
pub mod heap;
pub mod inject;
pub mod stack;

use core::sync::atomic::{AtomicBool, Ordering};

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use x86_64::{PhysAddr, VirtAddr};

pub use frame::FRAMES;

static PHYS_OFFSET: spin::Once<u64> = spin::Once::new();

/// The page below 1 MiB that application processors start in (see `arch/trampoline.s`).
pub const TRAMPOLINE_PAGE: u64 = 0x8000;
static TRAMPOLINE_FREE: AtomicBool = AtomicBool::new(false);

/// Whether the memory map leaves [`TRAMPOLINE_PAGE`] free for the SMP trampoline.
pub fn trampoline_page_free() -> bool {
    TRAMPOLINE_FREE.load(Ordering::Relaxed)
}

/// The kernel virtual address of physical address `pa`.
pub fn phys_to_virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr::new(pa.as_u64() + PHYS_OFFSET.get().expect("memory::init not called"))
}

/// What the boot memory map holds.
#[derive(Clone, Copy, Debug)]
pub struct MemorySummary {
    pub usable_bytes: u64,
    pub regions: usize,
    pub highest: u64,
}

/// Takes the heap out of the memory map, then gives the rest of the usable memory to the frame
/// allocator. Runs once, on the bootstrap CPU.
pub fn init(regions: &MemoryRegions, phys_offset: u64) -> MemorySummary {
    PHYS_OFFSET.call_once(|| phys_offset);
    kernel_root();
    let mut usable = [const { 0u64..0 }; frame::MAX_REGIONS];
    let mut n = 0;
    let mut summary = MemorySummary {
        usable_bytes: 0,
        regions: regions.len(),
        highest: 0,
    };
    for r in regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable)
    {
        if r.start <= TRAMPOLINE_PAGE && TRAMPOLINE_PAGE + 4096 <= r.end {
            TRAMPOLINE_FREE.store(true, Ordering::Relaxed);
        }
        summary.usable_bytes += r.end - r.start;
        summary.highest = summary.highest.max(r.end);
        // Memory below 1 MiB stays free for the real-mode trampoline that starts other CPUs.
        let start = align_up(r.start.max(frame::LOW_MEMORY_END), 4096);
        let end = r.end & !4095;
        if start < end {
            assert!(
                n < usable.len(),
                "more than {} usable regions",
                usable.len()
            );
            usable[n] = start..end;
            n += 1;
        }
    }
    let heap = heap::carve(&mut usable[..n]).expect("no usable region large enough for the heap");
    heap::init(
        phys_to_virt(heap.start),
        (heap.end - heap.start.as_u64()) as usize,
    );
    FRAMES.init(&usable[..n]);
    summary
}

const fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

static KERNEL_ROOT: spin::Once<PhysFrame> = spin::Once::new();

/// The kernel's own page table (PML4), which kernel threads run on and whose upper half every
/// address space shares.
pub fn kernel_root() -> PhysFrame {
    *KERNEL_ROOT.call_once(|| Cr3::read().0)
}

/// The kernel half of the kernel's PML4 (entries 256..512), for new address spaces to share.
pub fn kernel_half() -> [u64; 256] {
    let table = phys_to_virt(kernel_root().start_address()).as_ptr::<u64>();
    let mut half = [0u64; 256];
    // SAFETY: the PML4 is a 4 KiB frame reachable through the physical map; its upper half is
    // only ever extended (new PML4 entries for new kernel regions), never torn down.
    unsafe { core::ptr::copy_nonoverlapping(table.add(256), half.as_mut_ptr(), 256) };
    half
}

/// Drops whatever the bootloader left mapped in the lower half (its identity mappings for the
/// switch into the kernel): the lower half belongs to user address spaces.
pub fn clear_lower_half() {
    let _np = crate::arch::percpu::NoPreempt::new();
    let _guard = KERNEL_PT_LOCK.lock();
    let root = kernel_root();
    let table = phys_to_virt(root.start_address()).as_mut_ptr::<PageTable>();
    // SAFETY: CR3 holds a valid PML4 reachable through the physical map; nothing the kernel runs
    // or touches lives in the lower half (kernel, stacks, heap and the physical map are above).
    let table = unsafe { &mut *table };
    for entry in table.iter_mut().take(256) {
        entry.set_unused();
    }
    x86_64::instructions::tlb::flush_all();
}

/// Why [`map_kernel_page`] failed.
pub type MapError = x86_64::structures::paging::mapper::MapToError<Size4KiB>;

/// Serializes changes to the kernel's own page tables (rare: stacks, guard pages, tests).
static KERNEL_PT_LOCK: spin::Mutex<()> = spin::Mutex::new(());

/// Maps `page` (in the kernel half, or the lower half while no address space runs) to `frame`
/// in the kernel's page table, allocating intermediate tables from [`FRAMES`], and flushes the
/// page from this CPU's TLB. Address spaces share the kernel half's PML4 entries as they were
/// when they were made, so a new kernel region must get its PML4 entry at boot.
///
/// # Safety
/// The mapping must not alias memory in a way that breaks Rust's rules (e.g. map a frame that
/// backs another live object as writable elsewhere), and `page` must not be in use.
pub unsafe fn map_kernel_page(
    page: Page,
    frame: PhysFrame,
    flags: PageTableFlags,
) -> Result<(), MapError> {
    let _np = crate::arch::percpu::NoPreempt::new();
    let _guard = KERNEL_PT_LOCK.lock();
    let offset = VirtAddr::new(*PHYS_OFFSET.get().expect("memory::init not called"));
    let table = phys_to_virt(kernel_root().start_address()).as_mut_ptr::<PageTable>();
    // SAFETY: the kernel's PML4 is reachable at `offset`, and KERNEL_PT_LOCK makes this
    // the only reference made through this path while it lives.
    let mut mapper = unsafe { OffsetPageTable::new(&mut *table, offset) };
    let mut alloc = TableFrames;
    // SAFETY: forwarded from the caller.
    unsafe { mapper.map_to(page, frame, flags, &mut alloc) }?.flush();
    Ok(())
}

/// Frames that became page tables of the kernel's own mappings (they stay for good).
static KERNEL_TABLE_FRAMES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many frames the kernel's own page tables took from [`FRAMES`] since boot: frame
/// accounting must not mistake them for a leak.
pub fn kernel_table_frames() -> u64 {
    KERNEL_TABLE_FRAMES.load(Ordering::Relaxed)
}

/// Zeroed frames from [`FRAMES`] for new kernel page tables, counted.
struct TableFrames;

// SAFETY: forwards to `&FRAMES`, which hands out each frame once.
unsafe impl x86_64::structures::paging::FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = (&FRAMES).allocate_frame()?;
        KERNEL_TABLE_FRAMES.fetch_add(1, Ordering::Relaxed);
        Some(frame)
    }
}

/// Removes the mapping of `page` from the active page table and flushes it from this CPU's TLB
/// (other CPUs must not have used it, or must be shot down by the caller). Returns the frame it
/// mapped, if any.
///
/// # Safety
/// Nothing may use the page any more.
pub unsafe fn unmap_kernel_page(page: Page) -> Option<PhysFrame> {
    let _np = crate::arch::percpu::NoPreempt::new();
    let _guard = KERNEL_PT_LOCK.lock();
    let offset = VirtAddr::new(*PHYS_OFFSET.get().expect("memory::init not called"));
    let table = phys_to_virt(kernel_root().start_address()).as_mut_ptr::<PageTable>();
    // SAFETY: as in `map_kernel_page`.
    let mut mapper = unsafe { OffsetPageTable::new(&mut *table, offset) };
    let (frame, flush) = mapper.unmap(page).ok()?;
    flush.flush();
    Some(frame)
}

use x86_64::registers::control::Cr3;
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};

/// Free frames once the machine has settled: every exited thread released (a CPU releases the
/// last thread it ran at its next switch) and its stack unmapped, `mm`'s deferred frees run and
/// its per-CPU caches flushed. Kernel page tables made meanwhile (for new stack slots) stay for
/// good, so they count as free. Two calls with nothing alive in between give equal counts: the
/// exact accounting the tests and the program runner check. Blocks (up to 10 s, then panics).
pub fn settled_free_frames() -> u64 {
    settled_free_frames_beside(0)
}

/// [`settled_free_frames`] with `others` threads still alive (say a user process blocked in a
/// sleep): waits until every thread but those and the resident ones is released. The frames
/// those threads hold count as used.
pub fn settled_free_frames_beside(others: usize) -> u64 {
    let resident = crate::sched::resident_threads() + others;
    let deadline = crate::arch::apic::now_ns() + 10_000_000_000;
    while crate::sched::live_threads() > resident {
        assert!(
            crate::arch::apic::now_ns() < deadline,
            "exited threads are never released"
        );
        crate::sched::sleep_ns(5_000_000);
    }
    stack::reap();
    crate::platform::memory().quiesce();
    FRAMES.stats().1 + kernel_table_frames()
}
