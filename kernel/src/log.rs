//! Leveled logging over serial. Each line carries its level and the CPU it came from:
//! `[INFO  cpu3] message`.

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    const fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level chosen at build time (`KERNEL_LOG=error|warn|info|debug`, default info).
pub fn init_from_build() {
    let level = match option_env!("KERNEL_LOG") {
        Some("error") => Level::Error,
        Some("warn") => Level::Warn,
        Some("debug") => Level::Debug,
        _ => Level::Info,
    };
    set_max_level(level);
}

/// Lines above `level` are dropped.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line of `level` would be printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

#[doc(hidden)]
pub fn log(level: Level, args: fmt::Arguments) {
    if enabled(level) {
        crate::serial::write_fmt(format_args!(
            "[{} cpu{}] {}\n",
            level.name(),
            crate::arch::cpu_id(),
            args
        ));
    }
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Error, format_args!($($a)*)) }; }
/// Logs at warning level.
#[macro_export]
macro_rules! warn { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Warn, format_args!($($a)*)) }; }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Info, format_args!($($a)*)) }; }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($a:tt)*) => { $crate::log::log($crate::log::Level::Debug, format_args!($($a)*)) }; }
