//! A panic that aborts: the panic hook prints the message and where it was raised to stderr, then
//! calls `abort`, which raises SIGABRT at the process itself (`tkill`): it must end killed by
//! signal 6. The hook is the program's own because Rust's default one prints the thread id,
//! which differs between runs; this one prints facts only.

use std::panic;

fn main() {
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or("(not a string)");
        match info.location() {
            Some(l) => eprintln!("panicked at {}:{}: {msg}", l.file(), l.line()),
            None => eprintln!("panicked: {msg}"),
        }
        std::process::abort();
    }));
    println!("before");
    panic!("deliberate panic");
}
