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
    let f = frames.alloc_zeroed(FrameKind::Anon).unwrap();
    frames.meta(f).map();
    let pte = pt.pte_offset_map_lock(addr).unwrap();
    assert_eq!(pte.get(addr), 0);
    pte.set(
        addr,
        make_pte(f, pte_flags_for(Prot::READ | Prot::WRITE, writable)),
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
        assert_eq!(pte_frame(pt.lookup_pte(a)), f);
        assert!(pte_flags(pt.lookup_pte(a)).contains(PageTableFlags::WRITABLE));
        assert_eq!(pt.lookup_pte(a + 0x2000), 0);

        let g = lock.write();
        let z = pt.zap(&g, a..a + 0x1000);
        assert_eq!(z.cleared(), 1);
        z.flush(&mem, CpuMask::first(2));
        assert_eq!(pt.lookup_pte(a), 0);
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
    assert!(!pte_flags(pt.lookup_pte(a)).contains(PageTableFlags::WRITABLE));
    let fl = pt.change_protection(&g, a..a + 0x1000, Prot::empty());
    assert!(fl.needs_shootdown());
    fl.flush(&*p, CpuMask::first(1));
    let e = pt.lookup_pte(a);
    assert!(!pte_flags(e).contains(PageTableFlags::PRESENT));
    assert_eq!(pte_frame(e), f, "PROT_NONE lost the frame");
    // Upgrading never adds write permission eagerly.
    let fl = pt.change_protection(&g, a..a + 0x1000, Prot::READ | Prot::WRITE);
    assert!(!fl.needs_shootdown());
    fl.flush(&*p, CpuMask::first(1));
    let e = pt.lookup_pte(a);
    assert!(pte_flags(e).contains(PageTableFlags::PRESENT));
    assert!(!pte_flags(e).contains(PageTableFlags::WRITABLE));
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
