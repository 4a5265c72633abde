//! The kernel around `mm`: boot, serial console, descriptor tables and exception handlers,
//! physical memory and the heap, ACPI, and the in-QEMU test framework.
//!
//! Every kernel binary (the kernel itself, its unit tests, each integration test under `tests/`)
//! starts by calling [`init`].

#![no_std]
#![cfg_attr(test, no_main)]
#![feature(custom_test_frameworks)]
#![feature(abi_x86_interrupt)]
#![test_runner(crate::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

pub mod acpi;
pub mod arch;
pub mod log;
pub mod memory;
pub mod qemu;
pub mod serial;
pub mod testing;

pub use bootloader_api;
use bootloader_api::BootInfo;
use bootloader_api::config::{BootloaderConfig, Mapping};

/// How every kernel binary asks to be loaded: all physical memory mapped at an offset the
/// bootloader picks, and a kernel stack large enough for debug builds.
pub const BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::Dynamic);
    config.kernel_stack_size = 256 * 1024;
    config
};

/// What `init` found.
#[derive(Debug)]
pub struct Boot {
    pub memory: memory::MemorySummary,
    pub cpus: Result<acpi::Cpus, acpi::AcpiError>,
}

/// Brings up the bootstrap CPU: serial, GDT/TSS, IDT, the legacy PIC masked, frame allocator
/// and heap, and reads the CPU list from ACPI. Interrupts stay off.
pub fn init(boot_info: &'static mut BootInfo) -> Boot {
    serial::init();
    arch::gdt::init_bsp();
    arch::idt::load();
    arch::mask_legacy_pic();
    let offset = boot_info
        .physical_memory_offset
        .into_option()
        .expect("bootloader did not map physical memory (BOOTLOADER_CONFIG asks it to)");
    let memory = memory::init(&boot_info.memory_regions, offset);
    let cpus = acpi::cpus(boot_info.rsdp_addr.into_option());
    Boot { memory, cpus }
}

/// Declares the entry point of a test kernel: `init`, then the crate's tests.
/// Use in a crate with `#![test_runner(kernel::testing::test_runner)]` and
/// `#![reexport_test_harness_main = "test_main"]`.
#[macro_export]
macro_rules! test_kernel {
    () => {
        $crate::bootloader_api::entry_point!(__test_kernel_main, config = &$crate::BOOTLOADER_CONFIG);
        fn __test_kernel_main(boot_info: &'static mut $crate::bootloader_api::BootInfo) -> ! {
            $crate::init(boot_info);
            test_main();
            $crate::qemu::exit($crate::qemu::ExitCode::Success)
        }
    };
}

#[cfg(test)]
test_kernel!();

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    testing::panic(info)
}
