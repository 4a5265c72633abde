//! The ELF loader on hand-made files: what a good file plans to, and every rejection.

mod common;

use common::*;
use exec::elf::{ElfError, IMAGE_LIMIT, Kind, PAGE_SIZE, Prot, plan};

const BIAS: u64 = 0x5555_5555_4000;

#[test]
fn static_pie_plan() {
    let file = ElfFile::static_pie().build();
    let p = plan(&file, BIAS).unwrap();
    assert_eq!(p.kind, Kind::StaticPie);
    assert_eq!(p.bias, BIAS);
    assert_eq!(p.entry, BIAS + 0x1010);
    assert_eq!((p.phdr, p.phent, p.phnum), (BIAS + 64, 56, 5));
    assert_eq!(exec::elf::Plan::AT_BASE, 0);
    assert!(!p.stack_exec);
    let r = Prot {
        read: true,
        write: false,
        exec: false,
    };
    let rx = Prot { exec: true, ..r };
    let rw = Prot { write: true, ..r };
    let got: Vec<_> = p
        .segments
        .iter()
        .map(|s| {
            (
                s.map_start - BIAS,
                s.map_end - BIAS,
                s.prot,
                s.file_offset,
                s.file_size,
                s.dest - BIAS,
                s.mem_size,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, 0x1000, r, 0, 0x200, 0, 0x200),
            (0x1000, 0x2000, rx, 0x1000, 0x345, 0x1000, 0x345),
            (0x2000, 0x6000, rw, 0x1e10, 0x1f0, 0x2e10, 0x3000),
        ]
    );
    assert_eq!(p.brk, BIAS + 0x6000);
    assert_eq!(p.segments[2].data(&file), Some(&file[0x1e10..0x2000]));
    check_invariants(&p, &file);
}

#[test]
fn fixed_exec_ignores_the_bias() {
    let file = ElfFile::fixed().build();
    let p = plan(&file, BIAS).unwrap();
    assert_eq!(
        (p.kind, p.bias, p.entry, p.phdr),
        (Kind::Fixed, 0, 0x40_1010, 0x40_0040)
    );
    assert_eq!(p.segments[0].map_start, 0x40_0000);
    assert_eq!(p.brk, 0x40_6000);
    check_invariants(&p, &file);
}

#[test]
fn bias_is_page_and_segment_aligned() {
    let file = ElfFile::static_pie().build();
    assert_eq!(plan(&file, BIAS + 1).unwrap().bias, BIAS + PAGE_SIZE);
    let mut f = ElfFile::static_pie();
    f.loads().for_each(|p| p.align = 0x20_0000);
    let p = plan(&f.build(), BIAS + 1).unwrap();
    assert_eq!(p.bias, 0x5555_5560_0000);
    check_invariants(&p, &f.build());
}

#[test]
fn executable_stack_and_phdr_without_pt_phdr() {
    let mut f = ElfFile::static_pie();
    f.phs[4].flags |= PF_X;
    // No PT_PHDR: the table is found in the first segment's file bytes.
    f.phs[0].p_type = 0;
    let p = plan(&f.build(), BIAS).unwrap();
    assert!(p.stack_exec);
    assert_eq!(p.phdr, BIAS + 64);
}

#[test]
fn phdr_from_a_later_segment() {
    let mut f = ElfFile::static_pie();
    f.phs[0].p_type = 0;
    f.phoff = 0x1100; // inside the RX segment's file bytes [0x1000, 0x1345)
    let p = plan(&f.build(), BIAS).unwrap();
    assert_eq!(p.phdr, BIAS + 0x1100);
}

#[test]
fn shared_boundary_page_goes_to_the_later_segment() {
    // RX ends at 0x1345, RW starts at 0x1400 in the same page (offsets congruent).
    let mut f = ElfFile::static_pie();
    f.phs[3] = Ph::load(PF_R | PF_W, 0x1400, 0x1400, 0x100, 0x2000);
    let file = f.build();
    let p = plan(&file, BIAS).unwrap();
    let maps: Vec<_> = p
        .segments
        .iter()
        .map(|s| (s.map_start - BIAS, s.map_end - BIAS))
        .collect();
    assert_eq!(maps, [(0, 0x1000), (0x1000, 0x1000), (0x1000, 0x4000)]);
    assert!(p.segments[2].prot.write && !p.segments[2].prot.exec);
    // The RX bytes still go where they belong, inside the RW mapping.
    assert_eq!(
        (p.segments[1].dest, p.segments[1].file_size),
        (BIAS + 0x1000, 0x345)
    );
    check_invariants(&p, &file);
}

#[test]
fn zero_memsz_and_bss_only_segments() {
    let mut f = ElfFile::static_pie();
    f.phs.push(Ph::load(PF_R | PF_W, 0, 0x6000, 0, 0x1800)); // bss only: no file bytes
    f.phs.push(Ph::load(PF_R, 0, 0x9000, 0, 0)); // nothing at all: no segment
    let file = f.build();
    let p = plan(&file, BIAS).unwrap();
    assert_eq!(p.segments.len(), 4);
    let bss = &p.segments[3];
    assert_eq!(
        (bss.map_start - BIAS, bss.map_end - BIAS, bss.file_size),
        (0x6000, 0x8000, 0)
    );
    assert_eq!(p.brk, BIAS + 0x8000);
    check_invariants(&p, &file);
}

fn reject(f: &ElfFile) -> ElfError {
    let file = f.build();
    let err = plan(&file, BIAS).expect_err("a bad file was planned");
    let text = err.to_string();
    assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    err
}

#[test]
fn identification_rejections() {
    assert_eq!(plan(b"", BIAS), Err(ElfError::TruncatedHeader { len: 0 }));
    assert_eq!(
        plan(b"\x7fEL", BIAS),
        Err(ElfError::TruncatedHeader { len: 3 })
    );
    assert_eq!(plan(b"#!/bin/sh\n", BIAS), Err(ElfError::NotElf));
    assert_eq!(plan(b"MZ", BIAS), Err(ElfError::NotElf));
    let mut f = ElfFile::static_pie();
    f.class = 1;
    assert_eq!(reject(&f), ElfError::Class(1));
    let mut f = ElfFile::static_pie();
    f.data = 2;
    assert_eq!(reject(&f), ElfError::Endianness(2));
    let mut f = ElfFile::static_pie();
    f.machine = 3; // EM_386
    assert_eq!(reject(&f), ElfError::Machine(3));
    for t in [0, 1, 4, 0xfe00] {
        let mut f = ElfFile::static_pie();
        f.e_type = t;
        assert_eq!(reject(&f), ElfError::Type(t));
    }
    let mut f = ElfFile::static_pie();
    f.patches.push((6, vec![2]));
    assert_eq!(reject(&f), ElfError::Version(2));
}

#[test]
fn a_real_32_bit_header_is_refused_by_class() {
    // An i386 header: class 1, e_machine 3; its fields sit at other offsets than a 64-bit one.
    let mut b = vec![0u8; 52];
    b[..7].copy_from_slice(b"\x7fELF\x01\x01\x01");
    b[16..20].copy_from_slice(&[2, 0, 3, 0]);
    assert_eq!(plan(&b, BIAS), Err(ElfError::Class(1)));
}

#[test]
fn truncated_at_every_header_boundary() {
    let good = ElfFile::static_pie();
    let file = good.build();
    let table_end = 64 + good.phs.len() * 56;
    for len in 0..table_end {
        let err = plan(&file[..len], BIAS).expect_err("truncated file planned");
        match (len, &err) {
            (0..4, ElfError::TruncatedHeader { .. }) => {}
            (4..64, ElfError::TruncatedHeader { len: l }) => assert_eq!(*l, len),
            (64.., ElfError::TruncatedProgramHeaders { len: l, .. }) => assert_eq!(*l, len),
            _ => panic!("{len} bytes: {err:?}"),
        }
    }
    // Whole headers but not all of the segments' bytes.
    for len in [table_end, 0x1000, 0x1344, 0x1fff] {
        assert!(
            matches!(
                plan(&file[..len], BIAS),
                Err(ElfError::SegmentBeyondFile { .. })
            ),
            "{len}"
        );
    }
}

#[test]
fn program_header_table_rejections() {
    let mut f = ElfFile::static_pie();
    f.phentsize = 32;
    assert_eq!(reject(&f), ElfError::PhentSize(32));
    let mut f = ElfFile::static_pie();
    f.phnum = Some(0);
    assert_eq!(reject(&f), ElfError::NoProgramHeaders);
    // 1170 headers are 65520 bytes: allowed by size (then truncated here); 1171 are too many.
    let mut f = ElfFile::static_pie();
    f.phnum = Some(1170);
    assert!(matches!(
        reject(&f),
        ElfError::TruncatedProgramHeaders { .. }
    ));
    f.phnum = Some(1171);
    assert_eq!(reject(&f), ElfError::TooManyProgramHeaders(1171));
    f.phnum = Some(0xffff); // PN_XNUM: the real count would be in section 0; Linux refuses it
    assert_eq!(reject(&f), ElfError::TooManyProgramHeaders(0xffff));
    let mut f = ElfFile::static_pie();
    f.phoff = u64::MAX - 10; // wraps
    assert!(matches!(
        reject(&f),
        ElfError::TruncatedProgramHeaders { .. }
    ));
}

#[test]
fn dynamic_programs_name_their_interpreter() {
    let mut f = ElfFile::static_pie();
    f.phs.push(Ph {
        p_type: PT_INTERP,
        flags: PF_R,
        offset: 0x180,
        vaddr: 0x180,
        filesz: 28,
        memsz: 28,
        align: 1,
    });
    f.patches
        .push((0x180, b"/lib/ld-musl-x86_64.so.1\0".to_vec()));
    let err = reject(&f);
    assert_eq!(
        err,
        ElfError::Interpreter("/lib/ld-musl-x86_64.so.1".into())
    );
    assert!(err.to_string().contains("/lib/ld-musl-x86_64.so.1"));
    // A PT_INTERP pointing outside the file is still refused, without a name.
    f.phs.last_mut().unwrap().offset = u64::MAX;
    assert_eq!(reject(&f), ElfError::Interpreter(String::new()));
}

#[test]
fn segment_rejections() {
    let mut f = ElfFile::static_pie();
    f.phs[3].filesz = 0x3001;
    assert!(matches!(
        reject(&f),
        ElfError::FileszExceedsMemsz { index: 3, .. }
    ));

    let mut f = ElfFile::static_pie();
    f.phs[3].offset = u64::MAX - 0x100; // offset + filesz wraps
    f.phs[3].vaddr = (u64::MAX - 0x100) % PAGE_SIZE + 0x2000;
    assert!(matches!(
        reject(&f),
        ElfError::SegmentBeyondFile { index: 3, .. }
    ));

    let mut f = ElfFile::static_pie();
    f.phs[2].align = 0x1800;
    assert_eq!(
        reject(&f),
        ElfError::Align {
            index: 2,
            align: 0x1800
        }
    );

    let mut f = ElfFile::static_pie();
    f.phs[3].vaddr += 8;
    assert!(matches!(reject(&f), ElfError::Misaligned { index: 3, .. }));

    let mut f = ElfFile::static_pie();
    f.loads().for_each(|p| p.memsz = 0);
    f.loads().for_each(|p| p.filesz = 0);
    assert_eq!(reject(&f), ElfError::NoLoadSegment);
    let mut f = ElfFile::static_pie();
    f.phs.retain(|p| p.p_type != PT_LOAD);
    assert_eq!(reject(&f), ElfError::NoLoadSegment);
}

#[test]
fn overlapping_segments_are_refused() {
    // Byte overlap inside one page.
    let mut f = ElfFile::static_pie();
    f.phs[3] = Ph::load(PF_R | PF_W, 0x1300, 0x1300, 0x100, 0x100);
    assert_eq!(reject(&f), ElfError::Overlap { index: 3, prev: 2 });
    // The RX segment's bss runs into the RW segment.
    let mut f = ElfFile::static_pie();
    f.phs[2].memsz = 0x1e11;
    assert_eq!(reject(&f), ElfError::Overlap { index: 3, prev: 2 });
    // Out of order, even without overlap.
    let mut f = ElfFile::static_pie();
    f.phs.swap(2, 3);
    assert_eq!(reject(&f), ElfError::Overlap { index: 3, prev: 2 });
    // The same segment twice.
    let mut f = ElfFile::static_pie();
    f.phs.push(f.phs[2]);
    assert_eq!(reject(&f), ElfError::Overlap { index: 5, prev: 3 });
}

#[test]
fn addresses_outside_user_space_are_refused() {
    let out = |f: &ElfFile| matches!(reject(f), ElfError::OutOfRange { .. });
    // Kernel half, fixed.
    let mut f = ElfFile::fixed();
    f.loads().for_each(|p| p.vaddr += 0xffff_8000_0000_0000);
    assert!(out(&f));
    // Non-canonical hole.
    let mut f = ElfFile::fixed();
    f.loads().for_each(|p| p.vaddr += 0x0000_8000_0000_0000);
    assert!(out(&f));
    // Below mmap_min_addr: the first page.
    let mut f = ElfFile::fixed();
    f.loads().for_each(|p| p.vaddr -= 0x40_0000);
    assert!(out(&f));
    // Into the stack reserve.
    let mut f = ElfFile::fixed();
    f.phs[3].vaddr = IMAGE_LIMIT - 0x1000 + 0xe10;
    assert!(out(&f));
    // Huge memsz, and a memsz whose end wraps.
    let mut f = ElfFile::fixed();
    f.phs[3].memsz = 1 << 47;
    assert!(out(&f));
    let mut f = ElfFile::fixed();
    f.phs[3].memsz = u64::MAX - 0x1000;
    assert!(out(&f));
    // A static-PIE whose bias pushes it out, and a bias that wraps.
    let f = ElfFile::static_pie();
    assert!(matches!(
        plan(&f.build(), IMAGE_LIMIT - 0x2000),
        Err(ElfError::OutOfRange { .. })
    ));
    assert!(matches!(
        plan(&f.build(), u64::MAX - 10),
        Err(ElfError::Bias(_))
    ));
    assert!(matches!(
        plan(&f.build(), 0),
        Err(ElfError::OutOfRange { index: 1, .. })
    ));
    // The entry point.
    let mut f = ElfFile::fixed();
    f.entry = 0xffff_ffff_8000_0000;
    assert!(matches!(reject(&f), ElfError::EntryOutOfRange(_)));
}

#[test]
fn program_headers_must_be_loaded() {
    let mut f = ElfFile::static_pie();
    f.phs[0].vaddr = 0x5000; // PT_PHDR in the bss
    assert_eq!(reject(&f), ElfError::PhdrNotLoaded);
    let mut f = ElfFile::static_pie();
    f.phs[0].p_type = 0;
    f.phs[1].filesz = 0x100; // the table (0x40..0x158) is cut off
    assert_eq!(reject(&f), ElfError::PhdrNotLoaded);
}
