//! Host tests of shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`): pictures of the VMAs of
//! one object through splits, merges, moves and forks, which frames the processes share, exact
//! frame accounting, and a fault that runs out of memory.

use alloc::vec::Vec;

use super::MADV_DONTNEED;
use crate::address_space::AddressSpace;
use crate::fault::{Access, AccessKind, FaultResult, handle_mm_fault};
use crate::ops::MapFlags;
use crate::platform::emulated::Emulated;
use crate::platform::{PhysFrame, mmu};
use crate::testutil::{
    Env, PAGE, fixed, frame_letters as frames, pic_page as page, pic_read as read,
    pic_write as write, picture,
};
use crate::vma::Prot;

const RW: Prot = Prot::READ.union(Prot::WRITE);

fn shared_fixed() -> MapFlags {
    MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::FIXED
}

fn map_shared(mm: &AddressSpace<Emulated>, first: u64, pages: u64) {
    assert_eq!(
        mm.mmap(page(first), pages * PAGE, RW, shared_fixed()),
        Ok(page(first))
    );
}

/// Frames in the platform's pool once every deferred free ran and the caches are drained.
fn free(env: &Env) -> usize {
    env.mem.quiesce();
    env.p.free_frames()
}

#[test]
fn a_fork_shares_the_object_and_writes_on_either_side_are_seen_by_both() {
    let env = Env::new(4, 2);
    {
        let parent = env.mm();
        map_shared(&parent, 0, 3);
        assert_eq!(parent.mmap(page(3), 2 * PAGE, RW, fixed()), Ok(page(3)));
        assert_eq!(picture(&parent, 5).0, "AAABB");
        write(&parent, 0, 10);
        write(&parent, 3, 13);
        // A read maps the object's page, not the zero frame, and writable.
        assert_eq!(read(&parent, 1), 0);
        assert!(parent.page_tables().lookup_pte(page(1)).writable());
        let child = parent.fork().unwrap();
        assert_eq!(picture(&child, 5), picture(&parent, 5));
        // The shared VMA's PTEs are left to fault in the child; the private one is CoW.
        assert_eq!(frames(&env, &[&parent, &child], 5), ["ab.c.", "...c."]);
        assert!(parent.page_tables().lookup_pte(page(0)).writable());
        assert_eq!(read(&child, 0), 10);
        write(&child, 1, 21);
        write(&child, 2, 22);
        write(&child, 3, 23);
        assert_eq!(read(&parent, 1), 21);
        assert_eq!(read(&parent, 2), 22);
        assert_eq!(read(&parent, 3), 13, "a private page stayed private");
        write(&parent, 0, 30);
        assert_eq!(read(&child, 0), 30);
        assert_eq!(frames(&env, &[&parent, &child], 5), ["abcd.", "abce."]);
        let meta = env
            .mem
            .frames()
            .meta(parent.page_tables().lookup_pte(page(0)).frame());
        // Two PTEs and the object.
        assert_eq!((meta.mapcount(), meta.refcount()), (2, 3));
        drop(parent);
        env.mem.quiesce();
        assert_eq!((meta.mapcount(), meta.refcount()), (1, 2));
        assert_eq!(read(&child, 2), 22);
        child.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn splits_keep_each_piece_at_its_offset_and_pieces_of_one_object_merge_back() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        map_shared(&mm, 0, 6);
        for i in 0..6 {
            write(&mm, i, 100 + i);
        }
        let frame_at = |i| mm.page_tables().lookup_pte(page(i)).frame();
        let before: Vec<PhysFrame> = (0..6).map(frame_at).collect();
        mm.mprotect(page(2), 2 * PAGE, Prot::READ).unwrap();
        assert_eq!(picture(&mm, 6), ("AABBCC".into(), "wwrrww".into()));
        mm.munmap(page(1), PAGE).unwrap();
        assert_eq!(picture(&mm, 6), ("A BBCC".into(), "w rrww".into()));
        mm.validate().unwrap();
        let child = mm.fork().unwrap();
        for i in [0, 2, 3, 4, 5] {
            assert_eq!(read(&mm, i), 100 + i);
            assert_eq!(read(&child, i), 100 + i);
        }
        // Made writable again, pages 2..6 are one VMA (one object, contiguous offsets); the
        // read-only PTEs become writable in place on a write: no copy.
        mm.mprotect(page(2), 2 * PAGE, RW).unwrap();
        assert_eq!(picture(&mm, 6), ("A BBBB".into(), "w wwww".into()));
        write(&mm, 2, 7);
        assert_eq!(read(&child, 2), 7);
        for i in [0, 2, 3, 4, 5] {
            assert_eq!(frame_at(i), before[i as usize]);
        }
        // Two separate objects side by side stay apart.
        map_shared(&mm, 1, 1);
        assert_eq!(picture(&mm, 6).0, "ABCCCC");
        assert_eq!(read(&mm, 1), 0);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn dontneed_zaps_only_the_mapping_and_the_object_gives_the_data_back() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        map_shared(&mm, 0, 2);
        assert_eq!(mm.mmap(page(2), 2 * PAGE, RW, fixed()), Ok(page(2)));
        for i in 0..4 {
            write(&mm, i, 50 + i);
        }
        mm.madvise(page(0), 4 * PAGE, MADV_DONTNEED).unwrap();
        assert_eq!(frames(&env, &[&mm], 4), ["...."]);
        assert_eq!(
            (0..4).map(|i| read(&mm, i)).collect::<Vec<_>>(),
            [50, 51, 0, 0]
        );
        let obj = mm.vmas()[0].shared().unwrap().obj.clone();
        assert_eq!(obj.nr_pages(), 2);
    }
    env.assert_baseline();
}

#[test]
fn mremap_moves_keep_the_object_and_dontunmap_leaves_two_vmas_of_it() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        map_shared(&mm, 0, 4);
        for i in 0..4 {
            write(&mm, i, 200 + i);
        }
        let child = mm.fork().unwrap();
        // MAYMOVE | FIXED: pages 2..4 go to page 8.
        assert_eq!(
            mm.mremap(page(2), 2 * PAGE, 2 * PAGE, 3, page(8)),
            Ok(page(8))
        );
        assert_eq!(picture(&mm, 10).0, "AA      BB");
        assert_eq!(read(&mm, 8), 202);
        write(&mm, 9, 9);
        assert_eq!(read(&child, 3), 9);
        // Moved back next to its neighbour, it merges with it (contiguous offsets again).
        assert_eq!(
            mm.mremap(page(8), 2 * PAGE, 2 * PAGE, 3, page(2)),
            Ok(page(2))
        );
        assert_eq!(picture(&mm, 10).0, "AAAA      ");
        // DONTUNMAP: both ranges map the same pages (two VMAs of one object in one process).
        assert_eq!(mm.mremap(page(0), PAGE, PAGE, 5, page(6)), Ok(page(6)));
        assert_eq!(picture(&mm, 7).0, "AAAA  B");
        write(&mm, 6, 66);
        assert_eq!(read(&mm, 0), 66);
        assert_eq!(read(&child, 0), 66);
        // Grown in place, the new page is the object's next page: page 1's.
        assert_eq!(mm.mremap(page(6), PAGE, 2 * PAGE, 0, 0), Ok(page(6)));
        assert_eq!(read(&mm, 7), 201);
        write(&mm, 7, 77);
        assert_eq!(read(&mm, 1), 77);
        mm.validate().unwrap();
    }
    env.assert_baseline();
}

#[test]
fn a_shared_fault_out_of_memory_fails_cleanly_and_frames_are_exact() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        map_shared(&mm, 0, 2);
        // Page tables first, so that the next allocation is the page's.
        write(&mm, 0, 1);
        let obj = mm.vmas()[0].shared().unwrap().obj.clone();
        let before = free(&env);
        env.p.fail_allocs_after(0);
        let r = handle_mm_fault(&mm, page(1), Access::user(AccessKind::Write));
        env.p.fail_allocs_after(u64::MAX);
        assert_eq!(r, FaultResult::Oom);
        assert_eq!(obj.nr_pages(), 1);
        assert_eq!(frames(&env, &[&mm], 2), ["a."]);
        assert_eq!(free(&env), before, "a failed shared fault leaked a frame");
        write(&mm, 1, 2);
        assert_eq!(obj.nr_pages(), 2);
        assert_eq!(free(&env), before - 1);
        // Unmapped, the object's frames go with the last VMA; a live object keeps its pages.
        let child = mm.fork().unwrap();
        mm.munmap(page(0), 2 * PAGE).unwrap();
        drop(obj);
        assert_eq!(read(&child, 1), 2);
        drop(child);
    }
    env.assert_baseline();
}

/// Faults racing to allocate the same object pages from several CPUs of two processes (a parent
/// and its fork, on a fresh object each round): each page ends with one frame that every mapping
/// shares (the losers of the race put their frames back), every write is seen by both
/// processes, and every frame comes back.
#[test]
fn faults_racing_on_one_object_page_share_one_frame() {
    use std::thread;
    const CPUS: usize = 4;
    const PAGES: u64 = 32;
    let env = Env::new(8, CPUS);
    for round in 0..100u64 {
        let start = std::sync::Barrier::new(CPUS);
        let parent = env.mm();
        map_shared(&parent, 0, PAGES);
        let child = parent.fork().unwrap();
        thread::scope(|s| {
            for cpu in 0..CPUS {
                let mm = if cpu % 2 == 0 { &parent } else { &child };
                let start = &start;
                env.p.spawn_cpu(s, cpu, move || {
                    start.wait();
                    for i in 0..PAGES {
                        // Every CPU writes its own word of every page.
                        let at = page(i) + 8 * cpu as u64;
                        let v = (round << 16) | (i << 4) | cpu as u64;
                        assert_eq!(mmu::store(mm, at, v, true), Ok(()));
                    }
                });
            }
        });
        for i in 0..PAGES {
            let (p, c) = (
                parent.page_tables().lookup_pte(page(i)),
                child.page_tables().lookup_pte(page(i)),
            );
            assert!(p.holds_frame() && c.holds_frame());
            assert_eq!(
                p.frame(),
                c.frame(),
                "page {i}: two frames for one object page"
            );
            for cpu in 0..CPUS as u64 {
                let want = (round << 16) | (i << 4) | cpu;
                assert_eq!(mmu::load(&parent, page(i) + 8 * cpu, true), Ok(want));
                assert_eq!(mmu::load(&child, page(i) + 8 * cpu, true), Ok(want));
            }
        }
        parent.validate().unwrap();
        child.validate().unwrap();
    }
    env.assert_baseline();
}
