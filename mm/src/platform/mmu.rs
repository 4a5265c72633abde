//! An emulated x86 MMU for host tests and tools: loads, stores and instruction fetches of user
//! memory that go through the CPU's software TLB ([`Tlb`]), walk the page tables on a miss, and
//! on a page fault call [`handle_mm_fault`] and retry, like a CPU returning from the #PF handler.
//!
//! It follows the rules of real x86 TLBs, which stale-TLB bugs depend on:
//! - Only present translations are cached. An entry keeps the frame and permissions it was
//!   filled with, whatever the PTE says later, until this CPU flushes it (`flush_tlb_local`, a
//!   shootdown that targets it, or a switch to another address space). A not-present -> present
//!   change needs no flush: a miss walks again.
//! - An access the cached permissions do not allow raises #PF, and the fault drops the entry
//!   (Intel SDM 4.10.4.1); the handler then finds from the PTE whether it was spurious.
//! - Accessed and Dirty are set by a locked compare-and-swap on the PTE, only while it is present
//!   and allows the access; if it changed, the walk starts over. So a PTE zapped under the walk
//!   is never resurrected. A write through a cached entry without Dirty walks again to set it,
//!   and faults if the PTE no longer allows the write.
//! - An access is one instruction: the CPU's TLB lock is held from the lookup (or walk) through
//!   the data access, so a shootdown, which takes that lock to flush, lands before or after it.
//!
//! Data loads are acquire and stores release (x86 is TSO), so message passing between emulated
//! CPUs behaves as on hardware. On top of what hardware does, every access checks that the
//! frame it reaches is a live user frame: reaching a freed one through a stale translation means
//! `mm` freed it before the shootdown, and panics.

use core::sync::atomic::{Ordering, fence};

use crate::address_space::AddressSpace;
use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::frame::{FrameKind, mem};
use crate::pgtable::Pte;

use crate::platform::emulated::{Emulated, Tlb, TlbEntry};
use crate::platform::{PageTableFlags, PhysFrame, Platform};

/// A platform whose CPUs are [`Emulated`]'s, with their software TLBs (the emulated platform
/// itself, or a test platform built on it).
pub trait HasTlb: Platform {
    /// The emulated machine underneath.
    fn emulated(&self) -> &Emulated;
}

impl HasTlb for Emulated {
    fn emulated(&self) -> &Emulated {
        self
    }
}

/// A page fault the emulated CPU raised (before any handler ran).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting address (CR2).
    pub addr: u64,
    /// What the access tried.
    pub access: Access,
}

#[derive(Clone, Copy)]
enum Op {
    Load,
    Store(u64),
}

/// Reads the 8-byte word at `addr` (8-aligned), handling page faults.
pub fn load<P: HasTlb>(mm: &AddressSpace<P>, addr: u64, user: bool) -> Result<u64, FaultResult> {
    let kind = AccessKind::Read;
    with_faults(mm, addr, Access { kind, user }, Op::Load)
}

/// Writes the 8-byte word at `addr` (8-aligned), handling page faults.
pub fn store<P: HasTlb>(
    mm: &AddressSpace<P>,
    addr: u64,
    value: u64,
    user: bool,
) -> Result<(), FaultResult> {
    let kind = AccessKind::Write;
    with_faults(mm, addr, Access { kind, user }, Op::Store(value)).map(|_| ())
}

/// Fetches (reads) the word at `addr` as a user instruction fetch, handling page faults.
pub fn fetch<P: HasTlb>(mm: &AddressSpace<P>, addr: u64) -> Result<u64, FaultResult> {
    with_faults(mm, addr, Access::user(AccessKind::Exec), Op::Load)
}

/// Reads the word at `addr` once, reporting a page fault instead of handling it.
pub fn load_nofault<P: HasTlb>(
    mm: &AddressSpace<P>,
    addr: u64,
    user: bool,
) -> Result<u64, PageFault> {
    let kind = AccessKind::Read;
    access_once(mm, addr, Access { kind, user }, Op::Load)
}

/// Writes the word at `addr` once, reporting a page fault instead of handling it.
pub fn store_nofault<P: HasTlb>(
    mm: &AddressSpace<P>,
    addr: u64,
    value: u64,
    user: bool,
) -> Result<(), PageFault> {
    let kind = AccessKind::Write;
    access_once(mm, addr, Access { kind, user }, Op::Store(value)).map(|_| ())
}

fn with_faults<P: HasTlb>(
    mm: &AddressSpace<P>,
    addr: u64,
    access: Access,
    op: Op,
) -> Result<u64, FaultResult> {
    loop {
        match access_once(mm, addr, access, op) {
            Ok(v) => return Ok(v),
            Err(fault) => match handle_mm_fault(mm, fault.addr, access) {
                FaultResult::Resolved => {}
                other => return Err(other),
            },
        }
    }
}

/// One access on the calling thread's CPU, as the hardware makes it.
fn access_once<P: HasTlb>(
    mm: &AddressSpace<P>,
    addr: u64,
    access: Access,
    op: Op,
) -> Result<u64, PageFault> {
    assert!(
        addr.is_multiple_of(8),
        "emulated accesses are aligned words"
    );
    let platform = mm.memory().platform();
    let fault = PageFault { addr, access };
    // Held to the end of the access: a shootdown waits for it (see the module header).
    let mut tlb = platform.emulated().tlb();
    switch_to(mm, &mut tlb);
    let entry = match tlb.lookup(addr) {
        Some(e) if !allows(e.flags, access) => {
            // The #PF invalidates the entry; the handler decides whether it was spurious.
            tlb.invalidate(addr, 1);
            return Err(fault);
        }
        Some(e) if access.kind != AccessKind::Write || e.flags.contains(PageTableFlags::DIRTY) => e,
        // A miss, or a write through an entry without Dirty: walk (and set A/D) first.
        _ => {
            tlb.invalidate(addr, 1);
            let e = walk(mm, addr, access).ok_or(fault)?;
            tlb.fill(addr, e);
            e
        }
    };
    check_live(mm, entry.frame, addr);
    let word = &mem::words(&**platform, entry.frame)[((addr & 0xfff) / 8) as usize];
    Ok(match op {
        Op::Load => word.load(Ordering::Acquire),
        Op::Store(v) => {
            word.store(v, Ordering::Release);
            0
        }
    })
}

/// Makes the CPU run `mm`, as the kernel's context switch does: into the shootdown mask first,
/// then "CR3" (serializing, hence the fence: walks come after the mask update).
fn switch_to<P: HasTlb>(mm: &AddressSpace<P>, tlb: &mut Tlb) {
    if !tlb.runs(mm.id()) {
        mm.activate_on(mm.memory().platform().cpu_id());
        fence(Ordering::SeqCst);
        tlb.switch_mm(mm.id());
    }
}

/// Whether a translation with `flags` allows `access` (upper levels never restrict).
fn allows(flags: PageTableFlags, access: Access) -> bool {
    flags.contains(PageTableFlags::PRESENT)
        && (!access.user || flags.contains(PageTableFlags::USER_ACCESSIBLE))
        && (access.kind != AccessKind::Write || flags.contains(PageTableFlags::WRITABLE))
        && (access.kind != AccessKind::Exec || !flags.contains(PageTableFlags::NO_EXECUTE))
}

enum Step {
    Done(Pte),
    Fault,
    Again,
}

/// The hardware page walk for `access` at `addr`: the translation to cache, with Accessed (and
/// for a write Dirty) set in the PTE, or `None` where the CPU raises #PF.
fn walk<P: HasTlb>(mm: &AddressSpace<P>, addr: u64, access: Access) -> Option<TlbEntry> {
    let mut need = PageTableFlags::ACCESSED;
    if access.kind == AccessKind::Write {
        need |= PageTableFlags::DIRTY;
    }
    loop {
        let step = mm.page_tables().with_pte(addr, |slot| {
            let e = Pte::from_bits(slot.load(Ordering::Acquire));
            if !allows(e.flags(), access) {
                return Step::Fault;
            }
            if e.flags().contains(need) {
                return Step::Done(e);
            }
            mm.memory().platform().emulated().before_ad_update();
            // The locked A/D update: only onto the entry just walked. A PTE changed meanwhile
            // (zapped, downgraded) must not get bits back; walk it again instead.
            let new = e.with_flags(e.flags() | need);
            match slot.compare_exchange(e.bits(), new.bits(), Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => Step::Done(new),
                Err(_) => Step::Again,
            }
        });
        match step {
            Some(Step::Done(e)) => {
                return Some(TlbEntry {
                    frame: e.frame(),
                    flags: e.flags(),
                });
            }
            Some(Step::Again) => {}
            None | Some(Step::Fault) => return None,
        }
    }
}

/// Panics if `frame` is not a live user frame: `mm` drops a frame's last reference only after
/// the shootdown of every translation to it, which waits for accesses in flight.
fn check_live<P: HasTlb>(mm: &AddressSpace<P>, frame: PhysFrame, addr: u64) {
    let meta = mm.memory().frames().meta(frame);
    let refs = meta.refcount();
    let kind = meta.kind();
    assert!(
        refs > 0 && matches!(kind, FrameKind::Anon | FrameKind::Zero),
        "CPU {} reached frame {:#x} ({kind:?}, refcount {refs}) at {addr:#x}: freed before its \
         translation was shot down",
        mm.memory().platform().cpu_id(),
        frame.start_address().as_u64(),
    );
}
