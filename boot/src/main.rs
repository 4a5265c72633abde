//! `boot`: the host side of the kernel.
//!
//! ```text
//! boot run <ELF> [--smp N] [--mem SIZE] [--uefi] [--kvm] [--gdb] [--timeout SECS]
//!          [--prog PROGRAM [--args "ARG ..."]]...
//! boot image <ELF> [--uefi] [--prog PROGRAM [--args "ARG ..."]]...
//!                                    build the disk image only, print its path
//! boot runner <ELF>                  cargo's target runner for kernel test binaries
//! boot test                          every test: host tests, then in-QEMU tests; one summary
//! ```
//! `runner` takes its settings from the environment: `KTEST_SMP` (CPUs, default 8),
//! `KTEST_TIMEOUT` (seconds, default 300), `KTEST_RESULTS` (a file to append counts to).
//!
//! `--prog` packs a static x86-64 Linux program into the image's ramdisk for the kernel to
//! start, in command-line order; `--args` gives the arguments of the `--prog` before it, split
//! as a shell splits words (argv[0] is the program's file name).

mod difftest;
mod image;
mod qemu;
mod ramdisk;
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
            let (elf, opts, progs, together) = parse_run(rest)?;
            let image = image::build(&elf, opts.firmware, pack(&progs, together)?.as_deref())?;
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
            let (elf, opts, progs, together) = parse_run(rest)?;
            let ramdisk = pack(&progs, together)?;
            println!(
                "{}",
                image::build(&elf, opts.firmware, ramdisk.as_deref())?.display()
            );
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
     [--timeout SECS] [--prog PROGRAM [--args \"ARG ...\"]]... [--together] | boot runner <ELF> \
     | boot test"
        .into()
}

/// The ramdisk for `progs`, if there are any.
fn pack(progs: &[ramdisk::Prog], together: bool) -> Result<Option<Vec<u8>>, String> {
    if progs.is_empty() {
        return Ok(None);
    }
    ramdisk::pack(progs, together).map(Some)
}

/// What `run` and `image` are asked for: the kernel, QEMU's options, the programs, and whether
/// they start at once (`--together`).
type RunArgs = (PathBuf, qemu::Options, Vec<ramdisk::Prog>, bool);

/// Parses `<ELF> [options]` for `run` and `image`.
fn parse_run(args: &[String]) -> Result<RunArgs, String> {
    let mut opts = qemu::Options {
        timeout: None,
        ..Default::default()
    };
    let mut elf = None;
    let mut progs: Vec<ramdisk::Prog> = Vec::new();
    let mut args_given = false;
    let mut together = false;
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
            "--together" => together = true,
            "--prog" => {
                progs.push(ramdisk::Prog {
                    path: PathBuf::from(value("--prog")?),
                    args: Vec::new(),
                });
                args_given = false;
            }
            "--args" => {
                let v = value("--args")?;
                let prog = progs
                    .last_mut()
                    .ok_or("--args gives the arguments of a --prog: put it after one")?;
                if std::mem::replace(&mut args_given, true) {
                    return Err(format!("two --args for {}", prog.path.display()));
                }
                prog.args = ramdisk::split_args(&v)?;
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s if elf.is_none() => elf = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    if together && progs.is_empty() {
        return Err("--together starts the --prog programs at once: give some".into());
    }
    Ok((elf.ok_or_else(usage)?, opts, progs, together))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<ramdisk::Prog>, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        parse_run(&args).map(|(_, _, progs, _)| progs)
    }

    #[test]
    fn together_needs_programs() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse_run(&args(&["kernel", "--together"])).is_err());
        let (_, _, progs, together) =
            parse_run(&args(&["kernel", "--prog", "a", "--together"])).unwrap();
        assert_eq!((progs.len(), together), (1, true));
        assert!(!parse_run(&args(&["kernel", "--prog", "a"])).unwrap().3);
    }

    #[test]
    fn programs_and_their_arguments() {
        let progs = parse(&[
            "kernel",
            "--prog",
            "a",
            "--args",
            "--threads '1 2'",
            "--smp",
            "2",
            "--prog",
            "b",
        ])
        .unwrap();
        assert_eq!(progs.len(), 2);
        assert_eq!(
            (progs[0].path.to_str(), progs[0].args.clone()),
            (Some("a"), vec!["--threads".into(), "1 2".into()])
        );
        assert_eq!(
            (progs[1].path.to_str(), progs[1].args.len()),
            (Some("b"), 0)
        );
        assert!(parse(&["kernel"]).unwrap().is_empty());
    }

    #[test]
    fn misplaced_arguments_are_errors() {
        assert!(parse(&["kernel", "--args", "x"]).is_err());
        assert!(parse(&["kernel", "--prog", "a", "--args", "x", "--args", "y"]).is_err());
        assert!(parse(&["kernel", "--prog"]).is_err());
        assert!(parse(&["kernel", "--prog", "a", "--args", "'open"]).is_err());
    }
}
