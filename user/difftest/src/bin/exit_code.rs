//! Exit codes pass through: prints a line, then `exit(42)` (`exit_group`), no unwinding.

fn main() {
    println!("exiting with 42");
    std::process::exit(42);
}
