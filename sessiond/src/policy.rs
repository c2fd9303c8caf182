//! The walls around a session's privileged operations, in the paper's three
//! classes, as one table ([`POLICY`]) with the reason for every entry:
//!
//! - **(a) refused**: host-only operations fail outright (seccomp returns
//!   `EPERM`, and the capability that would allow them is gone);
//! - **(b) unprivileged**: the call runs, but only with a normal process's
//!   rights (the capability that lifts the limit is gone, so raising an
//!   rlimit above the hard limit or a priority below nice 0 fails);
//! - **(c) checked**: the call is allowed only with safe options (`mknod`
//!   of FIFOs and regular files, never devices; no raw or packet sockets).
//!
//! Session root keeps only the capabilities in [`KEPT`] (bounding set); every
//! other capability, including ones a future kernel adds, is dropped.
//!
//! What needs no entry because a namespace already walls it (pid, mount, ipc,
//! uts, net): `kill`/`ptrace` of host processes (they have no pid in the
//! session), host files (not in the session's mount tree), host IPC objects,
//! the host name and addresses.

use crate::seccomp::{self, arg_word, Program, Rule, Test, RET_ERRNO};
use caps::{CapSet, Capability};

/// The paper's three classes of privileged operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// (a) refused outright.
    Refused,
    /// (b) forced to run unprivileged.
    Unprivileged,
    /// (c) allowed only with checked options.
    Checked,
}

impl Class {
    pub fn letter(self) -> char {
        match self {
            Class::Refused => 'a',
            Class::Unprivileged => 'b',
            Class::Checked => 'c',
        }
    }
}

/// One argument test of a seccomp rule: `(arg[index] & mask) == value`,
/// compared on the low 32 bits (`Dword`: the kernel reads these arguments as
/// 32-bit ints, so high bits must not let a caller slip past) or on all 64.
#[derive(Debug, Clone, Copy)]
pub struct Arg {
    pub index: u8,
    pub mask: u64,
    pub value: u64,
    pub wide: bool,
}

/// `(arg & mask) == value` on 32 bits.
const fn masked(index: u8, mask: u64, value: u64) -> Arg {
    Arg {
        index,
        mask,
        value,
        wide: false,
    }
}

/// `arg == value` on 32 bits.
const fn eq(index: u8, value: u64) -> Arg {
    masked(index, 0xffff_ffff, value)
}

/// `(arg & mask) == value` on 64 bits.
const fn masked64(index: u8, mask: u64, value: u64) -> Arg {
    Arg {
        index,
        mask,
        value,
        wide: true,
    }
}

/// How an entry is enforced.
#[derive(Debug, Clone, Copy)]
pub enum Wall {
    /// seccomp: the system call fails with `errno` when all `args` tests
    /// hold (always, when there are none).
    Syscall {
        name: &'static str,
        args: &'static [Arg],
        errno: i32,
    },
    /// The capability is removed from the bounding set of the session.
    Capability(Capability),
}

/// One row of the policy.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub class: Class,
    pub wall: Wall,
    pub reason: &'static str,
}

const fn sys(class: Class, name: &'static str, reason: &'static str) -> Entry {
    Entry {
        class,
        wall: Wall::Syscall {
            name,
            args: &[],
            errno: libc::EPERM,
        },
        reason,
    }
}

const fn sys_if(
    class: Class,
    name: &'static str,
    args: &'static [Arg],
    reason: &'static str,
) -> Entry {
    Entry {
        class,
        wall: Wall::Syscall {
            name,
            args,
            errno: libc::EPERM,
        },
        reason,
    }
}

const fn cap(class: Class, c: Capability, reason: &'static str) -> Entry {
    Entry {
        class,
        wall: Wall::Capability(c),
        reason,
    }
}

use Capability::*;
use Class::{Checked, Refused, Unprivileged};

const S_IFMT: u64 = libc::S_IFMT as u64;
const S_IFCHR: u64 = libc::S_IFCHR as u64;
const S_IFBLK: u64 = libc::S_IFBLK as u64;
const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
const AF_INET: u64 = libc::AF_INET as u64;
const AF_INET6: u64 = libc::AF_INET6 as u64;
const AF_PACKET: u64 = libc::AF_PACKET as u64;
/// `SOCK_NONBLOCK`/`SOCK_CLOEXEC` share the type argument: compare the low
/// four bits only (the kernel's `SOCK_TYPE_MASK`).
const SOCK_TYPE_MASK: u64 = 0xf;
const SOCK_RAW: u64 = libc::SOCK_RAW as u64;
/// `SOCK_PACKET` (linux/net.h): obsolete, still accepted by the kernel.
const SOCK_PACKET: u64 = 10;
const SOL_IP: u64 = libc::SOL_IP as u64;
const SOL_IPV6: u64 = libc::SOL_IPV6 as u64;
const IP_FREEBIND: u64 = libc::IP_FREEBIND as u64;
const IP_TRANSPARENT: u64 = libc::IP_TRANSPARENT as u64;
/// `IPV6_TRANSPARENT` and `IPV6_FREEBIND` from linux/in6.h.
const IPV6_TRANSPARENT: u64 = 75;
const IPV6_FREEBIND: u64 = 78;
// The ioctl request type differs between libcs (c_ulong on glibc, c_int on musl).
#[allow(clippy::unnecessary_cast)]
const TIOCSTI: u64 = libc::TIOCSTI as u64;
/// `TIOCLINUX` from asm-generic/ioctls.h.
const TIOCLINUX: u64 = 0x541C;

/// The session's policy. Each row: class, wall, reason.
#[rustfmt::skip]
pub static POLICY: &[Entry] = &[
    // ---- (a) refused outright -------------------------------------------
    sys(Refused, "init_module", "kernel modules are the host's"),
    sys(Refused, "finit_module", "kernel modules are the host's"),
    sys(Refused, "delete_module", "kernel modules are the host's"),
    cap(Refused, CAP_SYS_MODULE, "kernel modules are the host's"),
    sys(Refused, "reboot", "rebooting is the host's"),
    cap(Refused, CAP_SYS_BOOT, "rebooting is the host's"),
    sys(Refused, "kexec_load", "replacing the kernel is the host's"),
    sys(Refused, "kexec_file_load", "replacing the kernel is the host's"),
    sys(Refused, "settimeofday", "the clock is the host's (no time namespace for the wall clock)"),
    sys(Refused, "clock_settime", "the clock is the host's"),
    sys(Refused, "clock_adjtime", "the clock is the host's"),
    sys(Refused, "adjtimex", "the clock is the host's (adjtimex cannot be told read from write by its arguments)"),
    cap(Refused, CAP_SYS_TIME, "the clock is the host's"),
    cap(Refused, CAP_WAKE_ALARM, "host-wide wake-up alarms"),
    sys(Refused, "swapon", "swap is the host's"),
    sys(Refused, "swapoff", "swap is the host's"),
    sys(Refused, "mount", "the session's mount tree is built by sessiond; a new file system (or one over a system path) is refused"),
    sys(Refused, "umount2", "the read-only system dirs and masked /proc paths must stay in place"),
    sys(Refused, "pivot_root", "the session's root is set by sessiond"),
    sys(Refused, "chroot", "the root is set by sessiond; chroot is the first step of the fchdir break-out"),
    cap(Refused, CAP_SYS_CHROOT, "the root is set by sessiond"),
    sys(Refused, "fsopen", "new mount API: same as mount"),
    sys(Refused, "fsconfig", "new mount API: same as mount"),
    sys(Refused, "fsmount", "new mount API: same as mount"),
    sys(Refused, "fspick", "new mount API: same as mount"),
    sys(Refused, "move_mount", "new mount API: same as mount"),
    sys(Refused, "open_tree", "new mount API: same as mount"),
    sys(Refused, "mount_setattr", "new mount API: would make read-only mounts writable"),
    cap(Refused, CAP_SYS_ADMIN, "mount, swap, sethostname, namespaces, quotas and many more host-wide operations"),
    sys(Refused, "iopl", "raw I/O ports are the host's hardware"),
    sys(Refused, "ioperm", "raw I/O ports are the host's hardware"),
    cap(Refused, CAP_SYS_RAWIO, "raw I/O ports, /dev/mem, FIBMAP"),
    sys(Refused, "keyctl", "kernel keyrings are not namespaced: the host's keys"),
    sys(Refused, "add_key", "kernel keyrings are not namespaced"),
    sys(Refused, "request_key", "kernel keyrings are not namespaced"),
    sys(Refused, "bpf", "eBPF programs and maps act on the whole host"),
    cap(Refused, CAP_BPF, "eBPF"),
    sys(Refused, "perf_event_open", "perf observes the host (other processes, the kernel)"),
    cap(Refused, CAP_PERFMON, "perf on the host"),
    cap(Refused, CAP_SYS_PTRACE, "ptrace across user ids or of more privileged processes; host processes are outside the pid namespace anyway"),
    sys(Refused, "acct", "process accounting is host-wide"),
    cap(Refused, CAP_SYS_PACCT, "process accounting is host-wide"),
    sys(Refused, "syslog", "the kernel log is the host's"),
    cap(Refused, CAP_SYSLOG, "the kernel log is the host's"),
    sys(Refused, "open_by_handle_at", "opens any inode of a file system by handle, past the mount tree (the 'shocker' escape)"),
    cap(Refused, CAP_DAC_READ_SEARCH, "open_by_handle_at and reading every file past permissions"),
    cap(Refused, CAP_MAC_ADMIN, "LSM policy is the host's"),
    cap(Refused, CAP_MAC_OVERRIDE, "LSM policy is the host's"),
    cap(Refused, CAP_AUDIT_CONTROL, "the audit system is the host's"),
    cap(Refused, CAP_AUDIT_READ, "the audit log is the host's"),
    cap(Refused, CAP_LINUX_IMMUTABLE, "immutable flags on shared storage"),
    cap(Refused, CAP_SYS_TTY_CONFIG, "vhangup of host terminals"),
    cap(Refused, CAP_BLOCK_SUSPEND, "host power management"),
    cap(Refused, CAP_CHECKPOINT_RESTORE, "checkpoint/restore is sessiond's (CRIU from the host)"),
    sys_if(Refused, "unshare", &[masked(0, CLONE_NEWUSER, CLONE_NEWUSER)],
        "a new user namespace gives back, inside it, every capability this table drops"),
    sys_if(Refused, "clone", &[masked64(0, CLONE_NEWUSER, CLONE_NEWUSER)],
        "a new user namespace gives back every capability this table drops (x86_64: flags are argument 0)"),
    Entry {
        class: Refused,
        wall: Wall::Syscall { name: "clone3", args: &[], errno: libc::ENOSYS },
        reason: "its flags are behind a pointer seccomp cannot read; ENOSYS makes libc fall back to clone, which is checked",
    },
    // ---- (b) forced unprivileged ----------------------------------------
    cap(Unprivileged, CAP_SYS_RESOURCE, "rlimits cannot be raised above the session's hard limits; no reserved disk space, no bigger pipes or mqueues"),
    cap(Unprivileged, CAP_SYS_NICE, "no nice below 0, no real-time scheduling, no CPU affinity for others"),
    cap(Unprivileged, CAP_IPC_LOCK, "locked memory stays within RLIMIT_MEMLOCK"),
    cap(Unprivileged, CAP_NET_ADMIN, "the session's addresses, routes and interfaces are sessiond's: no taking another session's address"),
    cap(Unprivileged, CAP_NET_BROADCAST, "unused; dropped by default"),
    sys_if(Unprivileged, "ioctl", &[eq(1, TIOCSTI)],
        "pushes input into a terminal, which may be a host terminal inherited as stdio"),
    sys_if(Unprivileged, "ioctl", &[eq(1, TIOCLINUX)],
        "console ioctls are the host's"),
    // ---- (c) checked options --------------------------------------------
    sys_if(Checked, "mknod", &[masked(1, S_IFMT, S_IFCHR)], "character devices: only sessiond makes device nodes (FIFOs and files are fine)"),
    sys_if(Checked, "mknod", &[masked(1, S_IFMT, S_IFBLK)], "block devices: only sessiond makes device nodes"),
    sys_if(Checked, "mknodat", &[masked(2, S_IFMT, S_IFCHR)], "character devices: only sessiond makes device nodes"),
    sys_if(Checked, "mknodat", &[masked(2, S_IFMT, S_IFBLK)], "block devices: only sessiond makes device nodes"),
    cap(Checked, CAP_MKNOD, "device nodes (a FIFO needs no capability)"),
    sys_if(Checked, "socket", &[eq(0, AF_PACKET)], "packet sockets send any frame with any source address"),
    sys_if(Checked, "socket", &[eq(0, AF_INET), masked(1, SOCK_TYPE_MASK, SOCK_RAW)], "raw IPv4 sockets can spoof another session's address (ping uses ICMP datagram sockets)"),
    sys_if(Checked, "socket", &[eq(0, AF_INET6), masked(1, SOCK_TYPE_MASK, SOCK_RAW)], "raw IPv6 sockets can spoof another address"),
    sys_if(Checked, "socket", &[eq(0, AF_INET), masked(1, SOCK_TYPE_MASK, SOCK_PACKET)], "the obsolete SOCK_PACKET type is a packet socket"),
    sys_if(Checked, "setsockopt", &[eq(1, SOL_IP), eq(2, IP_FREEBIND)], "binding an address that is not the session's"),
    sys_if(Checked, "setsockopt", &[eq(1, SOL_IP), eq(2, IP_TRANSPARENT)], "sending from an address that is not the session's"),
    sys_if(Checked, "setsockopt", &[eq(1, SOL_IPV6), eq(2, IPV6_FREEBIND)], "binding an address that is not the session's"),
    sys_if(Checked, "setsockopt", &[eq(1, SOL_IPV6), eq(2, IPV6_TRANSPARENT)], "sending from an address that is not the session's"),
];

/// The capabilities session root keeps: those a root user needs over its own
/// files and processes. Everything else is dropped.
pub static KEPT: &[(Capability, &str)] = &[
    (CAP_CHOWN, "root owns and gives away its own files"),
    (
        CAP_DAC_OVERRIDE,
        "root reads and writes its session's files whatever their mode",
    ),
    (
        CAP_FOWNER,
        "chmod and utime on files of other session users",
    ),
    (CAP_FSETID, "keep setuid/setgid bits when root edits a file"),
    (
        CAP_KILL,
        "signal any process of the session (others have no pid here)",
    ),
    (
        CAP_SETUID,
        "log in as another session user (su, login shells)",
    ),
    (CAP_SETGID, "same for groups"),
    (
        CAP_SETPCAP,
        "drop capabilities further (sandboxing applications)",
    ),
    (
        CAP_SETFCAP,
        "install packages with file capabilities into the writable layer",
    ),
    (
        CAP_NET_BIND_SERVICE,
        "serve on ports below 1024 on the session's own address",
    ),
    (CAP_AUDIT_WRITE, "login programs write audit records"),
    (
        CAP_IPC_OWNER,
        "IPC objects are the session's own (IPC namespace)",
    ),
    (CAP_LEASE, "file leases on the session's files"),
    (CAP_NET_RAW, "kept so that programs with this file capability still run (Debian's ping is cap_net_raw+ep: exec fails with EPERM when a file's capabilities exceed the bounding set); raw and packet sockets are refused by seccomp instead (class c)"),
];

/// Why the policy could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("system call {0} is unknown on this architecture")]
    UnknownSyscall(&'static str),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("capabilities: {0}")]
    Caps(String),
}

/// The capabilities dropped from the bounding set: every one the kernel
/// knows except [`KEPT`].
pub fn dropped_capabilities() -> Vec<Capability> {
    let mut v: Vec<Capability> = caps::runtime::thread_all_supported()
        .into_iter()
        .filter(|c| !KEPT.iter().any(|(k, _)| k == c))
        .collect();
    v.sort_by_key(|c| c.index());
    v
}

/// Compiles the seccomp side of [`POLICY`] to one BPF program
/// ([`crate::seccomp`]): every row's errno, default allow.
pub fn compile_filter() -> Result<Program, PolicyError> {
    let mut rules = Vec::new();
    for e in POLICY {
        let Wall::Syscall { name, args, errno } = e.wall else {
            continue;
        };
        let nr = syscall_nr(name).ok_or(PolicyError::UnknownSyscall(name))?;
        let mut tests = Vec::new();
        for a in args {
            // A 32-bit test looks at the low word only; a 64-bit one at
            // both words (a word the mask leaves out needs no test).
            let words: &[bool] = if a.wide { &[false, true] } else { &[false] };
            for &high in words {
                let shift = if high { 32 } else { 0 };
                let mask = ((a.mask >> shift) & 0xffff_ffff) as u32;
                let value = ((a.value >> shift) & 0xffff_ffff) as u32;
                if mask == 0 && value == 0 {
                    continue;
                }
                let offset = arg_word(a.index, high).ok_or(PolicyError::Seccomp(format!(
                    "{name}: no argument {}",
                    a.index
                )))?;
                tests.push(Test {
                    offset,
                    mask,
                    value,
                });
            }
        }
        let errno = u32::try_from(errno).map_err(|e| PolicyError::Seccomp(e.to_string()))?;
        rules.push(Rule {
            nr: u32::try_from(nr).map_err(|e| PolicyError::Seccomp(e.to_string()))?,
            tests,
            ret: RET_ERRNO | (errno & 0xffff),
        });
    }
    seccomp::compile(AUDIT_ARCH, &rules).map_err(|e| PolicyError::Seccomp(e.to_string()))
}

/// Drops every capability but [`KEPT`] from the bounding set and clears the
/// inheritable and ambient sets. The effective set is left alone: the
/// caller still needs CAP_SYS_ADMIN to install the seccomp filter, and the
/// `exec` that follows recomputes the sets from the bounding set.
pub fn drop_capabilities() -> Result<(), PolicyError> {
    for c in dropped_capabilities() {
        caps::drop(None, CapSet::Bounding, c)
            .map_err(|e| PolicyError::Caps(format!("{c}: {e}")))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| PolicyError::Caps(e.to_string()))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| PolicyError::Caps(e.to_string()))?;
    Ok(())
}

/// Installs the filter on the calling thread (inherited by every child).
/// Done while CAP_SYS_ADMIN is still effective, so without `no_new_privs`:
/// setuid programs inside the session keep working within the bounding set.
pub fn install_seccomp(program: &Program) -> Result<(), PolicyError> {
    crate::sys::seccomp_set_filter(program).map_err(|e| PolicyError::Seccomp(e.to_string()))
}

/// The policy as a text table (for `mobidesk-sessiond policy` and the README).
pub fn table() -> String {
    let mut out = String::from("class  wall                                   reason\n");
    for e in POLICY {
        let wall = match e.wall {
            Wall::Capability(c) => format!("drop {c}"),
            Wall::Syscall { name, args, errno } => {
                let cond = if args.is_empty() {
                    String::new()
                } else {
                    let parts: Vec<String> = args
                        .iter()
                        .map(|a| {
                            if a.mask == 0xffff_ffff {
                                format!("arg{}=={:#x}", a.index, a.value)
                            } else {
                                format!("arg{}&{:#x}=={:#x}", a.index, a.mask, a.value)
                            }
                        })
                        .collect();
                    format!(" if {}", parts.join(" && "))
                };
                let err = if errno == libc::EPERM {
                    "EPERM"
                } else {
                    "ENOSYS"
                };
                format!("{name}{cond} -> {err}")
            }
        };
        out.push_str(&format!(
            "({})    {wall:<38} {}\n",
            e.class.letter(),
            e.reason
        ));
    }
    out.push_str("\nkept capabilities:\n");
    for (c, why) in KEPT {
        out.push_str(&format!("  {:<22} {why}\n", c.to_string()));
    }
    out
}

/// The audit arch the filter accepts (any other is killed).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = seccomp::AUDIT_ARCH_X86_64;
#[cfg(not(target_arch = "x86_64"))]
const AUDIT_ARCH: u32 = 0;

/// System call numbers of the names in [`POLICY`].
#[cfg(target_arch = "x86_64")]
fn syscall_nr(name: &str) -> Option<i64> {
    use libc::*;
    Some(match name {
        "init_module" => SYS_init_module,
        "finit_module" => SYS_finit_module,
        "delete_module" => SYS_delete_module,
        "reboot" => SYS_reboot,
        "kexec_load" => SYS_kexec_load,
        "kexec_file_load" => SYS_kexec_file_load,
        "settimeofday" => SYS_settimeofday,
        "clock_settime" => SYS_clock_settime,
        "clock_adjtime" => SYS_clock_adjtime,
        "adjtimex" => SYS_adjtimex,
        "swapon" => SYS_swapon,
        "swapoff" => SYS_swapoff,
        "mount" => SYS_mount,
        "umount2" => SYS_umount2,
        "pivot_root" => SYS_pivot_root,
        "chroot" => SYS_chroot,
        "fsopen" => SYS_fsopen,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fspick" => SYS_fspick,
        "move_mount" => SYS_move_mount,
        "open_tree" => SYS_open_tree,
        "mount_setattr" => SYS_mount_setattr,
        "iopl" => SYS_iopl,
        "ioperm" => SYS_ioperm,
        "keyctl" => SYS_keyctl,
        "add_key" => SYS_add_key,
        "request_key" => SYS_request_key,
        "bpf" => SYS_bpf,
        "perf_event_open" => SYS_perf_event_open,
        "acct" => SYS_acct,
        "syslog" => SYS_syslog,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "unshare" => SYS_unshare,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "ioctl" => SYS_ioctl,
        "mknod" => SYS_mknod,
        "mknodat" => SYS_mknodat,
        "socket" => SYS_socket,
        "setsockopt" => SYS_setsockopt,
        _ => return None,
    })
}

/// Only x86_64 is mapped so far (aarch64 would need its audit arch and numbers;
/// several of these calls do not exist: map them when a server needs it).
#[cfg(not(target_arch = "x86_64"))]
fn syscall_nr(_name: &str) -> Option<i64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syscall_in_the_table_is_known_and_the_filter_compiles() {
        assert!(compile_filter().unwrap().instructions().len() > 6);
    }

    /// The compiled filter, run by the test interpreter on one call.
    fn verdict(name: &str, args: [u64; 6]) -> u32 {
        let nr = match name {
            "getpid" => libc::SYS_getpid,
            _ => syscall_nr(name).unwrap(),
        };
        let p = compile_filter().unwrap();
        let nr = u32::try_from(nr).unwrap();
        crate::seccomp::run(
            &p,
            &crate::seccomp::Call {
                nr,
                arch: AUDIT_ARCH,
                args,
            },
        )
    }

    #[test]
    fn the_filter_refuses_what_each_row_says_and_allows_the_rest() {
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let allow = crate::seccomp::RET_ALLOW;
        // Every unconditional row, with any arguments.
        for e in POLICY {
            if let Wall::Syscall {
                name,
                args: [],
                errno,
            } = e.wall
            {
                assert_eq!(
                    verdict(name, [u64::MAX; 6]),
                    RET_ERRNO | errno as u32,
                    "{name}"
                );
            }
        }
        assert_eq!(verdict("clone3", [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        // Devices refused, FIFOs allowed.
        let (chr, blk, fifo) = (
            S_IFCHR | 0o600,
            S_IFBLK | 0o600,
            libc::S_IFIFO as u64 | 0o600,
        );
        assert_eq!(verdict("mknod", [0, chr, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("mknod", [0, blk, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("mknod", [0, fifo, 0, 0, 0, 0]), allow);
        assert_eq!(verdict("mknodat", [0, 0, chr, 0, 0, 0]), eperm);
        assert_eq!(verdict("mknodat", [0, 0, fifo, 0, 0, 0]), allow);
        // Raw and packet sockets refused, datagram and stream allowed; the
        // flags sharing the type argument do not hide the type.
        let raw = libc::SOCK_RAW as u64 | libc::SOCK_CLOEXEC as u64;
        assert_eq!(verdict("socket", [AF_INET, raw, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("socket", [AF_INET6, raw, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("socket", [AF_PACKET, 2, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("socket", [AF_INET, SOCK_PACKET, 0, 0, 0, 0]), eperm);
        let dgram = libc::SOCK_DGRAM as u64;
        assert_eq!(verdict("socket", [AF_INET, dgram, 1, 0, 0, 0]), allow);
        assert_eq!(verdict("socket", [AF_INET6, 1, 0, 0, 0, 0]), allow);
        // High bits of a 32-bit argument do not slip past a rule.
        assert_eq!(verdict("ioctl", [0, TIOCSTI | 1 << 32, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("ioctl", [0, TIOCLINUX, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict("ioctl", [0, libc::FIONREAD, 0, 0, 0, 0]), allow);
        assert_eq!(
            verdict("setsockopt", [3, SOL_IP, IP_TRANSPARENT, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            verdict("setsockopt", [3, SOL_IPV6, IPV6_FREEBIND, 0, 0, 0]),
            eperm
        );
        assert_eq!(verdict("setsockopt", [3, SOL_IP, 1, 0, 0, 0]), allow);
        // No new user namespace, by clone or unshare; other clones are fine.
        let newuser = CLONE_NEWUSER | libc::SIGCHLD as u64;
        assert_eq!(verdict("clone", [newuser, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(
            verdict("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            allow
        );
        assert_eq!(verdict("unshare", [CLONE_NEWUSER, 0, 0, 0, 0, 0]), eperm);
        assert_eq!(
            verdict("unshare", [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
            allow
        );
        assert_eq!(verdict("getpid", [0; 6]), allow);
    }

    #[test]
    fn every_entry_has_a_reason_and_no_capability_is_both_kept_and_dropped() {
        for e in POLICY {
            assert!(!e.reason.is_empty());
            if let Wall::Capability(c) = e.wall {
                assert!(!KEPT.iter().any(|(k, _)| *k == c), "{c} kept and dropped");
            }
        }
        let dropped = dropped_capabilities();
        assert!(dropped.contains(&CAP_SYS_ADMIN));
        assert!(dropped.contains(&CAP_MKNOD));
        assert!(dropped.contains(&CAP_NET_ADMIN));
        assert!(!dropped.contains(&CAP_CHOWN));
    }

    #[test]
    fn all_three_classes_are_present() {
        for c in [Refused, Unprivileged, Checked] {
            assert!(POLICY.iter().any(|e| e.class == c));
        }
        assert!(table().contains("mknod if arg1&0xf000==0x2000 -> EPERM"));
    }
}
