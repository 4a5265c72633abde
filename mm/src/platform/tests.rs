//! Per-CPU state under sparse CPU ids: when an application processor fails to start, the
//! kernel's numbering keeps a hole (CPUs 0, 1 and 3 run, 2 never does), so CPU ids are not
//! `0..count`. Every per-CPU array must be sized by the bound on ids and indexed by id.

extern crate std;

use alloc::sync::Arc;
use std::vec::Vec;

use super::Platform;
use super::probe::Probe;
use crate::address_space::AddressSpace;
use crate::memory::Memory;
use crate::ops::MapFlags;
use crate::platform::mmu;
use crate::stats::Event;
use crate::vma::Prot;

const PAGE: u64 = 4096;
/// Pages each CPU faults, in its own 2 MiB (its own PTE table).
const PAGES: u64 = 16;
const REGION: u64 = 0x4000_0000;

/// Three CPUs reported as 0, 3 and 5 fault, count events, use their frame caches and RCU read
/// sections, unmap (PTE tables freed through `call_rcu`) and wait for grace periods. Used to
/// index arrays sized by the CPU count (3) with ids 3 and 5, and stats folded ids onto other
/// CPUs' blocks.
#[test]
fn per_cpu_state_is_indexed_by_sparse_cpu_ids() {
    let ids = [0, 3, 5];
    let p = Arc::new(Probe::new(8, &ids));
    p.emulated().bind_cpu(0);
    let mem = Memory::new(p.clone()).unwrap();
    mem.quiesce();
    let baseline = p.emulated().free_frames();
    {
        let mm = AddressSpace::new(&mem).unwrap();
        let rw = Prot::READ | Prot::WRITE;
        let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let base = |n: usize| REGION + n as u64 * (2 << 20);
        for n in 0..ids.len() {
            mm.mmap(base(n), PAGES * PAGE, rw, fixed).unwrap();
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..ids.len())
                .map(|n| {
                    let (mm, mem, p) = (&mm, &mem, &p);
                    p.emulated().spawn_cpu(s, n, move || {
                        assert_eq!(p.cpu_id(), ids[n]);
                        for i in 0..PAGES {
                            let a = base(n) + i * PAGE;
                            mmu::store(mm, a, a ^ n as u64, true).unwrap();
                        }
                        for i in 0..PAGES {
                            let a = base(n) + i * PAGE;
                            assert_eq!(mmu::load(mm, a, true), Ok(a ^ n as u64));
                        }
                        mm.munmap(base(n), PAGES * PAGE).unwrap();
                        mem.rcu().synchronize();
                        mem.rcu().quiescent_state();
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        let stats = mem.stats();
        for id in 0..=5 {
            let faults = if ids.contains(&id) { PAGES } else { 0 };
            assert_eq!(
                stats.cpu(id).get(Event::Fault),
                faults,
                "faults counted on CPU {id}"
            );
        }
        assert_eq!(stats.snapshot().get(Event::Fault), 3 * PAGES);
        assert!(mem.frames().cached_frames() > 0);
    }
    mem.rcu().barrier();
    assert_eq!(mem.rcu().pending_callbacks(), 0);
    mem.quiesce();
    assert_eq!(p.emulated().free_frames(), baseline, "frames leaked");
}
