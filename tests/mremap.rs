//! `mremap` on real hardware (8 CPUs): one thread keeps moving a region back and forth between
//! two addresses (`MREMAP_MAYMOVE | MREMAP_FIXED`), while the other threads of the process
//! fault on it, write and read it wherever they last saw it. They access it through the
//! user-copy helpers, so an access to the range the region just left is an `EFAULT` instead of
//! the end of the thread. A write that succeeded must be read back (it moved with its page); a
//! read never finds a page the mover did not carry along (a fresh zero page, or another page's
//! data). Afterwards every frame is back.

#![no_std]
#![no_main]
#![feature(custom_test_frameworks)]
#![test_runner(kernel::testing::test_runner)]
#![reexport_test_harness_main = "test_main"]

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel::arch::percpu::online_count;
use kernel::arch::uaccess::{read_user, write_user};
use kernel::process::Process;
use mm::ops::MremapFlags;

kernel::test_kernel!();

mod common;
use common::{ANON, PAGE, RW, free_frames};

/// Pages of the moving region (across a page-table boundary at most places it can land).
const PAGES: u64 = 600;
const MOVES: u64 = 150;

/// The word page `i` of the region holds at offset 0 from the start (never changed).
fn tag(i: u64) -> u64 {
    0x5a5a_0000_0000 | i
}

#[test_case]
fn faults_racing_mremap_moves_keep_every_write() {
    let baseline = free_frames();
    let p = Process::new("mremap").expect("process");
    let mm = p.mm().clone();
    let len = PAGES * PAGE;
    let a = mm.mmap(0, len, RW, ANON).expect("mmap a");
    // The other end: a free range of the same size (mapped, then given back).
    let b = mm.mmap(0, len, RW, ANON).expect("mmap b");
    mm.munmap(b, len).expect("munmap b");
    let location = Arc::new(AtomicU64::new(a));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = 2 * online_count() as u64 - 1;
    // Tags in place before anyone looks.
    let setup = p
        .spawn("setup", move || {
            for i in 0..PAGES {
                write_user(a + i * PAGE, &tag(i)).expect("setup write");
            }
            0
        })
        .expect("spawn");
    assert_eq!(setup.join(), 0);
    let before = kernel::platform::memory().stats().snapshot();

    let mover = {
        let (mm, location, stop) = (mm.clone(), location.clone(), stop.clone());
        p.spawn("mover", move || {
            let flags = (MremapFlags::MAYMOVE | MremapFlags::FIXED).bits();
            let (mut from, mut to) = (a, b);
            for _ in 0..MOVES {
                let got = mm.mremap(from, len, len, flags, to);
                assert_eq!(got, Ok(to), "mremap {from:#x} -> {to:#x}");
                location.store(to, Ordering::Release);
                core::mem::swap(&mut from, &mut to);
            }
            stop.store(true, Ordering::Release);
            from as i64
        })
        .expect("spawn")
    };
    let handles: Vec<_> = (0..writers)
        .map(|id| {
            let (location, stop) = (location.clone(), stop.clone());
            p.spawn("writer", move || {
                // This thread's word: offset 8 * (id + 1) of the pages id, id + writers, ...
                let slot = |base: u64, i: u64| base + i * PAGE + 8 * (id + 1);
                // What the word must hold: unknown after a failed write, which may have stored
                // some of its bytes before the region moved away (a user copy is not atomic).
                let mut last = Some(0u64);
                let (mut ok, mut efault) = (0u64, 0u64);
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let i = id + (n % (PAGES / writers)) * writers;
                    n += 1;
                    let base = location.load(Ordering::Acquire);
                    match read_user::<u64>(base + i * PAGE) {
                        Ok(t) => assert_eq!(t, tag(i), "page {i} read {t:#x} at {base:#x}"),
                        Err(_) => {
                            // It moved: let the mover in rather than queue on mmap_lock again.
                            efault += 1;
                            kernel::sched::yield_now();
                        }
                    }
                    // One word of this thread, on its first page: written, then read back
                    // wherever the region is by then.
                    let v = (id << 40) | n;
                    if write_user(slot(base, id), &v).is_ok() {
                        last = Some(v);
                        ok += 1;
                    } else {
                        last = None;
                        efault += 1;
                    }
                    let now = location.load(Ordering::Acquire);
                    if let (Ok(got), Some(want)) = (read_user::<u64>(slot(now, id)), last) {
                        assert!(
                            got == want,
                            "writer {id}: read {got:#x}, last write {want:#x}: a write was lost"
                        );
                    }
                }
                // The region rests now: the last write is there.
                let end = location.load(Ordering::Acquire);
                if let Some(want) = last {
                    assert_eq!(read_user::<u64>(slot(end, id)), Ok(want));
                }
                assert!(ok > 0, "writer {id} never got a write in");
                kernel::serial_println!("writer {id}: {ok} writes, {efault} EFAULTs");
                0
            })
            .expect("spawn")
        })
        .collect();
    for h in handles {
        assert_eq!(h.join(), 0);
    }
    let end = mover.join() as u64;
    let d = kernel::platform::memory().stats().snapshot().since(&before);
    kernel::serial_println!(
        "mremap: {writers} writers on {} CPUs, {MOVES} moves; {d}",
        online_count()
    );
    let check = p
        .spawn("check", move || {
            for i in 0..PAGES {
                assert_eq!(read_user::<u64>(end + i * PAGE), Ok(tag(i)), "page {i}");
            }
            0
        })
        .expect("spawn");
    assert_eq!(check.join(), 0);
    mm.munmap(end, len).expect("munmap");
    drop(mm);
    drop(p);
    assert_eq!(free_frames(), baseline, "frames leaked");
}
