//! Round trips through the writer and reader, and archives the reader must refuse.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

fn prog(name: &str, argv: &[&str], elf: &[u8]) -> HostProgram {
    HostProgram {
        name: name.into(),
        argv: argv.iter().map(ToString::to_string).collect(),
        elf: elf.to_vec(),
    }
}

/// A tar archive of `(path, data)` entries, written with the `tar` crate directly.
fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn round_trip() {
    let progs = [
        prog(
            "hello",
            &[
                "hello",
                "two words",
                "",
                "tab\tand\nnewline",
                "ünïcode",
                "'q' \"q\"",
            ],
            b"\x7fELF hello",
        ),
        prog("bench", &["bench", "--threads", "1,2"], b"\x7fELF bench"),
        // The same file again with other arguments, and with no arguments at all.
        prog("hello", &["hi"], b"\x7fELF hello"),
        prog("bench", &[], b"\x7fELF bench"),
    ];
    let archive = write(&progs).unwrap();
    assert_eq!(archive.len() % 512, 0);
    let read_back = read(&archive).unwrap();
    assert_eq!(read_back.len(), progs.len());
    for (got, want) in read_back.iter().zip(&progs) {
        assert_eq!(got.name, want.name);
        assert_eq!(got.argv, want.argv);
        assert_eq!(got.elf, want.elf.as_slice());
    }
    // One copy of each ELF.
    let bins = tar_no_std::TarArchiveRef::new(&archive)
        .unwrap()
        .entries()
        .filter(|e| e.filename().as_str().unwrap().starts_with(BIN_DIR))
        .count();
    assert_eq!(bins, 2);
    // Deterministic.
    assert_eq!(write(&progs).unwrap(), archive);
}

#[test]
fn many_programs_keep_their_order() {
    let progs: Vec<HostProgram> = (0..25)
        .map(|i| {
            prog(
                &alloc::format!("p{}", i % 3),
                &[&i.to_string()],
                alloc::format!("elf{}", i % 3).as_bytes(),
            )
        })
        .collect();
    let archive = write(&progs).unwrap();
    let got = read(&archive).unwrap();
    let order: Vec<String> = got.iter().map(|p| p.argv[0].clone()).collect();
    assert_eq!(order, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn writer_refusals() {
    assert!(matches!(
        write(&[prog("a/b", &[], b"x")]),
        Err(WriteError::Name(_))
    ));
    assert!(matches!(
        write(&[prog("", &[], b"x")]),
        Err(WriteError::Name(_))
    ));
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert!(matches!(
        write(&[prog(&long, &[], b"x")]),
        Err(WriteError::Name(_))
    ));
    assert!(write(&[prog(&long[1..], &[], b"x")]).is_ok());
    assert!(matches!(
        write(&[prog("a", &[], b"x"), prog("a", &[], b"y")]),
        Err(WriteError::NameClash(_))
    ));
    assert!(matches!(
        write(&[prog("a", &["a\0b"], b"x")]),
        Err(WriteError::Nul { .. })
    ));
}

#[test]
fn no_programs_is_an_error_for_the_writer_and_none_to_start_for_the_reader() {
    assert!(matches!(write(&[]), Err(WriteError::NoPrograms)));
    let archive = raw_tar(&[("bin/a", b"x")]);
    assert_eq!(read(&archive).unwrap(), vec![]);
}

#[test]
fn malformed_archives_are_refused() {
    let good = write(&[prog("hello", &["hello", "x"], b"\x7fELF")]).unwrap();
    // Truncated anywhere, and not a tar at all.
    for len in (0..good.len())
        .step_by(97)
        .chain([1, 511, 512, 1023, 1024, good.len() - 512])
    {
        assert!(read(&good[..len]).is_err(), "truncated to {len}");
    }
    assert!(matches!(read(&[0x7f; 2048]), Err(InitrdError::Corrupt(_))));
    // A damaged header fails its checksum.
    let mut bad = good.clone();
    bad[10] ^= 1;
    assert!(matches!(read(&bad), Err(InitrdError::Corrupt(_))));

    type Entries<'a> = &'a [(&'a str, &'a [u8])];
    let cases: &[(Entries, InitrdError)] = &[
        (
            &[("etc/passwd", b"")],
            InitrdError::UnknownEntry("etc/passwd".into()),
        ),
        (&[("bin/", b"x")], InitrdError::BadName("".into())),
        (&[("bin/a/b", b"x")], InitrdError::BadName("a/b".into())),
        (
            &[("bin/a", b"x"), ("bin/a", b"x")],
            InitrdError::DuplicateProgram("a".into()),
        ),
        (&[("run/01", b"a\0")], InitrdError::BadIndex("01".into())),
        (&[("run/x", b"a\0")], InitrdError::BadIndex("x".into())),
        (&[("run/", b"a\0")], InitrdError::BadIndex("".into())),
        (
            &[("run/99999999999", b"a\0")],
            InitrdError::BadIndex("99999999999".into()),
        ),
        (
            &[("bin/a", b"x"), ("run/0", b"a\0"), ("run/0", b"a\0")],
            InitrdError::DuplicateIndex(0),
        ),
        (
            &[("bin/a", b"x"), ("run/0", b"a\0"), ("run/2", b"a\0")],
            InitrdError::MissingIndex(1),
        ),
        (
            &[("bin/a", b"x"), ("run/1", b"a\0")],
            InitrdError::MissingIndex(0),
        ),
        (
            &[("bin/a", b"x"), ("run/0", b"a\0arg")],
            InitrdError::Manifest {
                index: 0,
                problem: ManifestProblem::Unterminated,
            },
        ),
        (
            &[("run/0", b"")],
            InitrdError::Manifest {
                index: 0,
                problem: ManifestProblem::Empty,
            },
        ),
        (
            &[("run/0", b"\0a\0")],
            InitrdError::Manifest {
                index: 0,
                problem: ManifestProblem::Empty,
            },
        ),
        (
            &[("bin/a", b"x"), ("run/0", b"a\0\xff\0")],
            InitrdError::Manifest {
                index: 0,
                problem: ManifestProblem::NotUtf8,
            },
        ),
        (
            &[("bin/a", b"x"), ("run/0", b"b\0")],
            InitrdError::NoSuchProgram {
                index: 0,
                name: "b".into(),
            },
        ),
    ];
    for (entries, want) in cases {
        let archive = raw_tar(entries);
        let got = read(&archive);
        assert_eq!(got.as_ref().err(), Some(want), "{entries:?}");
        let text = want.to_string();
        assert!(!text.is_empty() && !text.contains('\n'));
    }
}

#[test]
fn directories_are_ignored() {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    b.append_data(&mut h, "bin/", &[][..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_mode(0o644);
    b.append_data(&mut h, "bin/a", &b"xy"[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    b.append_data(&mut h, "run/0", &b"a\0"[..]).unwrap();
    let archive = b.into_inner().unwrap();
    let got = read(&archive).unwrap();
    assert_eq!(
        (got[0].name.as_str(), got[0].argv.len(), got[0].elf),
        ("a", 0, &b"xy"[..])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_archives_never_panic(
        edits in prop::collection::vec((any::<u16>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<u16>()),
    ) {
        let mut archive = write(&[
            prog("hello", &["hello", "a b"], b"\x7fELF hello"),
            prog("other", &["other"], b"\x7fELF other"),
        ])
        .unwrap();
        for (at, byte) in edits {
            let at = at as usize % archive.len();
            archive[at] = byte;
        }
        if let Some(cut) = cut {
            archive.truncate(cut as usize % (archive.len() + 1));
        }
        if let Ok(programs) = read(&archive) {
            for p in programs {
                prop_assert!(!p.name.is_empty());
            }
        }
    }

    #[test]
    fn random_argv_round_trips(
        argvs in prop::collection::vec(prop::collection::vec("[^\u{0}]{0,20}", 0..6), 1..6),
    ) {
        let progs: Vec<HostProgram> = argvs
            .iter()
            .map(|argv| HostProgram { name: "p".into(), argv: argv.clone(), elf: b"elf".to_vec() })
            .collect();
        let archive = write(&progs).unwrap();
        let got = read(&archive).unwrap();
        let got: Vec<Vec<String>> = got.into_iter().map(|p| p.argv).collect();
        prop_assert_eq!(got, argvs);
    }
}

#[test]
fn together_marker_round_trips_and_must_be_empty() {
    let progs = [
        prog("a", &["a"], b"\x7fELF-a"),
        prog("b", &["b", "x"], b"\x7fELF-b"),
    ];
    let one_by_one = write(&progs).unwrap();
    let together = write_together(&progs, true).unwrap();
    assert!(!starts_together(&one_by_one));
    assert!(starts_together(&together));
    // The marker changes nothing else.
    assert_eq!(read(&one_by_one).unwrap(), read(&together).unwrap());
    // A marker with content is not ours.
    let bad = raw_tar(&[("bin/a", b"\x7fELF"), ("run/0", b"a\0"), (TOGETHER, b"yes")]);
    assert!(read(&bad).is_err());
    assert!(!starts_together(b"not a tar archive"));
}
