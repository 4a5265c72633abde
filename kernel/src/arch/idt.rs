//! The interrupt descriptor table and the exception handlers.
//!
//! Faults the kernel cannot explain end in a panic with a dump (vector, error code, RIP, RSP,
//! CR2 for #PF). A page fault first goes to the installed [`PageFaultHook`] (the memory
//! subsystem's fault path); only when the hook declines is it a kernel bug.

use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::VirtAddr;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

use super::apic::{self, vector};
use super::gdt::DOUBLE_FAULT_IST_INDEX;
use super::percpu::this_cpu;

/// Resolves a page fault at `addr`. Returns `true` when the faulting instruction can be retried.
pub type PageFaultHook =
    fn(addr: VirtAddr, error: PageFaultErrorCode, frame: &InterruptStackFrame) -> bool;

/// The installed hook as a `PageFaultHook` cast to usize, or 0.
static PAGE_FAULT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs (or with `None` removes) the page-fault hook.
pub fn set_page_fault_hook(hook: Option<PageFaultHook>) {
    PAGE_FAULT_HOOK.store(
        hook.map_or(0, |h| h as *const () as usize),
        Ordering::Release,
    );
}

static IDT: spin::Lazy<InterruptDescriptorTable> = spin::Lazy::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt[vector::TIMER].set_handler_fn(timer);
    idt[vector::RESCHEDULE].set_handler_fn(reschedule);
    idt[vector::TLB_SHOOTDOWN].set_handler_fn(tlb_shootdown);
    idt[vector::CALL].set_handler_fn(call);
    idt[vector::SPURIOUS].set_handler_fn(spurious);
    // SAFETY: DOUBLE_FAULT_IST_INDEX names a stack that every CPU's TSS sets up (gdt.rs).
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(DOUBLE_FAULT_IST_INDEX);
    }
    idt
});

/// Loads the shared IDT on the calling CPU.
pub fn load() {
    IDT.load();
}

extern "x86-interrupt" fn timer(_frame: InterruptStackFrame) {
    count_interrupt();
    // Acknowledge first: the tick may switch to another thread, which must get further ticks.
    apic::eoi();
    crate::sched::tick();
}

extern "x86-interrupt" fn reschedule(_frame: InterruptStackFrame) {
    count_interrupt();
    apic::eoi();
    crate::sched::reschedule_ipi();
}

extern "x86-interrupt" fn tlb_shootdown(_frame: InterruptStackFrame) {
    count_interrupt();
    super::tlb::handle_shootdown_ipi();
    apic::eoi();
}

extern "x86-interrupt" fn call(_frame: InterruptStackFrame) {
    count_interrupt();
    this_cpu().ipi_calls.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {
    // Spurious interrupts are not acknowledged (Intel SDM 10.9).
}

fn count_interrupt() {
    this_cpu().interrupts.fetch_add(1, Ordering::Relaxed);
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    crate::info!(
        "#BP breakpoint at rip={:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, error: u64) -> ! {
    panic!(
        "#DF double fault (vector 8), error={error:#x}\n{}",
        Dump(&frame)
    );
}

extern "x86-interrupt" fn general_protection(frame: InterruptStackFrame, error: u64) {
    panic!(
        "#GP general protection fault (vector 13), error={error:#x}\n{}",
        Dump(&frame)
    );
}

extern "x86-interrupt" fn page_fault(frame: InterruptStackFrame, error: PageFaultErrorCode) {
    let addr = Cr2::read_raw();
    let hook = PAGE_FAULT_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `set_page_fault_hook` stores non-zero values, and they are `PageFaultHook`s.
        let hook: PageFaultHook = unsafe { core::mem::transmute::<usize, PageFaultHook>(hook) };
        if let Ok(va) = VirtAddr::try_new(addr)
            && hook(va, error, &frame)
        {
            return;
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
