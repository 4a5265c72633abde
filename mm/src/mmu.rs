//! An emulated MMU for host tests and tools: loads and stores of user memory that walk the page
//! tables like the hardware (checking present/writable/user/NX, setting Accessed/Dirty), and on
//! a miss call [`handle_mm_fault`] and retry, like a CPU returning from the #PF handler.
//!
//! Unlike a real TLB it caches nothing, and a shootdown does not wait for an access that is
//! in flight: tests must not access a page while unmapping it on another thread.

use core::sync::atomic::Ordering;

use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::frame::mem;
use crate::mm::AddressSpace;
use crate::pgtable::{pte_flags, pte_frame};
use crate::platform::{PageTableFlags, Platform, VirtAddr};

/// Reads the 8-byte word at `addr` (8-aligned) as `access` would.
pub fn load<P: Platform>(mm: &AddressSpace<P>, addr: u64, user: bool) -> Result<u64, FaultResult> {
    let kind = AccessKind::Read;
    access(mm, addr, Access { kind, user }, |w| {
        w.load(Ordering::Relaxed)
    })
}

/// Writes the 8-byte word at `addr` (8-aligned) as `access` would.
pub fn store<P: Platform>(
    mm: &AddressSpace<P>,
    addr: u64,
    value: u64,
    user: bool,
) -> Result<(), FaultResult> {
    let kind = AccessKind::Write;
    access(mm, addr, Access { kind, user }, |w| {
        w.store(value, Ordering::Relaxed);
        0
    })
    .map(|_| ())
}

/// Fetches (reads) the word at `addr` as an instruction fetch.
pub fn fetch<P: Platform>(mm: &AddressSpace<P>, addr: u64) -> Result<u64, FaultResult> {
    access(mm, addr, Access::user(AccessKind::Exec), |w| {
        w.load(Ordering::Relaxed)
    })
}

fn access<P: Platform>(
    mm: &AddressSpace<P>,
    addr: u64,
    access: Access,
    op: impl Fn(&core::sync::atomic::AtomicU64) -> u64,
) -> Result<u64, FaultResult> {
    assert!(
        addr.is_multiple_of(8),
        "emulated accesses are aligned words"
    );
    let platform = mm.memory().platform();
    platform.preempt_disable();
    mm.activate_on(platform.cpu_id());
    platform.preempt_enable();
    loop {
        let done = mm.page_tables().with_pte(addr, |slot| {
            let e = slot.load(Ordering::Acquire);
            let f = pte_flags(e);
            let ok = f.contains(PageTableFlags::PRESENT)
                && (!access.user || f.contains(PageTableFlags::USER_ACCESSIBLE))
                && (access.kind != AccessKind::Write || f.contains(PageTableFlags::WRITABLE))
                && (access.kind != AccessKind::Exec || !f.contains(PageTableFlags::NO_EXECUTE));
            if !ok {
                return None;
            }
            let mut ad = PageTableFlags::ACCESSED;
            if access.kind == AccessKind::Write {
                ad |= PageTableFlags::DIRTY;
            }
            if !f.contains(ad) {
                slot.fetch_or(ad.bits(), Ordering::Relaxed);
            }
            let word = &mem::words(&**platform, pte_frame(e))[((addr & 0xfff) / 8) as usize];
            Some(op(word))
        });
        if let Some(Some(v)) = done {
            return Ok(v);
        }
        match handle_mm_fault(mm, VirtAddr::new(addr), access) {
            FaultResult::Resolved => continue,
            other => return Err(other),
        }
    }
}
