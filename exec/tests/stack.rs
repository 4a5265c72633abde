//! The initial stack, read back by a separate reader that follows the System V x86-64 ABI's
//! description of process entry: every field, pointer and alignment is checked.

use exec::elf::{Plan, plan};
use exec::stack::{
    InitialStack, MAX_ARG_BYTES, MAX_ARG_STRLEN, Machine, StackError, auxv::*, build,
};
use proptest::prelude::*;

const TOP: u64 = 0x7fff_ffff_f000;
const PIE: &[u8] = include_bytes!("data/static-pie");

fn test_plan() -> Plan {
    plan(PIE, 0x5555_5555_4000).unwrap()
}

fn machine(execfn: &str) -> Machine<'_> {
    Machine {
        execfn,
        random: *b"0123456789abcdef",
        hwcap: 0x178b_fbff,
        hwcap2: 2,
        uid: 1000,
        euid: 1001,
        gid: 100,
        egid: 101,
    }
}

/// The stack as the program sees it at entry.
#[derive(Debug)]
struct Entry {
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    auxv: Vec<(u64, u64)>,
    /// Lowest and highest address + 1 of everything the pointers reach.
    highest_table_byte: u64,
}

struct Reader<'a> {
    s: &'a InitialStack,
    top: u64,
}

impl Reader<'_> {
    fn word(&self, addr: u64) -> u64 {
        assert!(
            addr >= self.s.rsp && addr + 8 <= self.top,
            "word at {addr:#x} outside the stack"
        );
        let at = (addr - self.s.rsp) as usize;
        u64::from_le_bytes(self.s.bytes[at..at + 8].try_into().unwrap())
    }

    fn cstr(&self, addr: u64) -> Vec<u8> {
        assert!(
            addr >= self.s.rsp && addr < self.top,
            "string at {addr:#x} outside the stack"
        );
        let rest = &self.s.bytes[(addr - self.s.rsp) as usize..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .expect("unterminated string");
        rest[..len].to_vec()
    }

    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        assert!(addr >= self.s.rsp && addr + len as u64 <= self.top);
        &self.s.bytes[(addr - self.s.rsp) as usize..][..len]
    }

    fn entry(&self) -> Entry {
        let mut at = self.s.rsp;
        let mut next = || {
            let w = self.word(at);
            at += 8;
            w
        };
        let argc = next();
        let argv_ptrs: Vec<u64> = (0..argc).map(|_| next()).collect();
        assert_eq!(next(), 0, "argv is not NULL-terminated");
        let mut env_ptrs = Vec::new();
        loop {
            match next() {
                0 => break,
                p => env_ptrs.push(p),
            }
        }
        let mut auxv = Vec::new();
        loop {
            let (id, value) = (next(), next());
            auxv.push((id, value));
            if id == AT_NULL {
                break;
            }
        }
        Entry {
            argv: argv_ptrs.iter().map(|&p| self.cstr(p)).collect(),
            envp: env_ptrs.iter().map(|&p| self.cstr(p)).collect(),
            auxv,
            highest_table_byte: at,
        }
    }
}

fn aux(e: &Entry, id: u64) -> u64 {
    let found: Vec<u64> = e
        .auxv
        .iter()
        .filter(|(i, _)| *i == id)
        .map(|&(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "auxv entry {id}: {:?}", e.auxv);
    found[0]
}

/// Builds a stack and checks everything about it; returns what the program would see.
fn build_and_check(top: u64, argv: &[Vec<u8>], envp: &[Vec<u8>]) -> (InitialStack, Entry) {
    let p = test_plan();
    let m = machine("/bin/prog");
    let s = build(top, argv, envp, &p, &m).unwrap();
    assert_eq!(s.rsp % 16, 0, "rsp is not 16-byte aligned at argc");
    assert_eq!(s.rsp + s.bytes.len() as u64, top);
    let r = Reader { s: &s, top };
    let e = r.entry();

    let want_argv: Vec<Vec<u8>> = if argv.is_empty() {
        vec![vec![]]
    } else {
        argv.to_vec()
    };
    assert_eq!(e.argv, want_argv);
    assert_eq!(e.envp, envp);

    let ids: Vec<u64> = e.auxv.iter().map(|&(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            AT_HWCAP,
            AT_PAGESZ,
            AT_CLKTCK,
            AT_PHDR,
            AT_PHENT,
            AT_PHNUM,
            AT_BASE,
            AT_FLAGS,
            AT_ENTRY,
            AT_UID,
            AT_EUID,
            AT_GID,
            AT_EGID,
            AT_SECURE,
            AT_RANDOM,
            AT_HWCAP2,
            AT_EXECFN,
            AT_PLATFORM,
            AT_NULL
        ]
    );
    assert_eq!(aux(&e, AT_HWCAP), m.hwcap);
    assert_eq!(aux(&e, AT_HWCAP2), m.hwcap2);
    assert_eq!(aux(&e, AT_PAGESZ), 4096);
    assert_eq!(aux(&e, AT_CLKTCK), 100);
    assert_eq!(aux(&e, AT_PHDR), p.phdr);
    assert_eq!(aux(&e, AT_PHENT), 56);
    assert_eq!(aux(&e, AT_PHNUM), p.phnum);
    assert_eq!(aux(&e, AT_BASE), 0);
    assert_eq!(aux(&e, AT_FLAGS), 0);
    assert_eq!(aux(&e, AT_ENTRY), p.entry);
    assert_eq!((aux(&e, AT_UID), aux(&e, AT_EUID)), (1000, 1001));
    assert_eq!((aux(&e, AT_GID), aux(&e, AT_EGID)), (100, 101));
    assert_eq!(aux(&e, AT_SECURE), 0);
    assert_eq!(aux(&e, AT_NULL), 0);
    let random = aux(&e, AT_RANDOM);
    assert_eq!(r.bytes(random, 16), &m.random);
    assert_eq!(random, s.random);
    assert_eq!(r.cstr(aux(&e, AT_EXECFN)), b"/bin/prog");
    assert_eq!(r.cstr(aux(&e, AT_PLATFORM)), b"x86_64");

    // Linux's order from the top: a zero word, execfn, envp strings, argv strings, (align)
    // platform, random, (pad) auxv.
    assert_eq!(r.word(top - 8), 0);
    assert_eq!(aux(&e, AT_EXECFN), top - 8 - b"/bin/prog\0".len() as u64);
    assert_eq!(s.env_end, aux(&e, AT_EXECFN));
    let strings: usize = want_argv.iter().chain(envp).map(|a| a.len() + 1).sum();
    assert_eq!(s.arg_start, s.env_end - strings as u64);
    assert_eq!(s.arg_end, s.env_start);
    assert_eq!(
        r.word(s.rsp + 8),
        s.arg_start,
        "argv[0] is the lowest string"
    );
    assert_eq!(aux(&e, AT_PLATFORM), (s.arg_start & !15) - 7);
    assert_eq!(random, aux(&e, AT_PLATFORM) - 16);
    assert!(
        e.highest_table_byte <= random,
        "auxv runs into the random bytes"
    );
    assert!(
        random - e.highest_table_byte < 32,
        "more padding than alignment needs"
    );
    (s, e)
}

#[test]
fn a_typical_stack() {
    let argv = [b"hello".to_vec(), b"two words".to_vec(), b"".to_vec()];
    let envp = [b"PATH=/bin".to_vec(), b"LANG=C.UTF-8".to_vec()];
    build_and_check(TOP, &argv, &envp);
}

#[test]
fn empty_argv_becomes_one_empty_string() {
    let (_, e) = build_and_check(TOP, &[], &[]);
    assert_eq!(e.argv, [Vec::<u8>::new()]);
}

#[test]
fn every_alignment_of_the_strings() {
    // The strings' total length in every residue mod 16, and a top that is not aligned.
    for n in 0..32 {
        let argv = [vec![b'a'; n]];
        build_and_check(TOP, &argv, &[]);
        build_and_check(TOP - 3, &argv, &[b"X=1".to_vec()]);
    }
}

#[test]
fn bad_input_is_an_error() {
    let p = test_plan();
    let m = machine("/bin/prog");
    assert_eq!(
        build(TOP, &[b"a\0b".as_slice()], &[] as &[&[u8]], &p, &m),
        Err(StackError::Nul {
            index: 0,
            env: false
        })
    );
    assert_eq!(
        build(TOP, &["x"], &["A=1", "B\0=2"], &p, &m),
        Err(StackError::Nul {
            index: 1,
            env: true
        })
    );
    let long = vec![b'x'; MAX_ARG_STRLEN];
    assert_eq!(
        build(TOP, &[long.as_slice()], &[] as &[&[u8]], &p, &m),
        Err(StackError::StringTooLong {
            index: 0,
            env: false,
            len: MAX_ARG_STRLEN + 1
        })
    );
    let ok = vec![b'x'; MAX_ARG_STRLEN - 1];
    assert!(build(TOP, &[ok.as_slice()], &[] as &[&[u8]], &p, &m).is_ok());
    let many = vec![ok.as_slice(); MAX_ARG_BYTES / MAX_ARG_STRLEN];
    assert!(matches!(
        build(TOP, &many, &[] as &[&[u8]], &p, &m),
        Err(StackError::TooBig(_))
    ));
    for top in [0, 8, 200, 400] {
        assert!(matches!(
            build(top, &["prog"], &["A=1"], &p, &m),
            Err(StackError::TopTooLow { .. })
        ));
    }
    for e in [
        StackError::TooBig(1),
        StackError::TopTooLow { top: 1, size: 2 },
    ] {
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn a_stack_just_fitting_above_zero() {
    // The lowest top that works leaves rsp at or just above 0.
    let p = test_plan();
    let m = machine("/bin/prog");
    let top = (0..4096u64)
        .find(|&t| build(t, &["prog"], &[] as &[&str], &p, &m).is_ok())
        .unwrap();
    build_and_check(top, &[b"prog".to_vec()], &[]);
}

fn strings() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(1u8..=255, 0..200), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_argv_and_envp_read_back(argv in strings(), envp in strings(), top_off in 0u64..64) {
        build_and_check(TOP - top_off, &argv, &envp);
    }
}
