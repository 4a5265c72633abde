//! The ramdisk writer, for the host tool and the tests.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::{BIN_DIR, InitrdError, RUN_DIR, check_name};

/// A program to pack: its name in `bin/`, its argv, its ELF file.
#[derive(Clone, Debug)]
pub struct HostProgram {
    pub name: String,
    pub argv: Vec<String>,
    pub elf: Vec<u8>,
}

/// Why a ramdisk cannot be written.
#[derive(Debug)]
pub enum WriteError {
    /// Nothing to pack (`tar-no-std` refuses an archive without entries).
    NoPrograms,
    Name(InitrdError),
    /// Two different files under one name.
    NameClash(String),
    /// An argument holds a NUL byte.
    Nul {
        program: String,
    },
    Io(std::io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NoPrograms => write!(f, "no programs to pack"),
            WriteError::Name(e) => write!(f, "{e}"),
            WriteError::NameClash(n) => {
                write!(f, "two different programs are named {n:?}")
            }
            WriteError::Nul { program } => {
                write!(f, "an argument of {program:?} holds a NUL byte")
            }
            WriteError::Io(e) => write!(f, "writing the archive: {e}"),
        }
    }
}

impl std::error::Error for WriteError {}

/// The ramdisk that starts `programs` in order, each when the one before it has ended. The
/// output depends only on the input (times, owners and modes are fixed), so equal inputs give
/// equal archives.
pub fn write(programs: &[HostProgram]) -> Result<Vec<u8>, WriteError> {
    write_together(programs, false)
}

/// [`write`], or with `together` the ramdisk that starts every program at once.
pub fn write_together(programs: &[HostProgram], together: bool) -> Result<Vec<u8>, WriteError> {
    if programs.is_empty() {
        return Err(WriteError::NoPrograms);
    }
    let mut bins: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for p in programs {
        check_name(&p.name).map_err(WriteError::Name)?;
        if p.argv.iter().any(|a| a.contains('\0')) {
            return Err(WriteError::Nul {
                program: p.name.clone(),
            });
        }
        match bins.insert(&p.name, &p.elf) {
            Some(other) if other != p.elf.as_slice() => {
                return Err(WriteError::NameClash(p.name.clone()));
            }
            _ => {}
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .map_err(WriteError::Io)
    };
    for (name, elf) in &bins {
        add(&format!("{BIN_DIR}{name}"), elf, 0o755)?;
    }
    for (i, p) in programs.iter().enumerate() {
        let mut manifest = Vec::new();
        for s in core::iter::once(&p.name).chain(&p.argv) {
            manifest.extend_from_slice(s.as_bytes());
            manifest.push(0);
        }
        add(&format!("{RUN_DIR}{i}"), &manifest, 0o644)?;
    }
    if together {
        add(super::TOGETHER, &[], 0o644)?;
    }
    tar.into_inner().map_err(WriteError::Io)
}
