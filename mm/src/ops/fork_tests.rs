//! Host tests of `fork` (`dup_mmap` and copy-on-write): pictures of which frames the two sides
//! share, frame accounting over forks and exits, out of memory, and fault against `dup_mmap`
//! on one VMA in every order of the steps where they meet (the Linux 6.4 per-VMA lock race).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::{ForkError, MADV_DONTNEED, skip_parent_vma_lock};
use crate::address_space::AddressSpace;
use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::stats::Event;
use crate::testutil::{
    Env, PAGE, anon, draw, fixed, frame_letters as frames, pic_page as page, pic_read as read,
    pic_write as write, picture,
};
use crate::vma::Prot;

#[test]
fn fork_shares_every_page_and_a_write_on_either_side_copies_or_reuses() {
    let env = Env::new(4, 2);
    {
        let parent = env.mm();
        draw(&parent, "wwwr w");
        write(&parent, 0, 10);
        write(&parent, 1, 11);
        assert_eq!(read(&parent, 2), 0);
        assert_eq!(read(&parent, 3), 0);
        let child = parent.fork().unwrap();
        assert_eq!(picture(&child, 6), picture(&parent, 6));
        assert_eq!(picture(&child, 6).0, "AAAB C");
        assert_eq!(frames(&env, &[&parent, &child], 6), ["ab00 .", "ab00 ."]);
        for i in 0..2 {
            assert!(!parent.page_tables().lookup_pte(page(i)).writable());
            assert!(!child.page_tables().lookup_pte(page(i)).writable());
        }
        // The child's write copies; the parent's frame is then mapped once, and reused.
        write(&child, 0, 20);
        assert_eq!(frames(&env, &[&parent, &child], 6), ["ab00 .", "cb00 ."]);
        write(&parent, 0, 30);
        assert_eq!(frames(&env, &[&parent, &child], 6), ["ab00 .", "cb00 ."]);
        // The parent's write copies page 1; the child's then reuses its (now unshared) frame.
        write(&parent, 1, 31);
        assert_eq!(frames(&env, &[&parent, &child], 6), ["ab00 .", "cd00 ."]);
        write(&child, 1, 21);
        assert_eq!(frames(&env, &[&parent, &child], 6), ["ab00 .", "cd00 ."]);
        // A zero-frame page gets a frame of its own on the side that writes.
        write(&parent, 2, 32);
        assert_eq!(frames(&env, &[&parent, &child], 6), ["abc0 .", "de00 ."]);
        assert_eq!(
            (0..3).map(|i| read(&parent, i)).collect::<Vec<_>>(),
            [30, 31, 32]
        );
        assert_eq!(
            (0..3).map(|i| read(&child, i)).collect::<Vec<_>>(),
            [20, 21, 0]
        );
        // A write to the read-only VMA still faults on both sides.
        assert!(mmu::store(&child, page(3) + 8, 1, true).is_err());
        child.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn a_parent_that_exits_first_leaves_the_child_its_pages() {
    let env = Env::new(4, 2);
    {
        let parent = env.mm();
        draw(&parent, "www");
        for i in 0..3 {
            write(&parent, i, 100 + i);
        }
        let child = parent.fork().unwrap();
        drop(parent);
        env.mem.quiesce();
        // Still shared frames' last mapping: the child's write reuses them in place.
        let before = frames(&env, &[&child], 3);
        write(&child, 1, 7);
        assert_eq!(frames(&env, &[&child], 3), before);
        assert_eq!(
            (0..3).map(|i| read(&child, i)).collect::<Vec<_>>(),
            [100, 7, 102]
        );
    }
    env.assert_baseline();
}

/// A child that has exited but is not yet reaped (its `AddressSpace` still alive) holds, after
/// `exit_mmap`, only its root table: its own copies, its page tables and its mappings of shared
/// frames are gone, so the parent's next write reuses the frames it shared in place. Its VMAs
/// spread over two PML4 entries, one PTE table emptied by `MADV_DONTNEED` beforehand.
#[test]
fn an_exited_child_keeps_only_its_root_until_it_is_dropped() {
    let env = Env::new(4, 2);
    {
        let parent = env.mm();
        env.mem.quiesce();
        let empty = env.p.free_frames();
        draw(&parent, "wwwr w");
        for i in 0..3 {
            write(&parent, i, 10 + i);
        }
        let far = 0x7f00_0000_0000;
        let rw = Prot::READ | Prot::WRITE;
        parent.mmap(far, 4 * PAGE, rw, fixed()).unwrap();
        assert_eq!(mmu::store(&parent, far + 8, 5, true), Ok(()));
        env.mem.quiesce();
        let parent_only = env.p.free_frames();
        let child = parent.fork().unwrap();
        // Copies of its own: page 0 and a fresh page, a zero-frame read, a table of its own.
        write(&child, 0, 20);
        write(&child, 2, 22);
        assert_eq!(read(&child, 5), 0);
        assert_eq!(mmu::store(&child, far + 2 * PAGE, 7, true), Ok(()));
        child.madvise(far + 2 * PAGE, PAGE, MADV_DONTNEED).unwrap();
        env.mem.quiesce();
        assert!(env.p.free_frames() < parent_only - 3);
        child.exit_mmap();
        env.mem.quiesce();
        assert_eq!(
            env.p.free_frames(),
            parent_only - 1,
            "the exited child holds more than its root"
        );
        assert!(child.vmas().is_empty());
        assert_eq!(child.page_tables().count_tables(), 1);
        child.validate().unwrap();
        assert!(matches!(
            mmu::store(&child, page(0) + 8, 1, true),
            Err(FaultResult::Segv { .. })
        ));
        // The parent's frames are mapped once again: its writes reuse them.
        let before = frames(&env, &[&parent], 6);
        for i in 0..3 {
            write(&parent, i, 30 + i);
        }
        assert_eq!(frames(&env, &[&parent], 6), before);
        assert_eq!(read(&parent, 1), 31);
        assert_eq!(mmu::load(&parent, far + 8, true), Ok(5));
        drop(child);
        env.mem.quiesce();
        assert_eq!(env.p.free_frames(), parent_only);
        // `exit_mmap` of the parent too: every frame but its root back.
        parent.exit_mmap();
        env.mem.quiesce();
        assert_eq!(env.p.free_frames(), empty);
    }
    env.assert_baseline();
}

/// Forks of forks, writes, `munmap`, `MADV_DONTNEED` and exits in several orders: every frame
/// comes back, and none before its last mapping goes (the emulated MMU panics on an access to a
/// freed frame).
#[test]
fn frames_are_freed_with_their_last_mapping_over_many_forks_and_exits() {
    let env = Env::new(8, 2);
    for order in 0..3 {
        let root = env.mm();
        draw(&root, "wwwwwwww");
        for i in 0..8 {
            write(&root, i, i);
        }
        let mut procs = std::vec![root];
        for n in 0..6u64 {
            let from = (n as usize * 7) % procs.len();
            let child = procs[from].fork().unwrap();
            write(&child, n % 8, 1000 + n);
            procs.push(child);
        }
        procs[2].munmap(page(0), 2 * PAGE).unwrap();
        procs[3].madvise(page(4), 2 * PAGE, MADV_DONTNEED).unwrap();
        match order {
            0 => procs.reverse(),
            1 => procs.rotate_left(3),
            _ => {}
        }
        while let Some(mm) = procs.pop() {
            for other in &procs {
                for i in 2..4 {
                    let _ = read(other, i);
                }
            }
            drop(mm);
            env.mem.quiesce();
        }
        env.assert_baseline();
    }
}

/// Every allocation a fork makes fails in turn (page tables, then maple nodes): the fork
/// reports `OutOfMemory` and the parent keeps its VMAs, contents and frame counts; once the
/// child is gone every frame is back.
#[test]
fn fork_out_of_memory_fails_cleanly_and_leaves_the_parent_untouched() {
    let env = Env::new(8, 1);
    let parent = env.mm();
    // VMAs in three PTE tables, and enough of them that the child's tree needs several nodes.
    for i in 0..40u64 {
        let prot = if i % 2 == 0 { "w" } else { "r" };
        draw(
            &parent,
            &std::format!("{:>1$}", prot, (i * 40 + 1) as usize),
        );
    }
    for i in (0..1600).step_by(40) {
        let _ = mmu::store(&parent, page(i) + 8, i + 1, true);
        let _ = read(&parent, i);
    }
    let vmas = parent.vmas();
    let contents: Vec<u64> = (0..1600).step_by(40).map(|i| read(&parent, i)).collect();
    let counts = |mm: &AddressSpace<Emulated>| -> Vec<(u32, u32)> {
        (0..1600)
            .step_by(40)
            .map(|i| {
                let m = env
                    .mem
                    .frames()
                    .meta(mm.page_tables().lookup_pte(page(i)).frame());
                (m.refcount(), m.mapcount())
            })
            .collect()
    };
    let before = counts(&parent);
    let base = {
        env.mem.quiesce();
        env.mem.frames().drain_caches();
        env.p.free_frames()
    };
    let check_parent = || {
        assert!(
            parent
                .vmas()
                .iter()
                .zip(&vmas)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        );
        assert_eq!(parent.vmas().len(), vmas.len());
        assert_eq!(counts(&parent), before);
        let now: Vec<u64> = (0..1600).step_by(40).map(|i| read(&parent, i)).collect();
        assert_eq!(now, contents);
        env.mem.quiesce();
        env.mem.frames().drain_caches();
        assert_eq!(env.p.free_frames(), base, "a failed fork leaked frames");
    };
    let mut frame_failures = 0;
    for n in 0.. {
        env.mem.frames().drain_caches();
        env.p.fail_allocs_after(n);
        let r = parent.fork();
        env.p.fail_allocs_after(u64::MAX);
        match r {
            Err(ForkError::OutOfMemory) => frame_failures += 1,
            Ok(child) => {
                drop(child);
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        check_parent();
    }
    assert!(
        frame_failures >= 4,
        "only {frame_failures} allocations to fail"
    );
    let mut node_failures = 0;
    for n in 0.. {
        let child = env.mm();
        child.tree().fail_node_allocs_after(Some(n));
        let r = parent.dup_mmap(&child);
        child.tree().fail_node_allocs_after(None);
        drop(child);
        match r {
            Err(ForkError::OutOfMemory) => node_failures += 1,
            Ok(()) => break,
            Err(e) => panic!("{e:?}"),
        }
        check_parent();
    }
    assert!(node_failures >= 1);
    drop(parent);
    env.assert_baseline();
}

#[test]
fn dup_mmap_into_a_non_empty_address_space_is_an_error() {
    let env = Env::new(4, 1);
    {
        let parent = env.mm();
        draw(&parent, "w");
        let child = env.mm();
        draw(&child, " w");
        assert_eq!(parent.dup_mmap(&child), Err(ForkError::ChildNotEmpty));
    }
    env.assert_baseline();
}

/// Where, relative to the fork and the fault, another parent CPU writes through the writable
/// TLB entry it cached before the fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteAt {
    BeforeFork,
    /// After `dup_mmap` write-protected the PTE, before its TLB flush.
    ForkBeforeFlush,
    /// In the fault's `wp_page_copy`, after the copy, at its shootdown.
    FaultCopying,
    AfterFault,
    AfterFork,
}

const SCHEDULES: [WriteAt; 5] = [
    WriteAt::BeforeFork,
    WriteAt::ForkBeforeFlush,
    WriteAt::FaultCopying,
    WriteAt::AfterFault,
    WriteAt::AfterFork,
];
const W_WORD: u64 = 0;
const F_WORD: u64 = 8;
const CPU_WRITER: usize = 1;
const CPU_FAULT: usize = 2;
const CPU_CHECK: usize = 3;

/// What each side reads after a schedule: (writer's word, faulting thread's word).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    parent: (u64, u64),
    child: (u64, u64),
}

/// The writer's store: not made yet.
const W_NOT_YET: u8 = 0;
/// Made through the writer CPU's TLB or page walk.
const W_DONE: u8 = 1;
/// It faulted: to be made again once the fault can be handled (as a CPU retries after #PF).
const W_PENDING: u8 = 2;

/// The writer CPU's store of 1, once, without handling a fault (the caller may hold up the
/// handler: a PTE lock, `mmap_lock`).
fn writer_store(p: &Arc<Emulated>, mm: &Arc<AddressSpace<Emulated>>, a: u64, state: &AtomicU8) {
    let (p, mm) = (p.clone(), mm.clone());
    let faulted = std::thread::spawn(move || {
        p.bind_cpu(CPU_WRITER);
        mmu::store_nofault(&mm, a + W_WORD, 1, true).is_err()
    })
    .join()
    .unwrap();
    state.store(if faulted { W_PENDING } else { W_DONE }, Ordering::SeqCst);
}

/// One parent thread faults (writes) on the VMA's one page while `dup_mmap` copies it, another
/// writes through a TLB entry from before the fork at `at`. With `lock` false, `dup_mmap` does
/// not write-lock the parent's VMA (the bug Linux 6.4 shipped).
fn fault_vs_dup_mmap(at: WriteAt, lock: bool) -> Seen {
    let env = Env::new(4, 4);
    let (p, mem) = (env.p.clone(), env.mem.clone());
    let parent = Arc::new(env.mm());
    let a = parent
        .mmap(0, PAGE, Prot::READ | Prot::WRITE, anon())
        .unwrap();
    let pending = Arc::new(AtomicU8::new(W_NOT_YET));
    {
        // The writer caches a writable, dirty translation.
        let (p, parent) = (p.clone(), parent.clone());
        std::thread::spawn(move || {
            p.bind_cpu(CPU_WRITER);
            assert_eq!(mmu::store(&parent, a + W_WORD, 0, true), Ok(()));
        })
        .join()
        .unwrap();
    }
    if at == WriteAt::BeforeFork {
        writer_store(&p, &parent, a, &pending);
    }
    let fault_done = Arc::new(AtomicBool::new(false));
    let fault_thread = Arc::new(std::sync::Mutex::new(None));
    {
        let (p2, parent2, pending2) = (p.clone(), parent.clone(), pending.clone());
        let (done, thread, mem) = (fault_done.clone(), fault_thread.clone(), mem.clone());
        // Runs in `dup_mmap`, at its TLB flush: the parent PTE is write-protected by now.
        p.on_next_shootdown(move || {
            if at == WriteAt::ForkBeforeFlush {
                writer_store(&p2, &parent2, a, &pending2);
            }
            if at == WriteAt::FaultCopying {
                let (p3, parent3, pending3) = (p2.clone(), parent2.clone(), pending2.clone());
                // The next shootdown is the fault's, in `wp_page_copy` after the copy.
                p2.on_next_shootdown(move || writer_store(&p3, &parent3, a, &pending3));
            }
            let fallbacks = mem.stats().cpu(CPU_FAULT).get(Event::MmapLockFallback);
            let (p4, parent4, done4) = (p2.clone(), parent2.clone(), done.clone());
            *thread.lock().unwrap() = Some(std::thread::spawn(move || {
                p4.bind_cpu(CPU_FAULT);
                assert_eq!(mmu::store(&parent4, a + F_WORD, 2, true), Ok(()));
                done4.store(true, Ordering::SeqCst);
            }));
            // Until the fault is done, or waits for mmap_lock (which dup_mmap holds).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::SeqCst)
                && mem.stats().cpu(CPU_FAULT).get(Event::MmapLockFallback) == fallbacks
            {
                assert!(
                    Instant::now() < deadline,
                    "the fault neither ran nor waited"
                );
                std::thread::yield_now();
            }
            if at == WriteAt::AfterFault && done.load(Ordering::SeqCst) {
                writer_store(&p2, &parent2, a, &pending2);
            }
        });
    }
    let child = {
        let (p, parent) = (p.clone(), parent.clone());
        std::thread::spawn(move || {
            p.bind_cpu(0);
            skip_parent_vma_lock(!lock);
            parent.fork().unwrap()
        })
        .join()
        .unwrap()
    };
    let t = fault_thread.lock().unwrap().take();
    t.expect("dup_mmap sent no shootdown").join().unwrap();
    if pending.load(Ordering::SeqCst) == W_NOT_YET {
        // AfterFault with the fault held up until the fork finished, or AfterFork.
        writer_store(&p, &parent, a, &pending);
    }
    if pending.load(Ordering::SeqCst) == W_PENDING {
        let (p, parent) = (p.clone(), parent.clone());
        std::thread::spawn(move || {
            p.bind_cpu(CPU_WRITER);
            assert_eq!(mmu::store(&parent, a + W_WORD, 1, true), Ok(()));
        })
        .join()
        .unwrap();
    }
    let child = Arc::new(child);
    let seen = {
        let (p, parent, child) = (p.clone(), parent.clone(), child.clone());
        std::thread::spawn(move || {
            p.bind_cpu(CPU_CHECK);
            let r = |mm: &AddressSpace<Emulated>, w| mmu::load(mm, a + w, true).unwrap();
            Seen {
                parent: (r(&parent, W_WORD), r(&parent, F_WORD)),
                child: (r(&child, W_WORD), r(&child, F_WORD)),
            }
        })
        .join()
        .unwrap()
    };
    drop((parent, child));
    env.assert_baseline();
    seen
}

/// Whether `seen` is a legal outcome: the parent has both its threads' writes; the child never
/// has the fault's (made after the fork began copying, into the parent's copy) and may or may
/// not have the concurrent writer's.
fn legal(seen: &Seen) -> bool {
    seen.parent == (1, 2) && seen.child.1 == 0 && seen.child.0 <= 1
}

/// Fault vs `dup_mmap` on one VMA, the concurrent writer placed at each step where the two
/// meet: with the parent VMA write-locked, every order is legal.
#[test]
fn fault_vs_dup_mmap_loses_no_write_with_the_parent_vma_locked() {
    for at in SCHEDULES {
        let seen = fault_vs_dup_mmap(at, true);
        assert!(legal(&seen), "{at:?}: {seen:?}");
    }
}

/// The same orders without the parent VMA write lock: the fault runs during the fork, copies
/// the frame while the writer still writes to it through its old writable entry, and the
/// parent loses that write, which only the child sees (Linux bugzilla 217624). Exactly that
/// order goes wrong.
#[test]
fn fault_vs_dup_mmap_loses_a_write_without_the_parent_vma_lock() {
    let bad: Vec<(WriteAt, Seen)> = SCHEDULES
        .iter()
        .map(|&at| (at, fault_vs_dup_mmap(at, false)))
        .filter(|(_, seen)| !legal(seen))
        .collect();
    assert_eq!(
        bad,
        [(
            WriteAt::FaultCopying,
            Seen {
                parent: (0, 2),
                child: (1, 0),
            }
        )]
    );
}

/// A write fault's `Segv`/`Oom` outcomes are unaffected by sharing: a fork of a read-only
/// mapping still refuses writes on both sides.
#[test]
fn a_forked_read_only_mapping_refuses_writes() {
    let env = Env::new(4, 1);
    {
        let parent = env.mm();
        draw(&parent, "r");
        assert_eq!(read(&parent, 0), 0);
        let child = parent.fork().unwrap();
        let w = Access::user(AccessKind::Write);
        for mm in [&parent, &child] {
            assert!(matches!(
                handle_mm_fault(mm, page(0), w),
                FaultResult::Segv { .. }
            ));
        }
    }
    env.assert_baseline();
}
