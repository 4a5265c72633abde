//! A read of a kernel-half address kills the process with SIGSEGV: whatever the kernel maps up
//! there is never user-accessible. Prints "before", then reads 0xffff_ffff_8000_0000 (where
//! kernels place their image). Nothing may be printed after.

use difftest::sys;

const KERNEL_IMAGE: usize = 0xffff_ffff_8000_0000;

fn main() {
    println!("before");
    // SAFETY: a user program cannot read the kernel half: the load faults and ends the process.
    let v = unsafe { sys::load_byte(KERNEL_IMAGE) };
    println!("after: read {v} from the kernel half");
}
