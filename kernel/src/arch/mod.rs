//! x86-64 specifics: descriptor tables, exception handlers, CPU identity.

pub mod apic;
pub mod gdt;
pub mod idt;
pub mod percpu;
pub mod smp;
pub mod tlb;

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
