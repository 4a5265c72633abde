//! The structural invariants of the tree, checked from the root (under the writer lock; tests
//! call it after every step).

use super::node::{INTERNAL_MIN, INTERNAL_SLOTS, LEAF_MIN, LEAF_SLOTS, NodeRef};
use super::write::range_size;

/// The first broken invariant found, with where it was found: `min` is the first key of the
/// node, `slot` the index of the offending slot in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidateError {
    /// The root and the recorded height disagree.
    BadRoot {
        /// The recorded height.
        height: usize,
    },
    /// An empty tree must have no root node.
    EmptyRootLeaf,
    /// A leaf above the bottom level, or an internal node at it (leaves must all be level).
    BadHeight {
        /// The node's first key.
        min: u64,
    },
    /// A node holds fewer slots than a node of its kind may (the root: 1 entry or 2 children)
    /// or more than fit.
    BadFill {
        /// The node's first key.
        min: u64,
        /// How many slots it holds.
        end: usize,
    },
    /// A pivot is not above the previous one or not below the node's maximum.
    BadPivot {
        /// The node's first key.
        min: u64,
        /// The pivot's index.
        slot: usize,
    },
    /// An internal slot in use holds no child.
    MissingChild {
        /// The node's first key.
        min: u64,
        /// The empty slot's index.
        slot: usize,
    },
    /// The gap recorded for a child is not the largest empty range below it.
    BadGap {
        /// The parent's first key.
        min: u64,
        /// The child's slot index.
        slot: usize,
        /// The gap the parent records.
        recorded: u64,
        /// The largest empty range found below the child.
        actual: u64,
    },
    /// Two empty ranges touch (they must be one slot, or gaps would be understated).
    AdjacentEmpty {
        /// Where the second empty range starts.
        at: u64,
    },
    /// An entry contains the last key, which no `[start, end)` range can.
    EntryAtMax,
    /// A dead (replaced) or freed node is reachable.
    DeadNode {
        /// The node's first key.
        min: u64,
    },
    /// The number of entries differs from the recorded length.
    BadLen {
        /// Entries found by walking the tree.
        counted: usize,
        /// The length the tree records.
        recorded: usize,
    },
}

struct State {
    entries: usize,
    nodes: usize,
    prev_empty: bool,
}

/// Checks the tree and returns how many nodes it has.
pub(super) fn validate(root: u64, height: usize, len: usize) -> Result<usize, ValidateError> {
    let Some(root) = NodeRef::from_word(root) else {
        if height != 0 {
            return Err(ValidateError::BadRoot { height });
        }
        return if len == 0 {
            Ok(0)
        } else {
            Err(ValidateError::BadLen {
                counted: 0,
                recorded: len,
            })
        };
    };
    if height == 0 {
        return Err(ValidateError::BadRoot { height });
    }
    if root.is_leaf() && root.end() == 1 && root.slot(0) == 0 {
        return Err(ValidateError::EmptyRootLeaf);
    }
    let mut st = State {
        entries: 0,
        nodes: 0,
        prev_empty: false,
    };
    check(root, height, 0, u64::MAX, true, &mut st)?;
    if st.entries != len {
        return Err(ValidateError::BadLen {
            counted: st.entries,
            recorded: len,
        });
    }
    Ok(st.nodes)
}

/// Checks the subtree at `n` (height `h`, covering `[min, max]`); returns its largest gap.
fn check(
    n: NodeRef,
    h: usize,
    min: u64,
    max: u64,
    root: bool,
    st: &mut State,
) -> Result<u64, ValidateError> {
    if n.is_poisoned() || n.is_dead() {
        return Err(ValidateError::DeadNode { min });
    }
    st.nodes += 1;
    if n.is_leaf() != (h == 1) {
        return Err(ValidateError::BadHeight { min });
    }
    let end = n.end();
    let (least, most) = match (n.is_leaf(), root) {
        (true, true) => (1, LEAF_SLOTS),
        (true, false) => (LEAF_MIN, LEAF_SLOTS),
        (false, true) => (2, INTERNAL_SLOTS),
        (false, false) => (INTERNAL_MIN, INTERNAL_SLOTS),
    };
    if end < least || end > most {
        return Err(ValidateError::BadFill { min, end });
    }
    let mut lo = min;
    let mut gap = 0;
    for i in 0..end {
        let hi = if i == end - 1 { max } else { n.pivot(i) };
        if hi < lo || (i < end - 1 && hi >= max) {
            return Err(ValidateError::BadPivot { min, slot: i });
        }
        let w = n.slot(i);
        if n.is_leaf() {
            if w == 0 {
                if st.prev_empty {
                    return Err(ValidateError::AdjacentEmpty { at: lo });
                }
                gap = gap.max(range_size(lo, hi));
            } else {
                if hi == u64::MAX {
                    return Err(ValidateError::EntryAtMax);
                }
                st.entries += 1;
            }
            st.prev_empty = w == 0;
        } else {
            let child =
                NodeRef::from_word(w).ok_or(ValidateError::MissingChild { min, slot: i })?;
            let actual = check(child, h - 1, lo, hi, false, st)?;
            if n.gap(i) != actual {
                return Err(ValidateError::BadGap {
                    min,
                    slot: i,
                    recorded: n.gap(i),
                    actual,
                });
            }
            gap = gap.max(actual);
        }
        lo = hi.wrapping_add(1);
    }
    Ok(gap)
}
