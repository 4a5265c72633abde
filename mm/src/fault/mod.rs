//! The page-fault handler: `handle_mm_fault`.
//!
//! ```text
//! handle_mm_fault
//!   fast path:  lock_vma_under_rcu -> handle_vma_fault under the VMA read lock
//!                  | no VMA / VMA locked / moved: VMA_LOCK_ABORT, fall back
//!                  | Retry (page table vanished under us): VMA_LOCK_RETRY, fall back
//!   fallback:   mmap_read_lock -> vma_lookup -> handle_vma_fault (repeat while Retry)
//!                  | no VMA, a VM_GROWSDOWN VMA above: drop the lock, expand_stack (mmap_lock
//!                    for write, vma_start_write of the stack), retake the read lock, look again
//! handle_vma_fault: access check -> handle_pte_fault
//!   PTE empty, private VMA            -> do_anonymous_page (zero frame on read, new frame on write)
//!   PTE empty, shared VMA             -> do_shared_page (the object's page, found or allocated)
//!   present, read-only, write access  -> do_wp_page (shared VMA or sole owner: reuse, else copy)
//!   present and sufficient            -> spurious (another CPU won): flush the local TLB entry
//! ```
//! A `Segv` is only ever decided with a lock that makes it true: under the VMA read lock for an
//! access the VMA forbids, under `mmap_lock` for "no VMA" (the lockless walk may have missed a
//! VMA that was being replaced).
//!
//! [`profile`] stamps the phase boundaries (compiled out without the `fault-profile` feature).

mod anon;
pub mod profile;

use crate::address_space::AddressSpace;
use crate::memory::FaultPolicy;
use crate::pgtable::USER_END;
use crate::platform::{Platform, VirtAddr};
use crate::stats::Event;
use crate::vma::{Prot, StartReadError, Vma, VmaReadGuard};
use profile::Stamp;

/// What an access tried to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// The faulting access (decoded from the #PF error code by the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// Whether the CPU was in user mode.
    pub user: bool,
}

impl Access {
    /// A user-mode access of `kind`.
    pub const fn user(kind: AccessKind) -> Self {
        Access { kind, user: true }
    }

    /// A kernel-mode access of `kind` (ring-0 workers touching user memory).
    pub const fn kernel(kind: AccessKind) -> Self {
        Access { kind, user: false }
    }

    /// Decodes an x86 #PF error code (bit 1: write, bit 2: user, bit 4: instruction fetch).
    pub const fn from_error_code(code: u64) -> Self {
        let kind = if code & (1 << 4) != 0 {
            AccessKind::Exec
        } else if code & (1 << 1) != 0 {
            AccessKind::Write
        } else {
            AccessKind::Read
        };
        Access {
            kind,
            user: code & (1 << 2) != 0,
        }
    }
}

/// Why a fault could not be resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegvReason {
    /// No VMA contains the address.
    NoVma,
    /// The VMA does not allow the access.
    AccessDenied,
    /// The address is outside the user half.
    NotUserAddress,
}

/// The outcome of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultResult {
    /// The access can be retried and will succeed (or fault again for a new reason).
    Resolved,
    /// The access is illegal.
    Segv {
        /// The faulting address.
        addr: u64,
        /// Why.
        reason: SegvReason,
    },
    /// No memory for a frame or a page table.
    Oom,
}

/// What a fault step under some lock achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done(FaultResult),
    /// Could not finish under the current lock; retry under `mmap_lock`.
    Retry,
}

/// How many times the lockless walk is redone after finding a just-detached VMA.
const MAX_MISS_RETRIES: usize = 8;

/// Handles a page fault at `addr` in `mm`.
///
/// Locks: none held on entry (in particular not `mmap_lock`: it may be taken here) and none on
/// exit. Not inside an RCU read section.
pub fn handle_mm_fault<P: Platform>(
    mm: &AddressSpace<P>,
    addr: u64,
    access: Access,
) -> FaultResult {
    let mem = mm.memory();
    mem.count(Event::Fault);
    if addr >= USER_END {
        return finish(
            mm,
            FaultResult::Segv {
                addr,
                reason: SegvReason::NotUserAddress,
            },
        );
    }
    if mem.fault_policy() == FaultPolicy::PerVmaLock
        && let Some(vma) = lock_vma_under_rcu(mm, addr)
    {
        match handle_vma_fault(mm, vma.vma(), addr, access) {
            Outcome::Done(r) => {
                mem.count(Event::VmaLockSuccess);
                return finish(mm, r);
            }
            Outcome::Retry => mem.count(Event::VmaLockRetry),
        }
    }
    mem.count(Event::MmapLockFallback);
    profile::stamp(&**mem.platform(), Stamp::Walk);
    // Lock order: mmap_lock (read) is the outermost lock.
    let mut g = mm.mmap_read_lock();
    loop {
        let Some(vma) = mm.vma_lookup(&g, addr) else {
            let below_stack = mm
                .vmas_in(addr..USER_END)
                .first()
                .is_some_and(|v| v.grows_down());
            if below_stack {
                // Growing changes the VMA set: only under mmap_lock for write.
                drop(g);
                if mm.expand_stack(addr).is_ok() {
                    // Lock order: mmap_lock (read), outermost.
                    g = mm.mmap_read_lock();
                    continue;
                }
            }
            return finish(
                mm,
                FaultResult::Segv {
                    addr,
                    reason: SegvReason::NoVma,
                },
            );
        };
        profile::stamp(&**mem.platform(), Stamp::Lock);
        if let Outcome::Done(r) = handle_vma_fault(mm, &vma, addr, access) {
            return finish(mm, r);
        }
    }
}

fn finish<P: Platform>(mm: &AddressSpace<P>, r: FaultResult) -> FaultResult {
    match r {
        FaultResult::Segv { .. } => mm.memory().count(Event::Segv),
        FaultResult::Oom => mm.memory().count(Event::Oom),
        FaultResult::Resolved => {}
    }
    r
}

/// `lock_vma_under_rcu`: finds the VMA containing `addr` with a lockless walk and read-locks
/// it. `None` (counted as `VMA_LOCK_ABORT`) sends the caller to the `mmap_lock` path.
///
/// Locks: none on entry; on `Some`, the VMA read lock (in the guard). The RCU read section
/// entered here is left before returning.
pub fn lock_vma_under_rcu<P: Platform>(
    mm: &AddressSpace<P>,
    addr: u64,
) -> Option<VmaReadGuard<'_, P>> {
    let mem = mm.memory();
    for _ in 0..MAX_MISS_RETRIES {
        let guard = {
            let rcu = mem.rcu().read_lock();
            let Some((_, vma)) = mm.tree().walk(&rcu, addr) else {
                break;
            };
            profile::stamp(&**mem.platform(), Stamp::Walk);
            vma.start_read(mm.mmap_lock(), mm.id())
        };
        match guard {
            Ok(g) => {
                profile::stamp(&**mem.platform(), Stamp::Lock);
                // The VMA may have been replaced between the walk and the lock: only its own
                // range (immutable) counts.
                if g.vma().contains(addr) {
                    return Some(g);
                }
                break;
            }
            Err(StartReadError::Detached) => mem.count(Event::VmaLockMiss),
            Err(StartReadError::Locked | StartReadError::NotOurs) => break,
        }
    }
    mem.count(Event::VmaLockAbort);
    None
}

/// Whether `prot` allows `access` (x86 cannot map write- or exec-only, so those imply read).
fn access_allowed(prot: Prot, access: Access) -> bool {
    match access.kind {
        AccessKind::Read => prot.intersects(Prot::READ | Prot::WRITE | Prot::EXEC),
        AccessKind::Write => prot.contains(Prot::WRITE),
        AccessKind::Exec => prot.contains(Prot::EXEC),
    }
}

/// Checks the access against `vma`, then resolves it in the page tables.
///
/// Locks: the VMA read lock of `vma` or `mmap_lock` for read, on entry and on exit; no
/// spinlock.
fn handle_vma_fault<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    access: Access,
) -> Outcome {
    debug_assert!(vma.contains(addr));
    debug_assert!(vma.lock().readers() > 0 || mm.mmap_lock().is_locked());
    if !access_allowed(vma.prot(), access) {
        return Outcome::Done(FaultResult::Segv {
            addr,
            reason: SegvReason::AccessDenied,
        });
    }
    handle_pte_fault(mm, vma, addr & !0xfff, access)
}

/// `handle_pte_fault`: allocates the page-table levels down to the PTE table, then dispatches
/// on the PTE.
///
/// Locks: VMA read lock or `mmap_lock` read on entry and exit. Takes and releases the PTE lock.
fn handle_pte_fault<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    access: Access,
) -> Outcome {
    let pt = mm.page_tables();
    let Ok(pmd) = pt.pmd_alloc(addr) else {
        return Outcome::Done(FaultResult::Oom);
    };
    if pt.pte_alloc(pmd).is_err() {
        return Outcome::Done(FaultResult::Oom);
    }
    // Lock order: VMA read lock / mmap_lock > PTE lock.
    let Some(pte) = pt.pte_offset_map_lock(addr) else {
        // A zap of a neighbouring VMA freed the table we just saw: it cannot under mmap_lock.
        return Outcome::Retry;
    };
    let entry = pte.get(addr);
    if entry.is_empty() {
        drop(pte);
        profile::stamp(&**mm.memory().platform(), Stamp::Pgtable);
        if let Some(link) = vma.shared() {
            return anon::do_shared_page(mm, vma, link, addr);
        }
        return anon::do_anonymous_page(mm, vma, addr, access);
    }
    if !entry.present() {
        // A PROT_NONE PTE in a VMA that now allows access (mprotect upgrades VMA and PTEs under
        // one write lock, so this is only reached if an upgrade left one behind): restore it.
        return anon::restore_protnone(mm, vma, addr, pte, entry);
    }
    if access.kind == AccessKind::Write && !entry.writable() {
        return anon::do_wp_page(mm, vma, addr, pte, entry);
    }
    drop(pte);
    // Spurious: a racing CPU resolved it, or this CPU's TLB held a stale entry.
    mm.memory()
        .platform()
        .flush_tlb_local(VirtAddr::new(addr), 1);
    Outcome::Done(FaultResult::Resolved)
}

#[cfg(all(test, not(loom)))]
mod tests;
