//! A page fault nobody resolves is a kernel bug: the #PF handler panics with a dump.

#![no_std]
#![no_main]

kernel::bootloader_api::entry_point!(main, config = &kernel::BOOTLOADER_CONFIG);

fn main(boot_info: &'static mut kernel::bootloader_api::BootInfo) -> ! {
    kernel::init(boot_info);
    kernel::testing::expect_panic("page_fault_unhandled::unmapped_read_panics");
    let p = 0x6666_0000_0000 as *const u64;
    // SAFETY: deliberately reads an unmapped address; the #PF handler panics before the read
    // completes.
    let v = unsafe { p.read_volatile() };
    kernel::serial_println!("read {v} from an unmapped page: the #PF handler did not panic");
    kernel::qemu::exit(kernel::qemu::ExitCode::Failed)
}
