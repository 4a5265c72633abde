//! The kernel binary: boots every CPU, prints what it found, shows the scheduler and the memory
//! subsystem at work, and leaves QEMU cleanly.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use bootloader_api::BootInfo;
use kernel::arch::percpu::{PERCPU, cpu_id, online_count};
use kernel::arch::{apic, tlb};
use kernel::memory::{FRAMES, heap};
use kernel::platform::memory;
use kernel::process::Process;
use kernel::qemu::{ExitCode, exit};
use kernel::user::{Status, spawn_program};
use kernel::{error, info, sched};
use mm::memory::FaultPolicy;
use mm::ops::MapFlags;
use mm::stats::Event;
use mm::vma::Prot;

bootloader_api::entry_point!(kernel_main, config = &kernel::BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    let boot = kernel::init(boot_info);
    let (frames, free) = FRAMES.stats();
    info!("mmkernel {}: booted", env!("CARGO_PKG_VERSION"));
    info!(
        "memory: {} MiB usable in {} regions, highest usable address {:#x}; {} frames managed, {} free",
        boot.memory.usable_bytes >> 20,
        boot.memory.regions,
        boot.memory.highest,
        frames,
        free
    );
    match &boot.cpus {
        Ok(cpus) => info!(
            "acpi: MADT lists {} CPUs (APIC ids {:?}), local APIC at {:#x}",
            cpus.apic_ids.len(),
            cpus.apic_ids,
            cpus.local_apic_address
        ),
        Err(e) => error!("acpi: cannot read the CPU list: {e:?}"),
    }
    info!("smp: {} CPUs online", online_count());
    for cpu in PERCPU.iter().filter(|c| c.online.load(Ordering::Acquire)) {
        info!(
            "  cpu{}: APIC id {}, {} mode, timer {} kHz (tick {} Hz), TSC {} MHz",
            cpu.id(),
            cpu.apic_id.load(Ordering::Relaxed),
            if apic::is_x2apic() { "x2APIC" } else { "xAPIC" },
            apic::timer_hz() / 1000,
            kernel::smp::TIMER_HZ,
            apic::tsc_mhz()
        );
    }
    info!("smp: all CPUs up {} us after kernel entry", boot.boot_us);
    if !boot.smp.failed.is_empty() {
        error!(
            "smp: CPUs that did not start (APIC ids): {:?}",
            boot.smp.failed
        );
    }
    let programs = match kernel::initrd::programs() {
        Ok(p) => p,
        Err(e) => {
            error!("ramdisk: {e}; no program runs");
            exit(ExitCode::Failed)
        }
    };
    let together = kernel::initrd::starts_together();
    if !programs.is_empty() && !together {
        // QEMU's exit status says whether the first program exited 0.
        let first_ok = run_programs(&programs);
        exit(if first_ok {
            ExitCode::Success
        } else {
            ExitCode::Failed
        })
    }
    threads_demo();
    for policy in [FaultPolicy::PerVmaLock, FaultPolicy::MmapLockOnly] {
        faults_demo(policy);
    }
    if together && !programs_together(&programs) {
        exit(ExitCode::Failed)
    }
    let (used, free_heap) = heap::usage();
    info!(
        "heap: {} KiB used, {} KiB free",
        used >> 10,
        free_heap >> 10
    );
    info!("done; leaving QEMU");
    exit(ExitCode::Success)
}

/// Starts every program of the ramdisk at once (`make run`'s show), waits for them all and prints
/// how each ended, the memory subsystem's counters over the run, and the frame accounting.
/// Returns whether every program could be started and every frame came back.
fn programs_together(programs: &[exec::initrd::Program<'static>]) -> bool {
    let before_frames = kernel::platform::settled_free_frames();
    let before = memory().stats().snapshot();
    let t0 = apic::now_ns();
    let mut started = Vec::new();
    let mut all_started = true;
    for p in programs {
        match spawn_program(p.elf, p.argv.clone()) {
            Ok(process) => started.push((p.name.as_str(), process)),
            Err(e) => {
                error!("{}: {e}", p.name);
                all_started = false;
            }
        }
    }
    for (name, process) in &started {
        let status = process.wait();
        info!(
            "user: {name} (pid {}) ended: {status:?}, {} ms after the start",
            process.pid(),
            (apic::now_ns() - t0) / 1_000_000
        );
    }
    // Their children, if they forked, end too before the counts are taken.
    kernel::user::wait_all();
    drop(started);
    let d = memory().stats().snapshot().since(&before);
    info!(
        "user: {} faults; VMA_LOCK_SUCCESS={} ABORT={} RETRY={} MISS={} MMAP_LOCK_FALLBACK={} SEGV={}",
        d.get(Event::Fault),
        d.get(Event::VmaLockSuccess),
        d.get(Event::VmaLockAbort),
        d.get(Event::VmaLockRetry),
        d.get(Event::VmaLockMiss),
        d.get(Event::MmapLockFallback),
        d.get(Event::Segv)
    );
    let after_frames = kernel::platform::settled_free_frames();
    info!("user: free frames before {before_frames}, after {after_frames}");
    all_started && after_frames == before_frames
}

/// Runs the ramdisk's programs one after the other, each to its end. Returns whether the first
/// one exited with code 0.
fn run_programs(programs: &[exec::initrd::Program<'static>]) -> bool {
    let before = kernel::platform::settled_free_frames();
    let mut first_ok = None;
    for p in programs {
        let t0 = apic::now_ns();
        let status = match spawn_program(p.elf, p.argv.clone()) {
            Ok(process) => {
                let status = process.wait();
                // Its children too (they may outlive it), before the next program starts.
                kernel::user::wait_all();
                info!(
                    "{}: {status:?} after {} ms",
                    p.name,
                    (apic::now_ns() - t0) / 1_000_000
                );
                Some(status)
            }
            Err(e) => {
                error!("{}: {e}", p.name);
                None
            }
        };
        first_ok.get_or_insert(status == Some(Status::Exited(0)));
    }
    // Every process is gone: all their frames (and their threads' stacks) must be back.
    let after = kernel::platform::settled_free_frames();
    info!(
        "programs: {} ran; free frames before {before}, after {after}",
        programs.len()
    );
    if after != before {
        error!(
            "programs: {} frames not given back",
            before as i64 - after as i64
        );
        return false;
    }
    first_ok.unwrap_or(false)
}

/// 64 threads share the CPUs: each does a slice of work, yields now and then, and records where
/// it ran; the timer preempts them, idle CPUs steal them.
fn threads_demo() {
    const THREADS: usize = 64;
    const WORK: u64 = 20_000;
    static TOTAL: AtomicU64 = AtomicU64::new(0);
    let t0 = apic::now_ns();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            sched::spawn(alloc::format!("worker/{i}"), move || {
                let mut cpus = 0u64;
                for n in 0..WORK {
                    TOTAL.fetch_add(1, Ordering::Relaxed);
                    cpus |= 1 << cpu_id();
                    if n % 5_000 == 0 {
                        sched::yield_now();
                    }
                }
                cpus as i64
            })
            .expect("spawn a demo thread")
        })
        .collect();
    let mut per_cpu = [0u32; 64];
    let mut migrated = 0;
    for h in handles {
        let cpus = h.join() as u64;
        migrated += (cpus.count_ones() > 1) as u32;
        for (c, n) in per_cpu.iter_mut().enumerate() {
            *n += (cpus & (1 << c) != 0) as u32;
        }
    }
    let ms = (apic::now_ns() - t0) / 1_000_000;
    info!(
        "threads: {THREADS} threads did {} increments in {ms} ms; {migrated} ran on more than one CPU",
        TOTAL.load(Ordering::Relaxed)
    );
    let n = online_count();
    info!("threads: threads that ran on each CPU: {:?}", &per_cpu[..n]);
    let switches: Vec<u64> = (0..n).map(sched::switches).collect();
    info!("threads: context switches per CPU: {switches:?}");
    let tlb = tlb::stats();
    info!(
        "tlb: {} shootdowns, {} IPIs so far",
        tlb.shootdowns, tlb.ipis
    );
}

/// One process, two threads per CPU: each maps its own 1 MiB and touches every page (real #PF
/// -> `handle_mm_fault` -> page tables), checks what it wrote, unmaps, and again; meanwhile a
/// churn thread keeps mapping, splitting (mprotect) and unmapping other ranges, which takes
/// `mmap_lock` for write and write-locks VMAs. Run once per fault policy.
fn faults_demo(policy: FaultPolicy) {
    const PAGES: u64 = 256;
    const ROUNDS: u64 = 4;
    let p = Process::new("demo").expect("a process");
    let workers = 2 * online_count();
    memory().set_fault_policy(policy);
    let before = memory().stats().snapshot();
    let stop = alloc::sync::Arc::new(core::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (mm, stop) = (p.mm().clone(), stop.clone());
        p.spawn("churn", move || {
            let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
            let mut ops = 0;
            while !stop.load(Ordering::Relaxed) {
                let Ok(a) = mm.mmap(0, 16 * 4096, Prot::READ | Prot::WRITE, flags) else {
                    return -1;
                };
                let split = mm.mprotect(a + 4 * 4096, 4 * 4096, Prot::READ);
                let unmapped = mm.munmap(a, 16 * 4096);
                if split.is_err() || unmapped.is_err() {
                    return -1;
                }
                ops += 3;
            }
            ops
        })
        .expect("spawn the churn thread")
    };
    let t0 = apic::rdtsc();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let mm = p.mm().clone();
            p.spawn(alloc::format!("faulter/{w}"), move || {
                let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
                for round in 0..ROUNDS {
                    let Ok(a) = mm.mmap(0, PAGES * 4096, Prot::READ | Prot::WRITE, flags) else {
                        return -1;
                    };
                    let base = a;
                    let tag = |i: u64| ((w as u64) << 32) | (round << 16) | i;
                    for i in 0..PAGES {
                        // SAFETY: this thread's own fresh read-write mapping.
                        unsafe { ((base + i * 4096) as *mut u64).write_volatile(tag(i)) };
                    }
                    let read = |i: u64| {
                        // SAFETY: as above.
                        unsafe { ((base + i * 4096) as *const u64).read_volatile() }
                    };
                    if (0..PAGES).any(|i| read(i) != tag(i)) {
                        return -2;
                    }
                    if mm.munmap(base, PAGES * 4096).is_err() {
                        return -1;
                    }
                }
                0
            })
            .expect("spawn a faulting thread")
        })
        .collect();
    let failed = handles
        .into_iter()
        .map(|h| h.join())
        .filter(|&c| c != 0)
        .count();
    let cycles = apic::rdtsc() - t0;
    stop.store(true, Ordering::Relaxed);
    let churn_ops = churn.join();
    memory().set_fault_policy(FaultPolicy::PerVmaLock);
    let d = memory().stats().snapshot().since(&before);
    let faults = d.get(Event::Fault);
    let us = cycles / apic::tsc_mhz().max(1);
    info!(
        "mm ({policy:?}): {workers} threads, {faults} faults in {} ms ({} faults/s), {churn_ops} churn ops, {failed} threads failed",
        us / 1000,
        faults * 1_000_000 / us.max(1)
    );
    info!(
        "mm ({policy:?}): VMA_LOCK_SUCCESS={} ABORT={} RETRY={} MISS={} MMAP_LOCK_FALLBACK={}",
        d.get(Event::VmaLockSuccess),
        d.get(Event::VmaLockAbort),
        d.get(Event::VmaLockRetry),
        d.get(Event::VmaLockMiss),
        d.get(Event::MmapLockFallback)
    );
}
