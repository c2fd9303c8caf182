//! The seccomp side of the session policy as **one** classic BPF program
//! (sans I/O: rules in, instructions out; `sys` installs them).
//!
//! Why not one program per errno, as a general filter compiler makes them:
//! the kernel skips the filters entirely for a system call whose result is
//! the same whatever its arguments (its per-filter "always allow" cache),
//! but for one whose rules read arguments (ioctl, socket, clone, ...) it
//! runs *every* installed program, and each run costs ~20 ns on these
//! machines (bench/README.md, "sessiond"). One program, with the calls that
//! have argument rules tested first, costs one run.
//!
//! Layout of the program:
//!
//! ```text
//!   A = arch;  if A != ARCH            -> KILL_PROCESS
//!   A = nr;    if A >= X32_SYSCALL_BIT -> ERRNO(ENOSYS)   (no x32 ABI in a session)
//!   if A == nr1 { rules of nr1; ALLOW }                     one block per
//!   if A == nr2 { rules of nr2; ALLOW }                     system call,
//!   ...                                                     conditional first
//!   ALLOW
//! ```
//!
//! A block's rules are tried in order; a rule is a conjunction of
//! `(word & mask) == value` tests on 32-bit words of `seccomp_data`, and
//! returns its own value (an `ERRNO`) when they all hold.

use std::collections::BTreeMap;

use thiserror::Error;

/// `AUDIT_ARCH_X86_64` (linux/audit.h).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// System calls of the x32 ABI have this bit set in their number, under
/// the x86_64 audit arch.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `SECCOMP_RET_*` (linux/seccomp.h).
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// The kernel's limit on a filter's length (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
/// BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_ALU (0x04) | BPF_AND (0x50) | BPF_K (0x00).
const BPF_ALU_AND_K: u16 = 0x54;
/// BPF_JMP (0x05) | BPF_JEQ (0x10) | BPF_K.
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_JMP (0x05) | BPF_JGE (0x30) | BPF_K.
const BPF_JMP_JGE_K: u16 = 0x35;
/// BPF_RET (0x06) | BPF_K.
const BPF_RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

/// The offset of the low (`high == false`) or high 32 bits of system call
/// argument `index` (0..6) in `seccomp_data` (little endian).
pub fn arg_word(index: u8, high: bool) -> Option<u32> {
    (index < 6).then(|| 16 + 8 * u32::from(index) + if high { 4 } else { 0 })
}

/// `(word at offset & mask) == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Test {
    pub offset: u32,
    pub mask: u32,
    pub value: u32,
}

/// When system call `nr` is made and every test holds, the filter returns
/// `ret`. No tests: always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub nr: u32,
    pub tests: Vec<Test>,
    pub ret: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("a test of system call {nr} can never hold: value {value:#x} has bits outside mask {mask:#x}")]
    NeverHolds { nr: u32, mask: u32, value: u32 },
    #[error("the rules of system call {0} need more than 255 instructions")]
    BlockTooLong(u32),
    #[error("the program needs {0} instructions (the kernel takes at most 4096)")]
    TooLong(usize),
}

/// A compiled filter: instructions in the kernel's layout.
#[derive(Debug, Clone)]
pub struct Program(Vec<libc::sock_filter>);

impl Program {
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.0
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Compiles `rules` for `arch`: everything they do not match is allowed.
pub fn compile(arch: u32, rules: &[Rule]) -> Result<Program, CompileError> {
    // Per system call, its rules in table order.
    let mut by_nr: BTreeMap<u32, Vec<&Rule>> = BTreeMap::new();
    for r in rules {
        for t in &r.tests {
            if t.value & !t.mask != 0 {
                return Err(CompileError::NeverHolds {
                    nr: r.nr,
                    mask: t.mask,
                    value: t.value,
                });
            }
        }
        by_nr.entry(r.nr).or_default().push(r);
    }
    // The calls whose rules read arguments first (the kernel runs the
    // program for them; for the others its cache answers), each group in
    // order of system call number.
    let mut groups: Vec<(u32, Vec<&Rule>)> = by_nr.into_iter().collect();
    groups.sort_by_key(|(nr, rs)| (unconditional(rs), *nr));

    let mut out = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JMP_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32),
    ];
    for (nr, rs) in groups {
        let block = block(&rs);
        let skip = u8::try_from(block.len()).map_err(|_| CompileError::BlockTooLong(nr))?;
        out.push(jump(BPF_JMP_JEQ_K, nr, 0, skip));
        out.extend(block);
    }
    out.push(stmt(BPF_RET_K, RET_ALLOW));
    if out.len() > MAX_INSTRUCTIONS {
        return Err(CompileError::TooLong(out.len()));
    }
    Ok(Program(out))
}

/// Whether a rule of the group holds whatever the arguments.
fn unconditional(rules: &[&Rule]) -> bool {
    rules.iter().any(|r| r.tests.is_empty())
}

/// One system call's block: its rules, then ALLOW. Every path ends in a
/// return (the accumulator no longer holds the number after a test).
fn block(rules: &[&Rule]) -> Vec<libc::sock_filter> {
    if let Some(r) = rules.iter().find(|r| r.tests.is_empty()) {
        return vec![stmt(BPF_RET_K, r.ret)];
    }
    let mut out = Vec::new();
    for r in rules {
        // Each test is a load, perhaps an AND, and a jump that skips the
        // rest of this rule when it fails.
        let len: usize = r
            .tests
            .iter()
            .map(|t| if t.mask == u32::MAX { 2 } else { 3 })
            .sum::<usize>()
            + 1;
        let mut at = 0;
        for t in &r.tests {
            out.push(stmt(BPF_LD_W_ABS, t.offset));
            at += 1;
            if t.mask != u32::MAX {
                out.push(stmt(BPF_ALU_AND_K, t.mask));
                at += 1;
            }
            at += 1;
            // `len - at` instructions remain in the rule after this jump:
            // the tests after it and the return.
            out.push(jump(
                BPF_JMP_JEQ_K,
                t.value,
                0,
                u8::try_from(len - at).unwrap_or(u8::MAX),
            ));
        }
        out.push(stmt(BPF_RET_K, r.ret));
    }
    out.push(stmt(BPF_RET_K, RET_ALLOW));
    out
}

/// `struct seccomp_data` for [`run`].
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub nr: u32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// Runs `program` on `call` the way the kernel does (the subset of
/// classic BPF that [`compile`] emits): the filter's return value.
#[cfg(test)]
pub fn run(program: &Program, call: &Call) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&call.nr.to_le_bytes());
    data[4..8].copy_from_slice(&call.arch.to_le_bytes());
    for (i, a) in call.args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let insns = program.instructions();
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = insns[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
            }
            BPF_ALU_AND_K => acc &= i.k,
            BPF_JMP_JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
            BPF_JMP_JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
            BPF_RET_K => return i.k,
            other => panic!("opcode {other:#x} is not emitted by compile"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    fn call(nr: u32, args: [u64; 6]) -> Call {
        Call {
            nr,
            arch: AUDIT_ARCH_X86_64,
            args,
        }
    }

    fn eq(index: u8, value: u32) -> Test {
        Test {
            offset: arg_word(index, false).unwrap(),
            mask: u32::MAX,
            value,
        }
    }

    #[test]
    fn rules_match_on_all_their_tests_and_everything_else_is_allowed() {
        let rules = [
            Rule {
                nr: 10,
                tests: vec![],
                ret: EPERM,
            },
            Rule {
                nr: 20,
                tests: vec![
                    eq(0, 7),
                    Test {
                        offset: arg_word(1, false).unwrap(),
                        mask: 0xf,
                        value: 3,
                    },
                ],
                ret: EPERM,
            },
            Rule {
                nr: 20,
                tests: vec![eq(2, 9)],
                ret: RET_ERRNO | 38,
            },
        ];
        let p = compile(AUDIT_ARCH_X86_64, &rules).unwrap();
        assert_eq!(run(&p, &call(10, [0; 6])), EPERM);
        assert_eq!(run(&p, &call(11, [0; 6])), RET_ALLOW);
        assert_eq!(run(&p, &call(20, [7, 0x13, 0, 0, 0, 0])), EPERM);
        // The high bits of a 32-bit word are not looked at.
        assert_eq!(run(&p, &call(20, [7 | 1 << 40, 0x3, 0, 0, 0, 0])), EPERM);
        assert_eq!(run(&p, &call(20, [7, 0x14, 0, 0, 0, 0])), RET_ALLOW);
        assert_eq!(run(&p, &call(20, [8, 0x3, 0, 0, 0, 0])), RET_ALLOW);
        // The second rule of the same call, with its own return.
        assert_eq!(run(&p, &call(20, [8, 0x3, 9, 0, 0, 0])), RET_ERRNO | 38);
        // Another arch is killed, x32 calls are refused.
        let mut other = call(10, [0; 6]);
        other.arch = 0x4000_0003;
        assert_eq!(run(&p, &other), RET_KILL_PROCESS);
        assert_eq!(
            run(&p, &call(X32_SYSCALL_BIT | 20, [7, 3, 0, 0, 0, 0])),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn conditional_calls_come_first_and_an_unconditional_rule_wins() {
        let rules = [
            Rule {
                nr: 1,
                tests: vec![],
                ret: EPERM,
            },
            Rule {
                nr: 300,
                tests: vec![eq(0, 1)],
                ret: EPERM,
            },
            Rule {
                nr: 5,
                tests: vec![eq(0, 1)],
                ret: EPERM,
            },
            Rule {
                nr: 5,
                tests: vec![],
                ret: RET_ERRNO | 1,
            },
        ];
        let p = compile(AUDIT_ARCH_X86_64, &rules).unwrap();
        let dispatched: Vec<u32> = p
            .instructions()
            .iter()
            .skip(6)
            .filter(|i| i.code == BPF_JMP_JEQ_K && i.jt == 0 && i.jf > 0)
            .map(|i| i.k)
            .collect();
        assert_eq!(dispatched.first(), Some(&300), "{dispatched:?}");
        assert_eq!(run(&p, &call(5, [0; 6])), RET_ERRNO | 1);
        assert_eq!(run(&p, &call(300, [1, 0, 0, 0, 0, 0])), EPERM);
        assert_eq!(run(&p, &call(300, [2, 0, 0, 0, 0, 0])), RET_ALLOW);
    }

    #[test]
    fn impossible_tests_are_refused() {
        let rules = [Rule {
            nr: 1,
            tests: vec![Test {
                offset: 16,
                mask: 0xf0,
                value: 0x1,
            }],
            ret: EPERM,
        }];
        assert!(matches!(
            compile(AUDIT_ARCH_X86_64, &rules),
            Err(CompileError::NeverHolds { .. })
        ));
        assert_eq!(arg_word(6, false), None);
        assert_eq!(arg_word(5, true), Some(16 + 40 + 4));
    }
}
