//! COM1 serial output: the kernel's console, and the channel tests and benchmarks report on.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::SerialPort;
use x86_64::instructions::interrupts;

const COM1: u16 = 0x3F8;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

/// Programs the UART. Printing before this is a no-op.
pub fn init() {
    // SAFETY: 0x3F8 is the standard COM1 base port; nothing else drives it.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *PORT.lock() = Some(port);
}

/// Writes formatted text. Interrupts are off while the port lock is held, so an interrupt
/// handler that prints cannot deadlock against the code it interrupted on this CPU.
pub fn write_fmt(args: fmt::Arguments) {
    interrupts::without_interrupts(|| {
        if let Some(port) = PORT.lock().as_mut() {
            // The UART never reports an error; a formatting error has nothing to tell the user.
            let _ = port.write_fmt(args);
        }
    });
}

/// Breaks the port lock after a panic on this CPU, so the panic message still gets out.
///
/// # Safety
/// Only for the panic path: another CPU's half-written line may be interleaved.
pub unsafe fn force_unlock() {
    if PORT.is_locked() {
        // SAFETY: the caller accepts interleaved output; the UART has no state that a torn line
        // can corrupt.
        unsafe { PORT.force_unlock() };
    }
}

/// Prints to the serial port.
#[macro_export]
macro_rules! serial_print {
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the serial port.
#[macro_export]
macro_rules! serial_println {
    () => { $crate::serial_print!("\n") };
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
