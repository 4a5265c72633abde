//! The test suite: `boot runner` runs one kernel test binary under QEMU (cargo's target runner),
//! `boot test` runs everything and ends with one line `N passed, N failed`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::image::{self, Firmware};
use crate::qemu;
use crate::testlog::{self, Counts};

/// Test kernels that must pass on several CPU counts, by binary name; the rest run on
/// `KTEST_SMP` CPUs (default 8).
const SMP_MATRIX: &[(&str, &[u32])] = &[("smp", &[1, 2, 8]), ("rcu", &[1, 2, 8])];

/// `boot runner <ELF> [libtest args, ignored]`.
pub fn runner(args: &[String]) -> Result<bool, String> {
    let elf = PathBuf::from(args.first().ok_or("runner needs the test kernel's path")?);
    let name = binary_name(&elf);
    let timeout = env_u64("KTEST_TIMEOUT", 300)?;
    let smps: Vec<u32> = match SMP_MATRIX.iter().find(|(n, _)| *n == name) {
        Some((_, smps)) => smps.to_vec(),
        None => vec![env_u64("KTEST_SMP", 8)? as u32],
    };
    let image = image::build(&elf, Firmware::Bios)?;
    let mut all_ok = true;
    for smp in smps {
        let opts = qemu::Options {
            smp,
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        };
        let out = qemu::run(&image, &opts)?;
        let mut counts = testlog::kernel_counts(&out.log, out.success);
        if let Some(seen) = testlog::cpus_online(&out.log).filter(|&n| n != smp) {
            println!("ktest {name}: the kernel reports {seen} CPUs online, QEMU was given {smp}");
            counts.failed += 1;
        }
        let ok = out.success && counts.failed == 0;
        all_ok &= ok;
        println!(
            "ktest {name} smp={smp}: {} ok, {} failed ({}, {:.1} s)",
            counts.passed,
            counts.failed,
            out.reason,
            out.elapsed.as_secs_f64()
        );
        if let Ok(path) = std::env::var("KTEST_RESULTS") {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open KTEST_RESULTS file {path}: {e}"))?;
            writeln!(f, "{name} {smp} {} {}", counts.passed, counts.failed)
                .map_err(|e| format!("cannot write {path}: {e}"))?;
        }
    }
    Ok(all_ok)
}

/// `boot test`: host tests of `mm` and `boot`, then every test kernel under QEMU.
pub fn all() -> Result<bool, String> {
    let root = workspace_root();
    let mut total = Counts::default();

    let host_runs: [&[&str]; 2] = [&["test", "-p", "mm"], &["test", "--release", "-p", "boot"]];
    for args in host_runs {
        let c = host_suite(&root, args)?;
        println!("== host `cargo {}`: {} passed, {} failed", args.join(" "), c.passed, c.failed);
        total += c;
    }

    let results = std::env::temp_dir().join(format!("ktest-results-{}", std::process::id()));
    let _ = std::fs::remove_file(&results);
    let status = Command::new("cargo")
        .current_dir(&root)
        .args(["test", "-p", "kernel", "-p", "ktests", "--target", "x86_64-unknown-none"])
        .arg("--no-fail-fast")
        .env("KTEST_RESULTS", &results)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let text = std::fs::read_to_string(&results).unwrap_or_default();
    let _ = std::fs::remove_file(&results);
    let mut kernel = Counts::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [_, _, passed, failed] = f[..] {
            kernel += Counts {
                passed: passed.parse().unwrap_or(0),
                failed: failed.parse().unwrap_or(1),
            };
        }
    }
    if !status.success() && kernel.failed == 0 {
        // cargo failed without a test kernel failing: the build broke.
        kernel.failed += 1;
    }
    println!("== in-QEMU tests: {} passed, {} failed", kernel.passed, kernel.failed);
    total += kernel;

    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(total.failed == 0)
}

/// Runs a host `cargo test`, echoing its output, and counts its results.
fn host_suite(root: &Path, args: &[&str]) -> Result<Counts, String> {
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| format!("reading cargo output: {e}"))?;
        println!("{line}");
        lines.push(line);
    }
    let status = child.wait().map_err(|e| format!("waiting for cargo: {e}"))?;
    let mut c = testlog::libtest_counts(lines.iter().map(String::as_str)).unwrap_or_default();
    if !status.success() && c.failed == 0 {
        c.failed += 1;
    }
    Ok(c)
}

/// `target/.../deps/basic_boot-0123abcd` -> `basic_boot`.
fn binary_name(elf: &Path) -> String {
    let stem = elf.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.into(),
        _ => stem.into(),
    }
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("boot/ has a parent").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_names_lose_cargo_hashes() {
        assert_eq!(binary_name(Path::new("t/deps/basic_boot-0a1b2c3d4e5f6789")), "basic_boot");
        assert_eq!(binary_name(Path::new("t/deps/kernel-0a1b")), "kernel");
        assert_eq!(binary_name(Path::new("t/x86_64-unknown-none/debug/kernel")), "kernel");
        assert_eq!(binary_name(Path::new("t/deps/page-fault-ab")), "page-fault");
    }
}
