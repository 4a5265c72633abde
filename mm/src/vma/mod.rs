//! Virtual memory areas and their locks.
//!
//! A [`Vma`] is immutable apart from its lock: splitting, merging or changing the protection of
//! an area builds new VMAs (complete and write-locked before they are inserted) and detaches the
//! old ones. So a lockless reader that found a VMA can never see it half-changed; the per-VMA
//! lock (see `lock`) still orders faults against the page-table changes a writer makes while
//! the VMA is locked, and detaching tells a reader that its VMA went away.

mod lock;
pub mod shared;

use alloc::sync::Arc;
use core::marker::PhantomData;
use core::ops::Range;

pub use lock::{StartReadError, VmaLock};
pub use shared::{SharedAnon, ShmLink};

use crate::sync::{MmapLock, MmapWriteGuard, Park};

bitflags::bitflags! {
    /// Access a VMA allows (`PROT_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// `PROT_READ`.
        const READ = 1 << 0;
        /// `PROT_WRITE`.
        const WRITE = 1 << 1;
        /// `PROT_EXEC`.
        const EXEC = 1 << 2;
    }
}

bitflags::bitflags! {
    /// Properties of a VMA other than its protection (Linux's `vm_flags` beyond `VM_READ` ..).
    /// Adjacent VMAs merge only when these are equal too.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VmFlags: u32 {
        /// `VM_GROWSDOWN`: a stack; a fault below it grows it downwards (`expand_downwards`),
        /// and no other mapping is placed within `STACK_GUARD_GAP` below it.
        const GROWSDOWN = 1 << 8;
    }
}

/// What a VMA is apart from its range and lock: protection, flags, and the shared object it
/// maps (`None`: private anonymous memory). Adjacent VMAs merge when these are equal.
pub type VmaAttr = (Prot, VmFlags, Option<ShmLink>);

/// One mapped area `[start, end)` of an address space.
///
/// # Invariants
/// `start < end`, both page-aligned, inside the user half. `vm_mm` is the id of the address space
/// whose tree holds (or held) this VMA. Fields other than `lock` never change. A VMA with
/// `shared` maps the pages of that object (`MAP_SHARED`), never private copies.
// The lock comes first so that `vm_refcnt` shares a cache line with the `Arc` count, which a
// read guard also touches.
#[repr(C)]
pub struct Vma {
    lock: VmaLock,
    vm_start: u64,
    vm_end: u64,
    prot: Prot,
    flags: VmFlags,
    vm_mm: u64,
    shared: Option<ShmLink>,
}

impl Vma {
    /// A new VMA, detached and write-locked under `guard`, for address space `vm_mm`.
    pub fn new_locked<W: Park>(
        guard: &MmapWriteGuard<'_, W>,
        vm_mm: u64,
        range: Range<u64>,
        prot: Prot,
    ) -> Arc<Vma> {
        Self::new_locked_flags(guard, vm_mm, range, prot, VmFlags::empty())
    }

    /// [`new_locked`](Self::new_locked) with `flags`.
    pub fn new_locked_flags<W: Park>(
        guard: &MmapWriteGuard<'_, W>,
        vm_mm: u64,
        range: Range<u64>,
        prot: Prot,
        flags: VmFlags,
    ) -> Arc<Vma> {
        Self::new_locked_attr(guard, vm_mm, range, (prot, flags, None))
    }

    /// [`new_locked`](Self::new_locked) with all of its attributes.
    pub fn new_locked_attr<W: Park>(
        guard: &MmapWriteGuard<'_, W>,
        vm_mm: u64,
        range: Range<u64>,
        (prot, flags, shared): VmaAttr,
    ) -> Arc<Vma> {
        debug_assert!(
            range.start < range.end
                && range.start.is_multiple_of(4096)
                && range.end.is_multiple_of(4096)
        );
        // INVARIANT: checked by the callers (the ops validate their arguments).
        Arc::new(Vma {
            lock: VmaLock::new_locked(guard),
            vm_start: range.start,
            vm_end: range.end,
            prot,
            flags,
            vm_mm,
            shared,
        })
    }

    /// First address of the area.
    pub fn start(&self) -> u64 {
        self.vm_start
    }

    /// One past the last address of the area.
    pub fn end(&self) -> u64 {
        self.vm_end
    }

    /// `[start, end)`.
    pub fn range(&self) -> Range<u64> {
        self.vm_start..self.vm_end
    }

    /// The access the area allows.
    pub fn prot(&self) -> Prot {
        self.prot
    }

    /// Its flags (`VM_GROWSDOWN`).
    pub fn flags(&self) -> VmFlags {
        self.flags
    }

    /// The shared object it maps (`MAP_SHARED`), or `None` for private memory.
    pub fn shared(&self) -> Option<&ShmLink> {
        self.shared.as_ref()
    }

    /// Protection, flags and shared object: what must be equal for two VMAs to merge.
    pub fn attr(&self) -> VmaAttr {
        (self.prot, self.flags, self.shared.clone())
    }

    /// Whether it is a stack that grows down.
    pub fn grows_down(&self) -> bool {
        self.flags.contains(VmFlags::GROWSDOWN)
    }

    /// The id of the address space the VMA belongs to.
    pub fn vm_mm(&self) -> u64 {
        self.vm_mm
    }

    /// Whether `addr` is inside the area.
    pub fn contains(&self, addr: u64) -> bool {
        (self.vm_start..self.vm_end).contains(&addr)
    }

    /// The per-VMA lock.
    pub fn lock(&self) -> &VmaLock {
        &self.lock
    }

    /// `vma_start_read` for the address space `mm_id` whose `mmap_lock` is `mm`; on success the
    /// guard holds the read lock (and keeps the VMA alive).
    pub fn start_read<'a, W: Park>(
        self: &Arc<Self>,
        mm: &'a MmapLock<W>,
        mm_id: u64,
    ) -> Result<VmaReadGuard<'a, W>, StartReadError> {
        self.lock.start_read(mm, || self.vm_mm == mm_id)?;
        Ok(VmaReadGuard {
            vma: self.clone(),
            mm,
            _not_send: PhantomData,
        })
    }

    /// `vma_start_write`: write-locks the VMA until `guard` is dropped.
    pub fn start_write<W: Park>(&self, guard: &MmapWriteGuard<'_, W>) {
        self.lock.start_write(guard);
    }
}

impl core::fmt::Debug for Vma {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Vma({:#x}..{:#x} {:?} {:?}{})",
            self.vm_start,
            self.vm_end,
            self.prot,
            self.flags,
            if self.shared.is_some() { " shared" } else { "" }
        )
    }
}

/// Proof that a VMA is read-locked (`vma_start_read` succeeded); `vma_end_read` on drop.
#[must_use = "dropping the guard releases the VMA read lock at once"]
pub struct VmaReadGuard<'a, W: Park> {
    vma: Arc<Vma>,
    mm: &'a MmapLock<W>,
    _not_send: PhantomData<*const ()>,
}

impl<W: Park> VmaReadGuard<'_, W> {
    /// The locked VMA.
    pub fn vma(&self) -> &Vma {
        &self.vma
    }
}

impl<W: Park> Drop for VmaReadGuard<'_, W> {
    fn drop(&mut self) {
        self.vma.lock.end_read(self.mm);
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
