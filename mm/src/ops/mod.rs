//! Address-space operations: [`mmap`](crate::address_space::AddressSpace::mmap),
//! [`munmap`](crate::address_space::AddressSpace::munmap), [`mprotect`](crate::address_space::AddressSpace::mprotect),
//! [`madvise`](crate::address_space::AddressSpace::madvise),
//! [`brk`](crate::address_space::AddressSpace::brk), stack growth
//! ([`expand_stack`](crate::address_space::AddressSpace::expand_stack), from the fault path),
//! `fork`'s [`dup_mmap`](crate::address_space::AddressSpace::dup_mmap) (see its module),
//! [`mremap`](crate::address_space::AddressSpace::mremap), and
//! [`exit_mmap`](crate::address_space::AddressSpace::exit_mmap) for a process's exit.
//!
//! Every operation validates its arguments (an error, never a panic). `madvise` changes no VMA
//! and runs under read locks (see its module). The others take `mmap_lock` for write, and
//! rewrite the VMAs around the affected range with `rewrite`: it computes the new
//! layout (the edit applied, then adjacent VMAs of equal protection merged; a pure function of
//! the old layout, `plan_rewrite`), write-locks every
//! VMA over the edited range and every VMA that changes (`vma_start_write`), replaces the
//! changed ones in the tree with their replacements (complete and write-locked from birth) in
//! one tree write, so running out of memory leaves everything as it was, and detaches the old
//! ones. (An `mprotect` over more VMAs that stay apart than one tree write can store, which
//! only VMA flags make possible, goes a VMA at a time and may stop partway, as Linux's does.) Page-table changes of the edited range follow while everything is still locked, and
//! their flush token is flushed before the lock drops. Faults on the affected range meanwhile
//! fail the lockless path (VMA missing, detached or locked) and wait on `mmap_lock`.
//!
//! A VMA over the edited range is write-locked even when the layout keeps it as it is (a
//! `MAP_FIXED` mapping with the protection it already has over part of it): its pages still
//! change, and a fault under its read lock must not run while they do (`pgtable::zap`). The
//! outcome equals unmapping the range and mapping it anew: the same VMAs, the pages gone.
//!
//! Unmapping (`munmap`, and `mremap`'s shrink and move) ends differently: once the VMAs are
//! detached it downgrades `mmap_lock` to read (`mmap_write_downgrade`, which runs
//! `vma_end_write_all`) and zaps under the read lock, so faults on other VMAs waiting for
//! `mmap_lock` are not held up by the zap; the range has no VMA left for a fault to reach.
//! `mremap` moves PTEs to a new range with both ranges' VMAs write-locked (see its module).
//!
//! VMAs carry flags besides their protection (`VM_GROWSDOWN`); neighbours merge only when both
//! are equal, and `mprotect` keeps each VMA's flags. `brk` and stack growth are rewrites too:
//! `brk` edits the heap's pages with `rewrite`, and `expand_downwards` replaces the stack VMA
//! with a longer one, write-locking the old one first (see `stack`).

mod brk;
mod exit;
mod fork;
mod madvise;
mod mmap;
mod mprotect;
mod mremap;
mod munmap;
mod rewrite;
mod stack;

use core::ops::Range;

pub use fork::ForkError;
#[cfg(test)]
pub(crate) use fork::skip_parent_vma_lock;
pub use madvise::{
    MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_NORMAL, MADV_RANDOM,
    MADV_SEQUENTIAL, MADV_WILLNEED, MadviseError,
};
pub use mmap::{MapFlags, MmapError};
pub use mprotect::MprotectError;
pub use mremap::{MremapError, MremapFlags};
pub use munmap::MunmapError;
pub(crate) use rewrite::{TreeOutOfMemory, rewrite};
pub use stack::{ExpandError, STACK_GUARD_GAP, STACK_LIMIT};

use crate::pgtable::USER_END;

/// The lowest address a mapping may start at (page 0 stays unmapped to catch null pointers).
pub const MMAP_MIN_ADDR: u64 = 0x1000;
const PAGE: u64 = 4096;

/// What is wrong with an address range argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeError {
    /// Length zero.
    ZeroLength,
    /// Address not page-aligned.
    Unaligned,
    /// `addr + len` (rounded up to a page) overflows.
    Overflow,
    /// Not inside `[MMAP_MIN_ADDR, USER_END)`.
    OutOfRange,
}

/// `[addr, addr + len)` with `len` rounded up to pages, checked to lie in the user half.
pub(crate) fn user_range(addr: u64, len: u64) -> Result<Range<u64>, RangeError> {
    if len == 0 {
        return Err(RangeError::ZeroLength);
    }
    if !addr.is_multiple_of(PAGE) {
        return Err(RangeError::Unaligned);
    }
    let len = len.checked_add(PAGE - 1).ok_or(RangeError::Overflow)? & !(PAGE - 1);
    let end = addr.checked_add(len).ok_or(RangeError::Overflow)?;
    if addr < MMAP_MIN_ADDR || end > USER_END {
        return Err(RangeError::OutOfRange);
    }
    Ok(addr..end)
}

#[cfg(all(test, not(loom)))]
mod fork_tests;
#[cfg(all(test, not(loom)))]
mod madvise_tests;
#[cfg(all(test, not(loom)))]
mod mremap_tests;
#[cfg(all(test, not(loom)))]
mod shared_tests;
#[cfg(test)]
mod stack_tests;
#[cfg(all(test, not(loom)))]
mod tests;
