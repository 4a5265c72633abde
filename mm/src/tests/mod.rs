//! Whole-subsystem host tests: a property test against a plain model, a multi-threaded stress
//! test, and the emulated MMU/TLB against the flush rules.

mod prop;
mod stress;
pub(crate) mod tlb;
