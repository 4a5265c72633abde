//! `exit_group` (here `std::process::exit`) ends every thread of the process, whatever each is
//! doing: spinning in user mode, blocked on a condition variable, sleeping, blocked in `join`.
//! The process's exit code is the one `exit` was given.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

fn main() {
    let started = Arc::new(AtomicUsize::new(0));
    let never = Arc::new((Mutex::new(false), Condvar::new()));
    let spin = Arc::new(AtomicBool::new(true));
    for _ in 0..3 {
        let (started, spin) = (started.clone(), spin.clone());
        thread::spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            while spin.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
    }
    for _ in 0..3 {
        let (started, never) = (started.clone(), never.clone());
        thread::spawn(move || {
            let g = never.0.lock().unwrap();
            started.fetch_add(1, Ordering::SeqCst);
            let _g = never.1.wait_while(g, |set| !*set).unwrap();
        });
    }
    {
        let started = started.clone();
        thread::spawn(move || {
            started.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_secs(1000));
        });
    }
    {
        let started = started.clone();
        thread::spawn(move || {
            let sleeper = thread::spawn(|| thread::sleep(Duration::from_secs(1000)));
            started.fetch_add(1, Ordering::SeqCst);
            let _ = sleeper.join();
        });
    }
    while started.load(Ordering::SeqCst) < 8 {
        thread::yield_now();
    }
    // Let the waiters reach their waits.
    thread::sleep(Duration::from_millis(50));
    println!("8 threads running, waiting and sleeping; exiting with 3");
    std::process::exit(3);
}
