//! The ramdisk: the programs `boot run --prog` packed (format: `exec::initrd`), as the
//! bootloader loaded and mapped it.

use alloc::vec::Vec;

use bootloader_api::BootInfo;
use exec::initrd::{InitrdError, Program};

static RAMDISK: spin::Once<Option<&'static [u8]>> = spin::Once::new();

/// Records where the bootloader put the ramdisk and logs the programs it holds. Called once,
/// by `kernel::init`, after the heap is up.
pub fn init(boot_info: &BootInfo) {
    RAMDISK.call_once(|| {
        let addr = boot_info.ramdisk_addr.into_option()?;
        let len = usize::try_from(boot_info.ramdisk_len).ok()?;
        if len == 0 {
            return None;
        }
        // The memory map reports the ramdisk's frames as the bootloader's, not usable: the frame
        // pool never hands them out, so nothing writes them.
        // SAFETY: the bootloader mapped `len` bytes at `addr` for good; they never change.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    });
    match programs() {
        Ok(programs) if programs.is_empty() => {}
        Ok(programs) => {
            for (i, p) in programs.iter().enumerate() {
                crate::info!(
                    "ramdisk: program {i}: {} ({} bytes), argv {:?}",
                    p.name,
                    p.elf.len(),
                    p.argv
                );
            }
        }
        Err(e) => crate::error!("ramdisk: {e}"),
    }
}

/// The ramdisk's bytes, `None` when the image has none (no `--prog`).
pub fn ramdisk() -> Option<&'static [u8]> {
    RAMDISK.get().copied().flatten()
}

/// The programs to start, in order: empty without a ramdisk.
pub fn programs() -> Result<Vec<Program<'static>>, InitrdError> {
    ramdisk().map_or(Ok(Vec::new()), exec::initrd::read)
}

/// Whether the ramdisk's programs start all at once (`boot run --together`) rather than one after
/// the other.
pub fn starts_together() -> bool {
    ramdisk().is_some_and(exec::initrd::starts_together)
}
