//! TLB maintenance: local flushes and cross-CPU shootdowns.
//!
//! A shootdown flushes this CPU if it is in the mask, and hands the other targets to
//! `mm::shootdown`'s protocol (Linux's `smp_call_function_many` shape: a request slot per
//! initiating CPU, an inbox per target; described and model-checked there); this module supplies
//! the IPI and the `invlpg`s. Only CPUs in the mask are interrupted, a target whose inbox already
//! holds a request gets no second IPI, and no lock is shared by all shootdowns: shootdowns from
//! different CPUs run in parallel. Callers keep interrupts enabled: a CPU waiting for
//! acknowledgments must still answer other CPUs' requests, or two of them would wait on each
//! other forever.

use core::sync::atomic::Ordering;

use mm::shootdown::{Shootdown, ShootdownStats};
use x86_64::VirtAddr;
use x86_64::instructions::{interrupts, tlb};

use super::apic;
use super::percpu::{MAX_CPUS, PERCPU, cpu_id, preempt_disable, preempt_enable};

/// Above this many pages a full flush is cheaper than one `invlpg` each.
const FULL_FLUSH_PAGES: u64 = 32;

static SHOOTDOWN: Shootdown<MAX_CPUS> = Shootdown::new();

/// Flushes `pages` pages from `start` out of this CPU's TLB.
pub fn flush_local(start: VirtAddr, pages: u64) {
    if pages > FULL_FLUSH_PAGES {
        tlb::flush_all();
    } else {
        for i in 0..pages {
            tlb::flush(start + i * 4096);
        }
    }
}

/// Flushes `pages` pages from `start` out of the TLBs of the CPUs in `mask` (bit n = CPU n),
/// including this one if it is in the mask, and returns once all of them have. CPUs that are
/// not online are skipped.
///
/// # Panics
/// If called with interrupts disabled while other CPUs must be reached (that could deadlock).
pub fn shootdown(mask: u64, start: VirtAddr, pages: u64) {
    preempt_disable();
    let me = cpu_id();
    if mask & (1 << me) != 0 {
        flush_local(start, pages);
    }
    let mut targets = 0u64;
    let mut rest = mask & !(1 << me);
    while rest != 0 {
        let cpu = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        if PERCPU[cpu].online.load(Ordering::Acquire) {
            targets |= 1 << cpu;
        }
    }
    if targets != 0 {
        assert!(
            interrupts::are_enabled(),
            "TLB shootdown with interrupts disabled"
        );
        SHOOTDOWN.flush_others(
            me,
            targets,
            start.as_u64(),
            pages,
            |cpu| {
                // x2APIC ICR writes are not serializing: the request must be visible first.
                core::sync::atomic::fence(Ordering::SeqCst);
                apic::send_ipi(
                    PERCPU[cpu].apic_id.load(Ordering::Relaxed),
                    apic::vector::TLB_SHOOTDOWN,
                );
            },
            || {},
        );
    }
    preempt_enable();
}

/// The shootdown IPI's handler: flushes what every pending request asks, acknowledging each.
pub(crate) fn handle_shootdown_ipi() {
    SHOOTDOWN.handle(cpu_id(), |start, pages| {
        flush_local(VirtAddr::new_truncate(start), pages)
    });
}

/// Shootdowns that reached other CPUs, IPIs sent and requests served, summed over every CPU
/// (each CPU counts its own: no shared counter).
pub fn stats() -> ShootdownStats {
    SHOOTDOWN.stats()
}
