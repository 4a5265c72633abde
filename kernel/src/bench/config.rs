//! The benchmark's options. The `bench` binary reads them at build time (`option_env!`, set by
//! `make bench`: the bootloader passes no command line); an unset or empty option takes its
//! default.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::workload::{Policy, SLOT, Workload};

/// What to measure and how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub workloads: Vec<Workload>,
    pub policies: Vec<Policy>,
    pub threads: Vec<usize>,
    pub reps: usize,
    pub warmup_ms: u64,
    pub window_ms: u64,
    /// `page_fault1`'s region per thread.
    pub region_mib: u64,
    /// `pft`'s piece per thread.
    pub piece_mib: u64,
    /// Whether to add the phase-profile windows (one per workload and policy, at one thread).
    pub profile: bool,
    /// Whether to measure the fork cost after the fault workloads.
    pub fork: bool,
    /// Cores of the host running QEMU, if the build was told.
    pub host_cores: Option<u64>,
    /// `TCG` or `KVM` as the build was told, when the CPU does not say.
    pub accel: Option<String>,
}

/// The options as text (each `None` or empty: the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct RawConfig<'a> {
    pub workloads: Option<&'a str>,
    pub policies: Option<&'a str>,
    pub threads: Option<&'a str>,
    pub reps: Option<&'a str>,
    pub warmup_ms: Option<&'a str>,
    pub window_ms: Option<&'a str>,
    pub region_mib: Option<&'a str>,
    pub piece_mib: Option<&'a str>,
    pub profile: Option<&'a str>,
    pub fork: Option<&'a str>,
    pub host_cores: Option<&'a str>,
    pub accel: Option<&'a str>,
}

/// An option that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Not a number, or out of range.
    BadNumber { option: &'static str, value: String },
    /// A name in a list that means nothing.
    Unknown { option: &'static str, value: String },
    /// A list with nothing in it.
    Empty { option: &'static str },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadNumber { option, value } => {
                write!(f, "{option}: {value:?} is not a valid number here")
            }
            ConfigError::Unknown { option, value } => write!(f, "{option}: unknown name {value:?}"),
            ConfigError::Empty { option } => write!(f, "{option}: empty list"),
        }
    }
}

fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

fn number(
    option: &'static str,
    v: Option<&str>,
    default: u64,
    range: core::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(s) = given(v) else {
        return Ok(default);
    };
    s.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| ConfigError::BadNumber {
            option,
            value: s.into(),
        })
}

fn list<T: Copy>(
    option: &'static str,
    v: Option<&str>,
    all: &[T],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ConfigError> {
    let Some(s) = given(v) else {
        return Ok(all.to_vec());
    };
    let items: Vec<T> = s
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            parse(w).ok_or_else(|| ConfigError::Unknown {
                option,
                value: w.into(),
            })
        })
        .collect::<Result<_, _>>()?;
    if items.is_empty() {
        return Err(ConfigError::Empty { option });
    }
    Ok(items)
}

impl Config {
    /// Checks and fills in the options. Defaults: every workload and policy, threads 1 and 2,
    /// 3 repetitions, 200 ms warm-up, 1 s window, 32 MiB regions and 16 MiB pieces (sized for
    /// TCG; will-it-scale's 128 MiB works too), profiling and the fork cost on.
    pub fn parse(raw: &RawConfig) -> Result<Config, ConfigError> {
        let workloads = list("BENCH_WORKLOADS", raw.workloads, &Workload::ALL, |w| {
            Workload::ALL.into_iter().find(|x| x.name() == w)
        })?;
        let policies = list("BENCH_POLICIES", raw.policies, &Policy::ALL, |w| {
            Policy::ALL.into_iter().find(|x| x.name() == w)
        })?;
        let threads = list("BENCH_THREADS", raw.threads, &[1, 2], |w| {
            w.parse::<usize>()
                .ok()
                .filter(|n| (1..=crate::arch::percpu::MAX_CPUS).contains(n))
        })?;
        let profile = match given(raw.profile) {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => {
                return Err(ConfigError::BadNumber {
                    option: "BENCH_PROFILE",
                    value: v.into(),
                });
            }
        };
        let fork = match given(raw.fork) {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => {
                return Err(ConfigError::BadNumber {
                    option: "BENCH_FORK",
                    value: v.into(),
                });
            }
        };
        let accel = match given(raw.accel) {
            None => None,
            Some(a @ ("TCG" | "KVM")) => Some(a.into()),
            Some(v) => {
                return Err(ConfigError::Unknown {
                    option: "BENCH_ACCEL",
                    value: v.into(),
                });
            }
        };
        Ok(Config {
            workloads,
            policies,
            threads,
            reps: number("BENCH_REPS", raw.reps, 3, 1..=1000)? as usize,
            warmup_ms: number("BENCH_WARMUP_MS", raw.warmup_ms, 200, 0..=600_000)?,
            window_ms: number("BENCH_WINDOW_MS", raw.window_ms, 1000, 1..=600_000)?,
            // A region must fit its 1 GiB slot; pieces must be whole 2 MiB page-table blocks.
            region_mib: number("BENCH_REGION_MIB", raw.region_mib, 32, 1..=SLOT >> 20)?,
            piece_mib: {
                let p = number("BENCH_PIECE_MIB", raw.piece_mib, 16, 2..=SLOT >> 20)?;
                if p % 2 != 0 {
                    return Err(ConfigError::BadNumber {
                        option: "BENCH_PIECE_MIB",
                        value: alloc::format!("{p}"),
                    });
                }
                p
            },
            profile,
            fork,
            host_cores: given(raw.host_cores)
                .map(|_| number("BENCH_HOST_CORES", raw.host_cores, 0, 1..=4096))
                .transpose()?,
            accel,
        })
    }

    /// How many measurements (BENCH lines) the run makes.
    pub fn measurements(&self) -> usize {
        self.workloads.len() * self.policies.len() * self.threads.len() * self.reps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test_case]
    fn defaults_and_lists() {
        let c = Config::parse(&RawConfig::default()).expect("defaults");
        assert_eq!(c.threads, [1, 2]);
        assert!(c.fork);
        assert_eq!(c.policies, Policy::ALL);
        assert_eq!(c.measurements(), 3 * 3 * 2 * 3);
        let c = Config::parse(&RawConfig {
            threads: Some("1, 2,4,8"),
            workloads: Some("pft"),
            policies: Some("floor,vma"),
            reps: Some(" "),
            ..Default::default()
        })
        .expect("lists");
        assert_eq!(c.threads, [1, 2, 4, 8]);
        assert_eq!(c.workloads, [Workload::Pft]);
        assert_eq!(c.policies, [Policy::Floor, Policy::Vma]);
        assert_eq!(c.reps, 3);
    }

    #[test_case]
    fn bad_options_are_errors() {
        let bad = |raw: RawConfig| Config::parse(&raw).expect_err("must be rejected");
        assert!(matches!(
            bad(RawConfig {
                threads: Some("0"),
                ..Default::default()
            }),
            ConfigError::Unknown { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                policies: Some("fast"),
                ..Default::default()
            }),
            ConfigError::Unknown { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                reps: Some("x"),
                ..Default::default()
            }),
            ConfigError::BadNumber { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                region_mib: Some("2048"),
                ..Default::default()
            }),
            ConfigError::BadNumber { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                piece_mib: Some("3"),
                ..Default::default()
            }),
            ConfigError::BadNumber { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                fork: Some("yes"),
                ..Default::default()
            }),
            ConfigError::BadNumber { .. }
        ));
        assert!(matches!(
            bad(RawConfig {
                workloads: Some(","),
                ..Default::default()
            }),
            ConfigError::Empty { .. }
        ));
    }
}
