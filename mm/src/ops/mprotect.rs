//! `mprotect`: changes the protection of a mapped range.

use super::rewrite::{Edit, rewrite_edit};
use super::{RangeError, TreeOutOfMemory, user_range};
use crate::address_space::AddressSpace;
use crate::platform::Platform;
use crate::vma::Prot;

/// Why `mprotect` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MprotectError {
    /// The address or length is invalid.
    BadRange(RangeError),
    /// Unknown protection bits.
    BadProt,
    /// Part of the range is not mapped (nothing was changed).
    NotMapped,
    /// No memory for the VMA tree.
    OutOfMemory,
}

impl<P: Platform> AddressSpace<P> {
    /// `mprotect(addr, len, prot)`: splits VMAs at the range's ends, gives the range `prot`
    /// (each VMA keeps its flags), merges with neighbours of the same protection, and downgrades the PTEs (with a shootdown
    /// if a permission was removed). Permissions are added lazily: a write fault on a page made
    /// writable decides in `do_wp_page`. A zero length succeeds without doing anything. Replaced
    /// VMAs and tree nodes are freed after an RCU grace period ([`Rcu::throttle`] bounds them).
    ///
    /// Locks: takes `mmap_lock` for write; may block after releasing it.
    ///
    /// [`Rcu::throttle`]: crate::rcu::Rcu::throttle
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), MprotectError> {
        if !Prot::all().contains(prot) {
            return Err(MprotectError::BadProt);
        }
        let range = match user_range(addr, len) {
            Ok(r) => r,
            Err(RangeError::ZeroLength) if addr.is_multiple_of(4096) => return Ok(()),
            Err(e) => return Err(MprotectError::BadRange(e)),
        };
        // Lock order: mmap_lock (write), outermost.
        let g = self.mmap_write_lock();
        let mut covered = range.start;
        for v in self.vmas_in(range.clone()) {
            if v.start() > covered {
                break;
            }
            covered = v.end();
        }
        if covered < range.end {
            return Err(MprotectError::NotMapped);
        }
        rewrite_edit(self, &g, range.clone(), Edit::Protect(prot))
            .map_err(|TreeOutOfMemory| MprotectError::OutOfMemory)?;
        let flush = self.page_tables().change_protection(&g, range, prot);
        flush.flush(&**self.memory().platform(), self.cpus());
        drop(g);
        self.memory().rcu().throttle();
        Ok(())
    }
}
