use core::cell::RefCell;
use std::boxed::Box;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::platform::CpuMask;
use crate::platform::emulated::Emulated;
use crate::sync::MmapLock;
use crate::vma::Prot;

fn setup() -> (Arc<Emulated>, Arc<Memory<Emulated>>) {
    let p = Arc::new(Emulated::new(4, 2));
    p.bind_cpu(0);
    let mem = Memory::new(p.clone()).unwrap();
    (p, mem)
}

fn map(pt: &PageTables<Emulated>, addr: u64, writable: bool) -> PhysFrame {
    let pmd = pt.pmd_alloc(addr).unwrap();
    pt.pte_alloc(pmd).unwrap();
    let frames = pt.memory().frames();
    let f = frames.alloc_zeroed(FrameKind::Anon).unwrap().into_raw();
    frames.meta(f).map();
    let pte = pt.pte_offset_map_lock(addr).unwrap();
    assert_eq!(pte.get(addr), Pte::EMPTY);
    pte.set(
        addr,
        Pte::new(f, pte_flags_for(Prot::READ | Prot::WRITE, writable)),
    );
    f
}

#[test]
fn map_walk_zap_and_teardown_return_every_frame() {
    let (p, mem) = setup();
    mem.quiesce();
    let base = p.free_frames();
    let lock = MmapLock::new(p.clone());
    {
        let pt = PageTables::new(mem.clone()).unwrap();
        let a = 0x40_0000;
        let f = map(&pt, a, true);
        map(&pt, a + 0x1000, true);
        // A second 2 MiB region: a second PTE table under the same PMD table.
        map(&pt, a + PMD_SIZE, true);
        assert_eq!(pt.count_tables(), 5);
        assert_eq!(pt.lookup_pte(a).frame(), f);
        assert!(pt.lookup_pte(a).flags().contains(PageTableFlags::WRITABLE));
        assert_eq!(pt.lookup_pte(a + 0x2000), Pte::EMPTY);

        let g = lock.write();
        let z = pt.zap(&g, a..a + 0x1000);
        assert_eq!(z.cleared(), 1);
        z.flush(&mem, CpuMask::first(2));
        assert_eq!(pt.lookup_pte(a), Pte::EMPTY);
        assert_eq!(pt.count_tables(), 5, "a table with a PTE left was freed");
        // Emptying the first PTE table unhooks it; it is freed after a grace period.
        let z = pt.zap(&g, a..a + PMD_SIZE);
        z.flush(&mem, CpuMask::first(2));
        assert_eq!(pt.count_tables(), 4);
        assert!(pt.pte_offset_map_lock(a).is_none());
        drop(g);
    }
    mem.quiesce();
    assert_eq!(p.free_frames(), base, "frames leaked");
    assert!(mem.stats().snapshot().get(Event::PgtableFree) >= 1);
}

#[test]
fn kernel_half_is_copied_and_left_alone() {
    let (p, mem) = setup();
    mem.quiesce();
    let base = p.free_frames();
    let mut kernel = [0u64; USER_PML4_ENTRIES];
    kernel[511 - 256] = 0xdead_b000 | 1;
    {
        let pt = PageTables::with_kernel_half(mem.clone(), &kernel).unwrap();
        let root = mem::words(&*p, pt.root());
        assert_eq!(root[511].load(Ordering::Relaxed), 0xdead_b000 | 1);
        assert_eq!(root[0].load(Ordering::Relaxed), 0);
    }
    mem.quiesce();
    assert_eq!(p.free_frames(), base);
}

#[test]
fn racing_cpus_install_one_table() {
    let (p, mem) = setup();
    let pt = PageTables::new(mem.clone()).unwrap();
    let addr = 0x7000_0000;
    let slots: std::vec::Vec<usize> = std::thread::scope(|s| {
        let hs: std::vec::Vec<_> = (0..2)
            .map(|cpu| {
                p.spawn_cpu(s, cpu, || {
                    let pmd = pt.pmd_alloc(addr).unwrap();
                    pt.pte_alloc(pmd).unwrap();
                    pmd as *const AtomicU64 as usize
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(slots[0], slots[1], "two PMD tables installed");
    assert_eq!(pt.count_tables(), 4);
    let s = mem.stats().snapshot();
    assert_eq!(s.get(Event::PgtableAlloc), 3);
}

#[test]
fn change_protection_downgrades_and_keeps_prot_none_frames() {
    let (p, mem) = setup();
    let lock = MmapLock::new(p.clone());
    let pt = PageTables::new(mem.clone()).unwrap();
    let a = 0x1000_0000;
    let f = map(&pt, a, true);
    let g = lock.write();
    let fl = pt.change_protection(&g, a..a + 0x1000, Prot::READ);
    assert!(fl.needs_shootdown());
    fl.flush(&*p, CpuMask::first(1));
    assert!(!pt.lookup_pte(a).flags().contains(PageTableFlags::WRITABLE));
    let fl = pt.change_protection(&g, a..a + 0x1000, Prot::empty());
    assert!(fl.needs_shootdown());
    fl.flush(&*p, CpuMask::first(1));
    let e = pt.lookup_pte(a);
    assert!(!e.flags().contains(PageTableFlags::PRESENT));
    assert_eq!(e.frame(), f, "PROT_NONE lost the frame");
    // Upgrading never adds write permission eagerly.
    let fl = pt.change_protection(&g, a..a + 0x1000, Prot::READ | Prot::WRITE);
    assert!(!fl.needs_shootdown());
    fl.flush(&*p, CpuMask::first(1));
    let e = pt.lookup_pte(a);
    assert!(e.flags().contains(PageTableFlags::PRESENT));
    assert!(!e.flags().contains(PageTableFlags::WRITABLE));
}

#[test]
fn out_of_memory_while_allocating_tables_is_an_error() {
    let (p, mem) = setup();
    let pt = PageTables::new(mem.clone()).unwrap();
    mem.frames().drain_caches();
    p.fail_allocs_after(1);
    assert_eq!(
        pt.pmd_alloc(0x8000_0000).err(),
        Some(FrameAllocError::OutOfMemory)
    );
    p.fail_allocs_after(u64::MAX);
}

std::thread_local! {
    static BEFORE_PTE_LOCK: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Called by `pte_offset_map_lock` between its read of the PMD entry and taking the table's
/// lock: runs the hook this thread armed with [`on_next_pte_lock`], once.
pub(super) fn before_pte_lock() {
    if let Some(f) = BEFORE_PTE_LOCK.with(|h| h.borrow_mut().take()) {
        f();
    }
}

fn on_next_pte_lock(f: impl FnOnce() + 'static) {
    BEFORE_PTE_LOCK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// How long a test thread waits for the other before failing instead of hanging.
const HANDSHAKE: Duration = Duration::from_secs(30);

/// A walker reads the PMD entry, then another CPU empties the table and unhooks it before the
/// walker gets its lock: the walker's re-check under the lock must see the entry changed and
/// report no table, rather than hand out a guard on a table no longer in the tree (whose PTEs
/// the MMU would never see).
#[test]
fn pte_offset_map_lock_rechecks_the_pmd_entry_under_the_lock() {
    let (p, mem) = setup();
    let lock = MmapLock::new(p.clone());
    let pt = PageTables::new(mem.clone()).unwrap();
    let a = 0x40_0000;
    map(&pt, a, true);
    let (at_tx, at_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    on_next_pte_lock(move || {
        at_tx.send(()).unwrap();
        done_rx
            .recv_timeout(HANDSHAKE)
            .expect("the zapping CPU hung");
    });
    let walked = std::thread::scope(|s| {
        let (lock, pt, mem) = (&lock, &pt, &mem);
        p.spawn_cpu(s, 1, move || {
            at_rx
                .recv_timeout(HANDSHAKE)
                .expect("the walker never read the PMD");
            let g = lock.write();
            pt.zap(&g, a..a + PMD_SIZE).flush(mem, CpuMask::first(2));
            drop(g);
            done_tx.send(()).unwrap();
        });
        pt.pte_offset_map_lock(a).map(|g| g.base())
    });
    assert_eq!(
        walked, None,
        "locked a PTE table that was unhooked meanwhile"
    );
    assert_eq!(pt.count_tables(), 3);
}

/// An emptied PTE table is unhooked at once but freed only after a grace period: a walker on
/// another CPU that read the PMD entry inside its RCU read section may still be using the table
/// (to take its lock and fail the re-check), so the frame must not be reused before it leaves.
#[test]
fn emptied_pte_table_is_freed_only_after_a_grace_period() {
    let (p, mem) = setup();
    let lock = MmapLock::new(p.clone());
    let pt = PageTables::new(mem.clone()).unwrap();
    let a = 0x40_0000;
    map(&pt, a, true);
    let table = Pte::from_bits(pt.pmd_lookup(a).unwrap().load(Ordering::Acquire)).frame();
    let (in_tx, in_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let kept = std::thread::scope(|s| {
        let rcu = mem.rcu();
        p.spawn_cpu(s, 1, move || {
            let _rcu = rcu.read_lock();
            in_tx.send(()).unwrap();
            leave_rx
                .recv_timeout(HANDSHAKE)
                .expect("the zapping CPU hung");
        });
        in_rx
            .recv_timeout(HANDSHAKE)
            .expect("the reader never entered");
        let g = lock.write();
        pt.zap(&g, a..a + PMD_SIZE).flush(&mem, CpuMask::first(2));
        drop(g);
        // Runs every callback whose grace period is over: not this one, a reader is inside.
        mem.rcu().quiescent_state();
        let kept = mem.frames().meta(table).refcount();
        leave_tx.send(()).unwrap();
        kept
    });
    assert_eq!(pt.count_tables(), 3, "the emptied table is still hooked");
    assert_eq!(kept, 1, "the PTE table was freed under a reader");
    mem.quiesce();
    assert_eq!(mem.frames().meta(table).refcount(), 0, "never freed");
}

std::thread_local! {
    static UNMAP_STEP: RefCell<Option<Box<dyn FnMut()>>> = const { RefCell::new(None) };
}

/// Called by `munmap` before `mmap_write_downgrade`, and by a zap before it locks each PTE
/// table: runs the hook this thread armed with [`on_unmap_step`] (until disarmed).
pub(crate) fn unmap_step() {
    UNMAP_STEP.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f();
        }
    });
}

/// Arms (`Some`) or disarms (`None`) this thread's unmap hook.
pub(crate) fn on_unmap_step(f: Option<Box<dyn FnMut()>>) {
    UNMAP_STEP.with(|h| *h.borrow_mut() = f);
}
