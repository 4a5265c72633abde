//! Bad pointers handed to system calls get `EFAULT` and leave the process running: pointers into
//! unmapped user memory, null, and the kernel half (which must fail the range check even when
//! something is mapped there). Also shows which check comes first when two fail (a bad fd beats a
//! bad pointer). Prints each call's result as `ERRNAME(n)` or `ok`.

use difftest::sys::{self, Errno, KERNEL_HALF, UNMAPPED_USER, nr, outcome};

/// Where kernels place their image: mapped, but never for user access.
const KERNEL_IMAGE: usize = 0xffff_ffff_8000_0000;

fn show(what: &str, r: Result<usize, Errno>) {
    println!("{what}: {}", outcome(&r));
}

/// `nr` with a kernel-writable pointer argument aimed at `addr`, none of which is ours.
fn into(nr: usize, args: [usize; 6]) -> Result<usize, Errno> {
    // SAFETY: every pointer in `args` is an address the program never maps (the kernel half,
    // UNMAPPED_USER or null), so nothing of ours can be written.
    unsafe { sys::call_into_unmapped(nr, args) }
}

fn main() {
    show(
        "write unmapped user pointer",
        sys::write_raw(1, UNMAPPED_USER, 10),
    );
    show("write null pointer", sys::write_raw(1, 0, 10));
    show(
        "write kernel-half pointer",
        sys::write_raw(1, KERNEL_HALF, 10),
    );
    show(
        "write kernel image pointer",
        sys::write_raw(1, KERNEL_IMAGE, 10),
    );
    show(
        "write ending past the user half",
        sys::write_raw(1, KERNEL_HALF - 4, 10),
    );
    show(
        "write bad fd and bad pointer",
        sys::write_raw(99, KERNEL_HALF, 10),
    );
    show(
        "write 0 bytes from a valid pointer",
        sys::write_raw(1, "x".as_ptr() as usize, 0),
    );

    show(
        "writev iovec array in kernel half",
        sys::writev_raw(1, KERNEL_HALF, 1),
    );
    let iov = [KERNEL_HALF, 10usize];
    show(
        "writev iovec base in kernel half",
        sys::writev_raw(1, iov.as_ptr() as usize, 1),
    );
    let iov = [UNMAPPED_USER, 10usize];
    show(
        "writev iovec base unmapped",
        sys::writev_raw(1, iov.as_ptr() as usize, 1),
    );

    show(
        "read into kernel-half pointer",
        into(nr::READ, [0, KERNEL_HALF, 10, 0, 0, 0]),
    );
    show(
        "read into kernel image pointer",
        into(nr::READ, [0, KERNEL_IMAGE, 10, 0, 0, 0]),
    );
    let mono = sys::CLOCK_MONOTONIC;
    show(
        "clock_gettime into kernel half",
        into(nr::CLOCK_GETTIME, [mono, KERNEL_HALF, 0, 0, 0, 0]),
    );
    show(
        "clock_gettime into unmapped",
        into(nr::CLOCK_GETTIME, [mono, UNMAPPED_USER, 0, 0, 0, 0]),
    );
    show(
        "uname into kernel half",
        into(nr::UNAME, [KERNEL_HALF, 0, 0, 0, 0, 0]),
    );
    show(
        "getrandom into kernel half",
        into(nr::GETRANDOM, [KERNEL_HALF, 16, 0, 0, 0, 0]),
    );
    show(
        "getrandom into unmapped",
        into(nr::GETRANDOM, [UNMAPPED_USER, 16, 0, 0, 0, 0]),
    );
    show(
        "nanosleep request in kernel half",
        into(nr::NANOSLEEP, [KERNEL_HALF, 0, 0, 0, 0, 0]),
    );

    println!("still running after every bad pointer");
}
