//! Program loading, as data: everything between the bytes of a program and the kernel mapping
//! it, host-testable and free of `unsafe`.
//!
//! - [`elf`]: a static x86-64 executable -> a load [`elf::Plan`] (segments to map and fill,
//!   entry point, auxv facts), or an [`elf::ElfError`] saying why not.
//! - [`stack`]: the initial user stack (argc, argv, envp, auxv) as Linux builds it.
//! - [`initrd`]: the ramdisk format the `boot` tool packs programs into, and its reader.
//!
//! The kernel carries a plan out: one anonymous VMA per segment, the file bytes copied in, the
//! stack VMA below the stack top with [`stack::build`]'s bytes at its top, then ring 3 at
//! `plan.entry` with `rsp` from the stack.

#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod elf;
pub mod initrd;
pub mod stack;
