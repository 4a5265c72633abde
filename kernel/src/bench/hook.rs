//! The benchmark's #PF hook, installed for the whole run in place of `process`'s.
//!
//! It stamps the profile's `Entry` (the first thing any fault does here), then, through `process`'s
//! common #PF handling, either runs the normal fault path (`handle_mm_fault` with interrupts
//! on), or, for
//! addresses in the floor range, the floor probe: `PageTables::floor_map_anon` with interrupts
//! still off (take a frame, zero it, CAS the PTE; no VMA, no lock).

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use mm::fault::profile::{self, Stamp};
use mm::fault::{FaultResult, handle_mm_fault};
use mm::pgtable::pte_flags_for;
use mm::platform::PageTableFlags;
use mm::vma::Prot;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;
use x86_64::structures::idt::PageFaultErrorCode;

use crate::arch::idt::PageFaultHook;
use crate::arch::trap::TrapFrame;

use crate::platform::{KernelPlatform, Mm};

/// The floor range `[start, end)`; empty when the floor policy is off.
static FLOOR_START: AtomicU64 = AtomicU64::new(0);
static FLOOR_END: AtomicU64 = AtomicU64::new(0);

/// Routes page faults through this module until [`uninstall`].
pub fn install() {
    static HOOK: PageFaultHook = PageFaultHook(page_fault);
    crate::arch::idt::set_page_fault_hook(Some(&HOOK));
}

/// Gives page faults back to `process`.
pub fn uninstall() {
    set_floor(None);
    crate::process::install_fault_hook();
}

/// Faults in `range` (of whatever address space faults) go to the floor probe.
///
/// # Safety
/// Until the next call, nothing may unmap or `mmap` over any part of a 2 MiB-aligned block
/// that overlaps `range` while another thread may fault in that block: the floor's PTE install
/// takes no lock (see `PageTables::floor_map_anon`). The benchmark's layout guarantees it: each
/// worker's memory is whole page-table blocks of its own, which only it unmaps, between its own
/// faults; `madvise(MADV_DONTNEED)` never unhooks a table.
pub unsafe fn set_floor_range(range: Range<u64>) {
    set_floor(Some(range));
}

fn set_floor(range: Option<Range<u64>>) {
    let r = range.unwrap_or(0..0);
    FLOOR_END.store(0, Ordering::SeqCst);
    FLOOR_START.store(r.start, Ordering::SeqCst);
    FLOOR_END.store(r.end, Ordering::SeqCst);
}

fn in_floor(addr: u64) -> bool {
    addr >= FLOOR_START.load(Ordering::Relaxed) && addr < FLOOR_END.load(Ordering::Relaxed)
}

fn page_fault(addr: VirtAddr, error: PageFaultErrorCode, frame: &mut TrapFrame) -> bool {
    profile::stamp(&KernelPlatform, Stamp::Entry);
    crate::process::handle_user_fault(addr, error, frame, |mm, access| {
        let a = addr.as_u64();
        if in_floor(a) {
            return floor(mm, a);
        }
        interrupts::enable();
        let r = handle_mm_fault(mm, a, access);
        interrupts::disable();
        r
    })
}

/// The floor probe: a zeroed frame at `addr`, nothing else.
fn floor(mm: &Mm, addr: u64) -> FaultResult {
    let flags = pte_flags_for(Prot::READ | Prot::WRITE, true)
        | PageTableFlags::ACCESSED
        | PageTableFlags::DIRTY;
    // SAFETY: `addr` is in the floor range, whose caller promised (`set_floor_range`) that no
    // unmap can race this install in its page-table block.
    match unsafe { mm.page_tables().floor_map_anon(addr & !0xfff, flags) } {
        // Not installed: the PTE was already set (a spurious fault): retry the access.
        Ok(_) => FaultResult::Resolved,
        Err(_) => FaultResult::Oom,
    }
}
