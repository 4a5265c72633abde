//! Ring 3: hand-assembled static programs run as user processes. Each checks one part of the
//! user/kernel boundary: the SYSCALL entry and its return, exceptions in ring 3 ending only
//! their process, the isolation of the kernel half, `EFAULT` for bad pointers, the ELF loader's
//! refusals, and every frame coming back when a process ends.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use kernel::user::{ExecError, Status, spawn_program};

kernel::test_kernel!();

mod common;
use common::free_frames;

/// Where the test programs are linked.
const BASE: u64 = 0x40_0000;

/// A minimal static `ET_EXEC`: one read+execute `PT_LOAD` holding the headers and `code`, which
/// starts right after them.
fn tiny_elf(code: &[u8]) -> &'static [u8] {
    const EH: usize = 64;
    const PH: usize = 56;
    let entry = BASE + (EH + PH) as u64;
    let len = (EH + PH + code.len()) as u64;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EH as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(EH as u16).to_le_bytes());
    f.extend_from_slice(&(PH as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R + X
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&BASE.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(f.len(), EH + PH);
    f.extend_from_slice(code);
    f.leak()
}

/// Machine code, assembled by hand (each helper says what it encodes).
mod asm {
    use alloc::vec::Vec;

    /// `mov rax, imm64`
    pub fn mov_rax(v: u64) -> Vec<u8> {
        let mut c = alloc::vec![0x48, 0xb8];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }
    /// `mov rdi, imm64`
    pub fn mov_rdi(v: u64) -> Vec<u8> {
        let mut c = alloc::vec![0x48, 0xbf];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }
    /// `mov rsi, imm64`
    pub fn mov_rsi(v: u64) -> Vec<u8> {
        let mut c = alloc::vec![0x48, 0xbe];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }
    /// `mov rdx, imm64`
    pub fn mov_rdx(v: u64) -> Vec<u8> {
        let mut c = alloc::vec![0x48, 0xba];
        c.extend_from_slice(&v.to_le_bytes());
        c
    }
    pub const SYSCALL: [u8; 2] = [0x0f, 0x05];
    /// `mov rdi, rax`
    pub const MOV_RDI_RAX: [u8; 3] = [0x48, 0x89, 0xc7];
    /// `mov [rax], rax`
    pub const STORE_RAX: [u8; 3] = [0x48, 0x89, 0x00];
    /// `mov rax, [rax]`
    pub const LOAD_RAX: [u8; 3] = [0x48, 0x8b, 0x00];
    /// `jmp rax`
    pub const JMP_RAX: [u8; 2] = [0xff, 0xe0];
    pub const HLT: [u8; 1] = [0xf4];
    pub const UD2: [u8; 2] = [0x0f, 0x0b];
    pub const INT3: [u8; 1] = [0xcc];
    /// `xor edx, edx; xor eax, eax; div eax`
    pub const DIV0: [u8; 6] = [0x31, 0xd2, 0x31, 0xc0, 0xf7, 0xf0];

    /// `exit_group(rdi)`
    pub fn exit_group_rdi() -> Vec<u8> {
        let mut c = mov_rax(231);
        c.extend_from_slice(&SYSCALL);
        c
    }
    /// `exit_group(code)`
    pub fn exit_group(code: u64) -> Vec<u8> {
        let mut c = mov_rdi(code);
        c.extend(exit_group_rdi());
        c
    }
    /// `syscall(nr, a, b, c)`, then `exit_group(its result)`.
    pub fn syscall_then_exit_with_result(nr: u64, a: u64, b: u64, c: u64) -> Vec<u8> {
        let mut v = mov_rdi(a);
        v.extend(mov_rsi(b));
        v.extend(mov_rdx(c));
        v.extend(mov_rax(nr));
        v.extend_from_slice(&SYSCALL);
        v.extend_from_slice(&MOV_RDI_RAX);
        v.extend(exit_group_rdi());
        v
    }
}

fn run(code: &[u8]) -> Status {
    let p = spawn_program(tiny_elf(code), vec![String::from("test")]).expect("spawn");
    p.wait()
}

fn program(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test_case]
fn a_program_exits_with_its_code() {
    assert_eq!(run(&asm::exit_group(7)), Status::Exited(7));
    // `exit_group(256)` is reported as 0, as `wait` does.
    assert_eq!(run(&asm::exit_group(256 + 3)), Status::Exited(3));
}

#[test_case]
fn write_reaches_the_console_from_the_program_image() {
    // write(1, BASE, 16): the first 16 bytes of the image, the ELF header.
    let code = asm::syscall_then_exit_with_result(1, 1, BASE, 16);
    assert_eq!(run(&code), Status::Exited(16));
}

#[test_case]
fn bad_pointers_get_efault_not_a_crash() {
    const EFAULT: i32 = 256 - 14;
    // An unmapped user address, a kernel-half one, one that runs off the user half.
    for addr in [0x1000_0000, 0xffff_8000_0000_0000, 0x7fff_ffff_fff0] {
        let code = asm::syscall_then_exit_with_result(1, 1, addr, 64);
        assert_eq!(run(&code), Status::Exited(EFAULT), "write from {addr:#x}");
    }
    // read into the read-only image: the kernel's copy faults on a present page.
    let code = asm::syscall_then_exit_with_result(318, BASE, 16, 0);
    assert_eq!(
        run(&code),
        Status::Exited(EFAULT),
        "getrandom into a read-only page"
    );
}

#[test_case]
fn an_unknown_system_call_gets_enosys() {
    let code = asm::syscall_then_exit_with_result(999, 0, 0, 0);
    assert_eq!(run(&code), Status::Exited(256 - 38));
}

#[test_case]
fn the_kernel_half_is_out_of_reach() {
    let kernel = kernel::KERNEL_BASE;
    let read = program(&[&asm::mov_rax(kernel), &asm::LOAD_RAX, &asm::exit_group(0)]);
    assert_eq!(run(&read), Status::Killed(11), "read of kernel text");
    let write = program(&[&asm::mov_rax(kernel), &asm::STORE_RAX, &asm::exit_group(0)]);
    assert_eq!(run(&write), Status::Killed(11), "write to kernel text");
    let jump = program(&[&asm::mov_rax(kernel), &asm::JMP_RAX]);
    assert_eq!(run(&jump), Status::Killed(11), "jump into kernel text");
    let percpu = program(&[
        &asm::mov_rax(&kernel::arch::percpu::PERCPU as *const _ as u64),
        &asm::LOAD_RAX,
        &asm::exit_group(0),
    ]);
    assert_eq!(run(&percpu), Status::Killed(11), "read of kernel data");
}

#[test_case]
fn faults_and_exceptions_in_ring_3_end_only_their_process() {
    let cases: [(&str, Vec<u8>, i32); 7] = [
        (
            "write to its read-only image",
            program(&[&asm::mov_rax(BASE), &asm::STORE_RAX]),
            11,
        ),
        (
            "jump to an unmapped address",
            program(&[&asm::mov_rax(0x1000_0000_0000), &asm::JMP_RAX]),
            11,
        ),
        (
            "non-canonical address",
            program(&[&asm::mov_rax(0x8000_0000_0000_0000), &asm::LOAD_RAX]),
            11,
        ),
        ("hlt", asm::HLT.to_vec(), 11),
        ("ud2", asm::UD2.to_vec(), 4),
        ("divide by zero", asm::DIV0.to_vec(), 8),
        ("int3", asm::INT3.to_vec(), 5),
    ];
    for (what, code, sig) in cases {
        assert_eq!(run(&code), Status::Killed(sig), "{what}");
    }
    // The kernel carries on: the next program runs.
    assert_eq!(run(&asm::exit_group(0)), Status::Exited(0));
}

#[test_case]
fn a_malformed_program_loads_nothing() {
    let baseline = free_frames();
    let threads = kernel::sched::live_threads();
    let mut elf = tiny_elf(&asm::exit_group(0)).to_vec();
    // Machine: not x86-64.
    elf[18] = 0x28;
    let bad: &'static [u8] = elf.leak();
    match spawn_program(bad, vec![String::from("bad")]) {
        Err(ExecError::Elf(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an ARM executable was started"),
    }
    assert_eq!(
        spawn_program(&[0u8; 10], vec![])
            .err()
            .map(|e| matches!(e, ExecError::Elf(_))),
        Some(true)
    );
    assert_eq!(
        kernel::sched::live_threads(),
        threads,
        "no thread was started"
    );
    assert_eq!(free_frames(), baseline, "no memory was taken");
}

#[test_case]
fn every_frame_comes_back_when_a_process_ends() {
    let _ = run(&asm::exit_group(0));
    let baseline = free_frames();
    for code in [
        asm::exit_group(0),
        program(&[&asm::mov_rax(BASE), &asm::STORE_RAX]),
    ] {
        let _ = run(&code);
        assert_eq!(free_frames(), baseline, "frames leaked by a process");
    }
}

#[test_case]
fn user_copies_fail_cleanly_on_bad_pointers() {
    use kernel::arch::uaccess::{Efault, copy_from_user, copy_to_user, strncpy_from_user};
    use kernel::process::Process;
    use mm::ops::MapFlags;
    use mm::vma::Prot;
    let p = Process::new("uaccess").expect("process");
    let mm = p.mm().clone();
    let code = p
        .spawn("copier", move || {
            let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
            let base = mm
                .mmap(0, 2 * 4096, Prot::READ | Prot::WRITE, flags)
                .expect("mmap");
            mm.munmap(base + 4096, 4096)
                .expect("munmap the second page");
            let mut buf = [0u8; 64];
            let checks = [
                // Populated on demand: the copy faults the page in and succeeds.
                copy_to_user(base, b"hello\0") == Ok(()),
                copy_from_user(&mut buf[..6], base) == Ok(()) && &buf[..6] == b"hello\0",
                strncpy_from_user(base, 64) == Ok(Some(b"hello".to_vec())),
                // Unmapped, kernel half, running into the hole, wrapping around.
                copy_from_user(&mut buf, base + 4096) == Err(Efault),
                copy_from_user(&mut buf, 0xffff_8000_0000_0000) == Err(Efault),
                copy_from_user(&mut buf, kernel::KERNEL_BASE) == Err(Efault),
                copy_from_user(&mut buf, base + 4096 - 8) == Err(Efault),
                copy_to_user(u64::MAX - 8, &buf) == Err(Efault),
                copy_to_user(base + 4096 - 8, &buf) == Err(Efault),
                // A string that runs into the hole before its NUL.
                copy_to_user(base + 4096 - 4, b"abcd") == Ok(())
                    && strncpy_from_user(base + 4096 - 4, 64) == Err(Efault),
                // No NUL within the limit.
                strncpy_from_user(base + 4096 - 4, 4) == Ok(None),
            ];
            checks.iter().position(|ok| !ok).map_or(0, |i| i as i64 + 1)
        })
        .expect("spawn")
        .join();
    assert_eq!(code, 0, "check {code} (1-based) failed");
}

/// Machine code for the resource calls' tests: a scratch mapping whose address is kept in
/// `rbx`, and calls whose arguments come from it.
mod scratch {
    use super::asm;
    use alloc::vec::Vec;

    fn imm(op: &[u8], v: u64) -> Vec<u8> {
        let mut c = op.to_vec();
        c.extend_from_slice(&v.to_le_bytes());
        c
    }
    fn disp(op: &[u8], d: u32) -> Vec<u8> {
        let mut c = op.to_vec();
        c.extend_from_slice(&d.to_le_bytes());
        c
    }

    /// `rbx = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)`
    pub fn map(pages: u64) -> Vec<u8> {
        let mut c = asm::mov_rdi(0);
        c.extend(asm::mov_rsi(pages * 4096));
        c.extend(asm::mov_rdx(3));
        c.extend(imm(&[0x49, 0xba], 0x22)); // mov r10, imm64
        c.extend(imm(&[0x49, 0xb8], u64::MAX)); // mov r8, imm64
        c.extend(imm(&[0x49, 0xb9], 0)); // mov r9, imm64
        c.extend(asm::mov_rax(9));
        c.extend_from_slice(&asm::SYSCALL);
        c.extend_from_slice(&[0x48, 0x89, 0xc3]); // mov rbx, rax
        c
    }
    /// `qword [rbx + off] = v` (faults the page in if it is not yet)
    pub fn store(off: u32, v: u64) -> Vec<u8> {
        let mut c = imm(&[0x48, 0xb9], v); // mov rcx, imm64
        c.extend(disp(&[0x48, 0x89, 0x8b], off)); // mov [rbx + disp32], rcx
        c
    }
    /// `syscall(nr, a, b, c)`; each argument a number or an offset into the mapping.
    pub fn call(nr: u64, args: [Arg; 3]) -> Vec<u8> {
        let mut c = Vec::new();
        // mov reg, imm64 / lea reg, [rbx + disp32], for rdi, rsi, rdx.
        let regs: [(u8, u8); 3] = [(0xbf, 0xbb), (0xbe, 0xb3), (0xba, 0x93)];
        for (a, (mov, lea)) in args.into_iter().zip(regs) {
            c.extend(match a {
                Arg::Num(v) => imm(&[0x48, mov], v),
                Arg::At(off) => disp(&[0x48, 0x8d, lea], off),
            });
        }
        c.extend(asm::mov_rax(nr));
        c.extend_from_slice(&asm::SYSCALL);
        c
    }
    /// `exit_group(rax)`: the last call's result.
    pub fn exit_with_result() -> Vec<u8> {
        let mut c = asm::MOV_RDI_RAX.to_vec();
        c.extend(asm::exit_group_rdi());
        c
    }
    /// `exit_group(qword [rbx + off])`
    pub fn exit_with(off: u32) -> Vec<u8> {
        let mut c = disp(&[0x48, 0x8b, 0xbb], off); // mov rdi, [rbx + disp32]
        c.extend(asm::exit_group_rdi());
        c
    }
    /// `exit_group(qword [rbx + a] - qword [rbx + b])`
    pub fn exit_with_difference(a: u32, b: u32) -> Vec<u8> {
        let mut c = disp(&[0x48, 0x8b, 0xbb], a); // mov rdi, [rbx + disp32]
        c.extend(disp(&[0x48, 0x2b, 0xbb], b)); // sub rdi, [rbx + disp32]
        c.extend(asm::exit_group_rdi());
        c
    }

    #[derive(Clone, Copy)]
    pub enum Arg {
        Num(u64),
        /// `rbx + offset`
        At(u32),
    }
}

use scratch::Arg::{At, Num};

/// A negative errno as the low byte of an exit code.
const fn err(errno: i32) -> Status {
    Status::Exited(256 - errno)
}
const EFAULT: i32 = 14;
const EINVAL: i32 = 22;
const ESRCH: i32 = 3;

/// `syscall(nr, args)` with the scratch page mapped and `mask` at offset 0, then exit with the
/// call's result.
fn call_with_mask(mask: u64, nr: u64, args: [scratch::Arg; 3]) -> Status {
    run(&program(&[
        &scratch::map(1),
        &scratch::store(0, mask),
        &scratch::call(nr, args),
        &scratch::exit_with_result(),
    ]))
}

#[test_case]
fn sched_setaffinity_checks_its_arguments_as_linux_does() {
    const SET: u64 = 203;
    let online = kernel::sched::online_cpus();
    // Bad mask pointer: EFAULT, before the pid is looked at.
    assert_eq!(
        call_with_mask(1, SET, [Num(12345), Num(8), Num(0x1000_0000)]),
        err(EFAULT)
    );
    // No online CPU in the mask (none at all, CPU 63 only, or a length of 0): EINVAL.
    assert_eq!(call_with_mask(0, SET, [Num(0), Num(8), At(0)]), err(EINVAL));
    if online & (1 << 63) == 0 {
        assert_eq!(
            call_with_mask(1 << 63, SET, [Num(0), Num(8), At(0)]),
            err(EINVAL)
        );
    }
    assert_eq!(call_with_mask(1, SET, [Num(0), Num(0), At(0)]), err(EINVAL));
    // No such thread.
    assert_eq!(
        call_with_mask(1, SET, [Num(99_999), Num(8), At(0)]),
        err(ESRCH)
    );
    // CPU 0 alone; a longer mask is read up to the CPUs there are.
    assert_eq!(
        call_with_mask(1, SET, [Num(0), Num(8), At(0)]),
        Status::Exited(0)
    );
    assert_eq!(
        call_with_mask(1, SET, [Num(0), Num(128), At(0)]),
        Status::Exited(0)
    );
}

#[test_case]
fn sched_getaffinity_reports_what_setaffinity_set() {
    const SET: u64 = 203;
    const GET: u64 = 204;
    let online = kernel::sched::online_cpus();
    let last = 63 - online.leading_zeros() as u64;
    // Too short for every possible CPU, or not whole words: EINVAL; a bad buffer: EFAULT.
    for len in [4, 12] {
        assert_eq!(
            call_with_mask(0, GET, [Num(0), Num(len), At(0)]),
            err(EINVAL)
        );
    }
    assert_eq!(
        call_with_mask(0, GET, [Num(0), Num(8), Num(0x1000_0000)]),
        err(EFAULT)
    );
    // Returns the bytes of its mask.
    assert_eq!(
        call_with_mask(0, GET, [Num(0), Num(16), At(0)]),
        Status::Exited(8)
    );
    // Confined to the last CPU: the mask read back is that CPU's bit (exit code: the mask
    // shifted down to bit 0, so 1).
    let code = program(&[
        &scratch::map(1),
        &scratch::store(0, 1 << last),
        &scratch::call(SET, [Num(0), Num(8), At(0)]),
        &scratch::call(GET, [Num(0), Num(8), At(8)]),
        &scratch::store(16, 1 << last),
        &scratch::exit_with_difference(8, 16),
    ]);
    assert_eq!(run(&code), Status::Exited(0), "mask read back");
    // All CPUs: the online ones.
    let code = program(&[
        &scratch::map(1),
        &scratch::call(GET, [Num(0), Num(8), At(8)]),
        &scratch::store(16, online),
        &scratch::exit_with_difference(8, 16),
    ]);
    assert_eq!(
        run(&code),
        Status::Exited(0),
        "a new process may use every CPU"
    );
}

#[test_case]
fn getrusage_counts_each_fault_of_the_thread() {
    const GETRUSAGE: u64 = 98;
    const MINFLT: u32 = 64;
    for who in [0, 1] {
        // Page 0 holds the two results; pages 1..=16 are touched in between.
        let mut parts = vec![
            scratch::map(17),
            scratch::store(0, 0),
            scratch::call(GETRUSAGE, [Num(who), At(0), Num(0)]),
        ];
        parts.extend((1..=16).map(|p| scratch::store(p * 4096, 1)));
        parts.push(scratch::call(GETRUSAGE, [Num(who), At(256), Num(0)]));
        parts.push(scratch::exit_with_difference(256 + MINFLT, MINFLT));
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        assert_eq!(run(&program(&parts)), Status::Exited(16), "who={who}");
    }
    // Children (there are none): all zeros.
    let code = program(&[
        &scratch::map(1),
        &scratch::store(MINFLT, 7),
        &scratch::call(GETRUSAGE, [Num(u64::MAX), At(0), Num(0)]),
        &scratch::exit_with(MINFLT),
    ]);
    assert_eq!(run(&code), Status::Exited(0));
    assert_eq!(
        call_with_mask(0, GETRUSAGE, [Num(2), At(0), Num(0)]),
        err(EINVAL)
    );
    assert_eq!(
        call_with_mask(0, GETRUSAGE, [Num(0), Num(0x1000_0000), Num(0)]),
        err(EFAULT)
    );
}

#[test_case]
fn sysinfo_reports_the_frame_allocators_memory() {
    const SYSINFO: u64 = 99;
    const TOTALRAM: u32 = 32;
    const MEM_UNIT: u32 = 104;
    assert_eq!(
        call_with_mask(0, SYSINFO, [Num(0), Num(0), Num(0)]),
        err(EFAULT)
    );
    let total = kernel::memory::FRAMES.stats().0 * 4096;
    // totalram minus what the allocator counts: 0.
    let code = program(&[
        &scratch::map(1),
        &scratch::call(SYSINFO, [At(0), Num(0), Num(0)]),
        &scratch::store(256, total),
        &scratch::exit_with_difference(TOTALRAM, 256),
    ]);
    assert_eq!(run(&code), Status::Exited(0), "totalram");
    let code = program(&[
        &scratch::map(1),
        &scratch::call(SYSINFO, [At(0), Num(0), Num(0)]),
        &scratch::exit_with(MEM_UNIT),
    ]);
    assert_eq!(run(&code), Status::Exited(1), "mem_unit");
}

#[test_case]
fn the_thread_cpu_clock_does_not_count_sleep() {
    // Sleep 1.1 s, then read CLOCK_THREAD_CPUTIME_ID: its seconds are 0 (the monotonic clock's
    // would be at least 1).
    let code = program(&[
        &scratch::map(1),
        &scratch::store(0, 1),
        &scratch::store(8, 100_000_000),
        &scratch::call(35, [At(0), Num(0), Num(0)]),
        &scratch::call(228, [Num(3), At(16), Num(0)]),
        &scratch::exit_with(16),
    ]);
    assert_eq!(run(&code), Status::Exited(0));
}

/// Frames in use, beyond what is free with nothing running, while a program sleeps after
/// `fork` (or, with `fork` false, after `getpid` in its place) and its child exited: the
/// child mapped and wrote 16 pages, and the parent saw it end with `waitid(WNOWAIT)`, which
/// leaves it unreaped. After the sleep the parent reaps it with `wait4` and exits; every frame
/// then comes back.
fn frames_while_a_child_is_unreaped(fork: bool) -> u64 {
    const PAGES: u32 = 16;
    const DATA: u32 = PAGES * 4096;
    const WRITE: u64 = 1;
    const NANOSLEEP: u64 = 35;
    const GETPID: u64 = 39;
    const FORK: u64 = 57;
    const WAIT4: u64 = 61;
    const WAITID: u64 = 247;
    let nr = |n: u64| if fork { n } else { GETPID };
    // `mov r10, imm64`: the fourth syscall argument.
    let r10 = |v: u64| [&[0x49u8, 0xba][..], &v.to_le_bytes()].concat();
    let mut child: Vec<u8> = (0..PAGES)
        .flat_map(|i| scratch::store(i * 4096, 1))
        .collect();
    child.extend(asm::exit_group(0));
    let parent = program(&[
        &r10(4 | 0x0100_0000), // WEXITED | WNOWAIT
        &scratch::call(nr(WAITID), [Num(0), Num(0), Num(0)]),
        &scratch::call(WRITE, [Num(1), At(DATA), Num(2)]),
        &scratch::call(NANOSLEEP, [At(DATA + 16), Num(0), Num(0)]),
        &scratch::call(WRITE, [Num(1), At(DATA + 8), Num(2)]),
        &r10(0),
        &scratch::call(nr(WAIT4), [Num(u64::MAX), Num(0), Num(0)]),
        &asm::exit_group(0),
    ]);
    let mut jnz = vec![0x48, 0x85, 0xc0, 0x0f, 0x85]; // test rax, rax; jnz rel32
    jnz.extend_from_slice(&(child.len() as u32).to_le_bytes());
    let code = program(&[
        &scratch::map(u64::from(PAGES) + 1),
        &scratch::store(DATA, 0x0a7a),     // "z\n"
        &scratch::store(DATA + 8, 0x0a79), // "y\n"
        &scratch::store(DATA + 16, 2),     // the sleep: 2 s
        &scratch::store(DATA + 24, 0),
        &asm::mov_rax(nr(FORK)),
        &asm::SYSCALL,
        &jnz,
        &child,
        &parent,
    ]);
    let baseline = free_frames();
    let p = spawn_program(tiny_elf(&code), vec![String::from("zombie")]).expect("spawn");
    let deadline = kernel::arch::apic::now_ns() + 20_000_000_000;
    while p.bytes_written() < 2 {
        assert!(
            kernel::arch::apic::now_ns() < deadline,
            "the parent never woke"
        );
        kernel::sched::sleep_ns(1_000_000);
    }
    let free = kernel::platform::settled_free_frames_beside(1);
    assert_eq!(
        p.bytes_written(),
        2,
        "the parent woke before the count was taken"
    );
    assert_eq!(p.wait(), Status::Exited(0));
    drop(p);
    assert_eq!(free_frames(), baseline, "frames leaked");
    baseline - free
}

#[test_case]
fn an_exited_child_frees_its_memory_before_it_is_reaped() {
    let alone = frames_while_a_child_is_unreaped(false);
    let with_child = frames_while_a_child_is_unreaped(true);
    // The unreaped child keeps only its (empty) address space's root table.
    assert_eq!(
        with_child,
        alone + 1,
        "frames an unreaped child holds, plus one"
    );
}
