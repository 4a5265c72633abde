//! The kernel binary: boots, prints what it found, shows the memory subsystem at work, and leaves
//! QEMU cleanly.

#![no_std]
#![no_main]

use bootloader_api::BootInfo;
use kernel::memory::{FRAMES, heap};
use kernel::qemu::{ExitCode, exit};
use kernel::{error, info};

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let boot = kernel::init(boot_info);
    let (frames, free) = FRAMES.stats();
    info!("mmkernel {}: booted", env!("CARGO_PKG_VERSION"));
    info!(
        "memory: {} MiB usable in {} regions, highest usable address {:#x}; {} frames managed, {} free",
        boot.memory.usable_bytes >> 20,
        boot.memory.regions,
        boot.memory.highest,
        frames,
        free
    );
    match &boot.cpus {
        Ok(cpus) => info!(
            "acpi: MADT lists {} CPUs (APIC ids {:?}), local APIC at {:#x}",
            cpus.apic_ids.len(),
            cpus.apic_ids,
            cpus.local_apic_address
        ),
        Err(e) => error!("acpi: cannot read the CPU list: {e:?}"),
    }
    info!("smp: {} CPUs online (all up {} us after kernel entry)", boot.smp.online, boot.boot_us);
    if !boot.smp.failed.is_empty() {
        error!("smp: CPUs that did not start (APIC ids): {:?}", boot.smp.failed);
    }
    let (used, free_heap) = heap::usage();
    info!("heap: {} KiB used, {} KiB free", used >> 10, free_heap >> 10);
    info!("done; leaving QEMU");
    exit(ExitCode::Success)
}
