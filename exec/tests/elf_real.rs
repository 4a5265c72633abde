//! The ELF loader on real linker output, and fuzzed: mutated files never panic, and every plan
//! returned keeps the promised invariants.
//!
//! `data/static-exec` and `data/static-pie` are `data/start.S` linked by GNU ld
//! (`gcc -static -nostdlib -no-pie` and `gcc -static-pie -nostdlib -fPIE`, then `strip`).

mod common;

use std::path::PathBuf;

use common::*;
use exec::elf::{ElfError, IMAGE_LIMIT, Kind, PAGE_SIZE, Prot, plan};
use proptest::prelude::*;

const BIAS: u64 = 0x5555_5555_4000;
const STATIC_EXEC: &[u8] = include_bytes!("data/static-exec");
const STATIC_PIE: &[u8] = include_bytes!("data/static-pie");

/// `(map_start, map_end, prot, file_offset, file_size, dest, mem_size)` of each segment.
type Row = (u64, u64, Prot, u64, u64, u64, u64);

fn rows(p: &exec::elf::Plan) -> Vec<Row> {
    p.segments
        .iter()
        .map(|s| {
            (
                s.map_start,
                s.map_end,
                s.prot,
                s.file_offset,
                s.file_size,
                s.dest,
                s.mem_size,
            )
        })
        .collect()
}

fn prot(flags: u32) -> Prot {
    Prot {
        read: flags & PF_R != 0,
        write: flags & PF_W != 0,
        exec: flags & PF_X != 0,
    }
}

#[test]
fn gnu_ld_static_exec_matches_readelf() {
    // readelf -lW data/static-exec, by hand:
    //   LOAD 0x000000 0x400000 filesz 0x120 memsz 0x120   R
    //   LOAD 0x001000 0x401000 filesz 0x025 memsz 0x025   R E
    //   LOAD 0x002000 0x402000 filesz 0x015 memsz 0x015   R
    //   LOAD 0x002015 0x403015 filesz 0x004 memsz 0x200b  RW
    //   entry 0x401000, 4 program headers at offset 64, no PT_GNU_STACK.
    let p = plan(STATIC_EXEC, BIAS).unwrap();
    let (r, rx, rw) = (prot(PF_R), prot(PF_R | PF_X), prot(PF_R | PF_W));
    assert_eq!(
        rows(&p),
        [
            (0x40_0000, 0x40_1000, r, 0, 0x120, 0x40_0000, 0x120),
            (0x40_1000, 0x40_2000, rx, 0x1000, 0x25, 0x40_1000, 0x25),
            (0x40_2000, 0x40_3000, r, 0x2000, 0x15, 0x40_2000, 0x15),
            (0x40_3000, 0x40_6000, rw, 0x2015, 4, 0x40_3015, 0x200b),
        ]
    );
    assert_eq!(
        (p.kind, p.bias, p.entry, p.phdr, p.phnum),
        (Kind::Fixed, 0, 0x40_1000, 0x40_0040, 4)
    );
    assert_eq!(p.brk, 0x40_6000);
    assert!(!p.stack_exec);
    check_invariants(&p, STATIC_EXEC);
}

#[test]
fn gnu_ld_static_pie_matches_readelf() {
    // readelf -lW data/static-pie, by hand:
    //   LOAD 0x000000 0x0000 filesz 0x1c9 memsz 0x1c9   R
    //   LOAD 0x001000 0x1000 filesz 0x025 memsz 0x025   R E
    //   LOAD 0x002000 0x2000 filesz 0x018 memsz 0x018   R
    //   LOAD 0x002f30 0x3f30 filesz 0x0d4 memsz 0x20d8  RW
    //   DYNAMIC, GNU_RELRO; entry 0x1000, 6 program headers at offset 64, no PT_INTERP.
    let p = plan(STATIC_PIE, BIAS).unwrap();
    let (r, rx, rw) = (prot(PF_R), prot(PF_R | PF_X), prot(PF_R | PF_W));
    let b = BIAS;
    assert_eq!(
        rows(&p),
        [
            (b, b + 0x1000, r, 0, 0x1c9, b, 0x1c9),
            (b + 0x1000, b + 0x2000, rx, 0x1000, 0x25, b + 0x1000, 0x25),
            (b + 0x2000, b + 0x3000, r, 0x2000, 0x18, b + 0x2000, 0x18),
            (b + 0x3000, b + 0x7000, rw, 0x2f30, 0xd4, b + 0x3f30, 0x20d8),
        ]
    );
    assert_eq!(
        (p.kind, p.bias, p.entry, p.phdr, p.phnum),
        (Kind::StaticPie, b, b + 0x1000, b + 64, 6)
    );
    assert_eq!(p.brk, b + 0x7000);
    check_invariants(&p, STATIC_PIE);
}

/// The static musl benchmark program (`make user`), or `None` if it was not built.
fn fault_bench() -> Option<(PathBuf, Vec<u8>)> {
    let path = std::env::var_os("FAULT_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/user/x86_64-unknown-linux-musl/release/fault_bench")
        });
    let bytes = std::fs::read(&path).ok()?;
    Some((path, bytes))
}

/// What the plan of `file` must be, computed from a hand-read header and program headers.
fn expected(file: &[u8], bias: u64) -> (Vec<Row>, u64, u64, u64) {
    let elf = parse(file);
    let bias = if elf.e_type == 2 { 0 } else { bias };
    let loads: Vec<&Ph> = elf
        .phs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.memsz > 0)
        .collect();
    let mut rows = Vec::new();
    for (i, ph) in loads.iter().enumerate() {
        let start = ph.vaddr + bias;
        let mut end = page_up(start + ph.memsz);
        if let Some(next) = loads.get(i + 1) {
            end = end.min(page_down(next.vaddr + bias)).max(page_down(start));
        }
        rows.push((
            page_down(start),
            end,
            prot(ph.flags),
            ph.offset,
            ph.filesz,
            start,
            ph.memsz,
        ));
    }
    let phdr = match elf.phs.iter().find(|p| p.p_type == PT_PHDR) {
        Some(ph) => ph.vaddr,
        None => {
            let ph = loads
                .iter()
                .find(|p| p.offset <= elf.phoff && elf.phoff < p.offset + p.filesz)
                .unwrap();
            ph.vaddr + (elf.phoff - ph.offset)
        }
    };
    let brk = loads
        .iter()
        .map(|p| page_up(p.vaddr + bias + p.memsz))
        .max()
        .unwrap();
    (rows, phdr + bias, elf.entry + bias, brk)
}

#[test]
fn real_static_pie_matches_its_program_headers() {
    let (what, file) = match fault_bench() {
        Some((path, bytes)) => (path.display().to_string(), bytes),
        None => {
            eprintln!(
                "fault_bench is not built (`make user`); checking the GNU ld static-PIE fixture instead"
            );
            ("data/static-pie".into(), STATIC_PIE.to_vec())
        }
    };
    for bias in [BIAS, 0x7f00_0000_0000, 0x10_0000] {
        let p = plan(&file, bias).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (rows_want, phdr, entry, brk) = expected(&file, bias);
        assert_eq!(rows(&p), rows_want, "{what}");
        assert_eq!((p.phdr, p.entry, p.brk), (phdr, entry, brk), "{what}");
        assert_eq!((p.phent, p.phnum), (56, parse(&file).phs.len() as u64));
        assert_eq!(
            p.kind,
            Kind::StaticPie,
            "{what}: Rust's musl target links static-PIE"
        );
        check_invariants(&p, &file);
        for s in &p.segments {
            assert_eq!(
                s.data(&file).unwrap(),
                &file[s.file_offset as usize..][..s.file_size as usize]
            );
        }
    }
}

#[test]
fn fixtures_match_the_independent_reader() {
    for file in [STATIC_EXEC, STATIC_PIE] {
        let p = plan(file, BIAS).unwrap();
        let (rows_want, phdr, entry, brk) = expected(file, BIAS);
        assert_eq!(
            (rows(&p), p.phdr, p.entry, p.brk),
            (rows_want, phdr, entry, brk)
        );
    }
}

/// A base file for mutation: the hand-made layouts and the two real ones.
fn base(which: u8) -> Vec<u8> {
    match which % 4 {
        0 => ElfFile::static_pie().build(),
        1 => ElfFile::fixed().build(),
        2 => STATIC_PIE.to_vec(),
        _ => STATIC_EXEC.to_vec(),
    }
}

fn bias_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(BIAS),
        Just(0),
        Just(IMAGE_LIMIT - PAGE_SIZE),
        Just(u64::MAX),
        any::<u64>(),
        (0u64..1 << 47),
    ]
}

/// Values that sit on the edges the checks care about.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(PAGE_SIZE),
        Just(PAGE_SIZE - 1),
        Just(0x1_0000),
        Just(IMAGE_LIMIT),
        Just(IMAGE_LIMIT - 1),
        Just(1 << 47),
        Just(u64::MAX),
        Just(u64::MAX - PAGE_SIZE),
        Just(0xffff_8000_0000_0000),
        0u64..0x1_0000,
        any::<u64>(),
    ]
}

fn check(file: &[u8], bias: u64) -> Result<(), TestCaseError> {
    match plan(file, bias) {
        Ok(p) => check_invariants(&p, file),
        Err(e) => {
            let text = e.to_string();
            prop_assert!(!text.is_empty() && !text.contains('\n'));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_bytes_never_panic(
        which in any::<u8>(),
        edits in prop::collection::vec((any::<u16>(), any::<u8>()), 1..12),
        header_only in any::<bool>(),
        cut in prop::option::of(any::<u16>()),
        bias in bias_strategy(),
    ) {
        let mut file = base(which);
        // Most edits land in the headers, where the checks are.
        let span = if header_only { file.len().min(64 + 10 * 56) } else { file.len() };
        for (at, byte) in edits {
            let at = at as usize % span;
            file[at] = byte;
        }
        if let Some(cut) = cut {
            file.truncate(cut as usize % (file.len() + 1));
        }
        check(&file, bias)?;
    }

    #[test]
    fn mutated_fields_never_panic(
        which in any::<bool>(),
        field_edits in prop::collection::vec((0usize..8, 0usize..7, edgy_u64()), 1..6),
        bias in bias_strategy(),
    ) {
        let mut f = if which { ElfFile::static_pie() } else { ElfFile::fixed() };
        for (ph, field, value) in field_edits {
            let n = f.phs.len();
            let ph = &mut f.phs[ph % n];
            match field {
                0 => ph.p_type = value as u32 % 8,
                1 => ph.flags = value as u32 & 7,
                2 => ph.offset = value,
                3 => ph.vaddr = value,
                4 => ph.filesz = value,
                5 => ph.memsz = value,
                _ => ph.align = value,
            }
        }
        check(&f.build(), bias)?;
    }
}

#[test]
fn a_bad_interp_even_beyond_the_file_does_not_panic() {
    let mut f = ElfFile::static_pie();
    f.phs.push(Ph {
        p_type: PT_INTERP,
        flags: PF_R,
        offset: 0x1ff0,
        vaddr: 0,
        filesz: u64::MAX,
        memsz: 0,
        align: 1,
    });
    assert!(matches!(
        plan(&f.build(), BIAS),
        Err(ElfError::Interpreter(_))
    ));
}
