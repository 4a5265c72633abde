//! The in-QEMU test framework (`custom_test_frameworks`).
//!
//! A test kernel prints `running N tests`, then `test NAME ... ok` for each test; a panicking
//! test prints `test NAME ... FAILED` and the panic, and the kernel exits QEMU with a failure code. The `boot`
//! runner reads these lines, so a crash or a hang counts the unfinished tests as failed.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::qemu::{ExitCode, exit};
use crate::serial_println;

/// Something the test runner can run.
pub trait Testable {
    fn run(&self);
}

impl<T: Fn()> Testable for T {
    fn run(&self) {
        let name = short_name(core::any::type_name::<T>());
        *CURRENT.lock() = name;
        self();
        serial_println!("test {name} ... ok");
    }
}

/// The test running now, for the panic handler's `FAILED` line.
static CURRENT: spin::Mutex<&'static str> = spin::Mutex::new("");

/// `kernel::memory::tests::heap_grows` -> `memory::tests::heap_grows`.
fn short_name(name: &str) -> &str {
    name.split_once("::").map_or(name, |(_, rest)| rest)
}

/// Runs every test, then leaves QEMU with success.
pub fn test_runner(tests: &[&dyn Testable]) -> ! {
    IN_TEST.store(true, Ordering::SeqCst);
    serial_println!("running {} tests", tests.len());
    for test in tests {
        test.run();
    }
    exit(ExitCode::Success)
}

static IN_TEST: AtomicBool = AtomicBool::new(false);
static PANIC_EXPECTED: AtomicBool = AtomicBool::new(false);
/// What the expected panic's message must contain (empty: any panic passes).
static PANIC_NEEDLES: spin::Mutex<&'static [&'static str]> = spin::Mutex::new(&[]);

/// Starts a `should_panic`-style test kernel that runs the single test `name`: from now on a
/// panic is the test passing, and returning from it is a failure.
pub fn expect_panic(name: &'static str) {
    IN_TEST.store(true, Ordering::SeqCst);
    *CURRENT.lock() = name;
    PANIC_EXPECTED.store(true, Ordering::SeqCst);
    serial_println!("running 1 tests");
}

/// [`expect_panic`], where only a panic whose message contains each of `needles` passes.
pub fn expect_panic_containing(name: &'static str, needles: &'static [&'static str]) {
    *PANIC_NEEDLES.lock() = needles;
    expect_panic(name);
}

/// The first bytes of a panic message, without allocating (the heap may be what broke).
struct MessageBuf {
    buf: [u8; 1024],
    len: usize,
}

impl core::fmt::Write for MessageBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Whether the panic's message holds every expected needle.
fn message_matches(info: &core::panic::PanicInfo) -> bool {
    let needles = PANIC_NEEDLES.try_lock().map_or(&[][..], |n| *n);
    let mut m = MessageBuf {
        buf: [0; 1024],
        len: 0,
    };
    let _ = core::fmt::Write::write_fmt(&mut m, format_args!("{}", info.message()));
    let text = &m.buf[..m.len];
    needles
        .iter()
        .all(|n| text.windows(n.len()).any(|w| w == n.as_bytes()))
}

/// Prints the return addresses of the frames above the caller, following the frame-pointer
/// chain (kernels are built with frame pointers), for `addr2line -e KERNEL-ELF`.
fn backtrace() {
    let mut rbp: u64;
    // SAFETY: reads the frame-pointer register.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    let low = rbp;
    crate::serial_print!("backtrace (addr2line -e ELF):");
    for _ in 0..24 {
        // Follow the chain only upwards, within 1 MiB, in the kernel half: a broken chain ends
        // the walk instead of faulting inside the panic handler.
        if rbp < low || rbp - low > 1 << 20 || !rbp.is_multiple_of(8) || rbp < 0xffff_8000_0000_0000
        {
            break;
        }
        // SAFETY: `rbp` points at a saved frame of this stack (checked bounds above): the
        // caller's rbp, then the return address.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        crate::serial_print!(" {:#x}", ret - crate::KERNEL_BASE);
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    serial_println!();
}

/// Every kernel binary's panic handler. A kernel bug prints the message and location and leaves
/// QEMU with a failure code; in a test kernel the running test reads as FAILED (or ok, when the
/// test expected the panic).
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    // SAFETY: on the panic path a torn line beats a deadlock on the port lock.
    unsafe { crate::serial::force_unlock() };
    let name = CURRENT.try_lock().map_or("?", |n| *n);
    if PANIC_EXPECTED.load(Ordering::SeqCst) {
        serial_println!("expected panic on cpu{}: {info}", crate::arch::cpu_id());
        if message_matches(info) {
            serial_println!("test {name} ... ok");
            exit(ExitCode::Success)
        }
        serial_println!("test {name} ... FAILED");
        serial_println!(
            "the panic message lacks {:?}",
            PANIC_NEEDLES.try_lock().map_or(&[][..], |n| *n)
        );
        exit(ExitCode::Failed)
    }
    if IN_TEST.load(Ordering::SeqCst) {
        serial_println!("test {name} ... FAILED");
    }
    serial_println!("KERNEL PANIC on cpu{}: {info}", crate::arch::cpu_id());
    backtrace();
    exit(ExitCode::Failed)
}
