use super::*;
use crate::frame::FrameKind;
use crate::memory::FaultPolicy;
use crate::platform::PageTableFlags;
use crate::platform::mmu;
use crate::tests::tlb::{Pause, on_cpu};
use crate::testutil::{Env, PAGE, PIC_BASE, fixed};

fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}

#[test]
fn read_maps_the_zero_frame_and_a_write_copies_it() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        mm.mmap(PIC_BASE, PAGE, rw(), fixed()).unwrap();
        let read = Access::user(AccessKind::Read);
        assert_eq!(
            handle_mm_fault(&mm, PIC_BASE + 5, read),
            FaultResult::Resolved
        );
        let e = mm.page_tables().lookup_pte(PIC_BASE);
        assert_eq!(e.frame(), env.mem.frames().zero_frame());
        assert!(!e.flags().contains(PageTableFlags::WRITABLE));
        let write = Access::user(AccessKind::Write);
        assert_eq!(handle_mm_fault(&mm, PIC_BASE, write), FaultResult::Resolved);
        let e = mm.page_tables().lookup_pte(PIC_BASE);
        let f = e.frame();
        assert_ne!(f, env.mem.frames().zero_frame());
        assert!(e.flags().contains(PageTableFlags::WRITABLE));
        assert_eq!(env.mem.frames().meta(f).kind(), FrameKind::Anon);
        assert_eq!(env.mem.frames().meta(f).mapcount(), 1);
        let s = env.mem.stats().snapshot();
        assert_eq!(s.get(Event::ZeroFrameMapped), 1);
        assert_eq!(s.get(Event::WpCopy), 1);
        assert_eq!(s.get(Event::VmaLockSuccess), 2);
    }
    env.assert_baseline();
}

#[test]
fn illegal_accesses_are_segv_with_a_reason() {
    let env = Env::new(4, 1);
    let mm = env.mm();
    mm.mmap(PIC_BASE, PAGE, Prot::READ, fixed()).unwrap();
    let segv = |addr: u64, reason| FaultResult::Segv { addr, reason };
    let w = Access::user(AccessKind::Write);
    assert_eq!(
        handle_mm_fault(&mm, PIC_BASE, w),
        segv(PIC_BASE, SegvReason::AccessDenied)
    );
    let x = Access::user(AccessKind::Exec);
    assert_eq!(
        handle_mm_fault(&mm, PIC_BASE, x),
        segv(PIC_BASE, SegvReason::AccessDenied)
    );
    let r = Access::kernel(AccessKind::Read);
    let hole = PIC_BASE + PAGE;
    assert_eq!(handle_mm_fault(&mm, hole, r), segv(hole, SegvReason::NoVma));
    let high = 0xffff_8000_0000_0000;
    assert_eq!(
        handle_mm_fault(&mm, high, r),
        segv(high, SegvReason::NotUserAddress)
    );
    assert_eq!(env.mem.stats().snapshot().get(Event::Segv), 4);
    assert_eq!(
        Access::from_error_code(0b110),
        Access::user(AccessKind::Write)
    );
    assert_eq!(
        Access::from_error_code(0b10000),
        Access::kernel(AccessKind::Exec)
    );
}

#[test]
fn out_of_memory_is_reported_and_nothing_leaks() {
    let env = Env::new(4, 1);
    {
        let mm = env.mm();
        mm.mmap(PIC_BASE, 4 * PAGE, rw(), fixed()).unwrap();
        env.mem.frames().drain_caches();
        env.p.fail_allocs_after(0);
        let w = Access::user(AccessKind::Write);
        assert_eq!(handle_mm_fault(&mm, PIC_BASE, w), FaultResult::Oom);
        env.p.fail_allocs_after(3);
        // Three page-table levels succeed, the data frame does not.
        assert_eq!(handle_mm_fault(&mm, PIC_BASE, w), FaultResult::Oom);
        env.p.fail_allocs_after(u64::MAX);
        assert_eq!(handle_mm_fault(&mm, PIC_BASE, w), FaultResult::Resolved);
        assert_eq!(env.mem.stats().snapshot().get(Event::Oom), 2);
    }
    env.assert_baseline();
}

#[test]
fn two_cpus_faulting_one_page_both_succeed_with_one_frame() {
    let env = Env::new(8, 2);
    {
        let mm = env.mm();
        let pages = 64;
        mm.mmap(PIC_BASE, pages * PAGE, rw(), fixed()).unwrap();
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            let mut handles = std::vec::Vec::new();
            for cpu in 0..2 {
                let (mm, barrier) = (&mm, &barrier);
                // Results are checked after the scope: an assertion here would leave the other
                // thread at the barrier for good.
                handles.push(env.p.spawn_cpu(s, cpu, move || {
                    (0..pages)
                        .map(|i| {
                            barrier.wait();
                            let a = PIC_BASE + i * PAGE;
                            handle_mm_fault(mm, a, Access::user(AccessKind::Write))
                        })
                        .collect::<std::vec::Vec<_>>()
                }));
            }
            for h in handles {
                let results = h.join().unwrap();
                assert!(
                    results.iter().all(|&r| r == FaultResult::Resolved),
                    "{results:?}"
                );
            }
        });
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..pages {
            let e = mm.page_tables().lookup_pte(PIC_BASE + i * PAGE);
            assert!(e.flags().contains(PageTableFlags::WRITABLE));
            let f = e.frame();
            assert_eq!(env.mem.frames().meta(f).mapcount(), 1);
            assert!(seen.insert(f), "one frame mapped twice");
        }
        let s = env.mem.stats().snapshot();
        // Every page: one winner; the loser either lost the PTE race or found it mapped.
        assert_eq!(s.get(Event::AnonFrameMapped), pages);
        std::println!("same-page race: {s}");
    }
    env.assert_baseline();
}

#[test]
fn mmap_lock_only_policy_never_takes_the_fast_path() {
    let env = Env::new(4, 1);
    let mm = env.mm();
    mm.mmap(PIC_BASE, 4 * PAGE, rw(), fixed()).unwrap();
    env.mem.set_fault_policy(FaultPolicy::MmapLockOnly);
    for i in 0..4 {
        mmu::store(&mm, PIC_BASE + i * PAGE, i, true).unwrap();
    }
    let s = env.mem.stats().snapshot();
    assert_eq!(s.get(Event::VmaLockSuccess), 0);
    assert_eq!(s.get(Event::MmapLockFallback), 4);
    env.mem.set_fault_policy(FaultPolicy::PerVmaLock);
    mmu::store(&mm, PIC_BASE + 4 * PAGE - 8, 1, true).unwrap_or(());
    assert_eq!(
        env.mem.stats().snapshot().get(Event::VmaLockSuccess),
        0,
        "page already mapped"
    );
}

#[test]
fn a_write_locked_vma_sends_faults_to_mmap_lock() {
    let env = Env::new(4, 2);
    let mm = env.mm();
    mm.mmap(PIC_BASE, PAGE, rw(), fixed()).unwrap();
    let vma = mm.vmas()[0].clone();
    let g = mm.mmap_write_lock();
    vma.start_write(&g);
    assert!(lock_vma_under_rcu(&mm, PIC_BASE).is_none());
    drop(g);
    assert!(lock_vma_under_rcu(&mm, PIC_BASE).is_some());
    assert!(lock_vma_under_rcu(&mm, PIC_BASE + PAGE).is_none());
    let s = env.mem.stats().snapshot();
    assert_eq!(s.get(Event::VmaLockAbort), 2);
}

/// Copy-on-write must flush the old translation before the copy becomes visible. CPU 3 caches
/// the read-only zero-frame translation of page P; CPU 1 write-faults P and copies it. While
/// CPU 1's shootdown is in flight, CPU 2 writes P and then a flag, and CPU 3 reads the flag and
/// then P: seeing the flag but P's old data through the stale entry breaks the ordering user
/// code relies on. (Installing the new PTE before the shootdown allowed exactly that.)
#[test]
fn cow_flushes_the_old_translation_before_the_new_page_is_visible() {
    let env = Env::new(4, 4);
    {
        let mm = env.mm();
        let (p, flag) = (PIC_BASE, PIC_BASE + PAGE);
        mm.mmap(p, 2 * PAGE, rw(), fixed()).unwrap();
        mmu::store(&mm, flag, 0, true).unwrap();
        let cached = on_cpu(&env, 3, || {
            let v = mmu::load(&mm, p, true);
            (v, env.p.tlb().lookup(p))
        });
        assert_eq!(cached.0, Ok(0));
        assert_eq!(
            cached.1.map(|e| e.frame),
            Some(env.mem.frames().zero_frame())
        );

        let (pause, hook) = Pause::arm();
        env.p.on_next_shootdown(hook);
        let (published, seen, wrote) = std::thread::scope(|s| {
            let writer = env.p.spawn_cpu(s, 1, || mmu::store(&mm, p, 7, true));
            let resume = pause.wait(&writer, "the write fault's shootdown");
            // CPU 1 is inside its write fault, at the shootdown.
            let published = on_cpu(&env, 2, || {
                mmu::store_nofault(&mm, p, 42, true).is_ok()
                    && mmu::store_nofault(&mm, flag, 1, true).is_ok()
            });
            let seen = on_cpu(&env, 3, || {
                let f = mmu::load_nofault(&mm, flag, true);
                (f, mmu::load_nofault(&mm, p, true))
            });
            drop(resume);
            (published, seen, writer.join().unwrap())
        });
        assert_eq!(wrote, Ok(()));
        assert_eq!(seen.0, Ok(u64::from(published)));
        if published {
            assert_eq!(
                seen.1,
                Ok(42),
                "CPU 3 saw the flag but read P through its stale translation"
            );
        }
        // After the fault every CPU sees the copy.
        on_cpu(&env, 2, || {
            mmu::store(&mm, p, 42, true).unwrap();
            mmu::store(&mm, flag, 1, true).unwrap();
        });
        let seen = on_cpu(&env, 3, || {
            (mmu::load(&mm, flag, true), mmu::load(&mm, p, true))
        });
        assert_eq!(seen, (Ok(1), Ok(42)));
        assert_eq!(env.mem.stats().snapshot().get(Event::WpCopy), 1);
    }
    env.assert_baseline();
}
