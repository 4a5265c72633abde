//! Reading test results out of logs: the serial log of a test kernel, and the summary lines of
//! host `cargo test` runs.

/// Counts of one test binary or suite.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl core::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
    }
}

/// Tallies a test kernel's serial log (see `kernel::testing`): `running N tests`, then
/// `test NAME ... ok` or `test NAME ... FAILED` per test. Tests announced but never reported
/// (the kernel crashed or hung) count as failed; a kernel that failed before announcing anything
/// counts as one failure.
pub fn kernel_counts(log: &[String], kernel_succeeded: bool) -> Counts {
    let mut announced = None;
    let mut c = Counts::default();
    for line in log {
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests"))
        {
            announced = n.trim().parse::<u64>().ok();
        } else if line.starts_with("test ") && line.ends_with(" ... ok") {
            c.passed += 1;
        } else if line.starts_with("test ") && line.ends_with(" ... FAILED") {
            c.failed += 1;
        }
    }
    match announced {
        Some(n) => c.failed += n.saturating_sub(c.passed + c.failed),
        None if c.passed + c.failed == 0 => c.failed += 1,
        None => {}
    }
    if !kernel_succeeded && c.failed == 0 {
        c.failed = 1;
    }
    c
}

/// The CPU count a kernel reports in its `smp: N CPUs online` line, if it printed one.
pub fn cpus_online(log: &[String]) -> Option<u32> {
    log.iter().find_map(|l| {
        let rest = &l[l.find("smp: ")? + 5..];
        rest.strip_suffix(" CPUs online")?.parse().ok()
    })
}

/// Sums libtest's `test result: ok. 3 passed; 0 failed; ...` lines.
pub fn libtest_counts<'a>(lines: impl IntoIterator<Item = &'a str>) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for line in lines {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        let mut c = Counts::default();
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => c.passed = n,
                "failed" => c.failed = n,
                _ => {}
            }
        }
        *total.get_or_insert_with(Counts::default) += c;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(String::from).collect()
    }

    #[test]
    fn all_reported_tests_pass() {
        let log = lines("banner\nrunning 2 tests\ntest a ... ok\n[INFO cpu0] x\ntest b ... ok\n");
        assert_eq!(
            kernel_counts(&log, true),
            Counts {
                passed: 2,
                failed: 0
            }
        );
    }

    #[test]
    fn a_crash_fails_the_running_test_and_the_rest() {
        let log = lines("running 4 tests\ntest a ... ok\ntest b ... FAILED\nKERNEL PANIC\n");
        assert_eq!(
            kernel_counts(&log, false),
            Counts {
                passed: 1,
                failed: 3
            }
        );
    }

    #[test]
    fn a_hang_fails_the_unreported_tests() {
        let log = lines("running 3 tests\ntest a ... ok\n");
        assert_eq!(
            kernel_counts(&log, false),
            Counts {
                passed: 1,
                failed: 2
            }
        );
    }

    #[test]
    fn a_kernel_that_dies_before_its_tests_is_one_failure() {
        assert_eq!(
            kernel_counts(&lines("booting\n"), false),
            Counts {
                passed: 0,
                failed: 1
            }
        );
    }

    #[test]
    fn a_failing_exit_after_passing_tests_is_still_a_failure() {
        let log = lines("running 1 tests\ntest a ... ok\n");
        assert_eq!(
            kernel_counts(&log, false),
            Counts {
                passed: 1,
                failed: 1
            }
        );
    }

    #[test]
    fn the_online_cpu_count_is_read_from_the_log() {
        assert_eq!(cpus_online(&lines("x\nsmp: 8 CPUs online\n")), Some(8));
        assert_eq!(
            cpus_online(&lines("[INFO  cpu0] smp: 2 CPUs online\n")),
            Some(2)
        );
        assert_eq!(cpus_online(&lines("smp: 8 CPUs online (all up)\n")), None);
        assert_eq!(cpus_online(&lines("nothing\n")), None);
    }

    #[test]
    fn libtest_summaries_add_up() {
        let out = "test x ... ok\ntest result: ok. 3 passed; 0 failed; 1 ignored; 0 measured\n\
                   test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            libtest_counts(out.lines()),
            Some(Counts {
                passed: 8,
                failed: 2
            })
        );
        assert_eq!(libtest_counts("Compiling".lines()), None);
    }
}
