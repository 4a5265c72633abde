//! TLB maintenance: local flushes and cross-CPU shootdowns.
//!
//! A shootdown publishes one request (range and the set of CPUs still to flush), sends the
//! shootdown IPI to those CPUs, flushes locally if asked, and spins until every target has
//! cleared its bit. One request is in flight at a time. Callers keep interrupts enabled: a CPU
//! waiting for its turn, or for acknowledgments, must still answer other CPUs' shootdowns, or
//! two of them would wait on each other forever.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::{interrupts, tlb};

use super::apic;
use super::percpu::{PERCPU, cpu_id, preempt_disable, preempt_enable};

/// Above this many pages a full flush is cheaper than one `invlpg` each.
const FULL_FLUSH_PAGES: u64 = 32;

static LOCK: spin::Mutex<()> = spin::Mutex::new(());
static START: AtomicU64 = AtomicU64::new(0);
static PAGES: AtomicU64 = AtomicU64::new(0);
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Shootdown requests sent, and IPIs they took (for the benchmark's report).
pub static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);
pub static SHOOTDOWN_IPIS: AtomicU64 = AtomicU64::new(0);

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
/// including this one if it is in the mask, and returns once all of them have.
///
/// # Panics
/// If called with interrupts disabled while other CPUs must be reached (that could deadlock).
pub fn shootdown(mask: u64, start: VirtAddr, pages: u64) {
    preempt_disable();
    let me = cpu_id();
    if mask & (1 << me) != 0 {
        flush_local(start, pages);
    }
    let online = PERCPU
        .iter()
        .enumerate()
        .filter(|(_, c)| c.online.load(Ordering::Acquire))
        .fold(0u64, |m, (i, _)| m | 1 << i);
    let targets = mask & online & !(1 << me);
    if targets != 0 {
        assert!(interrupts::are_enabled(), "TLB shootdown with interrupts disabled");
        let guard = loop {
            if let Some(g) = LOCK.try_lock() {
                break g;
            }
            core::hint::spin_loop();
        };
        START.store(start.as_u64(), Ordering::Relaxed);
        PAGES.store(pages, Ordering::Relaxed);
        PENDING.store(targets, Ordering::Release);
        SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
        // x2APIC ICR writes are not serializing: make the request visible before the IPIs.
        core::sync::atomic::fence(Ordering::SeqCst);
        for cpu in (0..64).filter(|c| targets & (1 << c) != 0) {
            apic::send_ipi(PERCPU[cpu].apic_id.load(Ordering::Relaxed), apic::vector::TLB_SHOOTDOWN);
            SHOOTDOWN_IPIS.fetch_add(1, Ordering::Relaxed);
        }
        while PENDING.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        drop(guard);
    }
    preempt_enable();
}

/// The shootdown IPI's handler: flush what was asked, then acknowledge.
pub(crate) fn handle_shootdown_ipi() {
    // Pairs with the sender's release store: the range is the one published with this request.
    let _ = PENDING.load(Ordering::Acquire);
    let start = VirtAddr::new(START.load(Ordering::Relaxed));
    let pages = PAGES.load(Ordering::Relaxed);
    flush_local(start, pages);
    PENDING.fetch_and(!(1 << cpu_id()), Ordering::AcqRel);
}
