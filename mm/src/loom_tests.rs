//! loom models of the lock protocols (`RUSTFLAGS="--cfg loom" cargo test -p mm --release --lib
//! loom`). Each model runs the real protocol code on loom atomics; the data a lock protects is a
//! loom `UnsafeCell`, so loom reports any access the protocol fails to order.

use alloc::sync::Arc as StdArc;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use crate::sync::{LoomPark, MmapLock, RwSemaphore};
use crate::vma::{StartReadError, VmaLock};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.max_branches = 20_000;
    b.check(f);
}

struct VmaModel {
    mm: MmapLock<LoomPark>,
    vma: VmaLock,
    /// What the VMA lock protects (the VMA's page tables, say).
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is only accessed under the protocol being checked; loom verifies that.
unsafe impl Sync for VmaModel {}

fn vma_model() -> Arc<VmaModel> {
    let mm = MmapLock::new(StdArc::new(LoomPark));
    let vma = {
        let g = mm.write();
        let vma = VmaLock::new_locked(&g);
        vma.mark_attached(&g);
        vma
    };
    Arc::new(VmaModel {
        mm,
        vma,
        data: UnsafeCell::new(0),
    })
}

/// A reader racing a writer that locks, changes and detaches the VMA: a successful reader never
/// overlaps the writer and sees the old data; after the detach every reader is told `Detached`.
#[test]
fn loom_vma_start_read_vs_start_write_and_detach() {
    model(|| {
        let m = vma_model();
        let r = m.clone();
        let reader = thread::spawn(move || {
            if r.vma.start_read(&r.mm, || true).is_ok() {
                // SAFETY: the read lock excludes the writer (what loom checks).
                let v = r.data.with(|p| unsafe { *p });
                r.vma.end_read(&r.mm);
                assert_eq!(v, 0, "a reader saw a detached VMA's data");
            }
        });
        let w = m.clone();
        let writer = thread::spawn(move || {
            let g = w.mm.write();
            w.vma.start_write(&g);
            // SAFETY: the VMA write lock excludes readers (what loom checks).
            w.data.with_mut(|p| unsafe { *p = 1 });
            w.vma.mark_detached(&g);
        });
        reader.join().unwrap();
        writer.join().unwrap();
        assert!(!m.vma.is_attached());
        assert_eq!(
            m.vma.start_read(&m.mm, || true),
            Err(StartReadError::Detached)
        );
    });
}

/// A reader racing a writer that locks the VMA, changes it and unlocks with
/// `vma_end_write_all`: readers succeed only outside the write period and see a consistent value.
#[test]
fn loom_vma_start_read_vs_end_write_all() {
    model(|| {
        let m = vma_model();
        let r = m.clone();
        let reader = thread::spawn(move || {
            if r.vma.start_read(&r.mm, || true).is_ok() {
                // SAFETY: the read lock excludes the writer.
                let v = r.data.with(|p| unsafe { *p });
                r.vma.end_read(&r.mm);
                assert!(v == 0 || v == 2, "saw the write half-done: {v}");
            }
        });
        {
            let g = m.mm.write();
            m.vma.start_write(&g);
            // SAFETY: write-locked.
            m.data.with_mut(|p| unsafe { *p = 1 });
            // SAFETY: still write-locked.
            m.data.with_mut(|p| unsafe { *p = 2 });
        }
        reader.join().unwrap();
        assert!(
            m.vma.start_read(&m.mm, || true).is_ok(),
            "not unlocked by vma_end_write_all"
        );
        m.vma.end_read(&m.mm);
    });
}

/// Two write periods, the VMA changed in the first only (the second changes some other VMA): a
/// reader that sees `mm_lock_seq` of the second period finds the VMA unlocked and must then see
/// the first period's change. It synchronises only through `mm_lock_seq`, so the store that
/// begins a period must be a release too: acquiring the relaxed begin of period 2 would not
/// order the reader after the release that ended period 1, and the read would race the write.
#[test]
fn loom_vma_start_read_after_two_write_periods() {
    model(|| {
        let m = vma_model();
        let w = m.clone();
        let writer = thread::spawn(move || {
            {
                let g = w.mm.write();
                w.vma.start_write(&g);
                // SAFETY: write-locked (what loom checks).
                w.data.with_mut(|p| unsafe { *p = 1 });
            }
            // A write hold that leaves this VMA alone.
            drop(w.mm.write());
        });
        if m.vma.start_read(&m.mm, || true).is_ok() {
            // SAFETY: the read lock excludes the writer (what loom checks).
            let v = m.data.with(|p| unsafe { *p });
            m.vma.end_read(&m.mm);
            assert!(v == 0 || v == 1);
        }
        writer.join().unwrap();
    });
}

/// A reader whose owner check fails drops its reference, so a writer is not blocked by it.
#[test]
fn loom_vma_foreign_reader_does_not_block_writer() {
    model(|| {
        let m = vma_model();
        let r = m.clone();
        let reader = thread::spawn(move || {
            assert!(r.vma.start_read(&r.mm, || false).is_err());
        });
        {
            let g = m.mm.write();
            m.vma.start_write(&g);
            m.vma.mark_detached(&g);
        }
        reader.join().unwrap();
        assert_eq!(m.vma.readers(), 0);
    });
}

struct SemModel {
    sem: RwSemaphore<LoomPark>,
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is only accessed under the semaphore being checked.
unsafe impl Sync for SemModel {}

fn sem_model() -> Arc<SemModel> {
    Arc::new(SemModel {
        sem: RwSemaphore::new(StdArc::new(LoomPark)),
        data: UnsafeCell::new(0),
    })
}

/// Two writers: each update is exclusive and none is lost.
#[test]
fn loom_rwsem_writers_exclude() {
    model(|| {
        let m = sem_model();
        let w = m.clone();
        let writer = thread::spawn(move || {
            w.sem.down_write();
            // SAFETY: write-locked (what loom checks).
            w.data.with_mut(|p| unsafe { *p += 1 });
            w.sem.up_write();
        });
        m.sem.down_write();
        // SAFETY: write-locked.
        m.data.with_mut(|p| unsafe { *p += 1 });
        m.sem.up_write();
        writer.join().unwrap();
        assert!(!m.sem.is_locked());
        // SAFETY: the other thread has been joined.
        assert_eq!(m.data.with(|p| unsafe { *p }), 2);
    });
}

/// A reader and a writer: the reader sees the value before or after the write, never during.
#[test]
fn loom_rwsem_reader_vs_writer() {
    model(|| {
        let m = sem_model();
        let w = m.clone();
        let writer = thread::spawn(move || {
            w.sem.down_write();
            // SAFETY: write-locked (what loom checks).
            w.data.with_mut(|p| unsafe { *p = 5 });
            w.sem.up_write();
        });
        m.sem.down_read();
        // SAFETY: read-locked.
        let v = m.data.with(|p| unsafe { *p });
        m.sem.up_read();
        assert!(v == 0 || v == 5);
        writer.join().unwrap();
        assert!(!m.sem.is_locked());
    });
}

/// The upper-level install protocol, from the same source as the page-table code.
#[path = "pgtable/install.rs"]
mod install;

/// Two CPUs race to fill one empty entry, each with its own new table: exactly one table is
/// installed, both end up using it, and the loser's is the one given back.
#[test]
fn loom_pgtable_install_race() {
    use install::{EntrySlot, Installed, install_or_discard};
    use loom::sync::atomic::{AtomicU64, Ordering};
    model(|| {
        let slot = Arc::new(AtomicU64::new(0));
        let freed = Arc::new(AtomicU64::new(0));
        let racer = |table: u64| {
            let (slot, freed) = (slot.clone(), freed.clone());
            thread::spawn(move || {
                // As `ensure_table`: a table already there is used without making one (counted
                // as given back, so the sum below stays exact).
                let seen = slot.load_acquire();
                if seen != 0 {
                    freed.fetch_add(table, Ordering::Relaxed);
                    return seen;
                }
                match install_or_discard(&*slot, table) {
                    Installed::Ours(e) => e,
                    Installed::Theirs(e) => {
                        freed.fetch_add(table, Ordering::Relaxed);
                        e
                    }
                }
            })
        };
        let (a, b) = (racer(0x1000 | 1), racer(0x2000 | 1));
        let (ea, eb) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(ea, eb, "the CPUs use different tables");
        let installed = slot.load(Ordering::Relaxed);
        assert_eq!(installed, ea);
        assert_eq!(
            installed + freed.load(Ordering::Relaxed),
            0x3002,
            "a table leaked"
        );
    });
}
