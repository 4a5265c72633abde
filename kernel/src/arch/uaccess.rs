//! Reaching user memory from the kernel: every access goes through these helpers, which check
//! that the range lies in the user half (`access_ok`), open user access only for the copy (SMAP),
//! and turn a fault they cannot resolve into [`Efault`] instead of a kernel crash.
//!
//! The copy is one `rep movsb` at a known address. A page fault there first goes through the
//! normal fault path (the page may just not be populated yet); if that finds no memory to map,
//! the #PF hook calls [`fixup`], which resumes the copy at its exit with `rcx` (the bytes left)
//! as the result: Linux's exception table (`_ASM_EXTABLE`), with one entry.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use super::trap::{SMAP, TrapFrame};

/// A user pointer the kernel could not follow (Linux's `EFAULT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Efault;

/// The end of the user half: user ranges lie below it.
pub const USER_END: u64 = mm::pgtable::USER_END;

/// `[addr, addr + len)` lies in the user half (Linux's `access_ok`).
pub fn access_ok(addr: u64, len: usize) -> bool {
    addr.checked_add(len as u64)
        .is_some_and(|end| end <= USER_END)
}

core::arch::global_asm!(
    ".global copy_user_asm",
    ".global copy_user_insn",
    ".global copy_user_fixup",
    // rdi = destination, rsi = source, rdx = bytes; returns the bytes not copied.
    "copy_user_asm:",
    "mov rcx, rdx",
    "copy_user_insn:",
    "rep movsb",
    "copy_user_fixup:",
    "mov rax, rcx",
    "ret",
);

unsafe extern "C" {
    fn copy_user_asm(dst: *mut u8, src: *const u8, len: usize) -> usize;
    static copy_user_insn: u8;
    static copy_user_fixup: u8;
}

/// If the faulting instruction is the user copy, points the frame at its exit and returns true
/// (the copy then reports the bytes it did not copy).
pub fn fixup(frame: &mut TrapFrame) -> bool {
    if frame.rip == &raw const copy_user_insn as u64 {
        frame.rip = &raw const copy_user_fixup as u64;
        true
    } else {
        false
    }
}

/// Copies `len` bytes with user access open; returns the bytes not copied.
///
/// # Safety
/// The kernel side of the copy is valid for `len` bytes; the user side lies in the user half.
unsafe fn raw_copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    // A kernel thread that works on user memory keeps user access open for good
    // (`open_user_access_for_thread`): close it after the copy only if it was closed before.
    let toggle = SMAP.load(Ordering::Relaxed)
        && !x86_64::registers::rflags::read()
            .contains(x86_64::registers::rflags::RFlags::ALIGNMENT_CHECK);
    // SAFETY: `stac`/`clac` exist when SMAP is on; they only open and close user access around
    // the copy, whose faults come back through `fixup`.
    unsafe {
        if toggle {
            core::arch::asm!("stac", options(nomem, nostack));
        }
        let left = copy_user_asm(dst, src, len);
        if toggle {
            core::arch::asm!("clac", options(nomem, nostack));
        }
        left
    }
}

/// Fills `dst` from user memory at `src`.
pub fn copy_from_user(dst: &mut [u8], src: u64) -> Result<(), Efault> {
    if !access_ok(src, dst.len()) {
        return Err(Efault);
    }
    // SAFETY: `dst` is ours; `src` lies in the user half (checked).
    match unsafe { raw_copy(dst.as_mut_ptr(), src as *const u8, dst.len()) } {
        0 => Ok(()),
        _ => Err(Efault),
    }
}

/// Writes `src` to user memory at `dst`.
pub fn copy_to_user(dst: u64, src: &[u8]) -> Result<(), Efault> {
    if !access_ok(dst, src.len()) {
        return Err(Efault);
    }
    // SAFETY: `src` is ours; `dst` lies in the user half (checked).
    match unsafe { raw_copy(dst as *mut u8, src.as_ptr(), src.len()) } {
        0 => Ok(()),
        _ => Err(Efault),
    }
}

/// Reads a plain value (an integer or a `repr(C)` struct of them) from user memory.
pub fn read_user<T: Copy + Default>(src: u64) -> Result<T, Efault> {
    let mut v = T::default();
    // The callers' types are integers and structs of integers: any byte pattern is a valid `T`.
    // SAFETY: `v` is a `T` we own, viewed as its bytes only to fill it.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(&raw mut v as *mut u8, core::mem::size_of::<T>())
    };
    copy_from_user(bytes, src)?;
    Ok(v)
}

/// Writes a plain value to user memory.
pub fn write_user<T: Copy>(dst: u64, v: &T) -> Result<(), Efault> {
    // SAFETY: reads the bytes of a value we hold a reference to.
    let bytes = unsafe {
        core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>())
    };
    copy_to_user(dst, bytes)
}

/// Reads a NUL-terminated string of at most `max` bytes (without the NUL) from user memory.
/// `Ok(None)`: no NUL within `max` bytes.
pub fn strncpy_from_user(src: u64, max: usize) -> Result<Option<Vec<u8>>, Efault> {
    let mut out = Vec::new();
    let mut at = src;
    while out.len() < max {
        // Up to the end of the page: the next page may be unmapped although the string ended.
        let chunk = ((4096 - (at & 4095)) as usize).min(max - out.len());
        let mut buf = [0u8; 4096];
        copy_from_user(&mut buf[..chunk], at)?;
        if let Some(nul) = buf[..chunk].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..nul]);
            return Ok(Some(out));
        }
        out.extend_from_slice(&buf[..chunk]);
        at += chunk as u64;
    }
    Ok(None)
}

/// Opens user access (sets AC) for the rest of the calling kernel thread's life: for kernel
/// threads that work on a process's memory directly (the tests' and the benchmark's workers).
/// The context switch keeps the flag per thread; interrupt entry closes it and `iretq` restores it.
pub fn open_user_access_for_thread() {
    if SMAP.load(Ordering::Relaxed) {
        // SAFETY: `stac` exists when SMAP is on; it only lets this thread's kernel code reach
        // user pages, which is what such a thread is for.
        unsafe { core::arch::asm!("stac", options(nomem, nostack)) };
    }
}
