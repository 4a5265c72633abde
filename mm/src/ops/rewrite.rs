//! [`rewrite`]: the VMA replacement behind `mmap`, `munmap` and `mprotect` (see the `ops`
//! header), in two steps: [`plan_rewrite`] computes, from the old layout alone, which VMAs go
//! and which come (a pure function, property-tested against a page-by-page model), and
//! [`apply`] carries the plan out under the locks, in one tree write.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::Range;

use super::PAGE;
use crate::address_space::AddressSpace;
use crate::pgtable::USER_END;
use crate::platform::Platform;
use crate::sync::MmapWriteGuard;
use crate::vma::{Prot, Vma};

/// The tree could not allocate a node while VMAs were being replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeOutOfMemory;

/// A VMA as the plan sees it: its range and protection.
pub(crate) type Seg = (Range<u64>, Prot);

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

/// Gives `edit` the protection `new` (`None`: unmapped), merging with neighbours of equal
/// protection, as described in the `ops` header. Returns the VMAs that were replaced (already
/// write-locked and detached).
///
/// Locks: `mmap_lock` for write (`g`) on entry and exit; write-locks every VMA over `edit`
/// (the caller changes its pages next) and every VMA it replaces, until `g` drops.
pub(crate) fn rewrite<P: Platform>(
    mm: &AddressSpace<P>,
    g: &MmapWriteGuard<'_, P>,
    edit: Range<u64>,
    new: Option<Prot>,
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
    let layout: Vec<Seg> = old.iter().map(|v| (v.range(), v.prot())).collect();
    match plan_rewrite(&layout, edit, new) {
        Some(plan) => apply(mm, g, old, plan),
        None => Ok(Vec::new()),
    }
}

/// The plan for giving `edit` the protection `new` (`None`: unmapped), given `old`: the VMAs
/// that overlap `edit` widened by a page on each side (sorted, disjoint, adjacent ones of equal
/// protection merged, as in any address space). The new layout is the edit applied, then
/// adjacent VMAs of equal protection merged; VMAs it has exactly as they were are kept, and the
/// others replaced. `None` when nothing changes.
pub(crate) fn plan_rewrite(
    old: &[Seg],
    edit: Range<u64>,
    new: Option<Prot>,
) -> Option<RewritePlan> {
    // The new layout of the area the old VMAs and the edit cover.
    let mut segs: Vec<Seg> = Vec::with_capacity(old.len() + 2);
    for (r, p) in old {
        if r.start < edit.start {
            segs.push((r.start..r.end.min(edit.start), *p));
        }
        if r.end > edit.end {
            segs.push((r.start.max(edit.end)..r.end, *p));
        }
    }
    if let Some(p) = new {
        segs.push((edit.clone(), p));
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
            kept.push(seg.0.clone());
        } else {
            removed.push(i);
        }
    }
    let added: Vec<Seg> = merged
        .into_iter()
        .filter(|(r, _)| !kept.contains(r))
        .collect();
    if removed.is_empty() && added.is_empty() {
        return None;
    }
    // No kept VMA overlaps the span: a kept VMA that met the edit would contain it and have its
    // protection, and then nothing changes at all.
    let span = removed
        .iter()
        .map(|&i| old[i].0.clone())
        .chain(added.iter().map(|(r, _)| r.clone()))
        .fold(edit, |a, r| a.start.min(r.start)..a.end.max(r.end));
    debug_assert!(
        kept.iter()
            .all(|k| k.end <= span.start || k.start >= span.end)
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
        .map(|(r, p)| Vma::new_locked(g, mm.id(), r, p))
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

    /// Pages of the model's small address space (page 0 is never mapped, as in an `mm`).
    const PAGES: u64 = 24;

    fn prot_of(i: u8) -> Prot {
        [Prot::READ, Prot::READ | Prot::WRITE, Prot::empty()][usize::from(i % 3)]
    }

    /// The merged layout of a page-by-page model (page -> protection).
    fn layout(model: &BTreeMap<u64, Prot>) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::new();
        for (&page, &p) in model {
            let r = page * PAGE..(page + 1) * PAGE;
            match out.last_mut() {
                Some((last, lp)) if last.end == r.start && *lp == p => last.end = r.end,
                _ => out.push((r, p)),
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
            pages in proptest::collection::vec(proptest::option::of(0u8..3), PAGES as usize),
            start in 1..PAGES,
            len in 1..8u64,
            new in proptest::option::of(0u8..3),
        ) {
            let before: BTreeMap<u64, Prot> = (1..PAGES)
                .filter_map(|i| pages[i as usize].map(|p| (i, prot_of(p))))
                .collect();
            let end = (start + len).min(PAGES);
            let new = new.map(prot_of);
            let mut after = before.clone();
            for page in start..end {
                match new {
                    Some(p) => after.insert(page, p),
                    None => after.remove(&page),
                };
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
            let plan = plan_rewrite(&old, edit.clone(), new);
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
            for seg in &plan.added {
                prop_assert!(!old.contains(seg), "{:?} replaced by itself", seg);
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
