//! x86-64 specifics: descriptor tables, exception handlers, CPU identity.

pub mod gdt;
pub mod idt;

/// The number of the CPU running this code.
///
/// Until per-CPU areas exist this is the initial APIC id from CPUID, which QEMU numbers
/// 0..N-1 in the order of the MADT.
pub fn cpu_id() -> u32 {
    // CPUID leaf 1 exists on every x86-64 CPU; EBX[31:24] is the initial APIC id.
    let leaf = core::arch::x86_64::__cpuid(1);
    leaf.ebx >> 24
}

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
