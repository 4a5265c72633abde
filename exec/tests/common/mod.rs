//! Shared by the ELF tests: a builder of hand-made ELF files, a program-header reader written
//! independently of the loader, and the invariants every returned plan must satisfy.

#![allow(dead_code)]

use exec::elf::{IMAGE_LIMIT, MMAP_MIN_ADDR, PAGE_SIZE, Plan};

pub const PT_LOAD: u32 = 1;
pub const PT_INTERP: u32 = 3;
pub const PT_PHDR: u32 = 6;
pub const PT_GNU_STACK: u32 = 0x6474_e551;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// One program header, as written to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ph {
    pub p_type: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl Ph {
    pub fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            offset,
            vaddr,
            filesz,
            memsz,
            align: PAGE_SIZE,
        }
    }
}

/// An ELF file under construction: header fields, program headers, file length, and bytes
/// placed at offsets.
#[derive(Clone, Debug)]
pub struct ElfFile {
    pub class: u8,
    pub data: u8,
    pub e_type: u16,
    pub machine: u16,
    pub entry: u64,
    pub phoff: u64,
    pub phentsize: u16,
    /// Overrides the header's `e_phnum` (default: `phs.len()`).
    pub phnum: Option<u16>,
    pub phs: Vec<Ph>,
    pub len: usize,
    pub patches: Vec<(usize, Vec<u8>)>,
}

impl ElfFile {
    /// A static-PIE laid out like a linker's: R (headers), RX (text), RW (data + bss), with
    /// PT_PHDR and PT_GNU_STACK.
    pub fn static_pie() -> ElfFile {
        let phs = vec![
            Ph {
                p_type: PT_PHDR,
                flags: PF_R,
                offset: 64,
                vaddr: 64,
                filesz: 5 * 56,
                memsz: 5 * 56,
                align: 8,
            },
            Ph::load(PF_R, 0, 0, 0x200, 0x200),
            Ph::load(PF_R | PF_X, 0x1000, 0x1000, 0x345, 0x345),
            Ph::load(PF_R | PF_W, 0x1e10, 0x2e10, 0x1f0, 0x3000),
            Ph {
                p_type: PT_GNU_STACK,
                flags: PF_R | PF_W,
                offset: 0,
                vaddr: 0,
                filesz: 0,
                memsz: 0,
                align: 16,
            },
        ];
        ElfFile {
            class: 2,
            data: 1,
            e_type: 3,
            machine: 62,
            entry: 0x1010,
            phoff: 64,
            phentsize: 56,
            phnum: None,
            phs,
            len: 0x2000,
            patches: Vec::new(),
        }
    }

    /// The same layout as a fixed-address `ET_EXEC` at 0x400000.
    pub fn fixed() -> ElfFile {
        let mut f = ElfFile::static_pie();
        f.e_type = 2;
        f.entry += 0x40_0000;
        for ph in &mut f.phs {
            if ph.p_type == PT_LOAD || ph.p_type == PT_PHDR {
                ph.vaddr += 0x40_0000;
            }
        }
        f
    }

    pub fn loads(&mut self) -> impl Iterator<Item = &mut Ph> {
        self.phs.iter_mut().filter(|p| p.p_type == PT_LOAD)
    }

    pub fn build(&self) -> Vec<u8> {
        // A table far outside the file (a hostile e_phoff) is not written.
        let table_end = usize::try_from(self.phoff)
            .ok()
            .and_then(|off| off.checked_add(self.phs.len() * 56))
            .filter(|&end| end <= 1 << 20);
        let mut b = vec![0u8; self.len.max(table_end.unwrap_or(0)).max(64)];
        // Recognizable file contents, so that copies can be checked.
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = (i * 7 + 3) as u8;
        }
        b[..64].fill(0);
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = self.class;
        b[5] = self.data;
        b[6] = 1;
        put16(&mut b, 16, self.e_type);
        put16(&mut b, 18, self.machine);
        put32(&mut b, 20, 1);
        put64(&mut b, 24, self.entry);
        put64(&mut b, 32, self.phoff);
        put16(&mut b, 52, 64);
        put16(&mut b, 54, self.phentsize);
        put16(&mut b, 56, self.phnum.unwrap_or(self.phs.len() as u16));
        let phs = if table_end.is_some() {
            &self.phs[..]
        } else {
            &[]
        };
        for (i, ph) in phs.iter().enumerate() {
            let at = self.phoff as usize + i * 56;
            put32(&mut b, at, ph.p_type);
            put32(&mut b, at + 4, ph.flags);
            put64(&mut b, at + 8, ph.offset);
            put64(&mut b, at + 16, ph.vaddr);
            put64(&mut b, at + 24, ph.vaddr);
            put64(&mut b, at + 32, ph.filesz);
            put64(&mut b, at + 40, ph.memsz);
            put64(&mut b, at + 48, ph.align);
        }
        for (at, bytes) in &self.patches {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        b.truncate(self.len.max(64));
        b
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The header fields and program headers of a (trusted) ELF file, read by hand.
#[derive(Debug)]
pub struct Parsed {
    pub e_type: u16,
    pub entry: u64,
    pub phoff: u64,
    pub phs: Vec<Ph>,
}

pub fn parse(b: &[u8]) -> Parsed {
    let u16_at = |at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let phoff = u64_at(32);
    let phs = (0..u16_at(56) as usize)
        .map(|i| {
            let at = phoff as usize + i * u16_at(54) as usize;
            Ph {
                p_type: u32_at(at),
                flags: u32_at(at + 4),
                offset: u64_at(at + 8),
                vaddr: u64_at(at + 16),
                filesz: u64_at(at + 32),
                memsz: u64_at(at + 40),
                align: u64_at(at + 48),
            }
        })
        .collect();
    Parsed {
        e_type: u16_at(16),
        entry: u64_at(24),
        phoff,
        phs,
    }
}

pub fn page_down(a: u64) -> u64 {
    a & !(PAGE_SIZE - 1)
}
pub fn page_up(a: u64) -> u64 {
    page_down(a + PAGE_SIZE - 1)
}

/// What every plan promises (the invariants of `Plan` and `Segment`), checked from outside.
pub fn check_invariants(plan: &Plan, file: &[u8]) {
    let user = MMAP_MIN_ADDR..=IMAGE_LIMIT;
    assert!(!plan.segments.is_empty(), "{plan:#x?}");
    let mut prev_end = MMAP_MIN_ADDR;
    for (i, s) in plan.segments.iter().enumerate() {
        assert_eq!(s.map_start % PAGE_SIZE, 0, "segment {i} of {plan:#x?}");
        assert_eq!(s.map_end % PAGE_SIZE, 0, "segment {i} of {plan:#x?}");
        assert!(s.map_start <= s.map_end, "segment {i} of {plan:#x?}");
        assert!(prev_end <= s.map_start, "segment {i} overlaps: {plan:#x?}");
        assert!(
            user.contains(&s.map_start) && user.contains(&s.map_end),
            "segment {i} of {plan:#x?}"
        );
        prev_end = s.map_end;
        assert!(s.file_size <= s.mem_size, "segment {i} of {plan:#x?}");
        assert!(s.mem_size > 0);
        let end = s
            .dest
            .checked_add(s.mem_size)
            .expect("segment end overflows");
        assert!(
            s.map_start <= s.dest && end <= IMAGE_LIMIT,
            "segment {i} of {plan:#x?}"
        );
        // Every byte of the segment is mapped by it or by a later segment.
        let mut covered_to = s.map_start;
        for n in plan.segments[i..].iter().take_while(|n| n.map_start < end) {
            assert!(
                n.map_start <= covered_to,
                "segment {i} has a hole: {plan:#x?}"
            );
            covered_to = covered_to.max(n.map_end);
        }
        assert!(
            end <= covered_to,
            "segment {i} is not fully mapped: {plan:#x?}"
        );
        assert_eq!(s.data(file).map(<[u8]>::len), Some(s.file_size as usize));
    }
    assert!(user.contains(&plan.entry), "{plan:#x?}");
    assert!(user.contains(&plan.phdr), "{plan:#x?}");
    assert!(plan.brk >= prev_end && plan.brk.is_multiple_of(PAGE_SIZE) && plan.brk <= IMAGE_LIMIT);
    let phdr_end = plan.phdr + plan.phnum * plan.phent;
    assert!(
        plan.segments
            .iter()
            .any(|s| s.dest <= plan.phdr && phdr_end <= s.dest + s.file_size),
        "AT_PHDR is not in a segment's file bytes: {plan:#x?}"
    );
}
