//! ELF -> load [`Plan`]: what Linux's `load_elf_binary` (fs/binfmt_elf.c) would map for a static
//! x86-64 executable, checked, as plain data the kernel carries out.
//!
//! Two kinds load: `ET_EXEC` at its own addresses, and static-PIE (`ET_DYN` with no `PT_INTERP`)
//! at a bias the kernel picks (rounded up to the largest `p_align` of the `PT_LOAD`s, as Linux
//! aligns its `load_bias`). A program that asks for an interpreter is dynamically linked and is
//! refused. Each `PT_LOAD` becomes a [`Segment`]: a page-aligned mapping with the segment's
//! protection, the file bytes to copy into it, and the zeroed rest up to `p_memsz` (bss). There is
//! no file system: segments are anonymous memory the kernel fills, not file mappings.
//!
//! The checks, and where they differ from Linux:
//! - header: magic, `ELFCLASS64`, little endian, `EV_CURRENT`, `EM_X86_64`, `ET_EXEC`/`ET_DYN`,
//!   `e_phentsize` 56, 1 to 65536 bytes of program headers, all inside the file (Linux: the same,
//!   except that it does not look at the data encoding or version bytes).
//! - every `PT_LOAD`: `p_filesz <= p_memsz`, file bytes inside the file, `p_offset` congruent to
//!   `p_vaddr` modulo the page size when there are file bytes (Linux's `mmap` of the file fails
//!   otherwise), `p_align` 0 or a power of two (Linux skips other values; the ELF spec forbids
//!   them), and the whole segment, once biased, inside `[MMAP_MIN_ADDR, IMAGE_LIMIT)`.
//! - overlap: Linux does not check; each later `PT_LOAD` is mapped `MAP_FIXED` over whatever an
//!   earlier one put there. We require what the ELF spec requires and every linker emits:
//!   `PT_LOAD`s in ascending `p_vaddr` order with disjoint byte ranges. Two consecutive segments
//!   may still share the page at their boundary; as on Linux, that page belongs to the later
//!   segment (the later mapping replaced it) and takes its protection, and here it holds the
//!   bytes of both (on Linux the earlier segment's bytes in it are what the file has there).
//! - `AT_PHDR`: `PT_PHDR`'s address if present, else the address of the program headers in the
//!   first `PT_LOAD` whose file bytes hold them (Linux 6.x uses only the latter); either way the
//!   table must be loaded from the file, or the program could not find its own headers (Linux
//!   would pass the bias as `AT_PHDR`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use object::elf::{FileHeader64, ProgramHeader64};
use object::read::ReadRef;
use object::read::elf::{FileHeader, ProgramHeader};
use object::{LittleEndian, elf};

/// The page size programs are loaded with (`AT_PAGESZ`).
pub const PAGE_SIZE: u64 = 4096;
/// Nothing is loaded below this (Linux's default `vm.mmap_min_addr`): a NULL pointer with a
/// small offset must fault.
pub const MMAP_MIN_ADDR: u64 = 0x1_0000;
/// The end of the user half of the address space (canonical lower half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Room kept free at the top of the user half for the stack and its guard gap (Linux keeps at
/// least this much between the stack and `mmap_base`).
pub const STACK_RESERVE: u64 = 128 << 20;
/// Every byte of a loaded image lies below this.
pub const IMAGE_LIMIT: u64 = USER_END - STACK_RESERVE;
/// A bias for static-PIEs: the page of x86-64 Linux's `ELF_ET_DYN_BASE` (two thirds of the user
/// half), far above fixed `ET_EXEC` addresses and far below the stack.
pub const PIE_BASE: u64 = 0x5555_5555_4000;
/// Size of one x86-64 program header (`AT_PHENT`).
pub const PHENT_SIZE: u64 = size_of::<ProgramHeader64<LittleEndian>>() as u64;
/// Linux refuses more than this many bytes of program headers (`load_elf_phdrs`).
pub const MAX_PHDR_BYTES: u64 = 65536;

/// What kind of executable a [`Plan`] loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `ET_EXEC`: loaded at its link addresses, bias 0.
    Fixed,
    /// `ET_DYN` without `PT_INTERP`: loaded at a bias; it relocates itself from `AT_PHDR`.
    StaticPie,
}

/// A segment's protection, from `p_flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Prot {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

/// One `PT_LOAD`, biased.
///
/// # Invariants
/// - `map_start` and `map_end` are page-aligned, `MMAP_MIN_ADDR <= map_start <= map_end <=
///   IMAGE_LIMIT`; the mapping is empty only when the whole segment lies in the page it shares
///   with the next segment (whose mapping then holds its bytes).
/// - `file_size <= mem_size`, `dest >= map_start`, `dest + mem_size <= IMAGE_LIMIT`, and
///   `[dest, dest + mem_size)` is covered by this segment's mapping and the next ones'.
/// - `file_offset + file_size` is within the ELF file the plan was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The mapping (a VMA): `[map_start, map_end)`.
    pub map_start: u64,
    pub map_end: u64,
    pub prot: Prot,
    /// The segment's bytes in the file: `[file_offset, file_offset + file_size)`.
    pub file_offset: u64,
    pub file_size: u64,
    /// Where the file bytes go; `[dest + file_size, dest + mem_size)` is zero (bss).
    pub dest: u64,
    pub mem_size: u64,
}

impl Segment {
    /// The bytes to copy to `dest`, from the ELF file the plan was made from (`None` for a
    /// shorter file, that is, another file).
    pub fn data<'a>(&self, elf: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.file_offset).ok()?;
        let len = usize::try_from(self.file_size).ok()?;
        elf.get(start..start.checked_add(len)?)
    }
}

/// What to map and where to start, for one executable.
///
/// # Invariants
/// `segments` are in ascending address order with disjoint, non-empty-or-shared mappings (see
/// [`Segment`]); `entry`, `phdr` and `brk` lie in `[MMAP_MIN_ADDR, IMAGE_LIMIT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub kind: Kind,
    /// Added to every address in the file: 0 for [`Kind::Fixed`].
    pub bias: u64,
    /// Where the program starts (`AT_ENTRY`).
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// The program headers in memory (`AT_PHDR`), their size (`AT_PHENT`) and count (`AT_PHNUM`).
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    /// The page-aligned end of the image: where the `brk` heap starts.
    pub brk: u64,
    /// `PT_GNU_STACK` asks for an executable stack (without it, x86-64 Linux maps the stack
    /// non-executable).
    pub stack_exec: bool,
}

impl Plan {
    /// `AT_BASE`: the interpreter's load address. A static executable has no interpreter, so 0,
    /// even for a static-PIE loaded at a bias.
    pub const AT_BASE: u64 = 0;
}

/// Why an ELF file cannot be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Does not start with `\x7fELF`.
    NotElf,
    /// Shorter than the 64-byte ELF header.
    TruncatedHeader { len: usize },
    /// `EI_CLASS` is not `ELFCLASS64`.
    Class(u8),
    /// `EI_DATA` is not little endian.
    Endianness(u8),
    /// `EI_VERSION` is not `EV_CURRENT`.
    Version(u8),
    /// `e_machine` is not `EM_X86_64`.
    Machine(u16),
    /// `e_type` is neither `ET_EXEC` nor `ET_DYN`.
    Type(u16),
    /// `e_phentsize` is not the size of a 64-bit program header.
    PhentSize(u16),
    /// `e_phnum` is 0.
    NoProgramHeaders,
    /// More than [`MAX_PHDR_BYTES`] of program headers.
    TooManyProgramHeaders(u16),
    /// The program header table runs past the end of the file.
    TruncatedProgramHeaders { offset: u64, size: u64, len: usize },
    /// A `PT_INTERP` asks for this interpreter: a dynamically linked program.
    Interpreter(String),
    /// Segment `index`'s file bytes run past the end of the file.
    SegmentBeyondFile {
        index: usize,
        offset: u64,
        size: u64,
        len: usize,
    },
    /// Segment `index` has more bytes in the file than in memory.
    FileszExceedsMemsz {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    /// Segment `index`'s `p_align` is not 0 or a power of two.
    Align { index: usize, align: u64 },
    /// Segment `index`'s `p_offset` and `p_vaddr` differ modulo the page size.
    Misaligned {
        index: usize,
        offset: u64,
        vaddr: u64,
    },
    /// Segment `index` (biased) is not inside `[MMAP_MIN_ADDR, IMAGE_LIMIT)`, or its end
    /// overflows.
    OutOfRange {
        index: usize,
        vaddr: u64,
        memsz: u64,
    },
    /// Segment `index` overlaps the `PT_LOAD` before it, `prev`, or comes before it.
    Overlap { index: usize, prev: usize },
    /// No `PT_LOAD` with memory.
    NoLoadSegment,
    /// The program headers are not in any loaded segment's file bytes.
    PhdrNotLoaded,
    /// The entry point (biased) is outside `[MMAP_MIN_ADDR, IMAGE_LIMIT)`.
    EntryOutOfRange(u64),
    /// The bias cannot be aligned without overflowing.
    Bias(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ElfError::*;
        match self {
            NotElf => write!(f, "not an ELF file (no \\x7fELF magic)"),
            TruncatedHeader { len } => {
                write!(f, "truncated ELF header: {len} bytes, the header needs 64")
            }
            Class(c) => write!(f, "not a 64-bit ELF file (EI_CLASS {c})"),
            Endianness(d) => write!(f, "not a little-endian ELF file (EI_DATA {d})"),
            Version(v) => write!(f, "unknown ELF version {v}"),
            Machine(m) => write!(f, "not an x86-64 program (e_machine {m})"),
            Type(t) => {
                let what = match *t {
                    0 => "ET_NONE",
                    1 => "ET_REL, a relocatable object",
                    4 => "ET_CORE, a core dump",
                    _ => "unknown",
                };
                write!(f, "not an executable: e_type {t} ({what})")
            }
            PhentSize(s) => write!(f, "program header size {s}, expected {PHENT_SIZE}"),
            NoProgramHeaders => write!(f, "no program headers"),
            TooManyProgramHeaders(n) => write!(
                f,
                "{n} program headers: more than {MAX_PHDR_BYTES} bytes of them"
            ),
            TruncatedProgramHeaders { offset, size, len } => write!(
                f,
                "program headers at {offset:#x}..+{size:#x} run past the end of the file ({len:#x} bytes)"
            ),
            Interpreter(path) => write!(
                f,
                "dynamically linked (needs the interpreter {path:?}): only static executables load"
            ),
            SegmentBeyondFile {
                index,
                offset,
                size,
                len,
            } => write!(
                f,
                "segment {index}: file bytes {offset:#x}..+{size:#x} run past the end of the file ({len:#x} bytes)"
            ),
            FileszExceedsMemsz {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "segment {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"
            ),
            Align { index, align } => {
                write!(
                    f,
                    "segment {index}: p_align {align:#x} is not a power of two"
                )
            }
            Misaligned {
                index,
                offset,
                vaddr,
            } => write!(
                f,
                "segment {index}: p_offset {offset:#x} and p_vaddr {vaddr:#x} differ modulo the page size"
            ),
            OutOfRange {
                index,
                vaddr,
                memsz,
            } => write!(
                f,
                "segment {index}: {vaddr:#x}..+{memsz:#x} (biased) is outside user space [{MMAP_MIN_ADDR:#x}, {IMAGE_LIMIT:#x})"
            ),
            Overlap { index, prev } => write!(
                f,
                "segment {index} overlaps segment {prev} or comes before it (PT_LOADs must ascend)"
            ),
            NoLoadSegment => write!(f, "no loadable segment"),
            PhdrNotLoaded => write!(f, "the program headers are not in a loaded segment"),
            EntryOutOfRange(e) => write!(
                f,
                "entry point {e:#x} (biased) is outside user space [{MMAP_MIN_ADDR:#x}, {IMAGE_LIMIT:#x})"
            ),
            Bias(b) => write!(f, "load bias {b:#x} cannot be aligned"),
        }
    }
}

impl core::error::Error for ElfError {}

type Phdr = ProgramHeader64<LittleEndian>;
const LE: LittleEndian = LittleEndian;

/// Checks `bytes` as a static x86-64 executable and returns what to load. `bias_hint` is where
/// a static-PIE goes (rounded up to its segments' alignment); a fixed `ET_EXEC` ignores it.
pub fn plan(bytes: &[u8], bias_hint: u64) -> Result<Plan, ElfError> {
    let header = parse_header(bytes)?;
    let phdrs = program_headers(bytes, header)?;
    let kind = match header.e_type(LE).0 {
        t if t == elf::ET_EXEC.0 => Kind::Fixed,
        _ => Kind::StaticPie,
    };

    let mut stack_exec = false;
    let mut pt_phdr = None;
    for ph in phdrs {
        match ph.p_type(LE) {
            elf::PT_INTERP => return Err(ElfError::Interpreter(interpreter(bytes, ph))),
            elf::PT_GNU_STACK => stack_exec = ph.p_flags(LE).0 & elf::PF_X.0 != 0,
            elf::PT_PHDR => pt_phdr = Some(ph.p_vaddr(LE)),
            _ => {}
        }
    }

    let loads: Vec<(usize, &Phdr)> = phdrs
        .iter()
        .enumerate()
        .filter(|(_, ph)| ph.p_type(LE) == elf::PT_LOAD)
        .collect();
    let mut align = PAGE_SIZE;
    let mut prev: Option<(usize, u64)> = None;
    for &(index, ph) in &loads {
        check_load(bytes, index, ph)?;
        let p_align = ph.p_align(LE);
        align = align.max(p_align);
        let (vaddr, memsz) = (ph.p_vaddr(LE), ph.p_memsz(LE));
        let end = vaddr.checked_add(memsz).ok_or(ElfError::OutOfRange {
            index,
            vaddr,
            memsz,
        })?;
        if let Some((prev, prev_end)) = prev
            && vaddr < prev_end
        {
            return Err(ElfError::Overlap { index, prev });
        }
        prev = Some((index, end));
    }
    if !loads.iter().any(|(_, ph)| ph.p_memsz(LE) > 0) {
        return Err(ElfError::NoLoadSegment);
    }

    let bias = match kind {
        Kind::Fixed => 0,
        Kind::StaticPie => align_up(bias_hint, align).ok_or(ElfError::Bias(bias_hint))?,
    };

    // Biased byte ranges, checked against the user window.
    let mut ranges = Vec::with_capacity(loads.len());
    for &(index, ph) in &loads {
        let (vaddr, memsz) = (ph.p_vaddr(LE), ph.p_memsz(LE));
        let out = ElfError::OutOfRange {
            index,
            vaddr: vaddr.wrapping_add(bias),
            memsz,
        };
        let start = vaddr.checked_add(bias).ok_or(out.clone())?;
        let end = start.checked_add(memsz).ok_or(out.clone())?;
        if start < MMAP_MIN_ADDR || end > IMAGE_LIMIT {
            return Err(out);
        }
        if memsz > 0 {
            ranges.push((ph, start, end));
        }
    }

    let mut segments = Vec::with_capacity(ranges.len());
    for (i, &(ph, start, end)) in ranges.iter().enumerate() {
        let map_start = page_down(start);
        let mut map_end = page_up(end);
        // The page shared with the next segment is the next segment's (see the module header).
        if let Some(&(_, next_start, _)) = ranges.get(i + 1) {
            map_end = map_end.min(page_down(next_start)).max(map_start);
        }
        let flags = ph.p_flags(LE).0;
        segments.push(Segment {
            map_start,
            map_end,
            prot: Prot {
                read: flags & elf::PF_R.0 != 0,
                write: flags & elf::PF_W.0 != 0,
                exec: flags & elf::PF_X.0 != 0,
            },
            file_offset: ph.p_offset(LE),
            file_size: ph.p_filesz(LE),
            dest: start,
            mem_size: ph.p_memsz(LE),
        });
    }
    // `ranges` is non-empty (a PT_LOAD with memory exists) and ascending.
    let brk = ranges.last().map_or(0, |&(_, _, end)| page_up(end));

    let phnum = phdrs.len() as u64;
    let phdr = phdr_vaddr(header, &loads, pt_phdr, phnum * PHENT_SIZE)
        .ok_or(ElfError::PhdrNotLoaded)?
        + bias;
    let e_entry = header.e_entry(LE);
    let entry = e_entry
        .checked_add(bias)
        .filter(|e| (MMAP_MIN_ADDR..IMAGE_LIMIT).contains(e))
        .ok_or(ElfError::EntryOutOfRange(e_entry.wrapping_add(bias)))?;

    Ok(Plan {
        kind,
        bias,
        entry,
        segments,
        phdr,
        phent: PHENT_SIZE,
        phnum,
        brk,
        stack_exec,
    })
}

/// The ELF header, after the identification checks that give each rejection its own error.
fn parse_header(bytes: &[u8]) -> Result<&FileHeader64<LittleEndian>, ElfError> {
    let magic_len = bytes.len().min(elf::ELFMAG.len());
    if bytes[..magic_len] != elf::ELFMAG[..magic_len] {
        return Err(ElfError::NotElf);
    }
    let truncated = ElfError::TruncatedHeader { len: bytes.len() };
    let ident = |i: usize| bytes.get(i).copied().ok_or(truncated.clone());
    let class = ident(4)?;
    if class != elf::ELFCLASS64.0 {
        return Err(ElfError::Class(class));
    }
    let data = ident(5)?;
    if data != elf::ELFDATA2LSB.0 {
        return Err(ElfError::Endianness(data));
    }
    let version = ident(6)?;
    if version != elf::EV_CURRENT.0 {
        return Err(ElfError::Version(version));
    }
    let header = FileHeader64::<LittleEndian>::parse(bytes).map_err(|_| truncated)?;
    let machine = header.e_machine(LE).0;
    if machine != elf::EM_X86_64.0 {
        return Err(ElfError::Machine(machine));
    }
    let e_type = header.e_type(LE).0;
    if e_type != elf::ET_EXEC.0 && e_type != elf::ET_DYN.0 {
        return Err(ElfError::Type(e_type));
    }
    Ok(header)
}

/// The program header table, checked the way Linux's `load_elf_phdrs` checks it.
fn program_headers<'a>(
    bytes: &'a [u8],
    header: &FileHeader64<LittleEndian>,
) -> Result<&'a [Phdr], ElfError> {
    let phentsize = header.e_phentsize(LE);
    if u64::from(phentsize) != PHENT_SIZE {
        return Err(ElfError::PhentSize(phentsize));
    }
    let phnum = header.e_phnum(LE);
    let size = u64::from(phnum) * PHENT_SIZE;
    if size == 0 {
        return Err(ElfError::NoProgramHeaders);
    }
    if size > MAX_PHDR_BYTES {
        return Err(ElfError::TooManyProgramHeaders(phnum));
    }
    let offset = header.e_phoff(LE);
    let truncated = ElfError::TruncatedProgramHeaders {
        offset,
        size,
        len: bytes.len(),
    };
    if offset
        .checked_add(size)
        .is_none_or(|end| end > bytes.len() as u64)
    {
        return Err(truncated);
    }
    bytes
        .read_slice_at::<Phdr>(offset, usize::from(phnum))
        .map_err(|_| truncated)
}

/// The checks of one `PT_LOAD` that do not depend on the others or on the bias.
fn check_load(bytes: &[u8], index: usize, ph: &Phdr) -> Result<(), ElfError> {
    let (offset, filesz, memsz) = (ph.p_offset(LE), ph.p_filesz(LE), ph.p_memsz(LE));
    let vaddr = ph.p_vaddr(LE);
    if filesz > memsz {
        return Err(ElfError::FileszExceedsMemsz {
            index,
            filesz,
            memsz,
        });
    }
    if offset
        .checked_add(filesz)
        .is_none_or(|end| end > bytes.len() as u64)
    {
        return Err(ElfError::SegmentBeyondFile {
            index,
            offset,
            size: filesz,
            len: bytes.len(),
        });
    }
    let align = ph.p_align(LE);
    if align != 0 && !align.is_power_of_two() {
        return Err(ElfError::Align { index, align });
    }
    if filesz > 0 && offset % PAGE_SIZE != vaddr % PAGE_SIZE {
        return Err(ElfError::Misaligned {
            index,
            offset,
            vaddr,
        });
    }
    Ok(())
}

/// The unbiased address of the program headers: `PT_PHDR`'s, or where the first `PT_LOAD`
/// holding them from the file puts them. `None` if no loaded file bytes hold the whole table.
fn phdr_vaddr(
    header: &FileHeader64<LittleEndian>,
    loads: &[(usize, &Phdr)],
    pt_phdr: Option<u64>,
    size: u64,
) -> Option<u64> {
    // Each `(file start, vaddr start, file size)` of a PT_LOAD; sizes and ends were checked.
    let file_part = |ph: &Phdr| (ph.p_offset(LE), ph.p_vaddr(LE), ph.p_filesz(LE));
    if let Some(vaddr) = pt_phdr {
        let end = vaddr.checked_add(size)?;
        return loads
            .iter()
            .map(|(_, ph)| file_part(ph))
            .any(|(_, v, len)| v <= vaddr && end <= v + len)
            .then_some(vaddr);
    }
    let phoff = header.e_phoff(LE);
    // The table was checked to lie in the file, so this does not overflow.
    let phend = phoff + size;
    loads
        .iter()
        .map(|(_, ph)| file_part(ph))
        .find(|&(off, _, len)| off <= phoff && phend <= off + len)
        .map(|(off, v, _)| v + (phoff - off))
}

/// The `PT_INTERP` path, for the error (at most 256 bytes of it).
fn interpreter(bytes: &[u8], ph: &Phdr) -> String {
    let start = usize::try_from(ph.p_offset(LE)).unwrap_or(usize::MAX);
    let len = usize::try_from(ph.p_filesz(LE))
        .unwrap_or(usize::MAX)
        .min(256);
    let raw = bytes
        .get(start..)
        .map(|rest| &rest[..len.min(rest.len())])
        .unwrap_or_default();
    let path = raw.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(path).into_owned()
}

fn page_down(addr: u64) -> u64 {
    addr & !(PAGE_SIZE - 1)
}

/// Rounds up to a page; only called on addresses below [`IMAGE_LIMIT`], so it cannot overflow.
fn page_up(addr: u64) -> u64 {
    page_down(addr + PAGE_SIZE - 1)
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}
