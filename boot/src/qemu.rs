//! Running a disk image under QEMU: the command line, a timeout, and the serial log.
//!
//! Serial goes to stdio, and the kernel leaves through `isa-debug-exit`, which makes QEMU exit
//! with `(code << 1) | 1`: 33 is the kernel's success, anything else (35 for a panic, 0 for a
//! triple fault under `-no-reboot`, a kill after the timeout) is a failure.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::image::Firmware;

/// QEMU's exit status when the kernel reported success.
pub const SUCCESS_STATUS: i32 = (0x10 << 1) | 1;

/// Where Debian's `ovmf` package puts the UEFI firmware.
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// How to run QEMU.
#[derive(Clone, Debug)]
pub struct Options {
    pub smp: u32,
    pub memory: String,
    pub firmware: Firmware,
    pub kvm: bool,
    pub gdb: bool,
    /// Kill QEMU after this long; `None` waits forever (interactive use, GDB).
    pub timeout: Option<Duration>,
    /// Echo the serial log to our stdout.
    pub echo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            smp: 8,
            memory: "1G".into(),
            firmware: Firmware::Bios,
            kvm: false,
            gdb: false,
            timeout: Some(Duration::from_secs(300)),
            echo: true,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The kernel left through debug-exit with the success code.
    pub success: bool,
    /// A human-readable reason when it did not.
    pub reason: String,
    /// Every line the kernel printed.
    pub log: Vec<String>,
    pub elapsed: Duration,
}

/// The QEMU command line for `image`.
pub fn command(image: &Path, opts: &Options) -> Result<Command, String> {
    let qemu = find_in_path("qemu-system-x86_64").ok_or(
        "qemu-system-x86_64 not found: install it (Debian: apt-get install qemu-system-x86), \
         or use `make run`, which does",
    )?;
    let mut cmd = Command::new(qemu);
    cmd.arg("-drive")
        .arg(format!("format=raw,file={}", image.display()));
    cmd.args([
        "-serial",
        "stdio",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]);
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    cmd.args(["-smp", &opts.smp.to_string(), "-m", &opts.memory]);
    if opts.kvm {
        // `-cpu max` and `-cpu host` ask nested KVM for MSRs it refuses; the default model boots.
        cmd.args(["-accel", "kvm"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    if opts.firmware == Firmware::Uefi {
        if !Path::new(OVMF).is_file() {
            return Err(format!(
                "UEFI firmware {OVMF} not found: install it (Debian: apt-get install ovmf)"
            ));
        }
        cmd.args(["-bios", OVMF]);
    }
    if opts.gdb {
        cmd.args(["-s", "-S"]);
    }
    Ok(cmd)
}

/// Runs QEMU on `image` until the kernel exits or the timeout hits.
pub fn run(image: &Path, opts: &Options) -> Result<Outcome, String> {
    let mut cmd = command(image, opts)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start QEMU: {e}"))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let (tx, rx) = mpsc::channel();
    let echo = opts.echo;
    let reader = thread::spawn(move || {
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if echo {
                let _ = writeln!(out, "{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?
        {
            break status;
        }
        if opts.timeout.is_some_and(|t| start.elapsed() > t) {
            let _ = child.kill();
            timed_out = true;
            break child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let log: Vec<String> = rx.try_iter().collect();
    let elapsed = start.elapsed();
    let code = status.code();
    let success = !timed_out && code == Some(SUCCESS_STATUS);
    let reason = if timed_out {
        format!("timed out after {:?}", opts.timeout.unwrap_or_default())
    } else {
        match code {
            Some(SUCCESS_STATUS) => "kernel reported success".into(),
            Some(35) => "kernel reported failure".into(),
            Some(0) => "QEMU exited without the kernel reporting (triple fault or reset?)".into(),
            Some(c) => format!("QEMU exited with status {c}"),
            None => "QEMU was killed by a signal".into(),
        }
    };
    Ok(Outcome {
        success,
        reason,
        log,
        elapsed,
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
