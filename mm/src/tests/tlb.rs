//! The emulated MMU and TLB against the rules `mm` relies on: stale translations live until a
//! flush, a shootdown is what ends them, and the MMU's Accessed/Dirty update never brings back a
//! PTE that was cleared under it. Interleavings are forced with the platform's one-shot hooks.

use std::sync::mpsc;
use std::thread::ScopedJoinHandle;
use std::time::Duration;

use crate::address_space::AddressSpace;
use crate::frame::mem;

use crate::pgtable::Pte;
use crate::platform::emulated::Emulated;
use crate::platform::mmu;
use crate::platform::{PageTableFlags, Platform, VirtAddr};
use crate::testutil::{Env, PAGE, PIC_BASE, fixed};
use crate::vma::Prot;

const P: u64 = PIC_BASE;

fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}

/// Runs `f` on a new thread bound to `cpu` and returns its result.
pub(crate) fn on_cpu<T: Send>(env: &Env, cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| env.p.spawn_cpu(s, cpu, f).join().unwrap())
}

/// A pause point for forcing an interleaving: [`Pause::arm`] gives the hook to install, which
/// stops the thread that reaches it until the [`Resume`] that [`Pause::wait`] returns is
/// dropped. Being a guard, it also lets that thread go when the test panics meanwhile, so a
/// failing test fails instead of waiting forever inside `thread::scope`.
pub(crate) struct Pause {
    paused: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

/// Lets the paused thread go when dropped.
#[must_use = "dropping it resumes the paused thread at once"]
pub(crate) struct Resume<'a>(&'a Pause);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        // The paused thread may be gone already (the hook fires once).
        let _ = self.0.go.send(());
    }
}

impl Pause {
    pub(crate) fn arm() -> (Pause, impl FnOnce() + Send + 'static) {
        let (paused_tx, paused) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let hook = move || {
            let _ = paused_tx.send(());
            let _ = go_rx.recv();
        };
        (Pause { paused, go }, hook)
    }

    /// Waits until `t` stops at the hook; fails (rather than hangs) if it ends without.
    pub(crate) fn wait<T>(&self, t: &ScopedJoinHandle<'_, T>, what: &str) -> Resume<'_> {
        while self.paused.recv_timeout(Duration::from_millis(10)).is_err() {
            assert!(!t.is_finished(), "{what} never reached the hook");
        }
        Resume(self)
    }
}

/// Maps P writable with `value` in it (CPU 0), then clears its Accessed and Dirty bits as
/// reclaim's `ptep_test_and_clear_young` would, and shoots the translation down.
fn clean_page(env: &Env, mm: &AddressSpace<Emulated>, value: u64) -> Pte {
    mm.mmap(P, PAGE, rw(), fixed()).unwrap();
    mmu::store(mm, P, value, true).unwrap();
    let pte = mm.page_tables().pte_offset_map_lock(P).unwrap();
    let e = pte.get(P);
    let clean = e.with_flags(e.flags() - PageTableFlags::ACCESSED - PageTableFlags::DIRTY);
    pte.replace(P, e, clean).unwrap();
    drop(pte);
    env.p.shootdown(mm.cpus(), VirtAddr::new(P), 1);
    clean
}

/// Clears P's PTE as a zap does (the shootdown and the frame's release come later).
fn zap_pte(mm: &AddressSpace<Emulated>) -> Pte {
    mm.page_tables().pte_offset_map_lock(P).unwrap().take(P)
}

/// Finishes what `zap_pte` started: shootdown, then the mapping's reference.
fn finish_zap(env: &Env, mm: &AddressSpace<Emulated>, e: Pte) {
    env.p.shootdown(mm.cpus(), VirtAddr::new(P), 1);
    let frames = env.mem.frames();
    frames.meta(e.frame()).unmap();
    frames.put(e.frame());
}

/// The MMU walked to P's PTE and is about to set Accessed when the PTE is zapped: the update
/// must fail and the access fault. (An unconditional `fetch_or` left 0x20 in the cleared PTE,
/// which the fault path would take for a `PROT_NONE` entry and "restore" as a mapping of frame 0.)
#[test]
fn setting_accessed_never_resurrects_a_zapped_pte() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        let clean = clean_page(&env, &mm, 5);
        let (pause, hook) = Pause::arm();
        env.p.on_next_ad_update(hook);
        let (got, zapped) = std::thread::scope(|s| {
            let reader = env.p.spawn_cpu(s, 1, || mmu::load_nofault(&mm, P, true));
            let resume = pause.wait(&reader, "the read's A/D update");
            let zapped = zap_pte(&mm);
            drop(resume);
            (reader.join().unwrap(), zapped)
        });
        assert_eq!(zapped, clean, "the hook ran before the Accessed update");
        assert!(got.is_err(), "read through a zapped PTE: {got:?}");
        assert_eq!(
            mm.page_tables().lookup_pte(P),
            Pte::EMPTY,
            "zapped PTE came back"
        );
        finish_zap(&env, &mm, zapped);
        // The page faults in afresh (the zero frame).
        assert_eq!(mmu::load(&mm, P, true), Ok(0));
        mm.munmap(P, PAGE).unwrap();
    }
    env.assert_baseline();
}

/// A write through a cached entry without Dirty walks again to set it; if the PTE was zapped
/// meanwhile, the write faults instead of landing in the unmapped frame.
#[test]
fn setting_dirty_through_a_cached_clean_entry_rechecks_the_pte() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        let clean = clean_page(&env, &mm, 5);
        // CPU 1 caches P writable but clean (its read sets only Accessed).
        let cached = on_cpu(&env, 1, || (mmu::load(&mm, P, true), env.p.tlb().lookup(P)));
        assert_eq!(cached.0, Ok(5));
        let entry = cached.1.expect("CPU 1 cached P");
        assert!(entry.flags.contains(PageTableFlags::WRITABLE));
        assert!(!entry.flags.contains(PageTableFlags::DIRTY));
        let (pause, hook) = Pause::arm();
        env.p.on_next_ad_update(hook);
        let (got, zapped) = std::thread::scope(|s| {
            let writer = env
                .p
                .spawn_cpu(s, 1, || mmu::store_nofault(&mm, P, 9, true));
            let resume = pause.wait(&writer, "the write's Dirty update");
            let zapped = zap_pte(&mm);
            drop(resume);
            (writer.join().unwrap(), zapped)
        });
        assert_eq!(
            zapped,
            clean.with_flags(clean.flags() | PageTableFlags::ACCESSED)
        );
        assert!(got.is_err(), "write through a zapped PTE: {got:?}");
        assert_eq!(
            mm.page_tables().lookup_pte(P),
            Pte::EMPTY,
            "zapped PTE came back"
        );
        let frame = zapped.frame();
        assert_eq!(
            mem::words(&*env.p, frame)[0].load(std::sync::atomic::Ordering::Relaxed),
            5,
            "the write reached the unmapped frame"
        );
        finish_zap(&env, &mm, zapped);

        // Without a race the same write sets Dirty in the PTE.
        mm.munmap(P, PAGE).unwrap();
        clean_page(&env, &mm, 5);
        on_cpu(&env, 1, || {
            assert_eq!(mmu::load(&mm, P, true), Ok(5));
            mmu::store(&mm, P, 9, true).unwrap();
        });
        let f = mm.page_tables().lookup_pte(P).flags();
        assert!(f.contains(PageTableFlags::ACCESSED | PageTableFlags::DIRTY));
        mm.munmap(P, PAGE).unwrap();
    }
    env.assert_baseline();
}

/// Until munmap's shootdown, another CPU may still read the page through its cached entry; the
/// frame must not be freed before that (an access to a freed frame panics in the MMU).
#[test]
fn munmap_frees_frames_only_after_the_shootdown() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        mm.mmap(P, PAGE, rw(), fixed()).unwrap();
        mmu::store(&mm, P, 5, true).unwrap();
        assert_eq!(on_cpu(&env, 1, || mmu::load(&mm, P, true)), Ok(5));
        let (pause, hook) = Pause::arm();
        env.p.on_next_shootdown(hook);
        let stale = std::thread::scope(|s| {
            let unmapper = env.p.spawn_cpu(s, 0, || mm.munmap(P, PAGE));
            let resume = pause.wait(&unmapper, "munmap");
            let stale = on_cpu(&env, 1, || mmu::load_nofault(&mm, P, true));
            drop(resume);
            assert_eq!(unmapper.join().unwrap(), Ok(()));
            stale
        });
        assert_eq!(
            stale,
            Ok(5),
            "CPU 1 read through its cached entry before the flush"
        );
        assert!(on_cpu(&env, 1, || mmu::load(&mm, P, true)).is_err());
    }
    env.assert_baseline();
}

/// A permission downgrade is shot down on every CPU that ran the address space; an upgrade is
/// not, and a CPU with the old read-only entry takes one spurious fault and goes on.
#[test]
fn downgrades_reach_other_cpus_and_upgrades_fault_spuriously() {
    let env = Env::new(4, 2);
    {
        let mm = env.mm();
        mm.mmap(P, PAGE, rw(), fixed()).unwrap();
        assert_eq!(on_cpu(&env, 1, || mmu::store(&mm, P, 5, true)), Ok(()));
        mm.mprotect(P, PAGE, Prot::READ).unwrap();
        let r = on_cpu(&env, 1, || mmu::store_nofault(&mm, P, 6, true));
        assert!(
            r.is_err(),
            "write through a stale writable entry after mprotect"
        );
        assert_eq!(mmu::load(&mm, P, true), Ok(5));

        // Back to writable: CPU 1 caches P read-only, CPU 0's write makes the PTE writable in
        // place (sole owner), with no shootdown.
        mm.mprotect(P, PAGE, rw()).unwrap();
        assert_eq!(on_cpu(&env, 1, || mmu::load(&mm, P, true)), Ok(5));
        let (shootdowns, _) = env.p.shootdown_stats();
        mmu::store(&mm, P, 7, true).unwrap();
        assert_eq!(env.p.shootdown_stats().0, shootdowns);
        let faults = env.mem.stats().snapshot().get(crate::stats::Event::Fault);
        on_cpu(&env, 1, || {
            let stale = env.p.tlb().lookup(P).unwrap();
            assert!(!stale.flags.contains(PageTableFlags::WRITABLE));
            mmu::store(&mm, P, 8, true).unwrap();
        });
        assert_eq!(
            env.mem.stats().snapshot().get(crate::stats::Event::Fault),
            faults + 1,
            "one spurious fault"
        );
        assert_eq!(mmu::load(&mm, P, true), Ok(8));
    }
    env.assert_baseline();
}
