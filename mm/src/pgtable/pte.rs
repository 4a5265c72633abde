//! [`Pte`]: the value of a page-table entry, in the hardware format.
//!
//! Entries live in memory as atomic `u64`s (the MMU sets Accessed/Dirty behind the kernel's
//! back); a `Pte` is what one load returns or one store writes, so the atomics keep their plain
//! word and the code that reads an entry asks it questions instead of masking bits.

use core::fmt;

use crate::platform::{PageTableFlags, PhysAddr, PhysFrame};

/// Physical-address bits of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Software bit: a non-present PTE that still owns its frame (a `PROT_NONE` mapping).
pub const PTE_PROTNONE: PageTableFlags = PageTableFlags::BIT_9;

/// The value of a page-table entry: a frame and [`PageTableFlags`], or empty.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The empty entry (Linux's `pte_none`): nothing mapped, nothing held.
    pub const EMPTY: Pte = Pte(0);

    /// An entry pointing to `frame` with `flags` (`mk_pte`).
    pub fn new(frame: PhysFrame, flags: PageTableFlags) -> Self {
        Pte(frame.start_address().as_u64() | flags.bits())
    }

    /// The entry whose memory word is `bits`.
    pub const fn from_bits(bits: u64) -> Self {
        Pte(bits)
    }

    /// The memory word of the entry.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether the entry is empty (all bits clear).
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags.
    pub fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0)
    }

    /// The frame it points to (meaningful when it is present or `PROT_NONE`).
    pub fn frame(self) -> PhysFrame {
        PhysFrame::containing_address(PhysAddr::new(self.0 & ADDR_MASK))
    }

    /// The same frame with `flags` instead of the entry's own.
    pub fn with_flags(self, flags: PageTableFlags) -> Self {
        Pte(self.0 & ADDR_MASK | flags.bits())
    }

    fn has(self, flag: PageTableFlags) -> bool {
        self.0 & flag.bits() != 0
    }

    /// Whether the MMU may use it (`pte_present`).
    pub fn present(self) -> bool {
        self.has(PageTableFlags::PRESENT)
    }

    /// Whether it allows writes (`pte_write`).
    pub fn writable(self) -> bool {
        self.has(PageTableFlags::WRITABLE)
    }

    /// Whether user mode may use it.
    pub fn user(self) -> bool {
        self.has(PageTableFlags::USER_ACCESSIBLE)
    }

    /// Whether the MMU marked it used since the bit was last cleared (`pte_young`).
    pub fn accessed(self) -> bool {
        self.has(PageTableFlags::ACCESSED)
    }

    /// Whether the MMU marked it written since the bit was last cleared (`pte_dirty`).
    pub fn dirty(self) -> bool {
        self.has(PageTableFlags::DIRTY)
    }

    /// Whether it maps a frame or, `PROT_NONE`, holds one without mapping it: the entries
    /// whose frame a zap must release.
    pub fn holds_frame(self) -> bool {
        self.0 & (PageTableFlags::PRESENT | PTE_PROTNONE).bits() != 0
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("Pte::EMPTY");
        }
        write!(
            f,
            "Pte({:#x}, {:?})",
            self.frame().start_address().as_u64(),
            self.flags()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_keeps_its_frame_and_flags_apart() {
        let frame = PhysFrame::containing_address(PhysAddr::new(0x1234_5000));
        let flags = PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | PageTableFlags::NO_EXECUTE
            | PageTableFlags::DIRTY;
        let pte = Pte::new(frame, flags);
        assert_eq!((pte.frame(), pte.flags()), (frame, flags));
        assert!(pte.present() && pte.writable() && pte.dirty() && pte.holds_frame());
        assert!(!pte.user() && !pte.accessed() && !pte.is_empty());
        let none = pte.with_flags(PTE_PROTNONE);
        assert_eq!((none.frame(), none.flags()), (frame, PTE_PROTNONE));
        assert!(!none.present() && none.holds_frame());
        assert!(!Pte::EMPTY.holds_frame() && Pte::EMPTY.is_empty());
        assert_eq!(Pte::from_bits(pte.bits()), pte);
    }
}
