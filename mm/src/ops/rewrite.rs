//! [`rewrite`]: the VMA replacement behind `mmap`, `munmap` and `mprotect` (see the `ops`
//! header), in two steps: [`plan_rewrite`] computes, from the old layout alone, which VMAs go
//! and which come (a pure function, property-tested against a page-by-page model), and
//! [`apply`] carries the plan out under the locks, in one tree write.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

use super::PAGE;
use crate::address_space::AddressSpace;
use crate::maple::MapleTree;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;
use crate::vma::{Prot, VmFlags, Vma};

/// The tree could not allocate a node while VMAs were being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeOutOfMemory;

/// What a VMA is apart from its range: adjacent VMAs merge when these are equal.
pub(crate) type Attr = crate::vma::VmaAttr;

/// A VMA as the plan sees it: its range and attributes.
pub(crate) type Seg = (Range<u64>, Attr);

/// What a rewrite does to its range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Edit {
    /// Unmap it (`munmap`).
    Unmap,
    /// Map it anew with these attributes (`mmap`).
    Map(Attr),
    /// Give every VMA over it this protection, keeping its flags (`mprotect`; the range must
    /// be mapped throughout, or the holes stay holes).
    Protect(Prot),
}

/// What a rewrite changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RewritePlan {
    /// Indices, into the old VMAs given to [`plan_rewrite`], of those replaced (ascending).
    pub(crate) removed: Vec<usize>,
    /// Their replacements, in address order.
    pub(crate) added: Vec<Seg>,
    /// The one run of addresses that changes: the edit, the VMAs replaced (whole) and their
    /// replacements. No kept VMA overlaps it.
    pub(crate) span: Range<u64>,
}

/// Gives `edit` the protection `new` (`None`: unmapped) and no flags, merging with neighbours of
/// equal protection, as described in the `ops` header. Returns the VMAs that were replaced
/// (already write-locked and detached).
///
/// Locks: `mmap_lock` for write (`g`) on entry and exit; write-locks every VMA over `edit`
/// (the caller changes its pages next) and every VMA it replaces, until `g` drops.
pub(crate) fn rewrite<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    edit: Range<u64>,
    new: Option<Prot>,
) -> Result<Vec<Arc<Vma>>, TreeOutOfMemory> {
    let new = match new {
        Some(p) => Edit::Map((p, VmFlags::empty(), None)),
        None => Edit::Unmap,
    };
    rewrite_edit(mm, g, edit, new)
}

/// [`rewrite`] with any [`Edit`].
///
/// Locks: as [`rewrite`].
pub(crate) fn rewrite_edit<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    edit: Range<u64>,
    new: Edit,
) -> Result<Vec<Arc<Vma>>, TreeOutOfMemory> {
    debug_assert!(g.holds(mm.mmap_lock()));
    let window = edit.start.saturating_sub(PAGE)..edit.end.saturating_add(PAGE).min(USER_END);
    let old = mm.vmas_in(window);
    for v in old
        .iter()
        .filter(|v| v.start() < edit.end && v.end() > edit.start)
    {
        // Lock order: mmap_lock (write) > VMA write lock.
        v.start_write(g);
    }
    let layout: Vec<Seg> = old.iter().map(|v| (v.range(), v.attr())).collect();
    match plan_rewrite(&layout, edit.clone(), new.clone()) {
        Some(plan) if plan.added.len() > MapleTree::<Arc<Vma>, P>::MAX_SPAN_ENTRIES => {
            // Only `Protect` over VMAs that stay apart (their flags differ) gets here: `Map` and
            // `Unmap` leave at most three pieces. One VMA at a time then, each a small rewrite;
            // running out of memory midway leaves the first ones changed, as Linux's mprotect
            // may.
            debug_assert!(matches!(new, Edit::Protect(_)));
            let mut removed = Vec::new();
            for v in old
                .iter()
                .filter(|v| v.start() < edit.end && v.end() > edit.start)
            {
                let part = v.start().max(edit.start)..v.end().min(edit.end);
                removed.extend(rewrite_edit(mm, g, part, new.clone())?);
            }
            Ok(removed)
        }
        Some(plan) => apply(mm, g, old, plan),
        None => Ok(Vec::new()),
    }
}

/// The plan for applying `new` to `edit`, given `old`: the VMAs that overlap `edit` widened by
/// a page on each side (sorted, disjoint, adjacent ones of equal attributes merged, as in any
/// address space). The new layout is the edit applied, then adjacent VMAs of equal attributes
/// merged; VMAs it has exactly as they were are kept, and the others replaced. `None` when
/// nothing changes.
pub(crate) fn plan_rewrite(old: &[Seg], edit: Range<u64>, new: Edit) -> Option<RewritePlan> {
    // The new layout of the area the old VMAs and the edit cover.
    let mut segs: Vec<Seg> = Vec::with_capacity(old.len() + 2);
    for (r, a) in old {
        if r.start < edit.start {
            segs.push((r.start..r.end.min(edit.start), a.clone()));
        }
        if r.end > edit.end {
            segs.push((r.start.max(edit.end)..r.end, a.clone()));
        }
        if let Edit::Protect(p) = new {
            let inside = r.start.max(edit.start)..r.end.min(edit.end);
            if inside.start < inside.end {
                segs.push((inside, (p, a.1, a.2.clone())));
            }
        }
    }
    if let Edit::Map(a) = &new {
        segs.push((edit.clone(), a.clone()));
    }
    segs.sort_by_key(|(r, _)| r.start);
    let mut merged: Vec<Seg> = Vec::with_capacity(segs.len());
    for (r, p) in segs {
        match merged.last_mut() {
            Some((last, lp)) if last.end == r.start && *lp == p => last.end = r.end,
            _ => merged.push((r, p)),
        }
    }

    // Keep VMAs the rewrite leaves exactly as they were; build the others.
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    for (i, seg) in old.iter().enumerate() {
        if merged.contains(seg) {
            kept.push(i);
        } else {
            removed.push(i);
        }
    }
    let mut added: Vec<Seg> = merged
        .into_iter()
        .filter(|seg| !kept.iter().any(|&k| old[k] == *seg))
        .collect();
    if removed.is_empty() && added.is_empty() {
        return None;
    }
    let mut span = removed
        .iter()
        .map(|&i| old[i].0.clone())
        .chain(added.iter().map(|(r, _)| r.clone()))
        .fold(edit, |a, r| a.start.min(r.start)..a.end.max(r.end));
    // A kept VMA that meets the span is replaced by a copy of itself: the span is stored in
    // one write and would trim it. With `Map` or `Unmap` there is none (a kept VMA that met the
    // edit would contain it with its attributes, and then nothing changes at all); `Protect`
    // keeps a VMA whose protection is already the new one beside one it changes that it cannot
    // merge with (other flags, a hole between them).
    while let Some(pos) = kept
        .iter()
        .position(|&k| old[k].0.start < span.end && old[k].0.end > span.start)
    {
        let k = kept.remove(pos);
        span = span.start.min(old[k].0.start)..span.end.max(old[k].0.end);
        removed.push(k);
        added.push(old[k].clone());
    }
    removed.sort_unstable();
    added.sort_by_key(|(r, _)| r.start);
    debug_assert!(
        kept.iter()
            .all(|&k| old[k].0.end <= span.start || old[k].0.start >= span.end)
    );
    Some(RewritePlan {
        removed,
        added,
        span,
    })
}

/// Carries out `plan`, made from `old`: write-locks the VMAs it replaces, builds their
/// replacements (write-locked from birth) and swaps them in with one tree write. If that runs
/// out of memory nothing changed, and the old VMAs, still in the tree and attached, are only
/// write-locked until `g` drops. The tree drops its copies of the removed VMAs after a grace
/// period.
///
/// Locks: `mmap_lock` for write (`g`) on entry and exit.
fn apply<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    old: Vec<Arc<Vma>>,
    plan: RewritePlan,
) -> Result<Vec<Arc<Vma>>, TreeOutOfMemory> {
    let span = plan.span;
    let removed: Vec<Arc<Vma>> = old
        .into_iter()
        .enumerate()
        .filter(|(i, _)| plan.removed.binary_search(i).is_ok())
        .map(|(_, v)| v)
        .collect();
    let added: Vec<Arc<Vma>> = plan
        .added
        .into_iter()
        .map(|(r, a)| Vma::new_locked_attr(g, mm.id(), r, a))
        .collect();
    for v in &removed {
        // Lock order: mmap_lock (write) > VMA write lock.
        v.start_write(g);
    }
    for v in &added {
        // Complete and write-locked (stamped by `new_locked`) before the tree can show it.
        v.lock().mark_attached(g);
    }
    let entries = added.into_iter().map(|v| (v.range(), v)).collect();
    if mm.tree().store_span(span, entries).is_err() {
        return Err(TreeOutOfMemory);
    }
    for v in &removed {
        v.lock().mark_detached(g);
    }
    Ok(removed)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use alloc::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::vma::{SharedAnon, ShmLink};

    /// Pages of the model's small address space (page 0 is never mapped, as in an `mm`).
    const PAGES: u64 = 24;

    fn prot_of(i: u8) -> Prot {
        [Prot::READ, Prot::READ | Prot::WRITE, Prot::empty()][usize::from(i % 3)]
    }

    /// Two shared objects for the plans to map (never faulted: they hold no frames).
    fn objects() -> [Arc<SharedAnon>; 2] {
        let none = alloc::sync::Weak::<crate::testutil::NoFrames>::new();
        [SharedAnon::new(none.clone()), SharedAnon::new(none)]
    }

    /// Attributes by number: the three protections, a read-write stack, and shared mappings:
    /// two of object 0 whose offsets are not contiguous with each other, one of object 1.
    fn attr_of(i: u8, objs: &[Arc<SharedAnon>; 2]) -> Attr {
        let rw = Prot::READ | Prot::WRITE;
        let link = |o: usize, delta: u64| {
            Some(ShmLink {
                obj: objs[o].clone(),
                delta,
            })
        };
        match i % 7 {
            3 => (rw, VmFlags::GROWSDOWN, None),
            4 => (rw, VmFlags::empty(), link(0, 0)),
            5 => (rw, VmFlags::empty(), link(0, 3)),
            6 => (Prot::READ, VmFlags::empty(), link(1, 0)),
            n => (prot_of(n), VmFlags::empty(), None),
        }
    }

    /// The merged layout of a page-by-page model (page -> attributes).
    fn layout(model: &BTreeMap<u64, Attr>) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::new();
        for (&page, p) in model {
            let r = page * PAGE..(page + 1) * PAGE;
            match out.last_mut() {
                Some((last, lp)) if last.end == r.start && lp == p => last.end = r.end,
                _ => out.push((r, p.clone())),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Applied to the whole layout, the plan gives exactly the merged layout of the model
        /// with the edit applied; it replaces only what changes, inside its span.
        #[test]
        fn a_plan_turns_the_layout_into_the_edited_model(
            pages in proptest::collection::vec(proptest::option::of(0u8..7), PAGES as usize),
            start in 1..PAGES,
            len in 1..8u64,
            kind in 0u8..3,
            what in 0u8..7,
        ) {
            let objs = objects();
            let before: BTreeMap<u64, Attr> = (1..PAGES)
                .filter_map(|i| pages[i as usize].map(|p| (i, attr_of(p, &objs))))
                .collect();
            let end = (start + len).min(PAGES);
            let new = match kind {
                0 => Edit::Unmap,
                1 => Edit::Map(attr_of(what, &objs)),
                _ => Edit::Protect(prot_of(what)),
            };
            let mut after = before.clone();
            for page in start..end {
                match &new {
                    Edit::Map(a) => {
                        after.insert(page, a.clone());
                    }
                    Edit::Unmap => {
                        after.remove(&page);
                    }
                    Edit::Protect(p) => {
                        if let Some(a) = after.get_mut(&page) {
                            a.0 = *p;
                        }
                    }
                }
            }
            let all = layout(&before);
            let edit = start * PAGE..end * PAGE;
            // What `rewrite` passes: the VMAs overlapping the edit widened by a page.
            let window = edit.start - PAGE..edit.end + PAGE;
            let old: Vec<Seg> = all
                .iter()
                .filter(|(r, _)| r.start < window.end && r.end > window.start)
                .cloned()
                .collect();
            let plan = plan_rewrite(&old, edit.clone(), new.clone());
            let Some(plan) = plan else {
                prop_assert_eq!(layout(&after), all, "a plan that changes nothing changed something");
                return Ok(());
            };
            prop_assert!(plan.removed.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(plan.span.start <= edit.start && edit.end <= plan.span.end);
            let removed: Vec<&Seg> = plan.removed.iter().map(|&i| &old[i]).collect();
            for (r, _) in removed.iter().copied().chain(&plan.added) {
                prop_assert!(plan.span.start <= r.start && r.end <= plan.span.end);
            }
            if !matches!(new, Edit::Protect(_)) {
                for seg in &plan.added {
                    prop_assert!(!old.contains(seg), "{:?} replaced by itself", seg);
                }
            }
            let mut result: Vec<Seg> = all
                .iter()
                .filter(|seg| !removed.contains(seg))
                .cloned()
                .chain(plan.added.iter().cloned())
                .collect();
            result.sort_by_key(|(r, _)| r.start);
            for seg in &result {
                if !plan.added.contains(seg) {
                    prop_assert!(seg.0.end <= plan.span.start || seg.0.start >= plan.span.end);
                }
            }
            prop_assert_eq!(result, layout(&after));
            prop_assert_ne!(layout(&after), all, "a change planned where nothing changes");
        }
    }
}
