//! Helpers shared by the host tests: an emulated machine with a frame baseline, and ASCII
//! pictures of an address space (one character per page, one letter per VMA).

use alloc::string::String;
use alloc::sync::Arc;

use crate::address_space::AddressSpace;
use crate::memory::Memory;
use crate::ops::MapFlags;
use crate::platform::emulated::Emulated;
use crate::vma::{Prot, Vma};

pub(crate) const PAGE: u64 = 4096;

/// A frame owner for shared objects that are never faulted (they hold no frames to give back).
pub(crate) struct NoFrames;

impl crate::vma::shared::PutFrame for NoFrames {
    fn put_frame(&self, _frame: crate::platform::PhysFrame) {
        unreachable!("an object of a plan-only test held a frame")
    }
}
/// Where picture tests put page 0 of a picture.
pub(crate) const PIC_BASE: u64 = 0x10_0000;

pub(crate) struct Env {
    pub p: Arc<Emulated>,
    pub mem: Arc<Memory<Emulated>>,
    base: usize,
}

impl Env {
    /// A machine with `mib` MiB and `cpus` CPUs; the calling thread becomes CPU 0.
    pub fn new(mib: usize, cpus: usize) -> Env {
        let p = Arc::new(Emulated::new(mib, cpus));
        p.bind_cpu(0);
        let mem = Memory::new(p.clone()).unwrap();
        mem.quiesce();
        let base = p.free_frames();
        Env { p, mem, base }
    }

    pub fn mm(&self) -> AddressSpace<Emulated> {
        AddressSpace::new(&self.mem).unwrap()
    }

    /// Asserts every frame is back in the platform's pool (after deferred frees).
    pub fn assert_baseline(&self) {
        self.mem.quiesce();
        assert_eq!(self.p.free_frames(), self.base, "frames leaked");
    }
}

pub(crate) fn anon() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS
}

pub(crate) fn fixed() -> MapFlags {
    anon() | MapFlags::FIXED
}

/// The protection written as a picture character.
pub(crate) fn prot_char(p: Prot) -> char {
    if p.is_empty() {
        'n'
    } else if p.contains(Prot::EXEC) {
        'x'
    } else if p.contains(Prot::WRITE) {
        'w'
    } else {
        'r'
    }
}

pub(crate) fn prot_of(c: char) -> Prot {
    match c {
        'n' => Prot::empty(),
        'x' => Prot::READ | Prot::EXEC,
        'w' => Prot::READ | Prot::WRITE,
        _ => Prot::READ,
    }
}

/// A VMA's picture character: its protection's, upper case for a stack (`VM_GROWSDOWN`).
pub(crate) fn vma_char(v: &Vma) -> char {
    let c = prot_char(v.prot());
    if v.grows_down() {
        c.to_ascii_uppercase()
    } else {
        c
    }
}

/// Maps `prots` (one char per page, `' '` = leave unmapped, upper case = `MAP_GROWSDOWN`) at
/// [`PIC_BASE`], page by page, so merging happens as it would for separate calls.
pub(crate) fn draw(mm: &AddressSpace<Emulated>, prots: &str) {
    for (i, c) in prots.chars().enumerate() {
        if c != ' ' {
            let flags = if c.is_ascii_uppercase() {
                fixed() | MapFlags::GROWSDOWN
            } else {
                fixed()
            };
            let prot = prot_of(c.to_ascii_lowercase());
            mm.mmap(PIC_BASE + i as u64 * PAGE, PAGE, prot, flags)
                .unwrap();
        }
    }
}

/// The VMAs over `pages` pages from [`PIC_BASE`]: a letter per VMA (A, B, ... in address order)
/// and the protection of each page.
pub(crate) fn picture(mm: &AddressSpace<Emulated>, pages: usize) -> (String, String) {
    let end = PIC_BASE + pages as u64 * PAGE;
    let mut letters = String::new();
    let mut prots = String::new();
    let vmas = mm.vmas_in(PIC_BASE..end);
    for i in 0..pages as u64 {
        let a = PIC_BASE + i * PAGE;
        match vmas.iter().position(|v| v.contains(a)) {
            Some(n) => {
                letters.push((b'A' + n as u8) as char);
                prots.push(vma_char(&vmas[n]));
            }
            None => {
                letters.push(' ');
                prots.push(' ');
            }
        }
    }
    (letters, prots)
}

/// Sets its flag when dropped, including when the thread that owns it unwinds from a failed
/// assertion: threads of a scope that wait for the flag are released, so the test fails instead
/// of hanging in `thread::scope` (which joins them before passing the panic on).
pub(crate) struct SetOnDrop<'a>(pub &'a core::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, core::sync::atomic::Ordering::SeqCst);
    }
}

/// The address of page `i` of the picture window ([`PIC_BASE`]).
pub(crate) fn pic_page(i: u64) -> u64 {
    PIC_BASE + i * PAGE
}

/// Writes `v` at word 1 of picture page `i`, through the emulated MMU as user code would.
pub(crate) fn pic_write(mm: &AddressSpace<Emulated>, i: u64, v: u64) {
    assert_eq!(
        crate::platform::mmu::store(mm, pic_page(i) + 8, v, true),
        Ok(())
    );
}

/// Reads word 1 of picture page `i`, through the emulated MMU as user code would.
pub(crate) fn pic_read(mm: &AddressSpace<Emulated>, i: u64) -> u64 {
    crate::platform::mmu::load(mm, pic_page(i) + 8, true).unwrap()
}

/// What backs each of `pages` picture pages, for each of `mms`: `' '` no VMA, `.` no PTE, `0`
/// the zero frame, and a letter per frame (in order of first appearance over all of them: the
/// same letter on two sides is one shared frame).
pub(crate) fn frame_letters(
    env: &Env,
    mms: &[&AddressSpace<Emulated>],
    pages: u64,
) -> alloc::vec::Vec<String> {
    let zero = env.mem.frames().zero_frame();
    let mut letters: std::collections::HashMap<crate::platform::PhysFrame, char> =
        std::collections::HashMap::new();
    mms.iter()
        .map(|mm| {
            (0..pages)
                .map(|i| {
                    let e = mm.page_tables().lookup_pte(pic_page(i));
                    if mm.vmas_in(pic_page(i)..pic_page(i) + PAGE).is_empty() {
                        ' '
                    } else if !e.holds_frame() {
                        '.'
                    } else if e.frame() == zero {
                        '0'
                    } else {
                        let n = letters.len() as u8;
                        *letters.entry(e.frame()).or_insert((b'a' + n) as char)
                    }
                })
                .collect()
        })
        .collect()
}
