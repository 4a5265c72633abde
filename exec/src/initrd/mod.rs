//! The ramdisk of programs: a POSIX ustar archive (read with `tar-no-std`, written on the host
//! with `tar`) holding
//! ```text
//! bin/<name>     an ELF executable
//! run/<n>        the n-th program to start (n = 0, 1, ... in decimal, no gaps): NUL-terminated
//!                strings, the first naming a file in bin/, the rest its argv (argv[0] first)
//! run/together   (optional, empty) start every program at once instead of one after the
//!                other, each when the one before it has ended
//! ```
//! NUL-terminated strings let arguments hold spaces, quotes or newlines. One ELF may be started
//! several times with different arguments. Anything else in the archive is an error, so a
//! ramdisk made by something else is refused rather than half understood.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use tar_no_std::{CorruptDataError, TarArchiveRef};

/// Directory of the ELF files.
pub const BIN_DIR: &str = "bin/";
/// Directory of the start list.
pub const RUN_DIR: &str = "run/";
/// The marker that asks for every program to start at once ([`starts_together`]).
pub const TOGETHER: &str = "run/together";

/// Longest program name (ustar keeps 100 bytes of name beside its prefix field).
pub const MAX_NAME_LEN: usize = 64;

/// One program to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program<'a> {
    /// Its file in `bin/`.
    pub name: String,
    pub argv: Vec<String>,
    pub elf: &'a [u8],
}

/// Why a ramdisk is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitrdError {
    /// Not a well-formed tar archive.
    Corrupt(CorruptDataError),
    /// An entry's name is not UTF-8.
    NameNotUtf8,
    /// An entry outside `bin/` and `run/`.
    UnknownEntry(String),
    /// A `bin/` name that is empty, too long, or holds `/` or a NUL.
    BadName(String),
    /// Two `bin/` entries with one name.
    DuplicateProgram(String),
    /// A `run/` name that is not a decimal index without leading zeros.
    BadIndex(String),
    /// Two `run/` entries with one index.
    DuplicateIndex(u32),
    /// `run/<n>` is missing although a later index exists.
    MissingIndex(u32),
    /// `run/<index>` is malformed.
    Manifest {
        index: u32,
        problem: ManifestProblem,
    },
    /// `run/<index>` names a program that `bin/` does not hold.
    NoSuchProgram { index: u32, name: String },
}

/// What is wrong with a `run/` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestProblem {
    /// No program name.
    Empty,
    /// The last string has no terminating NUL.
    Unterminated,
    /// A string is not UTF-8.
    NotUtf8,
}

impl fmt::Display for InitrdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InitrdError::*;
        match self {
            Corrupt(e) => write!(f, "ramdisk is not a valid tar archive: {e}"),
            NameNotUtf8 => write!(f, "ramdisk entry name is not UTF-8"),
            UnknownEntry(n) => write!(f, "ramdisk entry {n:?} is neither in bin/ nor in run/"),
            BadName(n) => write!(
                f,
                "bad program name {n:?}: 1 to {MAX_NAME_LEN} bytes, no '/' or NUL"
            ),
            DuplicateProgram(n) => write!(f, "program {n:?} appears twice in the ramdisk"),
            BadIndex(n) => write!(f, "bad start index {n:?} (decimal, no leading zeros)"),
            DuplicateIndex(i) => write!(f, "run/{i} appears twice in the ramdisk"),
            MissingIndex(i) => write!(f, "run/{i} is missing but a later one exists"),
            Manifest { index, problem } => {
                let what = match problem {
                    ManifestProblem::Empty => "names no program",
                    ManifestProblem::Unterminated => "does not end with a NUL",
                    ManifestProblem::NotUtf8 => "holds a string that is not UTF-8",
                };
                write!(f, "run/{index} {what}")
            }
            NoSuchProgram { index, name } => {
                write!(f, "run/{index} starts {name:?}, which is not in bin/")
            }
        }
    }
}

impl core::error::Error for InitrdError {}

/// The programs to start, in order.
pub fn read(archive: &[u8]) -> Result<Vec<Program<'_>>, InitrdError> {
    let tar = TarArchiveRef::new(archive).map_err(InitrdError::Corrupt)?;
    let mut bins: BTreeMap<String, &[u8]> = BTreeMap::new();
    let mut runs: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for entry in tar.entries() {
        let path = entry.filename();
        let path = path.as_str().map_err(|_| InitrdError::NameNotUtf8)?;
        if let Some(name) = path.strip_prefix(BIN_DIR) {
            check_name(name)?;
            if bins.insert(name.to_string(), entry.data()).is_some() {
                return Err(InitrdError::DuplicateProgram(name.to_string()));
            }
        } else if path == TOGETHER {
            if !entry.data().is_empty() {
                return Err(InitrdError::UnknownEntry(path.to_string()));
            }
        } else if let Some(index) = path.strip_prefix(RUN_DIR) {
            let n = parse_index(index)?;
            if runs.insert(n, entry.data()).is_some() {
                return Err(InitrdError::DuplicateIndex(n));
            }
        } else {
            return Err(InitrdError::UnknownEntry(path.to_string()));
        }
    }

    let mut programs = Vec::with_capacity(runs.len());
    for (expected, (&index, manifest)) in (0u32..).zip(&runs) {
        if index != expected {
            return Err(InitrdError::MissingIndex(expected));
        }
        let mut strings = parse_manifest(index, manifest)?;
        // `parse_manifest` returns at least the name.
        let name = strings.remove(0);
        let elf = *bins.get(&name).ok_or_else(|| InitrdError::NoSuchProgram {
            index,
            name: name.clone(),
        })?;
        programs.push(Program {
            name,
            argv: strings,
            elf,
        });
    }
    Ok(programs)
}

/// Whether the ramdisk asks for its programs to start at once (the `run/together` marker) rather
/// than one after the other. A malformed archive says no ([`read`] reports it).
pub fn starts_together(archive: &[u8]) -> bool {
    TarArchiveRef::new(archive).is_ok_and(|tar| {
        tar.entries()
            .any(|e| e.filename().as_str().is_ok_and(|p| p == TOGETHER))
    })
}

/// Checks a `bin/` name.
pub fn check_name(name: &str) -> Result<(), InitrdError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', '\0']) {
        return Err(InitrdError::BadName(name.to_string()));
    }
    Ok(())
}

fn parse_index(s: &str) -> Result<u32, InitrdError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| InitrdError::BadIndex(s.to_string()))
}

/// The NUL-terminated strings of `run/<index>`: the program name, then argv.
fn parse_manifest(index: u32, data: &[u8]) -> Result<Vec<String>, InitrdError> {
    let problem = |problem| InitrdError::Manifest { index, problem };
    let body = match data.split_last() {
        None => return Err(problem(ManifestProblem::Empty)),
        Some((&0, body)) => body,
        Some(_) => return Err(problem(ManifestProblem::Unterminated)),
    };
    let strings = body
        .split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).map(ToString::to_string))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| problem(ManifestProblem::NotUtf8))?;
    if strings[0].is_empty() {
        return Err(problem(ManifestProblem::Empty));
    }
    Ok(strings)
}

#[cfg(any(test, feature = "host"))]
pub use writer::{HostProgram, WriteError, write, write_together};

#[cfg(any(test, feature = "host"))]
mod writer;

#[cfg(test)]
mod tests;
