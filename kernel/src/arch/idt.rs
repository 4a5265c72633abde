//! The interrupt descriptor table and the exception handlers.
//!
//! Faults the kernel cannot explain end in a panic with a dump (vector, error code, RIP, RSP,
//! CR2 for #PF). A page fault first goes to the installed [`PageFaultHook`] (the memory
//! subsystem's fault path); only when the hook declines is it a kernel bug.

use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::gdt::DOUBLE_FAULT_IST_INDEX;

/// Resolves a page fault at `addr`. Returns `true` when the faulting instruction can be retried.
pub type PageFaultHook = fn(addr: VirtAddr, error: PageFaultErrorCode, frame: &InterruptStackFrame) -> bool;

/// The installed hook as a `PageFaultHook` cast to usize, or 0.
static PAGE_FAULT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs (or with `None` removes) the page-fault hook.
pub fn set_page_fault_hook(hook: Option<PageFaultHook>) {
    PAGE_FAULT_HOOK.store(hook.map_or(0, |h| h as usize), Ordering::Release);
}

static IDT: spin::Lazy<InterruptDescriptorTable> = spin::Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.general_protection_fault.set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    // SAFETY: DOUBLE_FAULT_IST_INDEX names a stack that every CPU's TSS sets up (gdt.rs).
    unsafe {
        idt.double_fault.set_handler_fn(double_fault).set_stack_index(DOUBLE_FAULT_IST_INDEX);
    }
    idt
});

/// Loads the shared IDT on the calling CPU.
pub fn load() {
    IDT.load();
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    crate::info!("#BP breakpoint at rip={:#x}", frame.instruction_pointer.as_u64());
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, error: u64) -> ! {
    panic!("#DF double fault (vector 8), error={error:#x}\n{}", Dump(&frame));
}

extern "x86-interrupt" fn general_protection(frame: InterruptStackFrame, error: u64) {
    panic!("#GP general protection fault (vector 13), error={error:#x}\n{}", Dump(&frame));
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, error: PageFaultErrorCode) {
    let addr = Cr2::read_raw();
    let hook = PAGE_FAULT_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `set_page_fault_hook` stores non-zero values, and they are `PageFaultHook`s.
        let hook: PageFaultHook = unsafe { core::mem::transmute::<usize, PageFaultHook>(hook) };
        if let Ok(va) = VirtAddr::try_new(addr) {
            if hook(va, error, &frame) {
                return;
            }
        }
    }
    panic!(
        "#PF page fault (vector 14) at cr2={addr:#x}, error={:#x} {:?}\n{}",
        error.bits(),
        error,
        Dump(&frame)
    );
}

/// The interrupted context, for panic messages.
struct Dump<'a>(&'a InterruptStackFrame);

impl core::fmt::Display for Dump<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.0;
        write!(
            f,
            "  rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} ss={:#x}",
            s.instruction_pointer.as_u64(),
            s.code_segment.0,
            s.cpu_flags.bits(),
            s.stack_pointer.as_u64(),
            s.stack_segment.0
        )
    }
}
