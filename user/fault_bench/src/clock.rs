//! The clock for fault latencies: the TSC, read with `rdtsc` before a page touch and with
//! `lfence; rdtsc` after it (the fence waits for the touch, and so the fault, to complete). In a
//! KVM guest a pair costs about 90 ns, against about 150 ns for two `Instant` reads (a vDSO
//! `clock_gettime` each), on faults of about 1.5 µs; the interval includes about 100 cycles of
//! the clock itself. Cycles become ns with a frequency measured against `Instant` at start-up;
//! the header reports it as `tsc_mhz`.

use std::arch::x86_64::{_mm_lfence, _rdtsc};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Reads the TSC where a timed interval starts.
#[inline(always)]
pub fn start() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter, present on every x86-64 CPU.
    unsafe { _rdtsc() }
}

/// Reads the TSC where a timed interval ends, once the instructions before it have executed.
#[inline(always)]
pub fn end() -> u64 {
    // SAFETY: lfence (SSE2, part of x86-64) only orders; rdtsc only reads the counter.
    unsafe {
        _mm_lfence();
        _rdtsc()
    }
}

/// The TSC's frequency, measured over `over` against the monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Tsc {
    hz: f64,
}

/// The TSC did not advance with the monotonic clock.
#[derive(Debug)]
pub struct TscBroken;

impl Tsc {
    pub fn calibrate(over: Duration) -> Result<Tsc, TscBroken> {
        let (i0, c0) = (Instant::now(), start());
        sleep(over);
        let (c1, i1) = (end(), Instant::now());
        let secs = (i1 - i0).as_secs_f64();
        let hz = c1.wrapping_sub(c0) as f64 / secs;
        // Below 100 MHz or above 100 GHz the counter is not a usable clock.
        if (1e8..1e11).contains(&hz) {
            Ok(Tsc { hz })
        } else {
            Err(TscBroken)
        }
    }

    pub fn mhz(self) -> u64 {
        (self.hz / 1e6).round() as u64
    }

    pub fn to_ns(self, cycles: u64) -> u64 {
        (cycles as f64 * 1e9 / self.hz).round() as u64
    }
}
