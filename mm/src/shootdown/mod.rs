//! The TLB shootdown protocol, without the machine: Linux's `smp_call_function_many` shape,
//! specialised to "flush this range". The kernel supplies the IPI and the local flush
//! (`kernel/src/arch/tlb.rs`); the protocol itself is model-checked here (`make loom`).
//!
//! # Protocol
//! Each CPU owns a request slot (the range it asks others to flush, and `unacked`: the targets
//! that have not flushed it yet) and an inbox (bit `i`: CPU `i` has a request for this CPU).
//! - **Initiator** (preemption disabled, so its slot is its own): writes the range into its
//!   slot, sets `unacked = targets`, then for each target sets bit `me` in the target's inbox
//!   (release: the range is published with it) and sends an IPI *only if that inbox was empty*:
//!   a non-empty inbox means an IPI is already on its way or its handler has not yet emptied the
//!   inbox, and that handler will see the new bit. Then it spins until `unacked == 0`
//!   (acquire: the targets' flushes happened before), answering other CPUs' requests meanwhile
//!   (interrupts stay enabled), so two CPUs shooting at each other never wait for each other.
//! - **Target** (the IPI handler): empties its inbox with one swap (acquire), and for each
//!   initiator found reads that initiator's range, flushes it, and clears its own bit in the
//!   initiator's `unacked` (release); then swaps again until the inbox stays empty.
//!
//! An initiator reuses its slot only once `unacked` is zero, i.e. once every target finished
//! reading it. There is no lock: shootdowns of different initiators run in parallel, and a CPU
//! is interrupted only by the initiators that target it.
//!
//! # Invariants
//! A CPU's inbox bit `i` is set only while CPU `i`'s request is unacknowledged by that CPU;
//! whenever an inbox is not empty, an IPI to its CPU has been sent since it last became empty.

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

use crate::primitive::{AtomicU64, Ordering, spin_loop};

/// What a CPU asks others to flush, and who has not yet.
#[repr(align(64))]
struct Request {
    start: AtomicU64,
    pages: AtomicU64,
    unacked: AtomicU64,
    /// Requests this CPU made, and IPIs it sent (statistics, written only by this CPU).
    sent: AtomicU64,
    ipis: AtomicU64,
}

/// The requests waiting for a CPU, on a line of its own (other CPUs write it).
#[repr(align(64))]
struct Inbox {
    pending: AtomicU64,
    /// Requests this CPU served (statistics, written only by this CPU).
    served: AtomicU64,
}

/// Every CPU's request slot and inbox, for CPUs `0..CPUS` (at most 64: masks are `u64`).
pub struct Shootdown<const CPUS: usize> {
    requests: [Request; CPUS],
    inboxes: [Inbox; CPUS],
}

/// Summed statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShootdownStats {
    /// Shootdowns that had to reach another CPU.
    pub shootdowns: u64,
    /// IPIs sent for them (at most one per target and shootdown).
    pub ipis: u64,
    /// Requests targets served (one per target and shootdown).
    pub served: u64,
}

impl ShootdownStats {
    /// Events since `earlier`.
    pub fn since(&self, earlier: &ShootdownStats) -> ShootdownStats {
        ShootdownStats {
            shootdowns: self.shootdowns.wrapping_sub(earlier.shootdowns),
            ipis: self.ipis.wrapping_sub(earlier.ipis),
            served: self.served.wrapping_sub(earlier.served),
        }
    }
}

impl Request {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Request {
            start: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Request {
            start: AtomicU64::new(0),
            pages: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
        }
    }
}

impl Inbox {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Inbox {
            pending: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Inbox {
            pending: AtomicU64::new(0),
            served: AtomicU64::new(0),
        }
    }
}

/// The CPUs of `mask`, lowest first.
fn cpus_of(mut mask: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let cpu = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(cpu)
    })
}

impl<const CPUS: usize> Shootdown<CPUS> {
    const FITS: () = assert!(CPUS <= 64, "CPU masks are u64");

    /// No requests.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        let () = Self::FITS;
        Shootdown {
            requests: [const { Request::new() }; CPUS],
            inboxes: [const { Inbox::new() }; CPUS],
        }
    }

    /// No requests.
    #[cfg(loom)]
    pub fn new() -> Self {
        let () = Self::FITS;
        Shootdown {
            requests: core::array::from_fn(|_| Request::new()),
            inboxes: core::array::from_fn(|_| Inbox::new()),
        }
    }

    /// The initiator's side: asks every CPU in `targets` to flush `pages` pages from `start`,
    /// and returns once all of them have. `ipi(cpu)` interrupts `cpu` so that it calls
    /// [`handle`](Self::handle); `relax()` runs in each round of the wait.
    ///
    /// The caller runs on CPU `me` with preemption disabled, not inside `handle`, and with
    /// interrupts enabled (its own requests must still be served while it waits). `targets`
    /// must not contain `me` (flush locally instead) nor CPUs that never call `handle`.
    pub fn flush_others(
        &self,
        me: usize,
        targets: u64,
        start: u64,
        pages: u64,
        ipi: impl FnMut(usize),
        mut relax: impl FnMut(),
    ) {
        if targets == 0 {
            return;
        }
        let ipis = self.post(me, targets, start, pages, ipi);
        let req = &self.requests[me];
        // Acquire: every target's flush happened before its acknowledgment.
        while req.unacked.load(Ordering::Acquire) != 0 {
            relax();
            spin_loop();
        }
        bump(&req.sent, 1);
        bump(&req.ipis, ipis);
    }

    /// Publishes CPU `me`'s request and notifies the targets; returns the IPIs sent.
    fn post(
        &self,
        me: usize,
        targets: u64,
        start: u64,
        pages: u64,
        mut ipi: impl FnMut(usize),
    ) -> u64 {
        debug_assert_eq!(targets & (1 << me), 0, "a CPU does not shoot itself down");
        debug_assert!(CPUS == 64 || targets >> CPUS == 0, "targets beyond CPUS");
        let req = &self.requests[me];
        debug_assert_eq!(req.unacked.load(Ordering::Relaxed), 0, "nested shootdown");
        req.start.store(start, Ordering::Relaxed);
        req.pages.store(pages, Ordering::Relaxed);
        req.unacked.store(targets, Ordering::Relaxed);
        let mut ipis = 0;
        for cpu in cpus_of(targets) {
            // Release: publishes the range (and `unacked`) to the target's acquire swap.
            let was = self.inboxes[cpu]
                .pending
                .fetch_or(1 << me, Ordering::Release);
            if was == 0 {
                ipi(cpu);
                ipis += 1;
            }
        }
        ipis
    }

    /// The target's side (the IPI handler on CPU `me`): calls `flush(start, pages)` for every
    /// request waiting for this CPU, acknowledging each after its flush. Returns how many it
    /// served (0 for an IPI whose requests an earlier call already took).
    pub fn handle(&self, me: usize, mut flush: impl FnMut(u64, u64)) -> usize {
        let inbox = &self.inboxes[me];
        let mut served = 0;
        loop {
            // Acquire: pairs with the initiators' release, so their ranges are visible.
            let pending = inbox.pending.swap(0, Ordering::Acquire);
            if pending == 0 {
                break;
            }
            for from in cpus_of(pending) {
                let req = &self.requests[from];
                flush(
                    req.start.load(Ordering::Relaxed),
                    req.pages.load(Ordering::Relaxed),
                );
                // Release: our flush (and our reads of the range) before the initiator reuses
                // the slot or frees what was unmapped.
                req.unacked.fetch_and(!(1 << me), Ordering::Release);
                served += 1;
            }
        }
        bump(&inbox.served, served as u64);
        served
    }

    /// Sums the statistics of every CPU.
    pub fn stats(&self) -> ShootdownStats {
        let mut s = ShootdownStats::default();
        for (r, i) in self.requests.iter().zip(self.inboxes.iter()) {
            s.shootdowns += r.sent.load(Ordering::Relaxed);
            s.ipis += r.ipis.load(Ordering::Relaxed);
            s.served += i.served.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(not(loom))]
impl<const CPUS: usize> Default for Shootdown<CPUS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds `n` to a counter only its owner writes (no locked instruction needed).
fn bump(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}
