//! Hello world: one line, then the arguments after the program's name, one per line, then exit 0.
//! Checks the initial stack's argc/argv and that `write` to fd 1 works.

fn main() {
    println!("hello, world");
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("argc-1={}", args.len());
    for (i, a) in args.iter().enumerate() {
        println!("arg[{}]={a}", i + 1);
    }
}
