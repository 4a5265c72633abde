//! Shared parts of the differential test programs (`src/bin/*`): each is a plain `std` program
//! that prints facts only, never addresses, timings, ids or anything else that differs between
//! runs or machines, so that its output on Linux and on the kernel can be compared line for line.
//! Output of threads is gathered and printed after `join`, in a fixed order.

pub mod sys;
