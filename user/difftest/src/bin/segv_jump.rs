//! A jump to an unmapped address kills the process with SIGSEGV: prints "before", then calls
//! code at a user-half address that nothing maps. Nothing may be printed after.

use difftest::sys::{self, UNMAPPED_USER};

fn main() {
    println!("before");
    // SAFETY: nothing is mapped at UNMAPPED_USER: the instruction fetch faults and the process
    // ends there; no code runs.
    unsafe { sys::call_address(UNMAPPED_USER) };
    println!("after: a call to an unmapped address returned");
}
