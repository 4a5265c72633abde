//! [`AddressSpace`]: one process's view of memory (Linux's `mm_struct`).
//!
//! It owns the `mmap_lock` (with `mm_lock_seq`), the maple tree of VMAs, the page tables, and the
//! mask of CPUs that may cache its translations (the targets of TLB shootdowns: a CPU joins when
//! it loads the root, [`AddressSpace::activate_on`], and leaves after it loaded another one,
//! [`AddressSpace::deactivate_on`]). The tree is read locklessly
//! under RCU by the fault fast path and changed only with `mmap_lock` held for write; see
//! `LOCKING.md` for who may touch what.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::frame::FrameAllocError;
use crate::maple::{MapleTree, ValidateError};
use crate::memory::Memory;
use crate::pgtable::{PageTables, USER_END, USER_PML4_ENTRIES};
use crate::platform::{CpuMask, Platform};
use crate::sync::{MmapLock, MmapReadGuard, MmapWriteGuard};
use crate::vma::Vma;

static NEXT_MM_ID: AtomicU64 = AtomicU64::new(1);

/// An address space.
///
/// # Invariants
/// Every VMA in `tree` is attached, has `vm_mm == id`, and is stored under exactly its own
/// range; VMAs do not overlap, lie in `[MMAP_MIN_ADDR, USER_END)`, and no two adjacent VMAs have
/// the same attributes (protection, flags, shared object and offset) (they are merged). PTEs exist only inside VMAs. The tree and the VMAs'
/// lock stamps change only with `mmap_lock` held for write.
pub struct AddressSpace<P: Platform> {
    id: u64,
    mmap_lock: MmapLock<P>,
    tree: MapleTree<Arc<Vma>, P>,
    pgtables: PageTables<P>,
    cpus: AtomicU64,
    mem: Arc<Memory<P>>,
    /// Linux's `mm->start_brk` and `mm->brk`: the heap is `[start_brk, brk)` (see `ops::brk`).
    /// Written only with `mmap_lock` held for write.
    pub(crate) start_brk: AtomicU64,
    pub(crate) brk: AtomicU64,
    /// Linux's `mm->mmap_base`: where the top-down search for free space starts (see
    /// `ops::mmap`). Written only with `mmap_lock` held for write.
    pub(crate) mmap_base: AtomicU64,
}

/// Why an address space is inconsistent (from [`AddressSpace::validate`]).
#[derive(Debug, PartialEq, Eq)]
pub enum MmValidateError {
    /// The tree's own invariants fail.
    Tree(ValidateError),
    /// A VMA is stored under a range other than its own.
    RangeMismatch {
        /// The range the tree maps to the VMA.
        stored: Range<u64>,
        /// The VMA's own `[vm_start, vm_end)`.
        vma: Range<u64>,
    },
    /// A VMA is detached, belongs to another mm, or lies outside the user half.
    BadVma {
        /// The offending VMA's range.
        vma: Range<u64>,
    },
    /// Two adjacent VMAs with the same protection, flags and shared object (at contiguous
    /// offsets) were not merged.
    Unmerged {
        /// The address where the first ends and the second starts.
        at: u64,
    },
}

impl<P: Platform> AddressSpace<P> {
    /// An empty address space with no kernel half.
    pub fn new(mem: &Arc<Memory<P>>) -> Result<Self, FrameAllocError> {
        Ok(Self::from_tables(mem, PageTables::new(mem.clone())?))
    }

    /// An empty address space whose root shares the kernel's half (PML4 entries 256..512).
    pub fn with_kernel_half(
        mem: &Arc<Memory<P>>,
        kernel_half: &[u64; USER_PML4_ENTRIES],
    ) -> Result<Self, FrameAllocError> {
        Ok(Self::from_tables(
            mem,
            PageTables::with_kernel_half(mem.clone(), kernel_half)?,
        ))
    }

    fn from_tables(mem: &Arc<Memory<P>>, pgtables: PageTables<P>) -> Self {
        AddressSpace {
            id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed),
            mmap_lock: MmapLock::new(mem.platform().clone()),
            tree: MapleTree::new(mem.rcu().clone()),
            pgtables,
            cpus: AtomicU64::new(0),
            mem: mem.clone(),
            start_brk: AtomicU64::new(0),
            brk: AtomicU64::new(0),
            mmap_base: AtomicU64::new(USER_END),
        }
    }

    /// Sets where `mmap` starts looking for free space, top down (Linux's `mmap_base`: exec puts
    /// it below the room the stack may grow into). It is [`USER_END`] until set. Rounded down to
    /// a page.
    ///
    /// Locks: takes `mmap_lock` for write.
    pub fn set_mmap_base(&self, base: u64) {
        // Lock order: mmap_lock (write), outermost.
        let _g = self.mmap_write_lock();
        self.mmap_base
            .store(base.min(USER_END) & !0xfff, Ordering::Relaxed);
    }

    /// The unique id VMAs carry as `vm_mm`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The machine state.
    pub fn memory(&self) -> &Arc<Memory<P>> {
        &self.mem
    }

    /// The page tables (root for CR3: `page_tables().root()`).
    pub fn page_tables(&self) -> &PageTables<P> {
        &self.pgtables
    }

    /// The `mmap_lock`.
    pub fn mmap_lock(&self) -> &MmapLock<P> {
        &self.mmap_lock
    }

    /// `mmap_read_lock`. Lock order: outermost.
    pub fn mmap_read_lock(&self) -> MmapReadGuard<'_, P> {
        self.mmap_lock.read()
    }

    /// `mmap_write_lock`. Lock order: outermost. Dropping the guard runs `vma_end_write_all`.
    pub fn mmap_write_lock(&self) -> MmapWriteGuard<'_, P> {
        self.mmap_lock.write()
    }

    pub(crate) fn tree(&self) -> &MapleTree<Arc<Vma>, P> {
        &self.tree
    }

    /// Records that `cpu` is about to run this address space: call it *before* loading its root
    /// into CR3, because from that write on the CPU may cache its translations and shootdowns
    /// must reach it. Writes the shared mask only if the bit is clear (only `cpu` itself clears
    /// it, so its own load tells).
    pub fn activate_on(&self, cpu: usize) {
        let bit = 1u64 << cpu;
        if self.cpus.load(Ordering::Relaxed) & bit == 0 {
            // A locked RMW, a full barrier: set before the CR3 write and the walks after it
            // (pairs with the fence in `cpus`).
            self.cpus.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Records that `cpu` has left this address space: call it *after* the CR3 write that
    /// loaded another root, which flushed this address space's translations from the CPU's TLB
    /// and paging-structure caches (no PCIDs, no global user pages). Shootdowns skip it from now
    /// on, until it is activated again.
    pub fn deactivate_on(&self, cpu: usize) {
        // The CR3 write is serializing and this is a locked RMW: the clear is visible only after
        // the flush happened, so whoever reads the mask without the bit finds nothing cached.
        self.cpus.fetch_and(!(1u64 << cpu), Ordering::SeqCst);
    }

    /// The CPUs that may cache translations of this address space: the targets of a shootdown.
    ///
    /// Call it after changing the PTEs the shootdown is for. Each CPU either is in the returned
    /// mask, or caches nothing of this address space that is older than those changes:
    /// - a CPU that deactivated before our load did so after its CR3 switch flushed it, and
    ///   walks another root since;
    /// - a CPU that activates after our load: its `activate_on` (a full barrier, before it loads
    ///   CR3) and our fence (after the PTE stores, before the load) form a Dekker pair: since we
    ///   did not see its bit, its page walks see our PTEs.
    pub fn cpus(&self) -> CpuMask {
        // Orders the caller's PTE stores before this load (x86 may pass a load over a store).
        core::sync::atomic::fence(Ordering::SeqCst);
        CpuMask(self.cpus.load(Ordering::Relaxed))
    }

    /// `vma_lookup` with `mmap_lock` held (read or write): the VMA containing `addr`.
    pub fn vma_lookup(&self, _proof: &MmapReadGuard<'_, P>, addr: u64) -> Option<Arc<Vma>> {
        debug_assert!(_proof.holds(&self.mmap_lock));
        self.find_vma_locked(addr)
    }

    pub(crate) fn find_vma_locked(&self, addr: u64) -> Option<Arc<Vma>> {
        let rcu = self.mem.rcu().read_lock();
        self.tree.walk(&rcu, addr).map(|(_, v)| v.clone())
    }

    /// The VMAs overlapping `range`, in order (a snapshot; stable while `mmap_lock` is held).
    pub fn vmas_in(&self, range: Range<u64>) -> Vec<Arc<Vma>> {
        let rcu = self.mem.rcu().read_lock();
        self.tree
            .iter(&rcu, range)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every VMA, in order.
    pub fn vmas(&self) -> Vec<Arc<Vma>> {
        self.vmas_in(0..USER_END)
    }

    /// Checks the invariants of the tree and of the VMAs in it. Takes `mmap_lock` for read.
    pub fn validate(&self) -> Result<(), MmValidateError> {
        let _g = self.mmap_read_lock();
        self.tree.validate().map_err(MmValidateError::Tree)?;
        let rcu = self.mem.rcu().read_lock();
        let mut prev: Option<&Arc<Vma>> = None;
        for (stored, vma) in self.tree.iter(&rcu, 0..USER_END) {
            if stored != vma.range() {
                return Err(MmValidateError::RangeMismatch {
                    stored,
                    vma: vma.range(),
                });
            }
            if !vma.lock().is_attached()
                || vma.vm_mm() != self.id
                || vma.start() < crate::ops::MMAP_MIN_ADDR
                || vma.end() > USER_END
            {
                return Err(MmValidateError::BadVma { vma: vma.range() });
            }
            if let Some(p) = prev
                && p.end() == vma.start()
                && p.attr() == vma.attr()
            {
                return Err(MmValidateError::Unmerged { at: vma.start() });
            }
            prev = Some(vma);
        }
        Ok(())
    }
}
