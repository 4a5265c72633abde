//! x86-64 specifics: descriptor tables, interrupt and system-call entry, exception handlers,
//! user-memory access, FPU state, CPU identity.

pub mod apic;
pub mod fpu;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod rtc;
pub mod syscall;
pub mod tlb;
pub mod trap;
pub mod uaccess;

pub use percpu::cpu_id;

/// Stops this CPU for good, with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Masks every line of both legacy 8259 PICs: interrupts come through the APIC.
pub fn mask_legacy_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: 0x21 and 0xA1 are the PICs' data ports; writing 0xff there only masks their lines.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// The per-CPU setup every CPU does once its GDT and IDT are loaded: FPU/SSE/AVX for user
/// threads, SMEP/SMAP, and the `SYSCALL` entry.
pub fn init_cpu_features() {
    fpu::init_cpu();
    trap::enable_smep_smap();
    syscall::init_cpu();
}
