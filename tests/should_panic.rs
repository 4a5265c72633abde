//! A failed assertion ends in the panic handler, which reports and leaves QEMU.

#![no_std]
#![no_main]

kernel::bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut kernel::bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::testing::expect_panic("should_panic::failed_assertion_panics");
    assert_eq!(1 + 1, 3, "arithmetic is broken");
    kernel::serial_println!("the assertion did not panic");
    kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
}
