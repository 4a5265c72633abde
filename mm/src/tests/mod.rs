//! Whole-subsystem host tests: a property test against a plain model, and a multi-threaded
//! stress test.

mod prop;
mod stress;
