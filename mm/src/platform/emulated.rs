//! A [`Platform`] for host tests: "physical memory" is one page-aligned host buffer of 4 KiB
//! frames (page tables live in it in the real x86-64 entry format), and std threads stand in for
//! CPUs. A thread becomes CPU `n` with [`Emulated::bind_cpu`] or [`Emulated::spawn_cpu`].
//!
//! Each CPU has a software TLB ([`Tlb`]), which the emulated MMU ([`mmu`](super::mmu)) fills and uses as
//! x86 hardware does, so a missing or late flush shows up as a stale read or write in host tests.
//! A TLB is behind a lock that the MMU holds for one whole access (lookup or walk, then the data
//! access) and that `flush_tlb_local` and `shootdown` take to flush it: like an IPI taken between
//! two instructions, a shootdown lands before an access or after it, never inside. The lock is
//! never held while anything else is waited for, so a shootdown may be sent under any lock.
//!
//! `wait`/`wake` are a futex: a waiter returns when the word differs on entry or when a `wake`
//! of its word picks it, never on a timer, so a lost wake-up hangs the test that has it (and a
//! waiter blocked for a long time says so on stderr).
//!
//! It checks what a real machine would not: handing out a frame twice or freeing one that is not
//! allocated panics, and it counts frames and shootdowns so tests can assert on them.
//!
//! Frame allocations can be made to fail, after a count ([`Emulated::fail_allocs_after`]) or at
//! random in a seeded, reproducible sequence ([`Emulated::fail_allocs_randomly`], with
//! [`FailRandomly`]; the maple tree's node allocations take the same sequence type in test
//! builds), to drive the out-of-memory paths.

extern crate std;

use std::alloc::{Layout, alloc_zeroed, dealloc};
#[cfg(all(test, not(loom)))]
use std::boxed::Box;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::{CpuMask, MAX_CPUS, PageTableFlags, PhysAddr, PhysFrame, Platform, VirtAddr};

const FRAME: usize = 4096;
/// Physical address of the first emulated frame; frame 0 stays invalid, as on real machines.
const BASE: u64 = 0x10_0000;
/// Translations one TLB holds; filling a full TLB evicts one, as hardware does.
const TLB_ENTRIES: usize = 1024;
/// How long a `wait` blocks before it reports itself on stderr (it keeps waiting).
const LONG_WAIT: Duration = Duration::from_secs(10);

std::thread_local! {
    static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Emulated RAM and CPUs.
///
/// # Invariants
/// `ram` points to `frames * 4096` bytes aligned to 4096, owned by this value. `allocated[i]` is
/// true exactly when frame `i` has been handed out by `alloc_frame` and not given back.
/// `tlbs` has one TLB per CPU.
pub struct Emulated {
    ram: *mut u8,
    frames: usize,
    cpus: usize,
    pool: Mutex<Pool>,
    tlbs: Vec<Mutex<Tlb>>,
    futex: Mutex<FutexQueue>,
    futex_woken: Condvar,
    shootdowns: AtomicU64,
    flushed_pages: AtomicU64,
    fail_allocs_after: AtomicU64,
    fail_randomly: Mutex<Option<FailRandomly>>,
    injected_failures: AtomicU64,
    start: Instant,
    #[cfg(all(test, not(loom)))]
    hooks: Hooks,
}

struct Pool {
    free: Vec<u32>,
    allocated: Vec<bool>,
}

/// The threads blocked in `wait`, in arrival order: (word address, ticket).
struct FutexQueue {
    waiters: Vec<(usize, u64)>,
    next_ticket: u64,
}

/// Code a test runs at a chosen point of the emulation, once, to force an interleaving.
#[cfg(all(test, not(loom)))]
type Hook = Box<dyn FnOnce() + Send>;

#[cfg(all(test, not(loom)))]
#[derive(Default)]
struct Hooks {
    before_shootdown: Mutex<Option<Hook>>,
    before_ad_update: Mutex<Option<Hook>>,
}

/// A seeded, reproducible sequence of yes/no answers to "does this allocation fail?", each yes
/// with probability `per_million / 1_000_000` (SplitMix64 underneath).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailRandomly {
    state: u64,
    per_million: u32,
}

impl FailRandomly {
    /// The sequence of `seed`, failing `per_million` allocations in a million on average.
    pub fn new(seed: u64, per_million: u32) -> Self {
        FailRandomly {
            state: seed,
            per_million: per_million.min(1_000_000),
        }
    }

    /// Whether the next allocation fails.
    pub fn next_fails(&mut self) -> bool {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z % 1_000_000 < u64::from(self.per_million)
    }
}

/// A translation as one TLB caches it: the frame and the PTE's flags (permissions, Accessed,
/// Dirty) as they were when it was filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// The frame the page maps to.
    pub frame: PhysFrame,
    /// The PTE's flags at fill time.
    pub flags: PageTableFlags,
}

/// One CPU's TLB: translations of the address space the CPU runs, by virtual page.
///
/// There are no global pages (user mappings never are), so loading another address space
/// flushes everything, as a CR3 write without PCIDs does; entries of two address spaces never
/// meet in one TLB.
///
/// # Invariants
/// Every entry was filled from a present PTE of address space `asid`, and there are at most
/// `TLB_ENTRIES` of them.
#[derive(Debug, Default)]
pub struct Tlb {
    asid: u64,
    entries: BTreeMap<u64, TlbEntry>,
}

impl Tlb {
    /// Whether the CPU runs address space `asid` (its tables are in "CR3").
    pub fn runs(&self, asid: u64) -> bool {
        self.asid == asid
    }

    /// Loads "CR3" with the tables of address space `asid`; a different one flushes the TLB.
    pub fn switch_mm(&mut self, asid: u64) {
        if self.asid != asid {
            self.entries.clear();
            self.asid = asid;
        }
    }

    /// The cached translation of the page containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<TlbEntry> {
        self.entries.get(&(addr >> 12)).copied()
    }

    /// Caches `entry` for the page containing `addr`.
    ///
    /// # Panics
    /// If `entry` is not present: x86 never caches a not-present translation.
    pub fn fill(&mut self, addr: u64, entry: TlbEntry) {
        assert!(
            entry.flags.contains(PageTableFlags::PRESENT),
            "caching a not-present translation"
        );
        let vpn = addr >> 12;
        if self.entries.len() >= TLB_ENTRIES && !self.entries.contains_key(&vpn) {
            // INVARIANT: make room; which entry goes is the hardware's choice.
            self.entries.pop_first();
        }
        self.entries.insert(vpn, entry);
    }

    /// Drops the translations of `pages` pages from `start` (`invlpg` over the range).
    pub fn invalidate(&mut self, start: u64, pages: usize) {
        let first = start >> 12;
        let end = first.saturating_add(pages as u64);
        let mut rest = self.entries.split_off(&first);
        let mut above = rest.split_off(&end);
        self.entries.append(&mut above);
    }

    /// The address space whose translations are cached.
    pub fn asid(&self) -> u64 {
        self.asid
    }

    /// Every cached translation, as (page address, entry), lowest first.
    pub fn entries(&self) -> impl Iterator<Item = (u64, TlbEntry)> + '_ {
        self.entries.iter().map(|(&vpn, &e)| (vpn << 12, e))
    }

    /// How many translations are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Locks `m`, ignoring poisoning: a test that panicked holding it has already failed, and the
/// others should report their own result rather than a poisoned lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// SAFETY: `ram` is only reached through `phys_to_ptr`, whose users synchronize among themselves as
// they would on real memory; everything else is atomics or behind mutexes.
unsafe impl Send for Emulated {}
// SAFETY: as for `Send`.
unsafe impl Sync for Emulated {}

impl Emulated {
    /// `mib` MiB of RAM and `cpus` CPUs.
    pub fn new(mib: usize, cpus: usize) -> Self {
        assert!((1..=MAX_CPUS).contains(&cpus), "1..={MAX_CPUS} CPUs");
        let frames = mib * 256;
        assert!(frames > 0);
        let layout = Layout::from_size_align(frames * FRAME, FRAME).expect("RAM layout");
        // SAFETY: the layout has a non-zero size.
        let ram = unsafe { alloc_zeroed(layout) };
        assert!(
            !ram.is_null(),
            "host out of memory for {mib} MiB of emulated RAM"
        );
        // Hand out low frames first, like a fresh allocator would.
        let free = (0..frames as u32).rev().collect();
        Emulated {
            ram,
            frames,
            cpus,
            pool: Mutex::new(Pool {
                free,
                allocated: std::vec![false; frames],
            }),
            tlbs: (0..cpus).map(|_| Mutex::new(Tlb::default())).collect(),
            futex: Mutex::new(FutexQueue {
                waiters: Vec::new(),
                next_ticket: 0,
            }),
            futex_woken: Condvar::new(),
            shootdowns: AtomicU64::new(0),
            flushed_pages: AtomicU64::new(0),
            fail_allocs_after: AtomicU64::new(u64::MAX),
            fail_randomly: Mutex::new(None),
            injected_failures: AtomicU64::new(0),
            start: Instant::now(),
            #[cfg(all(test, not(loom)))]
            hooks: Hooks::default(),
        }
    }

    /// Makes the calling thread CPU `cpu` (for the rest of its life, or until bound again).
    pub fn bind_cpu(&self, cpu: usize) {
        assert!(cpu < self.cpus, "CPU {cpu} of {}", self.cpus);
        CPU.with(|c| c.set(cpu));
    }

    /// Runs `f` on a new thread bound to CPU `cpu`.
    pub fn spawn_cpu<'scope, 'env, F, T>(
        &'env self,
        scope: &'scope thread::Scope<'scope, 'env>,
        cpu: usize,
        f: F,
    ) -> thread::ScopedJoinHandle<'scope, T>
    where
        F: FnOnce() -> T + Send + 'scope,
        T: Send + 'scope,
    {
        scope.spawn(move || {
            self.bind_cpu(cpu);
            f()
        })
    }

    /// Frames not handed out.
    pub fn free_frames(&self) -> usize {
        self.pool.lock().unwrap().free.len()
    }

    /// All frames of the emulated RAM.
    pub fn total_frames(&self) -> usize {
        self.frames
    }

    /// Shootdowns requested so far, and pages they covered.
    pub fn shootdown_stats(&self) -> (u64, u64) {
        (
            self.shootdowns.load(Ordering::Relaxed),
            self.flushed_pages.load(Ordering::Relaxed),
        )
    }

    /// Makes every `alloc_frame` after the next `n` fail, to test out-of-memory paths;
    /// `u64::MAX` turns that off.
    pub fn fail_allocs_after(&self, n: u64) {
        self.fail_allocs_after.store(n, Ordering::Relaxed);
    }

    /// Makes each `alloc_frame` fail with the probability and in the reproducible sequence
    /// `fail` gives (on top of [`fail_allocs_after`](Self::fail_allocs_after)); `None` turns
    /// that off. The frame allocator's per-CPU caches stand in front of the pool: drain them
    /// (`FrameAllocator::drain_caches`) to make the next allocations reach it.
    pub fn fail_allocs_randomly(&self, fail: Option<FailRandomly>) {
        *lock(&self.fail_randomly) = fail;
    }

    /// Allocations made to fail by [`fail_allocs_randomly`](Self::fail_allocs_randomly) so far.
    pub fn injected_failures(&self) -> u64 {
        self.injected_failures.load(Ordering::Relaxed)
    }

    /// The TLB of the calling thread's CPU, locked. The emulated MMU holds it for one access;
    /// nothing else may be waited for while it is held.
    pub fn tlb(&self) -> MutexGuard<'_, Tlb> {
        self.tlb_of(self.cpu_id())
    }

    /// The TLB of `cpu`, locked (to inspect it).
    pub fn tlb_of(&self, cpu: usize) -> MutexGuard<'_, Tlb> {
        lock(&self.tlbs[cpu])
    }

    /// Runs `f` once, at the start of the next shootdown (before any TLB is flushed), on the
    /// thread that sends it.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn on_next_shootdown(&self, f: impl FnOnce() + Send + 'static) {
        *lock(&self.hooks.before_shootdown) = Some(Box::new(f));
    }

    /// Runs `f` once, when the emulated MMU next has walked to a PTE that lacks Accessed or
    /// Dirty and is about to set it (with its CPU's TLB locked).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn on_next_ad_update(&self, f: impl FnOnce() + Send + 'static) {
        *lock(&self.hooks.before_ad_update) = Some(Box::new(f));
    }

    /// Threads blocked in `wait` on `word`.
    #[cfg(test)]
    fn waiters_on(&self, word: &AtomicU32) -> usize {
        let key = word as *const AtomicU32 as usize;
        lock(&self.futex)
            .waiters
            .iter()
            .filter(|&&(k, _)| k == key)
            .count()
    }

    /// Called by the emulated MMU before it sets Accessed/Dirty in a PTE it walked to.
    #[cfg(not(loom))]
    pub(crate) fn before_ad_update(&self) {
        #[cfg(all(test, not(loom)))]
        run_hook(&self.hooks.before_ad_update);
    }

    fn index(&self, pa: PhysAddr) -> usize {
        let off = pa
            .as_u64()
            .checked_sub(BASE)
            .expect("physical address below emulated RAM");
        let i = (off / FRAME as u64) as usize;
        assert!(
            i < self.frames,
            "physical address {pa:?} above emulated RAM"
        );
        i
    }
}

#[cfg(all(test, not(loom)))]
fn run_hook(slot: &Mutex<Option<Hook>>) {
    // Taken out first: the hook may block, and must not hold the slot meanwhile.
    let hook = lock(slot).take();
    if let Some(f) = hook {
        f();
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.frames * FRAME, FRAME).expect("RAM layout");
        // SAFETY: `ram` was allocated in `new` with this layout and is freed once, here.
        unsafe { dealloc(self.ram, layout) };
    }
}

// SAFETY: 1. pointers are inside the owned buffer, which lives as long as `self`; 2. the pool's
// `allocated` bitmap rules out handing a frame out twice; 3. `cpu_id` is the thread's binding,
// checked against `cpus`, and a thread never changes CPU by itself; 4. `shootdown` flushes each
// target's TLB under its lock before returning.
unsafe impl Platform for Emulated {
    fn cpu_id(&self) -> usize {
        let cpu = CPU.with(|c| c.get());
        assert!(
            cpu < self.cpus,
            "thread is not bound to an emulated CPU (Emulated::bind_cpu)"
        );
        cpu
    }

    fn nr_cpu_ids(&self) -> usize {
        self.cpus
    }

    fn phys_to_ptr(&self, frame: PhysAddr) -> *mut u8 {
        let i = self.index(frame);
        let off = (frame.as_u64() - BASE) as usize;
        debug_assert!(off / FRAME == i);
        // SAFETY: `off` is inside the buffer (checked by `index`).
        unsafe { self.ram.add(off) }
    }

    fn frame_range(&self) -> (u64, u64) {
        (
            BASE / FRAME as u64,
            BASE / FRAME as u64 + self.frames as u64,
        )
    }

    fn alloc_frame(&self) -> Option<PhysFrame> {
        let budget = self.fail_allocs_after.load(Ordering::Relaxed);
        if budget == 0 {
            return None;
        }
        if budget != u64::MAX {
            self.fail_allocs_after.store(budget - 1, Ordering::Relaxed);
        }
        if lock(&self.fail_randomly)
            .as_mut()
            .is_some_and(FailRandomly::next_fails)
        {
            self.injected_failures.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut pool = self.pool.lock().unwrap();
        let i = pool.free.pop()? as usize;
        assert!(!pool.allocated[i], "frame {i} handed out twice");
        pool.allocated[i] = true;
        Some(PhysFrame::containing_address(PhysAddr::new(
            BASE + (i * FRAME) as u64,
        )))
    }

    fn free_frame(&self, frame: PhysFrame) {
        let i = self.index(frame.start_address());
        let mut pool = self.pool.lock().unwrap();
        assert!(
            pool.allocated[i],
            "double free of frame {:#x}",
            frame.start_address().as_u64()
        );
        pool.allocated[i] = false;
        pool.free.push(i as u32);
    }

    fn flush_tlb_local(&self, start: VirtAddr, pages: usize) {
        self.tlb().invalidate(start.as_u64(), pages);
    }

    fn shootdown(&self, cpus: CpuMask, start: VirtAddr, pages: usize) {
        self.shootdowns.fetch_add(1, Ordering::Relaxed);
        self.flushed_pages
            .fetch_add(pages as u64, Ordering::Relaxed);
        #[cfg(all(test, not(loom)))]
        run_hook(&self.hooks.before_shootdown);
        let me = self.cpu_id();
        if cpus.iter().any(|c| c != me) {
            // IPIs take a while to arrive: let the other CPUs run into whatever the sender left
            // open meanwhile (stress tests find ordering bugs through this window).
            thread::yield_now();
        }
        // Each target's lock waits out an access in flight there, as an IPI waits for the
        // instruction to retire.
        for cpu in cpus.iter().take_while(|&c| c < self.cpus) {
            lock(&self.tlbs[cpu]).invalidate(start.as_u64(), pages);
        }
    }

    fn preempt_disable(&self) {}

    fn preempt_enable(&self) {}

    fn wait(&self, word: &AtomicU32, expected: u32) {
        let key = word as *const AtomicU32 as usize;
        let mut q = lock(&self.futex);
        // Checked under the queue lock, which `wake` takes too: a waker that changed the word
        // after this load finds us queued.
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.waiters.push((key, ticket));
        let mut reported = false;
        // Only a `wake` that dequeued our ticket ends the wait: no timeout, so a lost wake-up
        // is a hang, not a slow success.
        while q.waiters.iter().any(|&(_, t)| t == ticket) {
            let (g, r) = self
                .futex_woken
                .wait_timeout(q, LONG_WAIT)
                .unwrap_or_else(PoisonError::into_inner);
            q = g;
            if r.timed_out() && !reported {
                reported = true;
                std::eprintln!(
                    "emulated CPU {}: blocked in wait on {key:#x} (value {}) for {LONG_WAIT:?}: \
                     lost wake-up?",
                    CPU.with(|c| c.get()),
                    word.load(Ordering::SeqCst)
                );
            }
        }
    }

    fn wake(&self, word: &AtomicU32, count: usize) {
        let key = word as *const AtomicU32 as usize;
        let mut q = lock(&self.futex);
        let mut woken = 0;
        // Oldest first, as a futex does.
        q.waiters.retain(|&(k, _)| {
            let pick = k == key && woken < count;
            woken += usize::from(pick);
            !pick
        });
        if woken > 0 {
            self.futex_woken.notify_all();
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn relax(&self) {
        // Host threads stand in for CPUs and share few real cores: let the awaited one run.
        thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_double_free_is_caught() {
        let p = Emulated::new(1, 1);
        let before = p.free_frames();
        let f = p.alloc_frame().unwrap();
        let ptr = p.phys_to_ptr(f.start_address());
        // SAFETY: the frame is ours and 4 KiB long.
        unsafe { ptr.write_bytes(0xAB, FRAME) };
        assert_eq!(p.free_frames(), before - 1);
        p.free_frame(f);
        assert_eq!(p.free_frames(), before);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.free_frame(f)));
        assert!(r.is_err());
    }

    #[test]
    fn tlb_flushes_ranges_and_on_a_switch_and_never_caches_not_present() {
        let p = Emulated::new(1, 2);
        p.bind_cpu(0);
        let f = p.alloc_frame().unwrap();
        let e = TlbEntry {
            frame: f,
            flags: PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
        };
        {
            let mut t = p.tlb();
            t.switch_mm(1);
            for page in 0..8u64 {
                t.fill(page * 4096, e);
            }
        }
        p.flush_tlb_local(VirtAddr::new(2 * 4096), 3);
        let cached = |t: &Tlb| {
            (0..8)
                .filter(|&pg| t.lookup(pg * 4096 + 8).is_some())
                .count()
        };
        assert_eq!(cached(&p.tlb()), 5);
        assert!(p.tlb().lookup(4 * 4096).is_none() && p.tlb().lookup(5 * 4096).is_some());
        // A shootdown of CPU 1 only leaves CPU 0 alone.
        p.shootdown(CpuMask(0b10), VirtAddr::zero(), 8);
        assert_eq!(cached(&p.tlb()), 5);
        p.shootdown(CpuMask(0b11), VirtAddr::new(7 * 4096), 1);
        assert_eq!(cached(&p.tlb()), 4);
        p.tlb().switch_mm(1);
        assert_eq!(cached(&p.tlb()), 4, "same address space: nothing flushed");
        p.tlb().switch_mm(2);
        assert!(p.tlb().is_empty());
        // Capacity is bounded; the newest fill is kept.
        for page in 0..TLB_ENTRIES as u64 + 10 {
            p.tlb().fill(page * 4096, e);
        }
        assert_eq!(p.tlb().len(), TLB_ENTRIES);
        assert!(p.tlb().lookup((TLB_ENTRIES as u64 + 9) * 4096).is_some());
        let not_present = TlbEntry {
            frame: f,
            flags: PageTableFlags::WRITABLE,
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.tlb().fill(0, not_present)
        }));
        assert!(r.is_err());
        p.free_frame(f);
    }

    #[test]
    fn wait_blocks_until_a_wake_of_its_word_picks_it() {
        let p = Emulated::new(1, 3);
        let (a, b) = (AtomicU32::new(0), AtomicU32::new(0));
        // A value that differs returns at once.
        p.wait(&a, 1);
        thread::scope(|s| {
            let hs: Vec<_> = (1..3)
                .map(|cpu| p.spawn_cpu(s, cpu, || p.wait(&a, 0)))
                .collect();
            while p.waiters_on(&a) < 2 {
                thread::yield_now();
            }
            // Waking another word, or nobody, returns no one.
            p.wake(&b, usize::MAX);
            p.wake(&a, 0);
            assert_eq!(p.waiters_on(&a), 2);
            p.wake(&a, 1);
            assert_eq!(p.waiters_on(&a), 1, "wake(1) takes exactly one waiter");
            // The one picked returns (join below); the other stays until its own wake.
            p.wake(&a, 1);
            assert_eq!(p.waiters_on(&a), 0);
            for h in hs {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn random_allocation_failures_are_seeded_and_reproducible() {
        let run = |seed| {
            let p = Emulated::new(1, 1);
            p.fail_allocs_randomly(Some(FailRandomly::new(seed, 300_000)));
            let got: Vec<bool> = (0..64)
                .map(|_| match p.alloc_frame() {
                    Some(f) => {
                        p.free_frame(f);
                        true
                    }
                    None => false,
                })
                .collect();
            p.fail_allocs_randomly(None);
            assert!(p.alloc_frame().is_some(), "injection not turned off");
            (got, p.injected_failures())
        };
        let (a, failed) = run(7);
        assert_eq!(run(7).0, a, "same seed, different failures");
        assert_ne!(run(8).0, a, "the seed changes nothing");
        assert_eq!(failed as usize, a.iter().filter(|ok| !**ok).count());
        assert!(
            (5..40).contains(&failed),
            "{failed} of 64 failed at p = 0.3"
        );
    }

    #[test]
    fn allocation_failure_can_be_injected() {
        let p = Emulated::new(1, 1);
        p.fail_allocs_after(1);
        assert!(p.alloc_frame().is_some());
        assert!(p.alloc_frame().is_none());
    }
}
