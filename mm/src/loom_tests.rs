//! loom models of the lock protocols (`RUSTFLAGS="--cfg loom" cargo test -p mm --release --lib
//! loom`). Each model runs the real protocol code on loom atomics; the data a lock protects is a
//! loom `UnsafeCell`, so loom reports any access the protocol fails to order.

use alloc::sync::Arc as StdArc;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use crate::sync::{LockClass, LoomPark, MmapLock, RawSpinLock, RwSemaphore};
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

/// The stack of the expansion model: the VMA the fault path finds for the stack's top page.
struct StackModel {
    mm: MmapLock<LoomPark>,
    /// The stack VMA before the expansion, attached.
    old: VmaLock,
    /// Its replacement (`[faulting page, end)`), detached until the expansion attaches it.
    grown: VmaLock,
    /// The tree's entry for the stack's top page: 0 = `old`, 1 = `grown` (published with a
    /// release store and walked with acquire loads, as the maple tree does).
    slot: AtomicUsize,
}

/// A fault on the stack VMA (`lock_vma_under_rcu` then work under the VMA read lock) racing a
/// fault below the stack that grows it (`ops::stack::expand_downwards`: `mmap_lock` for write,
/// `vma_start_write` of the stack, the grown VMA attached and stored, the old one detached). A
/// fault that holds the stack VMA's read lock must see that VMA stay the tree's until it drops
/// the lock, whichever VMA it locked; after the expansion, faults lock the grown VMA. Without
/// the `vma_start_write` the tree changes under the reader (one of the races of Linux 6.4,
/// whose `expand_stack` ran under the read lock).
#[test]
fn loom_fault_vs_stack_expansion() {
    model(|| {
        let m = Arc::new(StackModel {
            mm: MmapLock::new(StdArc::new(LoomPark)),
            old: VmaLock::new_unlocked(),
            grown: VmaLock::new_unlocked(),
            slot: AtomicUsize::new(0),
        });
        {
            let g = m.mm.write();
            m.old.start_write(&g);
            m.old.mark_attached(&g);
        }
        let e = m.clone();
        let expander = thread::spawn(move || {
            let g = e.mm.write();
            e.old.start_write(&g);
            // `Vma::new_locked_flags`: stamped while detached, then attached.
            e.grown.start_write(&g);
            e.grown.mark_attached(&g);
            e.slot.store(1, Ordering::Release);
            e.old.mark_detached(&g);
        });
        // The racing fault: walk, lock, re-check, as `lock_vma_under_rcu` does.
        let found = m.slot.load(Ordering::Acquire);
        let vma = if found == 0 { &m.old } else { &m.grown };
        if vma.start_read(&m.mm, || true).is_ok() {
            let now = m.slot.load(Ordering::Acquire);
            vma.end_read(&m.mm);
            assert_eq!(now, found, "the VMA set changed under a read-locked VMA");
        }
        expander.join().unwrap();
        assert!(!m.old.is_attached());
        assert_eq!(
            m.old.start_read(&m.mm, || true),
            Err(StartReadError::Detached)
        );
        assert!(
            m.grown.start_read(&m.mm, || true).is_ok(),
            "the grown stack stays locked"
        );
        m.grown.end_read(&m.mm);
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

/// The upper-level install protocol: `pgtable::install`, the source file the page tables
/// compile (`PageTables::ensure_table` calls its `ensure_table`), here on loom atomics.
#[path = "pgtable/install.rs"]
mod install;

/// A page-table page of the install model: its contents (one word stands for all 512) start as
/// garbage and are zeroed by the CPU that allocates it, before it tries to install it.
struct TableModel {
    words: [UnsafeCell<u64>; 2],
    allocated: [AtomicBool; 2],
    freed: [AtomicBool; 2],
}

// SAFETY: each `words[i]` is written only by the racer that allocated table `i`, before its
// install, and read by racers that found it installed; loom checks the ordering between them.
unsafe impl Sync for TableModel {}

/// The entry of model table `i` (present, like a real table entry).
fn table_entry(i: usize) -> u64 {
    ((i as u64 + 1) << 12) | 1
}

/// Two CPUs race to fill one empty entry through `install::ensure_table`, each allocating its
/// own table: both end up walking the same table and see its zeroed contents (a plain store
/// instead of the exchange, or a weaker ordering on any of its three accesses, fails here), and
/// exactly the loser's table is given back.
#[test]
fn loom_pgtable_install_race() {
    use install::{Installed, ensure_table};
    use loom::sync::atomic::{AtomicU64, Ordering};
    model(|| {
        let slot = Arc::new(AtomicU64::new(0));
        let tables = Arc::new(TableModel {
            words: [UnsafeCell::new(0xdead), UnsafeCell::new(0xdead)],
            allocated: [AtomicBool::new(false), AtomicBool::new(false)],
            freed: [AtomicBool::new(false), AtomicBool::new(false)],
        });
        let racer = |i: usize| {
            let (slot, tables) = (slot.clone(), tables.clone());
            thread::spawn(move || {
                let got = ensure_table(&*slot, || {
                    // SAFETY: table `i` is ours until it is installed (what loom checks).
                    tables.words[i].with_mut(|p| unsafe { *p = 0 });
                    tables.allocated[i].store(true, Ordering::Relaxed);
                    Ok::<u64, ()>(table_entry(i))
                })
                .unwrap();
                if let Installed::Theirs { discarded, .. } = got {
                    assert_eq!(discarded, table_entry(i), "freeing a table not ours");
                    tables.freed[i].store(true, Ordering::Relaxed);
                }
                let e = got.entry();
                let t = (e >> 12) as usize - 1;
                // SAFETY: walking into the installed table, as the fault path does next.
                let v = tables.words[t].with(|p| unsafe { *p });
                assert_eq!(v, 0, "walked into a table whose zeroing is not visible");
                e
            })
        };
        let (a, b) = (racer(0), racer(1));
        let (ea, eb) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(ea, eb, "the CPUs use different tables");
        assert_eq!(slot.load(Ordering::Relaxed), ea);
        let winner = (ea >> 12) as usize - 1;
        for i in 0..2 {
            let allocated = tables.allocated[i].load(Ordering::Relaxed);
            let freed = tables.freed[i].load(Ordering::Relaxed);
            if i == winner {
                assert!(allocated && !freed, "the installed table was freed");
            } else {
                assert_eq!(freed, allocated, "the loser's table leaked");
            }
        }
    });
}

/// The maple tree's node layer, the source file the tree compiles, here on loom atomics: how
/// nodes are built, published (root and child slots) and read by a lockless descent.
#[path = "maple/node.rs"]
#[allow(dead_code)]
mod maple_node;

/// A writer publishes a new tree (an internal root over one leaf) and then replaces the leaf in
/// place, as `MapleTree`'s writes do; a lockless reader descending at the same time must find
/// every node it reaches complete: a publication store weaker than release (or a descent load
/// weaker than acquire) lets it see a node's words as they were before the writer filled them.
#[test]
fn loom_maple_publication() {
    use loom::sync::atomic::AtomicU64;
    use maple_node::{NodeRef, load_root, publish_root};

    fn leaf(value: u64) -> NodeRef {
        let n = NodeRef::alloc(true, 2).expect("host memory");
        n.init_slot(0, 99, value, 0);
        n.init_slot(1, 0, value + 1, 0);
        n
    }

    model(|| {
        let root = Arc::new(AtomicU64::new(0));
        let r = root.clone();
        let reader = thread::spawn(move || {
            let Some(top) = NodeRef::from_word(load_root(&r)) else {
                return;
            };
            assert!(!top.is_leaf());
            assert_eq!(top.end(), 1, "root published before it was built");
            let child = NodeRef::from_word(top.slot(0)).expect("root without its child");
            assert_eq!((child.end(), child.pivot(0)), (2, 99), "child not built");
            let v = child.slot(0);
            assert!(v == 0xa0 || v == 0xb0, "leaf value {v:#x}");
            assert_eq!(child.slot(1), v + 1);
        });
        let first = leaf(0xa0);
        let top = NodeRef::alloc(false, 1).expect("host memory");
        top.init_slot(0, u64::MAX, first.word(), 0);
        publish_root(&root, top.word());
        let second = leaf(0xb0);
        top.publish_slot(0, second);
        reader.join().unwrap();
        // SAFETY: the reader is done and nothing else holds the nodes.
        unsafe {
            first.free();
            second.free();
            top.free();
        }
    });
}

/// `mremap` moving a page while a fault writes to it at its old address (the protocol of
/// `ops/mremap.rs` on the real `MmapLock`, `VmaLock` and PTE spinlock; the page's PTEs are
/// cells holding the page's contents, 0 for none).
struct MoveModel {
    mm: MmapLock<LoomPark>,
    old_vma: VmaLock,
    /// Whether the tree maps the old address (read locklessly by the fault's walk).
    old_mapped: AtomicBool,
    pte_lock: RawSpinLock,
    old_pte: UnsafeCell<u32>,
    new_pte: UnsafeCell<u32>,
}

// SAFETY: the PTE cells are only accessed under `pte_lock`; loom verifies that.
unsafe impl Sync for MoveModel {}

/// A write fault at the old address: the VMA read lock, else `mmap_lock` (read) and the VMA
/// found then; under either, the write lands in the old PTE. Returns whether it wrote (false:
/// no VMA there any more, a segfault).
fn fault_write_old(m: &MoveModel, value: u32) -> bool {
    if m.old_mapped.load(loom::sync::atomic::Ordering::Acquire)
        && m.old_vma.start_read(&m.mm, || true).is_ok()
    {
        let pte = m.pte_lock.lock();
        // SAFETY: under the PTE lock (what loom checks).
        m.old_pte.with_mut(|p| unsafe { *p = value });
        drop(pte);
        m.old_vma.end_read(&m.mm);
        return true;
    }
    let _g = m.mm.read();
    if !m.old_mapped.load(loom::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let pte = m.pte_lock.lock();
    // SAFETY: under the PTE lock.
    m.old_pte.with_mut(|p| unsafe { *p = value });
    drop(pte);
    true
}

/// The move: under `mmap_lock` (write), write-lock the old VMA (or, with `lock_first` false,
/// only when it is replaced after the move, the bug), move the PTE, switch the tree to the new
/// range, detach the old VMA, zap the old range. Returns what the zap found (and would free).
fn mremap_move(m: &MoveModel, lock_first: bool) -> u32 {
    let g = m.mm.write();
    if lock_first {
        m.old_vma.start_write(&g);
    }
    {
        let _pte = m.pte_lock.lock();
        let old = &m.old_pte;
        // SAFETY: under the PTE lock.
        let v = old.with_mut(|p| unsafe { core::mem::replace(&mut *p, 0) });
        // SAFETY: under the PTE lock.
        m.new_pte.with_mut(|p| unsafe { *p = v });
    }
    m.old_mapped
        .store(false, loom::sync::atomic::Ordering::Release);
    m.old_vma.start_write(&g);
    m.old_vma.mark_detached(&g);
    let _pte = m.pte_lock.lock();
    // SAFETY: under the PTE lock.
    m.old_pte
        .with_mut(|p| unsafe { core::mem::replace(&mut *p, 0) })
}

fn move_race(lock_first: bool) {
    model(move || {
        let mm = MmapLock::new(StdArc::new(LoomPark));
        let old_vma = {
            let g = mm.write();
            let vma = VmaLock::new_locked(&g);
            vma.mark_attached(&g);
            vma
        };
        let m = Arc::new(MoveModel {
            mm,
            old_vma,
            old_mapped: AtomicBool::new(true),
            pte_lock: RawSpinLock::new(LockClass::Pte),
            old_pte: UnsafeCell::new(1),
            new_pte: UnsafeCell::new(0),
        });
        let f = m.clone();
        let fault = thread::spawn(move || fault_write_old(&f, 7));
        let zapped = mremap_move(&m, lock_first);
        let wrote = fault.join().unwrap();
        // SAFETY: both threads are done.
        let new = m.new_pte.with(|p| unsafe { *p });
        assert_eq!(
            zapped, 0,
            "the zap of the old range freed a page the fault mapped"
        );
        assert_eq!(
            new,
            if wrote { 7 } else { 1 },
            "a write was lost or invented"
        );
    });
}

/// A fault that races the move either writes before it (the move carries the write along) or,
/// after falling back to `mmap_lock`, finds the old range gone: no write is lost, nothing is
/// left mapped in the range being freed.
#[test]
fn loom_fault_vs_mremap_move() {
    move_race(true);
}

/// The same with the old VMA write-locked only after the move (when the tree update replaces
/// it): a fault under its read lock writes into the old range after its PTE moved, and the zap
/// frees that page with the write in it.
#[test]
#[should_panic(expected = "freed a page the fault mapped")]
fn loom_fault_vs_mremap_move_fails_without_the_vma_write_lock() {
    move_race(false);
}
