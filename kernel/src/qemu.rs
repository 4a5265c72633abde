//! Leaving QEMU through its `isa-debug-exit` device (port 0xf4). QEMU exits with
//! `(code << 1) | 1`; the `boot` runner maps 33 to success and everything else to failure.

use x86_64::instructions::port::Port;

/// What the kernel reports when it leaves QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    Success = 0x10,
    Failed = 0x11,
}

/// Exits QEMU. Without the debug-exit device (real hardware), halts forever instead.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is QEMU's debug-exit device as configured by `boot`; writing to an
    // absent port has no effect.
    unsafe { Port::<u32>::new(0xf4).write(code as u32) };
    crate::arch::halt_forever()
}
