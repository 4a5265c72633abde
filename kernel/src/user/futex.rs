//! Futexes on user memory (Linux's `futex(2)`: `WAIT`, `WAKE`, their `BITSET` forms).
//!
//! A waiter is keyed by its address space and the word's address. `wait` checks the word and
//! queues itself under its bucket's lock, and `wake` dequeues under the same lock, so a wake that
//! follows a change of the word cannot miss a waiter that saw the old value (Linux's ordering
//! argument in `kernel/futex/waitwake.c`). The word is read under the lock with interrupts off,
//! where a fault cannot be resolved: the read then fails (the copy's fix-up), the lock is dropped,
//! the page faulted in with a normal read, and the check retried.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use x86_64::instructions::interrupts;

use crate::arch::uaccess::{Efault, read_user};
use crate::platform::Mm;
use crate::sched::{self, Thread};

/// Why a wait ended without a wake-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The word did not hold the expected value (`EAGAIN`).
    Again,
    /// The deadline passed (`ETIMEDOUT`).
    TimedOut,
    /// The process is being killed (`EINTR`).
    Interrupted,
    /// The word is not readable (`EFAULT`).
    Fault,
}

struct Waiter {
    mm: u64,
    addr: u64,
    bitset: u32,
    thread: Arc<Thread>,
    /// Set by the waker that took it off the queue.
    woken: AtomicBool,
}

const BUCKETS: usize = 64;
static QUEUES: [Mutex<Vec<Arc<Waiter>>>; BUCKETS] = [const { Mutex::new(Vec::new()) }; BUCKETS];

fn bucket(mm: u64, addr: u64) -> &'static Mutex<Vec<Arc<Waiter>>> {
    let h = (addr >> 2) ^ mm.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    &QUEUES[(h.wrapping_mul(0x9e37_79b9) >> 7) as usize % BUCKETS]
}

/// Blocks while the `u32` at `addr` holds `expected`, until a matching `wake`, the `deadline`
/// (`apic::now_ns` time) or the process being killed (`killed()`).
pub fn wait(
    mm: &Mm,
    addr: u64,
    expected: u32,
    bitset: u32,
    deadline: Option<u64>,
    killed: impl Fn() -> bool,
) -> Result<(), WaitError> {
    let me = sched::current();
    let waiter = Arc::new(Waiter {
        mm: mm.id(),
        addr,
        bitset,
        thread: me,
        woken: AtomicBool::new(false),
    });
    let queue = bucket(mm.id(), addr);
    let mut queued = false;
    loop {
        if !queued {
            // Fault the word in where faults may sleep; the check under the lock below then
            // normally finds it mapped.
            read_user::<u32>(addr).map_err(|Efault| WaitError::Fault)?;
        }
        let mut outcome: Option<Result<(), WaitError>> = None;
        sched::block_current(deadline, |_| {
            let mut q = queue.lock();
            if waiter.woken.load(Ordering::Acquire) {
                outcome = Some(Ok(()));
                return false;
            }
            if !queued {
                match read_user::<u32>(addr) {
                    // Not mapped after all (unmapped meanwhile): fault it in again, unlocked.
                    Err(Efault) => return false,
                    Ok(v) if v != expected => {
                        outcome = Some(Err(WaitError::Again));
                        return false;
                    }
                    Ok(_) => {
                        q.push(waiter.clone());
                        queued = true;
                    }
                }
            }
            if killed() {
                outcome = Some(Err(WaitError::Interrupted));
                return false;
            }
            if deadline.is_some_and(|d| crate::arch::apic::now_ns() >= d) {
                outcome = Some(Err(WaitError::TimedOut));
                return false;
            }
            true
        });
        if let Some(result) = outcome {
            if result.is_err() && queued {
                // Leave the queue, unless a waker took us off meanwhile: then that wake counts.
                let mut q = queue.lock_irqsafe();
                if waiter.woken.load(Ordering::Acquire) {
                    return Ok(());
                }
                q.retain(|w| !Arc::ptr_eq(w, &waiter));
            }
            return result;
        }
    }
}

/// Wakes up to `n` waiters on `addr` in `mm` whose bitset shares a bit with `bitset`. Returns how
/// many it woke.
pub fn wake(mm: &Mm, addr: u64, n: usize, bitset: u32) -> usize {
    let queue = bucket(mm.id(), addr);
    let woken: Vec<Arc<Waiter>> = interrupts::without_interrupts(|| {
        let mut q = queue.lock();
        let mut out = Vec::new();
        q.retain(|w| {
            if out.len() < n && w.mm == mm.id() && w.addr == addr && w.bitset & bitset != 0 {
                w.woken.store(true, Ordering::Release);
                out.push(w.clone());
                false
            } else {
                true
            }
        });
        out
    });
    let count = woken.len();
    for w in woken {
        sched::wake(w.thread.clone());
    }
    count
}

/// A spin lock taken with interrupts off for its whole hold.
trait LockIrqSafe<T> {
    fn lock_irqsafe(&self) -> IrqSafeGuard<'_, T>;
}

struct IrqSafeGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    were_enabled: bool,
}

impl<T> core::ops::Deref for IrqSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held")
    }
}

impl<T> core::ops::DerefMut for IrqSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held")
    }
}

impl<T> Drop for IrqSafeGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.were_enabled {
            interrupts::enable();
        }
    }
}

impl<T> LockIrqSafe<T> for Mutex<T> {
    fn lock_irqsafe(&self) -> IrqSafeGuard<'_, T> {
        let were_enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqSafeGuard {
            guard: Some(self.lock()),
            were_enabled,
        }
    }
}
