//! Kernel ELF -> bootable disk image. Debug info is stripped first: a large ELF makes the BIOS
//! stage load slowly (seconds per megabyte under TCG).

use std::path::{Path, PathBuf};
use std::process::Command;

use bootloader_boot_config::LevelFilter;

/// Which firmware the image boots under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// Strips `elf` and builds a disk image beside it, with `ramdisk` as the bootloader's ramdisk
/// if given. Returns the image's path: `<elf>.bios.img`, or with a ramdisk
/// `<elf>.<fingerprint>.bios.img`, so that runs with different programs never share an image.
pub fn build(elf: &Path, firmware: Firmware, ramdisk: Option<&[u8]>) -> Result<PathBuf, String> {
    if !elf.is_file() {
        return Err(format!("kernel ELF {} does not exist", elf.display()));
    }
    let stripped = elf.with_extension("stripped");
    strip(elf, &stripped)?;
    let kind = match firmware {
        Firmware::Bios => "bios.img",
        Firmware::Uefi => "uefi.img",
    };
    let ramdisk = match ramdisk {
        Some(bytes) => {
            let tag = format!("{:016x}", crate::ramdisk::fingerprint(bytes));
            let path = elf.with_extension(format!("{tag}.initrd"));
            std::fs::write(&path, bytes)
                .map_err(|e| format!("cannot write the ramdisk {}: {e}", path.display()))?;
            Some((tag, path))
        }
        None => None,
    };
    let image = match &ramdisk {
        Some((tag, _)) => elf.with_extension(format!("{tag}.{kind}")),
        None => elf.with_extension(kind),
    };
    // The bootloader's own log is a page of INFO lines per boot; warnings are enough.
    let mut config = bootloader::BootConfig::default();
    config.log_level = LevelFilter::Warn;
    let ramdisk = ramdisk.as_ref().map(|(_, path)| path.as_path());
    let result = match firmware {
        Firmware::Bios => {
            let mut boot = bootloader::BiosBoot::new(&stripped);
            if let Some(path) = ramdisk {
                boot.set_ramdisk(path);
            }
            boot.set_boot_config(&config).create_disk_image(&image)
        }
        Firmware::Uefi => {
            let mut boot = bootloader::UefiBoot::new(&stripped);
            if let Some(path) = ramdisk {
                boot.set_ramdisk(path);
            }
            boot.set_boot_config(&config).create_disk_image(&image)
        }
    };
    result.map_err(|e| format!("cannot build disk image {}: {e:#}", image.display()))?;
    Ok(image)
}

/// `llvm-objcopy --strip-debug` from the pinned toolchain's `llvm-tools`, else binutils' objcopy.
pub fn strip(elf: &Path, out: &Path) -> Result<(), String> {
    let mut tried = Vec::new();
    for tool in objcopy_candidates() {
        match Command::new(&tool)
            .arg("--strip-debug")
            .arg(elf)
            .arg(out)
            .status()
        {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => return Err(format!("{} --strip-debug failed: {s}", tool.display())),
            Err(e) => tried.push(format!("{}: {e}", tool.display())),
        }
    }
    Err(format!(
        "no objcopy to strip the kernel (install the toolchain's llvm-tools-preview \
         or binutils); tried {}",
        tried.join("; ")
    ))
}

fn objcopy_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(out) = Command::new("rustc").args(["--print", "sysroot"]).output() {
        let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if let Ok(host) = Command::new("rustc")
            .args(["--print", "host-tuple"])
            .output()
        {
            let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
            v.push(
                Path::new(&sysroot)
                    .join("lib/rustlib")
                    .join(host)
                    .join("bin/llvm-objcopy"),
            );
        }
    }
    v.push(PathBuf::from("objcopy"));
    v
}
