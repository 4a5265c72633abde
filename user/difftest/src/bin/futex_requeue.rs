//! `FUTEX_CMP_REQUEUE` and `FUTEX_REQUEUE` (what musl's condition variables use): a waiter moved
//! from one word to another is woken by a wake on the second word, not the first; counts and
//! `EAGAIN` as Linux reports them.

use std::sync::atomic::AtomicU32;
use std::thread;
use std::time::Duration;

use difftest::sys::{Errno, syscall6};

static A: AtomicU32 = AtomicU32::new(0);
static B: AtomicU32 = AtomicU32::new(0);

const FUTEX: usize = 202;
/// `FUTEX_PRIVATE_FLAG`, on every operation here.
const PRIVATE: usize = 128;
const WAIT: usize = PRIVATE; // FUTEX_WAIT is 0
const WAKE: usize = 1 | PRIVATE;
const REQUEUE: usize = 3 | PRIVATE;
const CMP_REQUEUE: usize = 4 | PRIVATE;

fn futex(
    word: &AtomicU32,
    op: usize,
    val: usize,
    val2: usize,
    word2: &AtomicU32,
    val3: usize,
) -> Result<usize, Errno> {
    let w = word as *const AtomicU32 as usize;
    let w2 = word2 as *const AtomicU32 as usize;
    // SAFETY: futex on our own words; a wait only reads them.
    let r = unsafe { syscall6(FUTEX, [w, op, val, val2, w2, val3]) };
    if (-4095..0).contains(&r) {
        Err(Errno(-r as i32))
    } else {
        Ok(r as usize)
    }
}

/// A count, or the error.
fn outcome(r: &Result<usize, Errno>) -> String {
    match r {
        Ok(n) => n.to_string(),
        Err(e) => e.to_string(),
    }
}

fn wait_on_a() -> thread::JoinHandle<String> {
    thread::spawn(|| outcome(&futex(&A, WAIT, 0, 0, &A, 0)))
}

fn main() {
    let waiters: Vec<_> = (0..3).map(|_| wait_on_a()).collect();
    thread::sleep(Duration::from_millis(100));
    println!(
        "cmp_requeue with a stale value: {}",
        outcome(&futex(&A, CMP_REQUEUE, 0, 2, &B, 7))
    );
    println!(
        "cmp_requeue wake 1, move 2: {}",
        outcome(&futex(&A, CMP_REQUEUE, 1, 2, &B, 0))
    );
    println!(
        "wake on a after the move: {}",
        outcome(&futex(&A, WAKE, 10, 0, &A, 0))
    );
    thread::sleep(Duration::from_millis(50));
    println!(
        "plain requeue b to a, move 1: {}",
        outcome(&futex(&B, REQUEUE, 0, 1, &A, 0))
    );
    println!("wake on b: {}", outcome(&futex(&B, WAKE, 10, 0, &B, 0)));
    println!("wake on a: {}", outcome(&futex(&A, WAKE, 10, 0, &A, 0)));
    for (i, w) in waiters.into_iter().enumerate() {
        println!("waiter {i} returned: {}", w.join().unwrap());
    }
}
