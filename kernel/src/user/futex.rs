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
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// The word waited on; `requeue` moves a waiter to another word (and bucket) under both
    /// buckets' locks.
    addr: AtomicU64,
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
        addr: AtomicU64::new(addr),
        bitset,
        thread: me,
        woken: AtomicBool::new(false),
    });
    let mut queued = false;
    loop {
        // The waiter's word, hence its bucket, may change while it is queued (`requeue`), but
        // only under the bucket's lock: the bucket read here is re-checked under that lock.
        let queue = current_bucket(mm.id(), &waiter);
        if !queued {
            // Fault the word in where faults may sleep; the check under the lock below then
            // normally finds it mapped.
            read_user::<u32>(addr).map_err(|Efault| WaitError::Fault)?;
        }
        let mut outcome: Option<Result<(), WaitError>> = None;
        sched::block_current(deadline, |_| {
            let Some(mut q) = lock_bucket_of(mm.id(), &waiter, queue) else {
                // Requeued meanwhile: look again.
                return false;
            };
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
                loop {
                    let queue = current_bucket(mm.id(), &waiter);
                    let mut q = queue.lock_irqsafe();
                    if !core::ptr::eq(queue, current_bucket(mm.id(), &waiter)) {
                        continue;
                    }
                    if waiter.woken.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    q.retain(|w| !Arc::ptr_eq(w, &waiter));
                    break;
                }
            }
            return result;
        }
    }
}

fn current_bucket(mm: u64, w: &Waiter) -> &'static Mutex<Vec<Arc<Waiter>>> {
    bucket(mm, w.addr.load(Ordering::Acquire))
}

/// Locks `queue` if it is still the waiter's bucket (interrupts are off).
fn lock_bucket_of<'a>(
    mm: u64,
    w: &Waiter,
    queue: &'a Mutex<Vec<Arc<Waiter>>>,
) -> Option<spin::MutexGuard<'a, Vec<Arc<Waiter>>>> {
    let q = queue.lock();
    core::ptr::eq(queue, current_bucket(mm, w)).then_some(q)
}

/// Wakes up to `n` waiters on `addr` in `mm` whose bitset shares a bit with `bitset`. Returns how
/// many it woke.
pub fn wake(mm: &Mm, addr: u64, n: usize, bitset: u32) -> usize {
    let queue = bucket(mm.id(), addr);
    let woken: Vec<Arc<Waiter>> = interrupts::without_interrupts(|| {
        let mut q = queue.lock();
        let mut out = Vec::new();
        q.retain(|w| {
            if out.len() < n
                && w.mm == mm.id()
                && w.addr.load(Ordering::Relaxed) == addr
                && w.bitset & bitset != 0
            {
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

/// `FUTEX_CMP_REQUEUE` (`expected` given) and `FUTEX_REQUEUE`: wakes up to `n_wake` waiters on
/// `from`, then moves up to `n_requeue` of the rest to wait on `to`. Returns the number woken
/// plus the number moved, as Linux does for both (its man page says only the woken count for
/// `FUTEX_REQUEUE`; the code and the differential test say otherwise). `EAGAIN` if `from` does
/// not hold `expected`.
pub fn requeue(
    mm: &Mm,
    from: u64,
    to: u64,
    n_wake: usize,
    n_requeue: usize,
    expected: Option<u32>,
) -> Result<usize, WaitError> {
    let id = mm.id();
    let (qa, qb) = (bucket(id, from), bucket(id, to));
    if expected.is_some() {
        read_user::<u32>(from).map_err(|Efault| WaitError::Fault)?;
    }
    let (woken, moved) = interrupts::without_interrupts(|| {
        // Two buckets in address order, one if they are the same.
        let (first, second) = if (qa as *const _ as usize) <= (qb as *const _ as usize) {
            (qa, qb)
        } else {
            (qb, qa)
        };
        let mut g1 = first.lock();
        let mut g2 = (!core::ptr::eq(first, second)).then(|| second.lock());
        if let Some(expected) = expected {
            match read_user::<u32>(from) {
                Ok(v) if v == expected => {}
                Ok(_) => return Err(WaitError::Again),
                Err(Efault) => return Err(WaitError::Fault),
            }
        }
        let (src, dst): (&mut Vec<Arc<Waiter>>, Option<&mut Vec<Arc<Waiter>>>) =
            if core::ptr::eq(first, qa) {
                (&mut g1, g2.as_deref_mut())
            } else {
                (g2.as_deref_mut().expect("two buckets"), Some(&mut g1))
            };
        let mut woken = Vec::new();
        let mut moving = Vec::new();
        src.retain(|w| {
            if w.mm != id || w.addr.load(Ordering::Relaxed) != from {
                return true;
            }
            if woken.len() < n_wake {
                w.woken.store(true, Ordering::Release);
                woken.push(w.clone());
                false
            } else if moving.len() < n_requeue {
                w.addr.store(to, Ordering::Release);
                moving.push(w.clone());
                false
            } else {
                true
            }
        });
        let moved = moving.len();
        match dst {
            Some(dst) => dst.extend(moving),
            None => src.extend(moving),
        }
        Ok((woken, moved))
    })?;
    let count = woken.len();
    for w in woken {
        sched::wake(w.thread.clone());
    }
    Ok(count + moved)
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
