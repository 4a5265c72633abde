//! The per-CPU reader word, padded to its own cache lines so that readers on different CPUs never
//! share a line.

use crate::primitive::AtomicU64;

/// Bits of the word that count nested read sections.
pub(super) const NEST_BITS: u32 = 16;
pub(super) const NEST_MASK: u64 = (1 << NEST_BITS) - 1;
/// Grace-period numbers are kept modulo 2^48 (the bits above the nesting count).
const SEQ_MASK: u64 = u64::MAX >> NEST_BITS;

/// One CPU's reader state: `(snapshot of gp_seq at outermost entry) << NEST_BITS | nesting`.
///
/// 128-byte alignment keeps it alone on its line and on the adjacent line the x86 prefetcher
/// pulls in pairs.
#[repr(align(128))]
pub(super) struct CpuWord {
    pub(super) ctr: AtomicU64,
}

impl CpuWord {
    pub(super) fn new() -> Self {
        CpuWord {
            ctr: AtomicU64::new(0),
        }
    }
}

/// The word of an outermost section entered while `gp_seq == gp`, with nesting `nest`.
pub(super) fn pack(gp: u64, nest: u64) -> u64 {
    ((gp & SEQ_MASK) << NEST_BITS) | nest
}

/// The grace-period snapshot stored in a word.
pub(super) fn snapshot(word: u64) -> u64 {
    word >> NEST_BITS
}

/// `a >= b` for grace-period numbers taken modulo 2^48 (valid while they are less than 2^47
/// apart, i.e. always: a section would have to outlive 2^47 grace periods).
pub(super) fn seq_ge(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) & SEQ_MASK) < (1 << 47)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_ge(5, 5));
        assert!(seq_ge(6, 5));
        assert!(!seq_ge(4, 5));
        assert!(seq_ge(snapshot(pack(SEQ_MASK + 2, 1)), SEQ_MASK));
        assert!(!seq_ge(SEQ_MASK, 1));
        assert_eq!(pack(3, 2) & NEST_MASK, 2);
    }
}
