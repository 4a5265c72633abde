//! `fork` with copy-on-write: parent and child each write every page of a private mapping
//! (and the heap) and must see only their own writes; `wait4` reports exit codes and a
//! signal death, `WNOHANG` and `ECHILD`; `waitid` by pid; several children reaped with pid -1
//! in any order. Prints facts only (no pids).

use difftest::sys::{self, Mapping};
use std::sync::atomic::Ordering;

const PAGES: usize = 32;
const WORDS_PER_PAGE: usize = 512;

fn fill(m: &Mapping, base: u64) {
    for (i, w) in m.words().iter().enumerate().step_by(WORDS_PER_PAGE) {
        w.store(base + i as u64, Ordering::Relaxed);
    }
}

fn holds(m: &Mapping, base: u64) -> bool {
    m.words()
        .iter()
        .enumerate()
        .step_by(WORDS_PER_PAGE)
        .all(|(i, w)| w.load(Ordering::Relaxed) == base + i as u64)
}

fn exit_code(status: i32) -> String {
    if status & 0x7f == 0 {
        format!("exited {}", (status >> 8) & 0xff)
    } else {
        format!("killed by signal {}", status & 0x7f)
    }
}

fn main() {
    let m = Mapping::anonymous(PAGES).expect("mmap");
    fill(&m, 1000);
    let mut heap: Vec<u64> = (0..10_000).collect();
    let me = sys::getpid();
    // SAFETY: single-threaded.
    let pid = unsafe { sys::fork() }.expect("fork");
    if pid == 0 {
        let inherited = holds(&m, 1000) && heap[9_999] == 9_999;
        fill(&m, 2000);
        heap[9_999] = 1;
        println!("child: inherited the parent's memory: {inherited}");
        println!(
            "child: sees its own writes: {}",
            holds(&m, 2000) && heap[9_999] == 1
        );
        println!("child: getppid is the parent: {}", sys::getppid() == me);
        sys::exit_group(7);
    }
    fill(&m, 3000);
    heap[9_999] = 2;
    let (got, status) = sys::wait4(pid as isize, 0).expect("wait4");
    println!(
        "parent: reaped the child: {}, {}",
        got == pid,
        exit_code(status)
    );
    println!(
        "parent: sees only its own writes: {}",
        holds(&m, 3000) && heap[9_999] == 2
    );
    println!(
        "parent: wait4 with no child: {}",
        sys::outcome(&sys::wait4(-1, 0))
    );

    // A child that dies of SIGSEGV; WNOHANG before it can have ended is not an error.
    // SAFETY: single-threaded.
    let pid = unsafe { sys::fork() }.expect("fork");
    if pid == 0 {
        // SAFETY: the write faults and ends the child, as intended.
        unsafe { sys::store_byte(0, 1) };
        sys::exit_group(0);
    }
    let early = sys::wait4(pid as isize, 1).expect("wait4 WNOHANG");
    println!(
        "parent: WNOHANG gives no pid or this one: {}",
        early.0 == 0 || early.0 == pid
    );
    let status = if early.0 == pid {
        early.1
    } else {
        sys::wait4(pid as isize, 0).expect("wait4").1
    };
    println!("parent: segfaulting child {}", exit_code(status));

    // waitid(P_PID, pid, WEXITED).
    // SAFETY: single-threaded.
    let pid = unsafe { sys::fork() }.expect("fork");
    if pid == 0 {
        sys::exit_group(3);
    }
    let info = sys::waitid(1, pid, 4).expect("waitid");
    println!(
        "parent: waitid signo {} code {} status {} pid matches {}",
        info[0],
        info[2],
        info[6],
        info[4] as usize == pid
    );

    // Four children, each changing its copy and exiting with its number; reaped in any order.
    let mut pids = Vec::new();
    for k in 1..=4 {
        // SAFETY: single-threaded.
        let pid = unsafe { sys::fork() }.expect("fork");
        if pid == 0 {
            fill(&m, 10_000 * k);
            sys::exit_group(if holds(&m, 10_000 * k) { k as i32 } else { 100 });
        }
        pids.push(pid);
    }
    let mut sum = 0;
    for _ in 0..4 {
        let (got, status) = sys::wait4(-1, 0).expect("wait4");
        assert!(pids.contains(&got));
        sum += (status >> 8) & 0xff;
    }
    println!("parent: four children's exit codes add up to {sum}");
    println!(
        "parent: still sees only its own writes: {}",
        holds(&m, 3000)
    );
    println!("parent: then: {}", sys::outcome(&sys::wait4(-1, 1)));
}
