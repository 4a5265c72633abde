//! Timed waits, all built on `futex` with timeouts and `clock_nanosleep`: a `Condvar` wait that
//! times out and one that is notified first, `thread::sleep` against `Instant`, `park_timeout`
//! with and without an `unpark`, and `recv_timeout` on a channel. Prints booleans only: whether a
//! wait timed out, and whether the time it took is on the right side of its bound.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(10);
/// A bound no wait reaches unless it failed to wake up: waking before it is the fact printed.
const LONG: Duration = Duration::from_secs(10);

fn main() {
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let (lock, cv) = &*pair;

    // Nobody notifies: the wait must end by its timeout, not before.
    let t = Instant::now();
    let (g, r) = cv.wait_timeout(lock.lock().unwrap(), SHORT).unwrap();
    drop(g);
    println!("condvar unnotified timed_out={}", r.timed_out());
    println!("condvar unnotified waited>=10ms={}", t.elapsed() >= SHORT);

    // Another thread sets the flag and notifies while this one waits with a long timeout.
    let notifier = {
        let pair = pair.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            *pair.0.lock().unwrap() = true;
            pair.1.notify_one();
        })
    };
    let t = Instant::now();
    let (g, r) = cv
        .wait_timeout_while(lock.lock().unwrap(), LONG, |set| !*set)
        .unwrap();
    println!("condvar notified timed_out={} flag={}", r.timed_out(), *g);
    println!("condvar notified before timeout={}", t.elapsed() < LONG);
    drop(g);
    notifier.join().unwrap();

    let t = Instant::now();
    thread::sleep(SHORT);
    println!("sleep 10ms elapsed>=10ms={}", t.elapsed() >= SHORT);

    // A token left by `unpark` makes the next park return at once.
    thread::current().unpark();
    let t = Instant::now();
    thread::park_timeout(LONG);
    println!(
        "park after unpark returned before timeout={}",
        t.elapsed() < LONG
    );

    let t = Instant::now();
    thread::park_timeout(SHORT);
    println!("park_timeout 10ms elapsed>=10ms={}", t.elapsed() >= SHORT);

    let main = thread::current();
    let unparker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        main.unpark();
    });
    let t = Instant::now();
    thread::park_timeout(LONG);
    println!(
        "park unparked by thread before timeout={}",
        t.elapsed() < LONG
    );
    unparker.join().unwrap();

    let (tx, rx) = mpsc::channel::<u32>();
    let t = Instant::now();
    let r = rx.recv_timeout(SHORT);
    println!(
        "recv_timeout empty timeout={}",
        r == Err(RecvTimeoutError::Timeout)
    );
    println!("recv_timeout empty elapsed>=10ms={}", t.elapsed() >= SHORT);
    let sender = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        tx.send(7).unwrap();
    });
    println!("recv_timeout sent={:?}", rx.recv_timeout(LONG));
    sender.join().unwrap();
}
