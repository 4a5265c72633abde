//! Fork cost: microseconds per `fork` of a process with N VMAs and M pages written in them,
//! for N in [`VMAS`] and M in [`PAGES`], one `BENCH-FORK` line per repetition (the format is
//! the report tool's, `bench/src/format.rs`).
//!
//! One measurement: a fresh process maps N separate read-write private regions (a page apart,
//! so they do not merge), one of its threads writes M pages spread evenly over them, then the
//! benchmark thread forks it [`FORKS`] times per repetition: a new address space (root sharing
//! the kernel half, as a user fork makes it) and `dup_mmap` into it are timed; the child's
//! teardown is not. After the first fork the parent's PTEs stay write-protected (nothing writes
//! between forks), as in a process that forks repeatedly; the work per PTE is the same (a
//! compare-and-swap, a reference and a map count for the child). No thread of the parent runs
//! meanwhile, so no shootdown is sent: this is `dup_mmap`'s own cost. Afterwards every frame
//! must be back.

use crate::arch::apic::rdtsc;
use crate::platform::{Mm, memory};
use crate::process::Process;
use crate::{error, info, serial_println};
use mm::ops::MapFlags;
use mm::vma::Prot;

use super::{BenchError, cycles_to_ns, free_frames};

/// VMA counts measured.
pub const VMAS: [u64; 3] = [1, 16, 64];
/// Written page counts measured.
pub const PAGES: [u64; 3] = [0, 256, 4096];
/// Forks per repetition.
pub const FORKS: u64 = 16;

const PAGE: u64 = 4096;
/// Where the regions start (user half, clear of anything else in the process).
const BASE: u64 = 0x10_0000_0000;

/// Measures every (N, M) pair `reps` times, printing a `BENCH-FORK` line per repetition.
/// Returns how many measurements failed.
pub fn run(reps: usize) -> usize {
    let mut failed = 0;
    for vmas in VMAS {
        for pages in PAGES {
            info!("bench: fork cost vmas={vmas} pages={pages}");
            if let Err(e) = measure(vmas, pages, reps) {
                error!("bench: fork cost vmas={vmas} pages={pages} failed: {e:?}");
                failed += 1;
            }
        }
    }
    failed
}

fn measure(vmas: u64, pages: u64, reps: usize) -> Result<(), BenchError> {
    let before = free_frames()?;
    {
        let p = Process::new("fork-cost").map_err(BenchError::Process)?;
        let per = pages.div_ceil(vmas).max(1);
        let rw = Prot::READ | Prot::WRITE;
        let flags = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let start = move |i: u64| BASE + i * (per + 1) * PAGE;
        for i in 0..vmas {
            p.mm()
                .mmap(start(i), per * PAGE, rw, flags)
                .map_err(BenchError::Mmap)?;
        }
        let writer = p
            .spawn("fork-cost-writer", move || {
                for k in 0..pages {
                    let addr = start(k / per) + (k % per) * PAGE;
                    // The address space stays until the process is dropped, after this join.
                    // SAFETY: `addr` lies in a read-write region mapped above, in our space.
                    unsafe { (addr as *mut u64).write_volatile(k) };
                }
                0
            })
            .map_err(BenchError::Spawn)?;
        match writer.join() {
            0 => {}
            code => return Err(BenchError::WorkerKilled(code)),
        }
        let kernel_half = crate::memory::kernel_half();
        for rep in 0..reps {
            let mut cycles = 0;
            for _ in 0..FORKS {
                let t0 = rdtsc();
                let child =
                    Mm::with_kernel_half(memory(), &kernel_half).map_err(BenchError::Process)?;
                p.mm().dup_mmap(&child).map_err(BenchError::Fork)?;
                cycles += rdtsc() - t0;
                drop(child);
            }
            serial_println!(
                "BENCH-FORK vmas={vmas} pages={pages} rep={rep} forks={FORKS} ns={}",
                cycles_to_ns(cycles).max(1)
            );
        }
    }
    let after = free_frames()?;
    if after != before {
        return Err(BenchError::FramesLost(before as i64 - after as i64));
    }
    Ok(())
}
