//! x86-64 4-level page tables in (emulated or real) physical memory.
//!
//! Entries use the hardware format ([`PageTableFlags`]) and are atomic words, because the MMU
//! sets Accessed/Dirty bits behind the kernel's back and lockless walkers read them; the value
//! one access reads or writes is a [`Pte`].
//!
//! # Protocol
//! - **Upper levels** (PML4, PDPT, PD) are allocated on demand and installed by compare-and-swap
//!   (`install`): of two CPUs racing to fill an empty entry, one wins and the other frees its
//!   table. Upper tables are freed only when the address space is torn down, so a walker may hold
//!   a reference to one for as long as it borrows the [`PageTables`].
//! - **PTE tables** (last level) are guarded by the split lock in their frame's metadata:
//!   [`PageTables::pte_offset_map_lock`] enters an RCU read section, reads the PMD entry, locks
//!   that table's lock and re-checks that the PMD entry still points to the table. Only then may
//!   PTEs be changed (through the returned [`PteGuard`]).
//! - **Zap** (`zap`) clears PTEs under the PTE lock and collects the frames in a
//!   [`ZapFlush`] token; they are freed only after the TLB shootdown the token performs. A PTE
//!   table left empty is unhooked from its PMD entry *under its lock* and freed after an RCU grace
//!   period, so a walker that read the old PMD entry either fails the re-check or finishes with
//!   the table before it is reused. After `mmap_write_downgrade`,
//!   [`PageTables::zap_detached`] unhooks only tables no VMA meets.
//!   [`PageTables::zap_pages`] (`MADV_DONTNEED`, under a read
//!   lock, faults running) clears PTEs the same way but never unhooks a table.
//! - **Move** (`move_ptes`, for `mremap`) carries PTEs to another range under the source and
//!   the destination tables' locks (source first, destination nested), with `mmap_lock` held
//!   for write and both ranges' VMAs write-locked; the source range is shot down before its
//!   tables are freed or it is mapped again.
//! - The kernel half of the root (PML4 entries 256..512) belongs to the kernel: it is copied in
//!   at creation ([`PageTables::with_kernel_half`]) and never walked or freed here.

#[allow(unsafe_code)]
mod floor;
mod install;
mod move_ptes;
mod pte;
mod zap;

use alloc::sync::Arc;
use core::marker::PhantomData;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use install::Installed;
pub use pte::{PTE_PROTNONE, Pte};
pub use zap::{ProtectFlush, ZapFlush, ZapPagesLock, pte_flags_for};

use crate::frame::{FrameAllocError, FrameKind, mem};
use crate::memory::Memory;
use crate::platform::{PageTableFlags, PhysFrame, Platform};
use crate::rcu::RcuReadGuard;
use crate::stats::Event;
use crate::sync::RawSpinGuard;

/// One past the highest user address (the lower canonical half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// PML4 entries of the user half.
pub const USER_PML4_ENTRIES: usize = 256;
/// Bytes mapped by one PTE table.
pub const PMD_SIZE: u64 = 1 << 21;
/// Flags of an upper-level entry: permissions are decided at the last level.
const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE);

/// The index of `addr` in its table at `level` (4 = PML4 ... 1 = PTE table).
fn index(addr: u64, level: u32) -> usize {
    ((addr >> (12 + 9 * (level - 1))) & 511) as usize
}

/// The page tables of one address space.
///
/// # Invariants
/// `root` is a PML4 frame owned by this value. Every present entry in its user half, and below,
/// points to a page-table frame owned by this value (upper levels) or to a user frame it holds
/// a reference to (last level; the zero frame is not counted).
pub struct PageTables<P: Platform> {
    mem: Arc<Memory<P>>,
    root: PhysFrame,
}

impl<P: Platform> PageTables<P> {
    /// Empty tables (no kernel half).
    pub fn new(mem: Arc<Memory<P>>) -> Result<Self, FrameAllocError> {
        let root = mem.frames().alloc_zeroed(FrameKind::PageTable)?.into_raw();
        // INVARIANT: an empty root owns nothing.
        Ok(PageTables { mem, root })
    }

    /// Empty user half, with PML4 entries 256..512 copied from `kernel_half` (the kernel's own
    /// root, entry for entry), so the kernel stays mapped while this root is in CR3.
    pub fn with_kernel_half(
        mem: Arc<Memory<P>>,
        kernel_half: &[u64; USER_PML4_ENTRIES],
    ) -> Result<Self, FrameAllocError> {
        let pt = Self::new(mem)?;
        let root = pt.table(pt.root);
        for (slot, &e) in root[USER_PML4_ENTRIES..].iter().zip(kernel_half.iter()) {
            slot.store(e, Ordering::Relaxed);
        }
        Ok(pt)
    }

    /// The root table (the value for CR3).
    pub fn root(&self) -> PhysFrame {
        self.root
    }

    /// The machine state these tables live in.
    pub fn memory(&self) -> &Arc<Memory<P>> {
        &self.mem
    }

    fn table(&self, frame: PhysFrame) -> &[AtomicU64; mem::WORDS] {
        mem::words(&**self.mem.platform(), frame)
    }

    /// The PMD entry (level-2 entry) covering `addr`, allocating missing upper levels.
    /// Upper levels are installed by CAS; they are unhooked only by
    /// [`free_user_tables`](Self::free_user_tables) (`exit_mmap`), under `mmap_lock` for write
    /// with every VMA write-locked or gone. So the caller holds a VMA read lock or `mmap_lock`
    /// (the fault path), or owns the tables outright (a fork's child, tests).
    pub fn pmd_alloc(&self, addr: u64) -> Result<&AtomicU64, FrameAllocError> {
        debug_assert!(addr < USER_END);
        let mut table = self.table(self.root);
        for level in [4, 3] {
            let slot = &table[index(addr, level)];
            let e = self.ensure_table(slot)?;
            table = self.table(e.frame());
        }
        Ok(&table[index(addr, 2)])
    }

    /// `pte_alloc`: makes `pmd` point to a PTE table if it does not.
    pub fn pte_alloc(&self, pmd: &AtomicU64) -> Result<(), FrameAllocError> {
        self.ensure_table(pmd).map(|_| ())
    }

    /// The present entry in `slot`, installing a fresh zeroed table if it is empty
    /// ([`install`] has the protocol).
    fn ensure_table(&self, slot: &AtomicU64) -> Result<Pte, FrameAllocError> {
        let frames = self.mem.frames();
        let got = install::ensure_table(slot, || {
            frames
                .alloc_zeroed(FrameKind::PageTable)
                .map(|new| Pte::new(new.into_raw(), TABLE_FLAGS).bits())
        })?;
        match got {
            Installed::Present(_) => {}
            Installed::Ours(_) => self.mem.count(Event::PgtableAlloc),
            Installed::Theirs { discarded, .. } => {
                self.mem.count(Event::PgtableInstallRaceLost);
                frames.put(Pte::from_bits(discarded).frame());
            }
        }
        Ok(Pte::from_bits(got.entry()))
    }

    /// The PMD entry covering `addr` if the upper levels exist (no allocation).
    fn pmd_lookup(&self, addr: u64) -> Option<&AtomicU64> {
        let mut table = self.table(self.root);
        for level in [4, 3] {
            let e = Pte::from_bits(table[index(addr, level)].load(Ordering::Acquire));
            if !e.present() {
                return None;
            }
            table = self.table(e.frame());
        }
        Some(&table[index(addr, 2)])
    }

    /// `pte_offset_map_lock`: the PTE table covering `addr`, locked by its split lock, or `None`
    /// if there is none (never allocated, or freed meanwhile: call [`pte_alloc`](Self::pte_alloc)
    /// and retry). Lock order: PTE lock inside `mmap_lock`/VMA lock; the RCU read section it
    /// enters keeps the table's frame from being reused while we look at it.
    pub fn pte_offset_map_lock(&self, addr: u64) -> Option<PteGuard<'_, P>> {
        self.pte_lock_as(addr, false)
    }

    /// [`pte_offset_map_lock`](Self::pte_offset_map_lock) while holding another PTE lock: the
    /// lock is taken nested ([`LockClass::PteNested`](crate::sync::LockClass)). Only `mremap`
    /// does this, with `mmap_lock` held for write (see `move_ptes`).
    fn pte_offset_map_lock_nested(&self, addr: u64) -> Option<PteGuard<'_, P>> {
        self.pte_lock_as(addr, true)
    }

    fn pte_lock_as(&self, addr: u64, nested: bool) -> Option<PteGuard<'_, P>> {
        let rcu = self.mem.rcu().read_lock();
        let pmd = self.pmd_lookup(addr)?;
        loop {
            let e = pmd.load(Ordering::Acquire);
            if !Pte::from_bits(e).present() {
                return None;
            }
            let frame = Pte::from_bits(e).frame();
            #[cfg(test)]
            tests::before_pte_lock();
            // Lock order: PTE lock (innermost but the frame caches).
            let lock = self.mem.frames().meta(frame).pte_lock();
            let lock = if nested {
                lock.lock_nested()
            } else {
                lock.lock()
            };
            // Unhooking a table happens under this lock, so if the entry still points here the
            // table stays ours until we unlock.
            if pmd.load(Ordering::Relaxed) == e {
                return Some(PteGuard {
                    table: self.table(frame),
                    frame,
                    base: addr & !(PMD_SIZE - 1),
                    pmd,
                    _lock: lock,
                    _rcu: rcu,
                    _not_send: PhantomData,
                });
            }
        }
    }

    /// The PTE for `addr` as the MMU would see it now (empty if any level is missing).
    /// Lockless, for the emulated MMU and for checks.
    pub fn lookup_pte(&self, addr: u64) -> Pte {
        self.with_pte(addr, |pte| Pte::from_bits(pte.load(Ordering::Acquire)))
            .unwrap_or(Pte::EMPTY)
    }

    /// Runs `f` on the PTE slot for `addr`, as a hardware walk would reach it (no lock; under
    /// RCU, so the PTE table is not reused meanwhile). `None` if any level is missing.
    pub fn with_pte<R>(&self, addr: u64, f: impl FnOnce(&AtomicU64) -> R) -> Option<R> {
        let _rcu = self.mem.rcu().read_lock();
        let e = Pte::from_bits(self.pmd_lookup(addr)?.load(Ordering::Acquire));
        if !e.present() {
            return None;
        }
        Some(f(&self.table(e.frame())[index(addr, 1)]))
    }

    /// Page-table frames currently reachable from the user half, root included (for checks).
    pub fn count_tables(&self) -> usize {
        fn walk<P: Platform>(pt: &PageTables<P>, frame: PhysFrame, level: u32) -> usize {
            let slots = if level == 4 {
                &pt.table(frame)[..USER_PML4_ENTRIES]
            } else {
                &pt.table(frame)[..]
            };
            let mut total = 1;
            if level > 1 {
                for e in slots
                    .iter()
                    .map(|e| Pte::from_bits(e.load(Ordering::Relaxed)))
                {
                    if e.present() {
                        total += walk(pt, e.frame(), level - 1);
                    }
                }
            }
            total
        }
        walk(self, self.root, 4)
    }

    /// Frees every table of the user half and drops the references of every frame mapped in
    /// it. `&mut self`: no walker can be inside.
    fn free_user_half(&mut self) {
        let root = self.root;
        self.free_level(root, 4);
    }

    fn free_level(&self, frame: PhysFrame, level: u32) {
        let slots = self.table(frame);
        let slots = if level == 4 {
            &slots[..USER_PML4_ENTRIES]
        } else {
            &slots[..]
        };
        let frames = self.mem.frames();
        for slot in slots {
            let e = Pte::from_bits(slot.swap(0, Ordering::Relaxed));
            if level == 1 {
                if e.holds_frame() {
                    let f = e.frame();
                    if f != frames.zero_frame() {
                        frames.meta(f).unmap();
                    }
                    frames.put(f);
                }
            } else if e.present() {
                let child = e.frame();
                self.free_level(child, level - 1);
                frames.put(child);
            }
        }
    }
}

impl<P: Platform> Drop for PageTables<P> {
    fn drop(&mut self) {
        self.free_user_half();
        self.mem.frames().put(self.root);
    }
}

/// Proof that the PTE table covering `[base, base + 2 MiB)` is locked (its split lock held,
/// inside an RCU read section); PTE changes are made through it.
#[must_use = "dropping the guard releases the PTE lock at once"]
pub struct PteGuard<'a, P: Platform> {
    table: &'a [AtomicU64; mem::WORDS],
    frame: PhysFrame,
    base: u64,
    pmd: &'a AtomicU64,
    // Field order is drop order: unlock, then leave the RCU read section.
    _lock: RawSpinGuard<'a>,
    _rcu: RcuReadGuard<'a, P>,
    _not_send: PhantomData<*const ()>,
}

impl<P: Platform> PteGuard<'_, P> {
    fn slot(&self, addr: u64) -> &AtomicU64 {
        debug_assert!(
            addr.wrapping_sub(self.base) < PMD_SIZE,
            "address outside the locked table"
        );
        &self.table[index(addr, 1)]
    }

    /// The PTE for `addr`.
    pub fn get(&self, addr: u64) -> Pte {
        Pte::from_bits(self.slot(addr).load(Ordering::Relaxed))
    }

    /// Sets the PTE for `addr` (not-present to present needs no TLB flush).
    pub fn set(&self, addr: u64, entry: Pte) {
        // Release: the frame's contents (zeroed, copied) are visible to whoever sees the entry.
        self.slot(addr).store(entry.bits(), Ordering::Release);
    }

    /// Replaces the PTE for `addr` if it is still `old` (the MMU may have set A/D meanwhile);
    /// on failure, returns what it holds now.
    pub fn replace(&self, addr: u64, old: Pte, new: Pte) -> Result<Pte, Pte> {
        self.slot(addr)
            .compare_exchange(old.bits(), new.bits(), Ordering::AcqRel, Ordering::Relaxed)
            .map(Pte::from_bits)
            .map_err(Pte::from_bits)
    }

    /// Clears the PTE for `addr`, returning what it held (with any A/D bits the MMU set).
    pub fn take(&self, addr: u64) -> Pte {
        Pte::from_bits(self.slot(addr).swap(0, Ordering::AcqRel))
    }

    /// Whether every PTE of the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.iter().all(|e| e.load(Ordering::Relaxed) == 0)
    }

    /// Unhooks the (empty) table from its PMD entry; the caller frees its frame after an RCU
    /// grace period. Walkers that read the old PMD entry fail their re-check under this lock.
    fn unhook(&self) -> PhysFrame {
        debug_assert!(self.is_empty());
        self.pmd.store(0, Ordering::Release);
        self.frame
    }

    /// The first address the table maps.
    pub fn base(&self) -> u64 {
        self.base
    }
}

/// Splits `range` at 2 MiB boundaries (one piece per PTE table).
pub(crate) fn pmd_chunks(range: Range<u64>) -> impl Iterator<Item = Range<u64>> {
    let mut at = range.start;
    core::iter::from_fn(move || {
        if at >= range.end {
            return None;
        }
        let next = ((at | (PMD_SIZE - 1)) + 1).min(range.end);
        let chunk = at..next;
        at = next;
        Some(chunk)
    })
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests;
