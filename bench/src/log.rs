//! Reading logs: every line goes through [`format::parse_line`]; records are kept with the log
//! they came from, and lines that look like records but are not become warnings with their
//! place, so one garbled serial line costs one measurement, not the report.

use core::fmt;

use crate::format::{self, ForkCost, Header, LineError, Measurement, Phase, Policy, Record};

/// One log's records.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// What the report calls it (the file name).
    pub name: String,
    pub headers: Vec<Header>,
    pub measurements: Vec<Measurement>,
    pub phases: Vec<Phase>,
    pub forks: Vec<ForkCost>,
    pub warnings: Vec<Warning>,
}

/// Something the report skipped or doubts, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct Warning {
    pub log: String,
    /// 1-based line number, for problems of one line.
    pub line: Option<usize>,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// A line that starts like a record and is not one; it was skipped.
    BadLine(LineError),
    /// Measurements without a `BENCH-HEADER` in their log.
    NoHeader,
    /// Headers of one log that disagree on the TSC frequency (phases use the first).
    TscChanged { first: u64, later: u64 },
    /// Two lines for the same measurement and repetition; both were kept.
    DuplicateRep {
        workload: String,
        policy: Policy,
        threads: u64,
        cpus: u64,
        rep: u64,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{}:{n}: ", self.log)?,
            None => write!(f, "{}: ", self.log)?,
        }
        match &self.problem {
            Problem::BadLine(e) => write!(f, "skipped: {e}"),
            Problem::NoHeader => f.write_str("BENCH lines but no BENCH-HEADER line"),
            Problem::TscChanged { first, later } => write!(
                f,
                "a later header says tsc_mhz={later}, the first {first} (phases use {first})"
            ),
            Problem::DuplicateRep {
                workload,
                policy,
                threads,
                cpus,
                rep,
            } => write!(
                f,
                "rep={rep} of workload={workload} policy={policy} threads={threads} cpus={cpus} \
                 appears again (both kept)"
            ),
        }
    }
}

impl Log {
    /// Reads a log's text. Never fails: what cannot be read becomes a warning.
    pub fn parse(name: &str, text: &str) -> Log {
        let mut log = Log {
            name: name.to_owned(),
            ..Log::default()
        };
        for (i, line) in text.lines().enumerate() {
            match format::parse_line(line) {
                Ok(None) => {}
                Ok(Some(Record::Header(h))) => {
                    if let Some(first) = log.headers.first().map(|f| f.tsc_mhz)
                        && first != h.tsc_mhz
                    {
                        log.warn(
                            Some(i + 1),
                            Problem::TscChanged {
                                first,
                                later: h.tsc_mhz,
                            },
                        );
                    }
                    log.headers.push(h);
                }
                Ok(Some(Record::Measurement(m))) => {
                    let seen = log.measurements.iter().any(|o| {
                        (&o.workload, o.policy, o.threads, o.cpus, o.rep)
                            == (&m.workload, m.policy, m.threads, m.cpus, m.rep)
                    });
                    if seen {
                        log.warn(
                            Some(i + 1),
                            Problem::DuplicateRep {
                                workload: m.workload.clone(),
                                policy: m.policy,
                                threads: m.threads,
                                cpus: m.cpus,
                                rep: m.rep,
                            },
                        );
                    }
                    log.measurements.push(m);
                }
                Ok(Some(Record::Phase(p))) => log.phases.push(p),
                Ok(Some(Record::Fork(f))) => log.forks.push(f),
                Err(e) => log.warn(Some(i + 1), Problem::BadLine(e)),
            }
        }
        if log.headers.is_empty()
            && !(log.measurements.is_empty() && log.phases.is_empty() && log.forks.is_empty())
        {
            log.warn(None, Problem::NoHeader);
        }
        log
    }

    /// The TSC frequency phases are converted with: the first header's.
    pub fn tsc_mhz(&self) -> Option<u64> {
        self.headers.first().map(|h| h.tsc_mhz).filter(|&f| f > 0)
    }

    /// Lines that were records (for the report's summary).
    pub fn records(&self) -> usize {
        self.headers.len() + self.measurements.len() + self.phases.len() + self.forks.len()
    }

    /// Lines skipped as malformed.
    pub fn skipped(&self) -> usize {
        self.warnings
            .iter()
            .filter(|w| matches!(w.problem, Problem::BadLine(_)))
            .count()
    }

    fn warn(&mut self, line: Option<usize>, problem: Problem) {
        self.warnings.push(Warning {
            log: self.name.clone(),
            line,
            problem,
        });
    }
}
