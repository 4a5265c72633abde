//! Programs for the kernel to start -> the ramdisk (format: `exec::initrd`). Each ELF is checked
//! here with the kernel's own loader, so a dynamically linked or broken program is refused
//! before QEMU starts, and packed without its debug information: the BIOS stage loads the
//! ramdisk at a few seconds per megabyte under TCG, and Rust programs carry megabytes of it.

use std::path::{Path, PathBuf};

use exec::initrd::HostProgram;

/// A program from the command line: `--prog PATH [--args "..."]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prog {
    pub path: PathBuf,
    /// The arguments after argv[0] (which is the file name).
    pub args: Vec<String>,
}

/// Reads, checks and packs `progs` (to start one after the other, or with `together` all at
/// once). Returns the archive.
pub fn pack(progs: &[Prog], together: bool) -> Result<Vec<u8>, String> {
    let mut programs = Vec::with_capacity(progs.len());
    for prog in progs {
        let elf = std::fs::read(&prog.path)
            .map_err(|e| format!("cannot read program {}: {e}", prog.path.display()))?;
        exec::elf::plan(&elf, exec::elf::PIE_BASE)
            .map_err(|e| format!("program {} cannot be loaded: {e}", prog.path.display()))?;
        // Without an objcopy (or debug information to drop: objcopy may even grow a small file)
        // the program goes in as it is.
        let elf = match stripped(&prog.path) {
            Ok(small) if small.len() < elf.len() => small,
            _ => elf,
        };
        let name = file_name(&prog.path)?;
        let argv = std::iter::once(name.clone())
            .chain(prog.args.iter().cloned())
            .collect();
        programs.push(HostProgram { name, argv, elf });
    }
    exec::initrd::write_together(&programs, together)
        .map_err(|e| format!("cannot pack the programs: {e}"))
}

/// The program's bytes without debug information.
fn stripped(path: &Path) -> Result<Vec<u8>, String> {
    if !path.is_file() {
        return Err(format!(
            "cannot read program {}: no such file",
            path.display()
        ));
    }
    let out = std::env::temp_dir().join(format!(
        "mmkernel-prog-{}-{}",
        std::process::id(),
        fingerprint(path.as_os_str().as_encoded_bytes())
    ));
    crate::image::strip(path, &out)?;
    let bytes = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    bytes.map_err(|e| format!("cannot read program {}: {e}", path.display()))
}

fn file_name(path: &Path) -> Result<String, String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| format!("program path {} has no UTF-8 file name", path.display()))
}

/// Splits `--args` the way a POSIX shell splits words: blanks separate; single quotes keep
/// everything literally; double quotes keep blanks and let `\` escape `"`, `\`, `$` and `` ` ``;
/// outside quotes `\` escapes any character. No expansions.
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated ' in {s:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => w.extend(['\\', c]),
                            None => return Err(format!("unterminated \" in {s:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated \" in {s:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("trailing \\ in {s:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// FNV-1a: a stable name for an archive's contents (std's hasher may change between releases).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  a  b\tc ", &["a", "b", "c"]),
            ("'two words' x", &["two words", "x"]),
            ("\"say \\\"hi\\\"\" \\$HOME", &["say \"hi\"", "$HOME"]),
            ("a\\ b", &["a b"]),
            ("'' \"\"", &["", ""]),
            ("pre'mid dle'post", &["premid dlepost"]),
            ("\"a\\nb\"", &["a\\nb"]),
            ("ünï 'cödé'", &["ünï", "cödé"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_args(input).unwrap(), *want, "{input:?}");
        }
        for bad in ["'open", "\"open", "\"esc\\", "end\\"] {
            assert!(split_args(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn packing_checks_each_program() {
        let dir = std::env::temp_dir().join(format!("boot-ramdisk-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("static-pie");
        std::fs::write(&good, include_bytes!("../../exec/tests/data/static-pie")).unwrap();
        let bad = dir.join("script");
        std::fs::write(&bad, b"#!/bin/sh\necho hi\n").unwrap();

        let prog = |path: &Path, args: &[&str]| Prog {
            path: path.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let archive = pack(&[prog(&good, &["a b", "c"]), prog(&good, &[])], false).unwrap();
        let programs = exec::initrd::read(&archive).unwrap();
        assert_eq!(programs.len(), 2);
        assert_eq!(programs[0].argv, ["static-pie", "a b", "c"]);
        assert_eq!(programs[1].argv, ["static-pie"]);
        // Packed without debug information: no larger, and still the same program.
        let original = include_bytes!("../../exec/tests/data/static-pie");
        assert!(programs[0].elf.len() <= original.len());
        assert_eq!(
            exec::elf::plan(programs[0].elf, exec::elf::PIE_BASE).map(|p| p.entry),
            exec::elf::plan(original, exec::elf::PIE_BASE).map(|p| p.entry)
        );

        let err = pack(&[prog(&bad, &[])], false).unwrap_err();
        assert!(err.contains("not an ELF file"), "{err}");
        let err = pack(&[prog(&dir.join("missing"), &[])], false).unwrap_err();
        assert!(err.contains("cannot read program"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprints_differ_with_content() {
        assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
    }
}
