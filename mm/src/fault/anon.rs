//! Anonymous memory: `do_anonymous_page`, `do_shared_page` and `do_wp_page`.
//!
//! A shared VMA (`MAP_SHARED`) maps its object's pages: found or allocated (zeroed) in the
//! object under its lock, mapped writable if the VMA allows, on reads too (never the zero frame,
//! never copied), so a write through any mapping is seen by all of them.
//!
//! Frames are allocated *before* the PTE lock is taken (allocation may have to go to the shared
//! pool), and the PTE is re-checked under the lock: of two CPUs faulting the same page, the one
//! that finds the PTE already filled frees its frame and reports success, and the access is
//! retried against the winner's mapping.
//!
//! A copy-on-write (`wp_page_copy`) replaces the frame behind a present PTE, which other CPUs
//! may have cached. It goes in Linux's order: copy, lock, re-check, clear the old PTE and shoot
//! it down (still under the PTE lock, `ptep_clear_flush`), and only then install the new one.
//! Once any CPU can reach the copy, none can still read the old frame through a stale
//! translation: otherwise a CPU could see data another wrote to the copy after something
//! published later, yet read the old value of the page itself.

use crate::address_space::AddressSpace;
use crate::fault::profile::{self, Stamp};
use crate::fault::{AccessKind, FaultResult, Outcome};
use crate::frame::{FrameKind, FrameRef};
use crate::pgtable::{Pte, PteGuard, pte_flags_for};
use crate::platform::{PageTableFlags, Platform, VirtAddr};
use crate::stats::Event;
use crate::vma::{ShmLink, Vma};

use super::Access;

/// `do_anonymous_page`: fills an empty PTE. A read maps the shared zero frame read-only; a
/// write maps a fresh zeroed frame writable.
///
/// Locks: VMA read lock or `mmap_lock` read on entry and exit; takes and drops the PTE lock.
pub(super) fn do_anonymous_page<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    access: Access,
) -> Outcome {
    let mem = mm.memory();
    let frames = mem.frames();
    let (frame, flags) = if access.kind == AccessKind::Write {
        let Ok(f) = frames.alloc_zeroed(FrameKind::Anon) else {
            return Outcome::Done(FaultResult::Oom);
        };
        let flags =
            pte_flags_for(vma.prot(), true) | PageTableFlags::ACCESSED | PageTableFlags::DIRTY;
        (f, flags)
    } else {
        let flags = pte_flags_for(vma.prot(), false) | PageTableFlags::ACCESSED;
        (frames.get(frames.zero_frame()), flags)
    };
    profile::stamp(&**mem.platform(), Stamp::Frame);
    // Lock order: VMA read lock / mmap_lock > PTE lock.
    let Some(pte) = mm.page_tables().pte_offset_map_lock(addr) else {
        return Outcome::Retry;
    };
    if !pte.get(addr).is_empty() {
        drop(pte);
        mem.count(Event::FaultRaceLost);
        return Outcome::Done(FaultResult::Resolved);
    }
    if frame.frame() == frames.zero_frame() {
        mem.count(Event::ZeroFrameMapped);
    } else {
        frames.meta(frame.frame()).map();
        mem.count(Event::AnonFrameMapped);
    }
    pte.set(addr, Pte::new(frame.into_raw(), flags));
    drop(pte);
    profile::stamp(&**mem.platform(), Stamp::Pte);
    Outcome::Done(FaultResult::Resolved)
}

/// `do_shared_page` (Linux's `do_shared_fault` on shmem): fills an empty PTE of a shared VMA
/// with the object's page at that index, allocating a zeroed one if the object has none. The
/// PTE gets a reference and a map count of its own; the object keeps its own reference.
///
/// Locks: VMA read lock or `mmap_lock` read on entry and exit; takes and drops the object's
/// lock (a leaf, never under the PTE lock), then the PTE lock.
pub(super) fn do_shared_page<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    link: &ShmLink,
    addr: u64,
) -> Outcome {
    let mem = mm.memory();
    let frames = mem.frames();
    let index = link.index(addr);
    let frame = match link.obj.find(index) {
        // The object keeps its pages while a VMA (ours) holds it: the frame is in use.
        Some(f) => frames.get(f),
        None => {
            let Ok(new) = frames.alloc_zeroed(FrameKind::Anon) else {
                return Outcome::Done(FaultResult::Oom);
            };
            // Another fault may have stored a page meanwhile: then ours goes back.
            let ours = new.frame();
            let (f, stored) = link.obj.insert(index, ours);
            if stored {
                // The allocation's reference is the object's now; the PTE takes another.
                let _ = new.into_raw();
                mem.count(Event::AnonFrameMapped);
            } else {
                drop(new);
            }
            frames.get(f)
        }
    };
    let mut flags = pte_flags_for(vma.prot(), true) | PageTableFlags::ACCESSED;
    if flags.contains(PageTableFlags::WRITABLE) {
        flags |= PageTableFlags::DIRTY;
    }
    // Lock order: VMA read lock / mmap_lock > PTE lock.
    let Some(pte) = mm.page_tables().pte_offset_map_lock(addr) else {
        return Outcome::Retry;
    };
    if !pte.get(addr).is_empty() {
        drop(pte);
        mem.count(Event::FaultRaceLost);
        return Outcome::Done(FaultResult::Resolved);
    }
    frames.meta(frame.frame()).map();
    pte.set(addr, Pte::new(frame.into_raw(), flags));
    drop(pte);
    Outcome::Done(FaultResult::Resolved)
}

/// `do_wp_page`: a write to a present, read-only PTE in a writable VMA. An anonymous frame
/// mapped once and owned by nobody else is made writable in place ([`wp_page_reuse`]); the
/// zero frame (or a shared frame) is copied into a new frame ([`wp_page_copy`]).
///
/// Locks: on entry the VMA read lock or `mmap_lock` read, and the PTE lock (`pte`, consumed);
/// on exit the same without the PTE lock.
pub(super) fn do_wp_page<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    pte: PteGuard<'_, P>,
    orig: Pte,
) -> Outcome {
    let frames = mm.memory().frames();
    let old = orig.frame();
    if vma.shared().is_some() {
        // `wp_page_shared`: the page is the object's, written in place by every mapping (the
        // PTE is read-only only because the VMA was, until an mprotect).
        return wp_page_reuse(mm, addr, pte, orig);
    }
    if old != frames.zero_frame() {
        let meta = frames.meta(old);
        if meta.mapcount() == 1 && meta.refcount() == 1 {
            return wp_page_reuse(mm, addr, pte, orig);
        }
    }
    wp_page_copy(mm, vma, addr, pte, orig)
}

/// `wp_page_reuse`: the frame behind `orig` is ours alone, so the PTE is made writable (and
/// dirty) in place; only this CPU may cache the read-only entry that faulted, so it flushes it
/// locally.
///
/// Locks: as [`do_wp_page`].
fn wp_page_reuse<P: Platform>(
    mm: &AddressSpace<P>,
    addr: u64,
    pte: PteGuard<'_, P>,
    orig: Pte,
) -> Outcome {
    let mem = mm.memory();
    let new = orig.with_flags(orig.flags() | PageTableFlags::WRITABLE | PageTableFlags::DIRTY);
    // If the MMU changed A/D meanwhile the access just faults again.
    if pte.replace(addr, orig, new).is_ok() {
        mem.count(Event::WpReuse);
    }
    drop(pte);
    mem.platform().flush_tlb_local(VirtAddr::new(addr), 1);
    Outcome::Done(FaultResult::Resolved)
}

/// `wp_page_copy`: copies the frame behind `orig` (zero-fills for the zero frame) into a new
/// frame and maps that writable in its place, in the order the module header gives. The copy
/// is made with the PTE lock dropped; the shootdown of the old translation is sent with it
/// held.
///
/// Locks: as [`do_wp_page`]; takes the PTE lock again to install the copy.
fn wp_page_copy<P: Platform>(
    mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    pte: PteGuard<'_, P>,
    orig: Pte,
) -> Outcome {
    let mem = mm.memory();
    let frames = mem.frames();
    let (old, zero) = (orig.frame(), frames.zero_frame());
    // Keeps the source alive while copying without the lock.
    let src = frames.get(old);
    drop(pte);

    let new = if old == zero {
        frames.alloc_zeroed(FrameKind::Anon)
    } else {
        frames
            .alloc(FrameKind::Anon)
            .inspect(|f| crate::frame::mem::copy(&**mem.platform(), f.frame(), src.frame()))
    };
    let Ok(new) = new else {
        return Outcome::Done(FaultResult::Oom);
    };
    // Lock order: VMA read lock / mmap_lock > PTE lock.
    let Some(pte) = mm.page_tables().pte_offset_map_lock(addr) else {
        return Outcome::Retry;
    };
    let cur = pte.get(addr);
    if cur.frame() != old || !cur.present() || cur.writable() {
        // Another CPU resolved it first.
        drop(pte);
        mem.count(Event::FaultRaceLost);
        return Outcome::Done(FaultResult::Resolved);
    }
    let flags = pte_flags_for(vma.prot(), true) | PageTableFlags::ACCESSED | PageTableFlags::DIRTY;
    frames.meta(new.frame()).map();
    // `ptep_clear_flush`: other CPUs may cache the old read-only translation. Until the new PTE
    // is set, they can only read the old data, which nobody can have overwritten yet, and the
    // others fault and wait for this lock. The old entry's A/D bits die with it.
    let _ = pte.take(addr);
    mem.platform().shootdown(mm.cpus(), VirtAddr::new(addr), 1);
    pte.set(addr, Pte::new(new.into_raw(), flags));
    // The reference the replaced mapping held, dropped once the PTE lock is.
    let replaced = FrameRef::from_raw(frames, old);
    if old != zero {
        frames.meta(old).unmap();
    }
    drop(pte);
    drop(replaced);
    drop(src);
    mem.count(Event::WpCopy);
    Outcome::Done(FaultResult::Resolved)
}

/// Makes a leftover `PROT_NONE` PTE present again with the VMA's (read-only) permissions.
///
/// Locks: VMA read lock or `mmap_lock` read, and the PTE lock (`pte`, consumed) on entry; the
/// PTE lock is released on exit.
pub(super) fn restore_protnone<P: Platform>(
    _mm: &AddressSpace<P>,
    vma: &Vma,
    addr: u64,
    pte: PteGuard<'_, P>,
    orig: Pte,
) -> Outcome {
    let _ = pte.replace(
        addr,
        orig,
        orig.with_flags(pte_flags_for(vma.prot(), false)),
    );
    Outcome::Done(FaultResult::Resolved)
}
