//! A page fault reaches the #PF handler, which hands it to the installed hook; the hook maps a
//! frame and the faulting instruction is retried.
#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::arch::idt::{PageFaultHook, set_page_fault_hook};
use kernel::arch::trap::TrapFrame;
use kernel::memory::{FRAMES, map_kernel_page};
use x86_64::VirtAddr;
use x86_64::structures::idt::PageFaultErrorCode;
use x86_64::structures::paging::{Page, PageTableFlags};

kernel::test_kernel!();

/// A lower-half address nothing maps.
const TARGET: u64 = 0x5555_0000_0000;

static FAULTS: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: AtomicU64 = AtomicU64::new(0);

fn map_on_fault(addr: VirtAddr, error: PageFaultErrorCode, _frame: &mut TrapFrame) -> bool {
    if addr.align_down(4096u64).as_u64() != TARGET {
        return false;
    }
    FAULTS.fetch_add(1, Ordering::SeqCst);
    LAST_ERROR.store(error.bits(), Ordering::SeqCst);
    let frame = FRAMES.alloc().expect("frame for the faulting page");
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    // SAFETY: TARGET is unused, and the frame is fresh.
    unsafe { map_kernel_page(Page::containing_address(addr), frame, flags) }.expect("map");
    true
}

#[test_case]
fn write_fault_is_resolved_by_the_hook() {
    static HOOK: PageFaultHook = PageFaultHook(map_on_fault);
    set_page_fault_hook(Some(&HOOK));
    let p = (TARGET + 8) as *mut u64;
    // SAFETY: the first touch faults and the hook maps the page; the write is then retried.
    unsafe { p.write_volatile(0xfeed) };
    // SAFETY: mapped now.
    assert_eq!(unsafe { p.read_volatile() }, 0xfeed);
    assert_eq!(FAULTS.load(Ordering::SeqCst), 1, "exactly one fault");
    let error = PageFaultErrorCode::from_bits_truncate(LAST_ERROR.load(Ordering::SeqCst));
    assert!(error.contains(PageFaultErrorCode::CAUSED_BY_WRITE));
    assert!(
        !error.contains(PageFaultErrorCode::PROTECTION_VIOLATION),
        "page was not present"
    );
    set_page_fault_hook(None);
}
