//! Aggregates: the repetitions of one measurement become a [`Point`] (medians, min-max), the
//! points of one workload, policy and CPU count a [`Series`] over thread counts, and phase lines
//! [`PhaseRow`]s. Ratios between series are taken between medians.

use std::collections::BTreeMap;

use crate::format::{Measurement, Phase, Policy};
use crate::log::Log;

/// The workloads in report order; others follow by name.
pub const WORKLOADS: [&str; 3] = ["page_fault1", "pft", "churn"];

/// Median and range of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.into_iter().collect();
    Summary::of(&v).map_or(0.0, |s| s.median)
}

/// The median of `f` over the repetitions where it has a value.
fn median_of(reps: &[&Measurement], f: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = reps.iter().filter_map(|m| f(m)).collect();
    Summary::of(&v).map(|s| s.median)
}

/// What identifies a series: one line of a plot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub workload: String,
    pub policy: Policy,
    pub cpus: u64,
}

/// The repetitions of one measurement, summarized.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub threads: u64,
    pub reps: usize,
    /// Faults per second of all threads together.
    pub rate: Summary,
    /// Medians over the repetitions of each window's p50 and p99; the largest max.
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub max_ns: u64,
    /// Medians over the repetitions of `vma_lock_success`, `_abort`, `_retry`, `_miss`.
    pub vma_lock: [f64; 4],
    /// Median churn operations per second.
    pub churn_per_sec: f64,
    /// Shootdown IPIs per munmap over all repetitions that report both.
    pub ipis_per_munmap: Option<f64>,
    /// Median share of `threads * ns` the workers ran, over the repetitions that report it.
    pub busy: Option<f64>,
    /// Median faults per second of CPU time the workers ran, over the same repetitions.
    pub per_cpu_sec: Option<f64>,
}

impl Point {
    fn of(threads: u64, reps: &[&Measurement]) -> Option<Point> {
        let rates: Vec<f64> = reps.iter().map(|m| m.faults_per_sec).collect();
        let (ipis, munmaps) = reps
            .iter()
            .filter_map(|m| m.ipis.zip(m.munmaps))
            .fold((0, 0), |(i, u), (a, b)| (i + a, u + b));
        Some(Point {
            threads,
            reps: reps.len(),
            rate: Summary::of(&rates)?,
            p50_ns: median(reps.iter().map(|m| m.p50_ns as f64)),
            p99_ns: median(reps.iter().map(|m| m.p99_ns as f64)),
            max_ns: reps.iter().map(|m| m.max_ns).max().unwrap_or(0),
            vma_lock: [
                median(reps.iter().map(|m| m.vma_lock_success as f64)),
                median(reps.iter().map(|m| m.vma_lock_abort as f64)),
                median(reps.iter().map(|m| m.vma_lock_retry as f64)),
                median(reps.iter().map(|m| m.vma_lock_miss as f64)),
            ],
            churn_per_sec: median(reps.iter().map(|m| m.churn_ops as f64 * 1e9 / m.ns as f64)),
            ipis_per_munmap: (munmaps > 0).then(|| ipis as f64 / munmaps as f64),
            busy: median_of(reps, |m| Some(m.cpu_ns? as f64 / (m.threads * m.ns) as f64)),
            per_cpu_sec: median_of(reps, |m| {
                Some(m.faults as f64 * 1e9 / m.cpu_ns.filter(|&c| c > 0)? as f64)
            }),
        })
    }

    /// Median faults per second of one thread.
    pub fn per_thread(&self) -> f64 {
        self.rate.median / self.threads as f64
    }
}

/// One workload, policy and CPU count over thread counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub key: SeriesKey,
    /// Ascending by thread count.
    pub points: Vec<Point>,
}

impl Series {
    pub fn at(&self, threads: u64) -> Option<&Point> {
        self.points.iter().find(|p| p.threads == threads)
    }

    /// Median faults/s at `threads` over the median at one thread (none if that is 0: a
    /// series whose threads did not fault has nothing to scale from).
    pub fn scaling(&self, threads: u64) -> Option<f64> {
        let base = self.at(1)?.rate.median;
        let at = self.at(threads)?.rate.median;
        (base > 0.0).then(|| at / base)
    }
}

/// The phase lines of one workload, policy, thread count and phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseRow {
    pub workload: String,
    pub policy: Policy,
    pub threads: u64,
    pub phase: String,
    /// Faults timed, over all its lines.
    pub samples: u64,
    /// Medians over its lines.
    pub median_cycles: f64,
    pub p99_cycles: f64,
    /// The TSC frequency of its log, to turn cycles into time.
    pub tsc_mhz: Option<u64>,
}

impl PhaseRow {
    pub fn median_ns(&self) -> Option<f64> {
        self.tsc_mhz
            .map(|mhz| self.median_cycles * 1e3 / mhz as f64)
    }
}

/// Everything the report shows, from any number of logs.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// Ordered by workload (report order), policy, CPU count.
    pub series: Vec<Series>,
    /// Ordered by workload, policy, threads, then phases in the order the log gave them.
    pub phases: Vec<PhaseRow>,
}

/// Where a workload goes in the report.
pub fn workload_rank(w: &str) -> (usize, &str) {
    (
        WORKLOADS
            .iter()
            .position(|k| *k == w)
            .unwrap_or(WORKLOADS.len()),
        w,
    )
}

impl Dataset {
    pub fn new(logs: &[Log]) -> Dataset {
        let mut groups: BTreeMap<(SeriesKey, u64), Vec<&Measurement>> = BTreeMap::new();
        for m in logs.iter().flat_map(|l| &l.measurements) {
            let key = SeriesKey {
                workload: m.workload.clone(),
                policy: m.policy,
                cpus: m.cpus,
            };
            groups.entry((key, m.threads)).or_default().push(m);
        }
        let mut series: Vec<Series> = Vec::new();
        for ((key, threads), reps) in groups {
            let Some(point) = Point::of(threads, &reps) else {
                continue;
            };
            match series.last_mut() {
                Some(s) if s.key == key => s.points.push(point),
                _ => series.push(Series {
                    key,
                    points: vec![point],
                }),
            }
        }
        series.sort_by(|a, b| {
            (workload_rank(&a.key.workload), a.key.policy, a.key.cpus).cmp(&(
                workload_rank(&b.key.workload),
                b.key.policy,
                b.key.cpus,
            ))
        });

        // Phases keep the order of their first line within each measurement.
        let mut rows: Vec<(PhaseRow, Vec<f64>, Vec<f64>)> = Vec::new();
        for log in logs {
            for p in &log.phases {
                let same = |r: &PhaseRow| {
                    (&r.workload, r.policy, r.threads, &r.phase)
                        == (&p.workload, p.policy, p.threads, &p.phase)
                };
                match rows.iter_mut().find(|(r, _, _)| same(r)) {
                    Some((r, med, p99)) => {
                        r.samples += p.samples;
                        med.push(p.median_cycles as f64);
                        p99.push(p.p99_cycles as f64);
                    }
                    None => rows.push((
                        row_of(p, log.tsc_mhz()),
                        vec![p.median_cycles as f64],
                        vec![p.p99_cycles as f64],
                    )),
                }
            }
        }
        let mut phases: Vec<PhaseRow> = rows
            .into_iter()
            .map(|(mut r, med, p99)| {
                r.median_cycles = median(med);
                r.p99_cycles = median(p99);
                r
            })
            .collect();
        // A stable sort keeps the log's phase order inside each measurement.
        phases.sort_by(|a, b| {
            (workload_rank(&a.workload), a.policy, a.threads).cmp(&(
                workload_rank(&b.workload),
                b.policy,
                b.threads,
            ))
        });
        Dataset { series, phases }
    }

    /// The workloads present, in report order.
    pub fn workloads(&self) -> Vec<&str> {
        let mut w: Vec<&str> = self
            .series
            .iter()
            .map(|s| s.key.workload.as_str())
            .chain(self.phases.iter().map(|p| p.workload.as_str()))
            .collect();
        w.sort_by_key(|w| workload_rank(w));
        w.dedup();
        w
    }

    pub fn series_of<'a>(&'a self, workload: &'a str) -> impl Iterator<Item = &'a Series> + 'a {
        self.series
            .iter()
            .filter(move |s| s.key.workload == workload)
    }

    /// The series of `policy` for `workload` on `cpus` CPUs. Linux ran on the host, whose CPU
    /// count need not match the kernel's: for it any CPU count does, the same one first.
    pub fn find(&self, workload: &str, policy: Policy, cpus: u64) -> Option<&Series> {
        let all: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| s.key.workload == workload && s.key.policy == policy)
            .collect();
        all.iter()
            .find(|s| s.key.cpus == cpus)
            .or_else(|| all.first().filter(|_| policy == Policy::Linux))
            .copied()
    }

    /// Median faults/s of `a` over `b` for `workload` at `threads`, `cpus` as in [`Self::find`].
    pub fn ratio(
        &self,
        workload: &str,
        a: Policy,
        b: Policy,
        cpus: u64,
        threads: u64,
    ) -> Option<f64> {
        let num = self.find(workload, a, cpus)?.at(threads)?.rate.median;
        let den = self.find(workload, b, cpus)?.at(threads)?.rate.median;
        (den > 0.0).then(|| num / den)
    }

    /// A series' name in plots and tables: `workload/policy`, with the CPU count when the
    /// same workload and policy ran on several, then what measured it (`mmkernel, kernel
    /// threads`, `mmkernel, user program`, `Linux`).
    pub fn label(&self, s: &Series) -> String {
        let several = self
            .series_of(&s.key.workload)
            .filter(|o| o.key.policy == s.key.policy)
            .count()
            > 1;
        let system = s.key.policy.system();
        if several {
            format!(
                "{}/{}@{}cpu ({system})",
                s.key.workload, s.key.policy, s.key.cpus
            )
        } else {
            format!("{}/{} ({system})", s.key.workload, s.key.policy)
        }
    }
}

fn row_of(p: &Phase, tsc_mhz: Option<u64>) -> PhaseRow {
    PhaseRow {
        workload: p.workload.clone(),
        policy: p.policy,
        threads: p.threads,
        phase: p.phase.clone(),
        samples: p.samples,
        median_cycles: p.median_cycles as f64,
        p99_cycles: p.p99_cycles as f64,
        tsc_mhz,
    }
}
