//! The benchmark's #PF hook, installed for the whole run in place of `process`'s.
//!
//! It stamps the profile's `Entry` (the first thing any fault does here), then either runs the
//! normal fault path exactly as `process` does (`handle_mm_fault` with interrupts on), or, for
//! addresses in the floor range, the floor probe: `PageTables::floor_map_anon` with interrupts
//! still off (take a frame, zero it, CAS the PTE; no VMA, no lock).

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use mm::fault::profile::{self, Stamp};
use mm::fault::{Access, FaultResult, handle_mm_fault};
use mm::pgtable::{USER_END, pte_flags_for};
use mm::platform::PageTableFlags;
use mm::vma::Prot;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;
use x86_64::registers::rflags::RFlags;
use x86_64::structures::idt::{InterruptStackFrame, PageFaultErrorCode};

use crate::platform::{KernelPlatform, Mm};
use crate::process::{EXIT_OOM, EXIT_SEGV};
use crate::sched;

/// The floor range `[start, end)`; empty when the floor policy is off.
static FLOOR_START: AtomicU64 = AtomicU64::new(0);
static FLOOR_END: AtomicU64 = AtomicU64::new(0);

/// Routes page faults through this module until [`uninstall`].
pub fn install() {
    crate::arch::idt::set_page_fault_hook(Some(page_fault));
}

/// Gives page faults back to `process`.
pub fn uninstall() {
    set_floor(None);
    crate::process::init();
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

fn page_fault(addr: VirtAddr, error: PageFaultErrorCode, frame: &InterruptStackFrame) -> bool {
    profile::stamp(&KernelPlatform, Stamp::Entry);
    let a = addr.as_u64();
    if a >= USER_END {
        return false;
    }
    if crate::arch::percpu::this_cpu()
        .preempt_count
        .load(Ordering::Relaxed)
        != 0
        || !frame.cpu_flags.contains(RFlags::INTERRUPT_FLAG)
    {
        // As in `process`: a user-memory fault that cannot sleep is a kernel bug.
        return false;
    }
    let access = Access::from_error_code(error.bits());
    let outcome = sched::with_current(|t| {
        let mm = t.mm()?;
        let result = if in_floor(a) {
            floor(mm, a)
        } else {
            interrupts::enable();
            let r = handle_mm_fault(mm, addr, access);
            interrupts::disable();
            r
        };
        Some((result, t.id()))
    });
    let Some((result, tid)) = outcome else {
        return false;
    };
    match result {
        FaultResult::Resolved => true,
        FaultResult::Segv { addr, reason } => {
            crate::warn!(
                "bench: thread {tid}: segmentation fault at {:#x} ({reason:?}); thread ended",
                addr.as_u64()
            );
            interrupts::enable();
            sched::exit(EXIT_SEGV)
        }
        FaultResult::Oom => {
            crate::warn!("bench: thread {tid}: out of memory at {a:#x}; thread ended");
            interrupts::enable();
            sched::exit(EXIT_OOM)
        }
    }
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
