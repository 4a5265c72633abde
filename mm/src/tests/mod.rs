//! Whole-subsystem host tests: a property test against a plain model, the same under seeded
//! random allocation failures, a multi-threaded stress test, and the emulated MMU/TLB against
//! the flush rules.

mod inject;
mod prop;
mod stress;
pub(crate) mod tlb;
