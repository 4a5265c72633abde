//! `boot`: the host side of the kernel.
//!
//! ```text
//! boot run <ELF> [--smp N] [--mem SIZE] [--uefi] [--kvm] [--gdb] [--timeout SECS]
//! boot image <ELF> [--uefi]          build the disk image only, print its path
//! boot runner <ELF>                  cargo's target runner for kernel test binaries
//! boot test                          every test: host tests, then in-QEMU tests; one summary
//! ```
//! `runner` takes its settings from the environment: `KTEST_SMP` (CPUs, default 8),
//! `KTEST_TIMEOUT` (seconds, default 300), `KTEST_RESULTS` (a file to append counts to).

mod difftest;
mod image;
mod qemu;
mod suite;
mod testlog;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use image::Firmware;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("boot: {e}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(args: &[String]) -> Result<bool, String> {
    let (cmd, rest) = args.split_first().ok_or_else(usage)?;
    match cmd.as_str() {
        "run" => {
            let (elf, opts) = parse_run(rest)?;
            let image = image::build(&elf, opts.firmware)?;
            if opts.gdb {
                eprintln!("boot: QEMU waits for GDB on localhost:1234 (see README, \"Debugging\")");
            }
            let out = qemu::run(&image, &opts)?;
            if !out.success {
                eprintln!("boot: {}", out.reason);
            }
            Ok(out.success)
        }
        "image" => {
            let (elf, opts) = parse_run(rest)?;
            println!("{}", image::build(&elf, opts.firmware)?.display());
            Ok(true)
        }
        "runner" => suite::runner(rest),
        "test" => suite::all(),
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(true)
        }
        other => Err(format!("unknown command {other:?}\n{}", usage())),
    }
}

fn usage() -> String {
    "usage: boot run|image <KERNEL-ELF> [--smp N] [--mem SIZE] [--uefi] [--kvm] [--gdb] \
     [--timeout SECS] | boot runner <ELF> | boot test"
        .into()
}

/// Parses `<ELF> [options]` for `run` and `image`.
fn parse_run(args: &[String]) -> Result<(PathBuf, qemu::Options), String> {
    let mut opts = qemu::Options {
        timeout: None,
        ..Default::default()
    };
    let mut elf = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--smp" => {
                let v = value("--smp")?;
                opts.smp = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=255).contains(n))
                    .ok_or(format!("--smp takes a CPU count from 1 to 255, not {v:?}"))?;
            }
            "--mem" => opts.memory = value("--mem")?,
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout takes seconds, not {v:?}"))?;
                opts.timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--uefi" => opts.firmware = Firmware::Uefi,
            "--kvm" => opts.kvm = true,
            "--gdb" => opts.gdb = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s if elf.is_none() => elf = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    Ok((elf.ok_or_else(usage)?, opts))
}
