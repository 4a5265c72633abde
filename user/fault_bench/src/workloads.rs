//! The three workloads, and the timing protocol they share.
//!
//! Workers are pinned one to a CPU (round-robin over the CPUs the process may use), meet at a
//! barrier, and loop until told to stop. The main thread steps a shared epoch: 0 is the
//! warm-up, `1..=reps` the measured windows, `reps + 1` stop. A worker reads the epoch before
//! each page touch and books the touch (a fault count and its latency in a per-thread
//! histogram) under the epoch it saw, so a window holds the faults that began inside it, and the
//! only shared write is the main thread's, a handful of times per run. A window's length is the
//! time between the main thread's two epoch stores.
//!
//! - `page_fault1`: each worker loops { mmap `region`, touch each page, munmap }.
//! - `pft`: one mapping made before the workers start, cut into contiguous per-worker pieces;
//!   each worker loops { touch each page of its piece, `MADV_DONTNEED` the piece }.
//! - `churn`: `pft`, plus one thread (pinned to the CPU after the workers') that loops
//!   { mmap a small region, mprotect its second page read-only (splitting it in three), munmap };
//!   one such cycle is one `churn_ops`.

use std::fmt;
use std::ops::Range;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::clock;
use crate::hist::Histogram;
use crate::machine;
use crate::sys::{self, Mapping, SysError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    PageFault1,
    Pft,
    Churn,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::PageFault1, Workload::Pft, Workload::Churn];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PageFault1 => "page_fault1",
            Workload::Pft => "pft",
            Workload::Churn => "churn",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// How to run a workload.
#[derive(Clone, Debug)]
pub struct Params {
    pub warmup: Duration,
    pub window: Duration,
    pub reps: u32,
    /// Bytes each `page_fault1` worker maps per round.
    pub region: usize,
    /// Bytes of the one `pft` / `churn` mapping, shared out among the workers.
    pub pft_region: usize,
    /// Bytes the churn thread maps per cycle (at least three pages).
    pub churn_region: usize,
    /// CPUs to pin to, in order.
    pub cpus: Vec<usize>,
}

/// What one measured window saw.
#[derive(Debug)]
pub struct Window {
    pub faults: u64,
    pub ns: u64,
    /// Per-fault latency in TSC cycles.
    pub latency: Histogram,
    pub churn_ops: u64,
    /// munmap and `MADV_DONTNEED` calls.
    pub munmaps: u64,
    /// The workers' minor faults by `getrusage`, where the system reports them.
    pub minflt: Option<u64>,
    /// The workers' CPU time (user and system), where the system reports it.
    pub cpu_ns: Option<u64>,
    /// TLB shootdown IPIs the system received, where it reports them.
    pub ipis: Option<u64>,
}

#[derive(Debug)]
pub enum RunError {
    Sys(SysError),
    /// The `pft` region has fewer pages than there are workers.
    RegionTooSmall {
        pages: usize,
        threads: usize,
    },
    /// A thread panicked (a bug: its message was printed).
    Panicked,
}

impl From<SysError> for RunError {
    fn from(e: SysError) -> Self {
        RunError::Sys(e)
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Sys(e) => e.fmt(f),
            RunError::RegionTooSmall { pages, threads } => write!(
                f,
                "the pft region has {pages} pages, fewer than the {threads} workers"
            ),
            RunError::Panicked => f.write_str("a benchmark thread panicked"),
        }
    }
}

/// Runs `workload` with `threads` workers: a warm-up, then `reps` windows.
pub fn run(workload: Workload, threads: usize, p: &Params) -> Result<Vec<Window>, RunError> {
    let page = sys::page_size();
    let reps = p.reps;
    let epoch = AtomicU32::new(0);
    let shared = match workload {
        Workload::PageFault1 => None,
        Workload::Pft | Workload::Churn => {
            let pages = p.pft_region.div_ceil(page);
            if pages < threads {
                return Err(RunError::RegionTooSmall { pages, threads });
            }
            Some(Mapping::anonymous(p.pft_region)?)
        }
    };
    let churn = workload == Workload::Churn;
    let barrier = Barrier::new(threads + usize::from(churn) + 1);
    let cpu = |i: usize| p.cpus[i % p.cpus.len()];

    let (marks, ipis, tallies) = thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..threads {
            let (epoch, barrier, shared) = (&epoch, &barrier, shared.as_ref());
            handles.push(s.spawn(move || {
                let pinned = sys::pin_to(cpu(i));
                barrier.wait();
                pinned?;
                let mut w = Worker::new(epoch, reps);
                match shared {
                    None => page_fault1(&mut w, p.region, page)?,
                    Some(m) => pft(&mut w, m, piece(m.len(), page, i, threads), page)?,
                }
                Ok::<_, RunError>(w.tallies)
            }));
        }
        if churn {
            let (epoch, barrier) = (&epoch, &barrier);
            handles.push(s.spawn(move || {
                let pinned = sys::pin_to(cpu(threads));
                barrier.wait();
                pinned?;
                let mut w = Worker::new(epoch, reps);
                churner(&mut w, p.churn_region, page)?;
                Ok(w.tallies)
            }));
        }
        barrier.wait();
        thread::sleep(p.warmup);
        let mut marks = Vec::new();
        let mut ipis = Vec::new();
        for e in 1..=reps + 1 {
            ipis.push(machine::tlb_shootdowns());
            epoch.store(e, Ordering::Relaxed);
            marks.push(Instant::now());
            if e <= reps {
                thread::sleep(p.window);
            }
        }
        let tallies: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(RunError::Panicked)))
            .collect();
        (marks, ipis, tallies)
    });
    let tallies = tallies.into_iter().collect::<Result<Vec<_>, _>>()?;
    drop(shared);

    let windows = (1..=reps as usize)
        .map(|r| {
            let mut win = Window {
                faults: 0,
                ns: (marks[r] - marks[r - 1]).as_nanos() as u64,
                latency: Histogram::default(),
                churn_ops: 0,
                munmaps: 0,
                minflt: Some(0),
                cpu_ns: Some(0),
                ipis: ipis[r].zip(ipis[r - 1]).map(|(b, a)| b.saturating_sub(a)),
            };
            for (t, thread_tallies) in tallies.iter().enumerate() {
                let tally = &thread_tallies[r];
                win.faults += tally.faults;
                win.latency.merge(&tally.latency);
                win.churn_ops += tally.churn_ops;
                win.munmaps += tally.munmaps;
                if t < threads {
                    win.minflt = win.minflt.zip(tally.minflt).map(|(a, b)| a + b);
                    win.cpu_ns = win.cpu_ns.zip(tally.cpu_ns).map(|(a, b)| a + b);
                }
            }
            win
        })
        .collect();
    Ok(windows)
}

/// Page-aligned piece `i` of `n` of a mapping of `len` bytes.
fn piece(len: usize, page: usize, i: usize, n: usize) -> Range<usize> {
    let pages = len / page;
    (i * pages / n * page)..((i + 1) * pages / n * page)
}

/// What one thread did in one epoch.
#[derive(Debug, Default)]
struct Tally {
    faults: u64,
    latency: Histogram,
    churn_ops: u64,
    munmaps: u64,
    minflt: Option<u64>,
    cpu_ns: Option<u64>,
}

/// One thread's side of the epoch protocol.
struct Worker<'a> {
    epoch: &'a AtomicU32,
    stop: u32,
    current: u32,
    /// Indexed by epoch: warm-up, the windows, and after the stop.
    tallies: Vec<Tally>,
    minflt_mark: Option<u64>,
    cpu_mark: Option<u64>,
}

impl<'a> Worker<'a> {
    fn new(epoch: &'a AtomicU32, reps: u32) -> Self {
        Worker {
            epoch,
            stop: reps + 1,
            current: 0,
            tallies: (0..=reps + 1).map(|_| Tally::default()).collect(),
            minflt_mark: sys::thread_minor_faults().ok(),
            cpu_mark: sys::thread_cpu_ns(),
        }
    }

    /// Follows the epoch; false once the run is over.
    #[inline(always)]
    fn running(&mut self) -> bool {
        let e = self.epoch.load(Ordering::Relaxed);
        if e != self.current {
            self.switch(e);
        }
        e < self.stop
    }

    #[cold]
    fn switch(&mut self, e: u32) {
        let (minflt, cpu) = (sys::thread_minor_faults().ok(), sys::thread_cpu_ns());
        let (minflt_mark, cpu_mark) = (self.minflt_mark, self.cpu_mark);
        let tally = self.tally();
        tally.minflt = minflt.zip(minflt_mark).map(|(b, a)| b.saturating_sub(a));
        tally.cpu_ns = cpu.zip(cpu_mark).map(|(b, a)| b.saturating_sub(a));
        (self.minflt_mark, self.cpu_mark) = (minflt, cpu);
        self.current = e;
    }

    fn tally(&mut self) -> &mut Tally {
        &mut self.tallies[self.current as usize]
    }

    /// Touches one page and books the fault.
    #[inline(always)]
    fn touch(&mut self, m: &Mapping, offset: usize) {
        let t0 = clock::start();
        m.touch(offset);
        let t1 = clock::end();
        let tally = self.tally();
        tally.faults += 1;
        tally.latency.record(t1.wrapping_sub(t0));
    }
}

fn page_fault1(w: &mut Worker, region: usize, page: usize) -> Result<(), SysError> {
    loop {
        let m = Mapping::anonymous(region)?;
        for offset in (0..m.len()).step_by(page) {
            if !w.running() {
                return m.unmap();
            }
            w.touch(&m, offset);
        }
        m.unmap()?;
        w.tally().munmaps += 1;
    }
}

fn pft(w: &mut Worker, m: &Mapping, piece: Range<usize>, page: usize) -> Result<(), SysError> {
    // The epoch is followed per round too, so that even a worker without pages stops.
    while w.running() {
        for offset in piece.clone().step_by(page) {
            if !w.running() {
                return Ok(());
            }
            w.touch(m, offset);
        }
        m.dontneed(piece.start, piece.len())?;
        w.tally().munmaps += 1;
    }
    Ok(())
}

fn churner(w: &mut Worker, region: usize, page: usize) -> Result<(), SysError> {
    while w.running() {
        let m = Mapping::anonymous(region.max(3 * page))?;
        m.protect(page, page, libc::PROT_READ)?;
        m.unmap()?;
        let tally = w.tally();
        tally.churn_ops += 1;
        tally.munmaps += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_contiguous_and_cover_the_mapping() {
        for n in 1..=9 {
            let mut next = 0;
            for i in 0..n {
                let r = piece(1000 * 4096, 4096, i, n);
                assert_eq!(r.start, next);
                assert_eq!(r.start % 4096, 0);
                next = r.end;
            }
            assert_eq!(next, 1000 * 4096);
        }
    }

    #[test]
    fn pft_with_more_threads_than_pages_does_not_hang() {
        let p = Params {
            warmup: Duration::from_millis(10),
            window: Duration::from_millis(10),
            reps: 1,
            region: 4096,
            pft_region: 4096,
            churn_region: 64 << 10,
            cpus: sys::allowed_cpus().unwrap(),
        };
        // Worker 0 gets no page of a one-page region.
        let r = run(Workload::Pft, 2, &p);
        assert!(
            matches!(
                r,
                Err(RunError::RegionTooSmall {
                    pages: 1,
                    threads: 2
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_short_run_counts_real_faults() {
        let p = Params {
            warmup: Duration::from_millis(20),
            window: Duration::from_millis(50),
            reps: 2,
            region: 4 << 20,
            pft_region: 8 << 20,
            churn_region: 64 << 10,
            cpus: sys::allowed_cpus().unwrap(),
        };
        for w in Workload::ALL {
            let windows = run(w, 2, &p).unwrap();
            assert_eq!(windows.len(), 2);
            for win in &windows {
                assert!(win.faults > 0, "{w:?}: no faults");
                assert_eq!(win.latency.count(), win.faults);
                assert!(win.ns >= 50_000_000, "{w:?}: window {} ns", win.ns);
                // Every touch is a fault: getrusage agrees to within a few stray faults.
                if let Some(minflt) = win.minflt {
                    assert!(
                        minflt + 64 >= win.faults,
                        "{w:?}: {minflt} < {}",
                        win.faults
                    );
                }
                assert_eq!(win.churn_ops > 0, w == Workload::Churn, "{w:?}");
                // Two workers cannot use more than two CPUs' worth of the window.
                if let Some(cpu) = win.cpu_ns {
                    assert!(cpu > 0 && cpu <= 2 * win.ns + 20_000_000, "{w:?}: {cpu} ns");
                }
            }
        }
    }
}
