//! Kernel stacks with guard pages: each stack sits in a fixed-size slot of a reserved region of
//! the upper half, with the slot's lowest page left unmapped, so running off the end of a stack
//! faults (and the double-fault handler, on its own IST stack, reports it) instead of silently
//! corrupting a neighbour.

use alloc::vec::Vec;

use spin::Mutex;
use x86_64::VirtAddr;
use x86_64::instructions::interrupts;
use x86_64::structures::paging::{Page, PageTableFlags};

use super::{FRAMES, map_kernel_page, unmap_kernel_page};

/// Start of the region stacks are carved from (a PML4 slot of its own).
const REGION_START: u64 = 0xffff_e000_0000_0000;
/// Bytes per slot: the guard page plus up to 31 stack pages.
const SLOT: u64 = 128 * 1024;
/// Slots in the region.
const SLOTS: u64 = 64 * 1024;

/// Free slots (indexes), and the first never-used slot.
static SLOTS_FREE: Mutex<(Vec<u64>, u64)> = Mutex::new((Vec::new(), 0));

/// A mapped kernel stack. Unmapped and its frames freed on drop.
#[derive(Debug)]
pub struct Stack {
    slot: u64,
    pages: u64,
}

/// Why a stack could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum StackError {
    TooLarge,
    NoSlot,
    OutOfMemory,
}

impl Stack {
    /// A stack of `bytes` (rounded up to pages) below a guard page.
    pub fn new(bytes: usize) -> Result<Stack, StackError> {
        reap();
        let pages = (bytes as u64).div_ceil(4096);
        if pages == 0 || pages >= SLOT / 4096 {
            return Err(StackError::TooLarge);
        }
        let slot = {
            let _np = NoPreempt::new();
            let mut s = SLOTS_FREE.lock();
            match s.0.pop() {
                Some(slot) => slot,
                None if s.1 < SLOTS => {
                    s.1 += 1;
                    s.1 - 1
                }
                None => return Err(StackError::NoSlot),
            }
        };
        let stack = Stack { slot, pages: 0 };
        let mut stack = stack;
        let top = stack.top().as_u64();
        for i in 0..pages {
            let page = Page::containing_address(VirtAddr::new(top - (i + 1) * 4096));
            let frame = FRAMES.alloc().ok_or(StackError::OutOfMemory)?;
            let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            // SAFETY: the page lies in this slot, which only this stack uses, and the frame is
            // fresh.
            if unsafe { map_kernel_page(page, frame, flags) }.is_err() {
                // SAFETY: the frame was not mapped; it is still ours alone.
                unsafe { FRAMES.free(frame) };
                return Err(StackError::OutOfMemory);
            }
            stack.pages = i + 1;
        }
        Ok(stack)
    }

    /// One past the highest byte: the initial stack pointer.
    pub fn top(&self) -> VirtAddr {
        VirtAddr::new(REGION_START + (self.slot + 1) * SLOT)
    }

    /// The unmapped page below the stack.
    pub fn guard(&self) -> VirtAddr {
        VirtAddr::new(REGION_START + self.slot * SLOT)
    }
}

/// Dropped stacks waiting to be unmapped: a stack is often dropped by the scheduler with
/// interrupts off (an exited thread), where no shootdown can be sent. `Stack::new` reaps them.
static ZOMBIES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

impl Drop for Stack {
    fn drop(&mut self) {
        interrupts::without_interrupts(|| ZOMBIES.lock().push((self.slot, self.pages)));
    }
}

/// Unmaps dropped stacks (`Stack::new` and idle CPUs call this), shoots their pages out of every CPU's TLB (a thread may have run on
/// any of them), and only then frees the frames and the slot: no stale translation can reach a
/// frame after it is reused.
///
/// Returns once no reaping is in progress anywhere, so that afterwards the frame count is exact
/// (a reap on another CPU may hold stacks it took off the list but has not freed yet).
pub fn reap() {
    if interrupts::are_enabled() {
        let _np = NoPreempt::new();
        let _reaping = REAPING.lock();
        reap_locked();
    }
}

/// Reaps unless another CPU is at it (for idle CPUs, which have better things to do than wait).
pub fn try_reap() {
    if interrupts::are_enabled() {
        let _np = NoPreempt::new();
        if let Some(_reaping) = REAPING.try_lock() {
            reap_locked();
        }
    }
}

/// Serializes reapers; see `reap`. Taken only with preemption disabled, from before the lock
/// until after it: a holder preempted in between (say an idle thread, which runs only when
/// nothing else can) would leave every other reaper spinning on it for good.
static REAPING: Mutex<()> = Mutex::new(());

fn reap_locked() {
    if interrupts::without_interrupts(|| ZOMBIES.lock().is_empty()) {
        return;
    }
    let zombies = interrupts::without_interrupts(|| core::mem::take(&mut *ZOMBIES.lock()));
    for (slot, pages) in zombies {
        let top = REGION_START + (slot + 1) * SLOT;
        let frames: Vec<_> = (1..=pages)
            .filter_map(|i| {
                let page = Page::containing_address(VirtAddr::new(top - i * 4096));
                // SAFETY: the stack was dropped: nothing runs on it any more.
                unsafe { unmap_kernel_page(page) }
            })
            .collect();
        crate::arch::tlb::shootdown(u64::MAX, VirtAddr::new(top - pages * 4096), pages);
        for frame in frames {
            // SAFETY: unmapped and shot down everywhere; the stack was the frame's only user.
            unsafe { FRAMES.free(frame) };
        }
        SLOTS_FREE.lock().0.push(slot);
    }
}

use crate::arch::percpu::NoPreempt;
