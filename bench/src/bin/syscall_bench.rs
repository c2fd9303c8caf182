//! `mobidesk-syscall-bench`: the paper's Table 2 micro-benchmarks (§6.1),
//! run where it is started — on the bare server or inside a session — and
//! printed as one JSON object on stdout.
//!
//! Each operation runs `iters` times per round, for `rounds` rounds; the
//! figure is the median of the rounds' ns/op (every round is printed too).
//! Single-threaded, no allocation in the timed loops, no async.
//!
//! ```text
//! mobidesk-syscall-bench [--ops getpid,fionread,...] [--rounds R]
//!                        [--scale F] [--cpu N]
//! ```
//!
//! `--scale` multiplies every operation's default iteration count (0.01 for
//! a smoke run); `--cpu` pins the process (and the children it forks) to
//! one CPU.
//!
//! `mobidesk-syscall-bench --under-seccomp-floor CMD [ARGS...]` installs a
//! one-instruction seccomp filter that allows everything, then execs CMD:
//! the benchmark's `seccomp-floor` side, what *any* seccomp filter costs on
//! this kernel (the system call leaves the kernel's fast path).

// The raw calls (getpid, ioctl, SysV IPC, fork, execv, waitpid) have no safe
// wrapper that does exactly one system call; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use mobidesk_bench::report::median;

/// One micro-benchmark: its name (stable, the JSON and the report key on
/// it) and how many times one round runs it at `--scale 1` (about 0.1–0.3 s
/// per round on a 2-vCPU VM).
struct Op {
    name: &'static str,
    iters: u64,
    run: fn(u64) -> Result<(), String>,
}

const OPS: &[Op] = &[
    Op {
        name: "getpid",
        iters: 2_000_000,
        run: getpid,
    },
    Op {
        name: "fionread",
        iters: 1_000_000,
        run: fionread,
    },
    Op {
        name: "shmget_shmctl",
        iters: 100_000,
        run: shm,
    },
    Op {
        name: "semget_semctl",
        iters: 200_000,
        run: sem,
    },
    Op {
        name: "fork_exit",
        iters: 2_000,
        run: fork_exit,
    },
    Op {
        name: "fork_sh",
        iters: 200,
        run: fork_sh,
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--under-seccomp-floor") {
        let err = under_seccomp_floor(&args[1..]);
        eprintln!("mobidesk-syscall-bench: --under-seccomp-floor: {err}");
        return ExitCode::FAILURE;
    }
    match run(args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mobidesk-syscall-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<String, String> {
    let mut ops: Vec<&Op> = OPS.iter().collect();
    let mut rounds = 5u32;
    let mut scale = 1.0f64;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--ops" => {
                let list = value("--ops")?;
                ops = list
                    .split(',')
                    .map(|n| {
                        OPS.iter().find(|o| o.name == n).ok_or(format!(
                            "unknown op {n:?} (known: {})",
                            OPS.iter().map(|o| o.name).collect::<Vec<_>>().join(",")
                        ))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--rounds" => {
                rounds = value("--rounds")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?;
                if !(1..=1000).contains(&rounds) {
                    return Err("--rounds must be 1..=1000".into());
                }
            }
            "--scale" => {
                scale = value("--scale")?
                    .parse()
                    .map_err(|e| format!("--scale: {e}"))?;
                if !(scale > 0.0 && scale <= 100.0) {
                    return Err("--scale must be in (0, 100]".into());
                }
            }
            "--cpu" => {
                let cpu: usize = value("--cpu")?.parse().map_err(|e| format!("--cpu: {e}"))?;
                pin(cpu)?;
            }
            "-h" | "--help" => return Err(
                "usage: mobidesk-syscall-bench [--ops a,b] [--rounds R] [--scale F] [--cpu N]; \
                     ops: getpid fionread shmget_shmctl semget_semctl fork_exit fork_sh"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mut out = Vec::new();
    for op in ops {
        // At least 10 operations: a round of 1 is all timer noise.
        let iters = ((op.iters as f64 * scale) as u64).max(10);
        // One untimed warm-up round of a tenth (page cache, IPC ids, the
        // dynamic loader's files for fork_sh).
        (op.run)((iters / 10).max(1)).map_err(|e| format!("{}: {e}", op.name))?;
        let mut per_round = Vec::with_capacity(rounds as usize);
        for _ in 0..rounds {
            let started = Instant::now();
            (op.run)(iters).map_err(|e| format!("{}: {e}", op.name))?;
            per_round.push(started.elapsed().as_nanos() as f64 / iters as f64);
        }
        let median = median(&per_round);
        out.push(format!(
            "{{\"name\":\"{}\",\"iters\":{iters},\"ns_per_op\":{median:.1},\"rounds_ns_per_op\":[{}]}}",
            op.name,
            per_round
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(format!(
        "{{\"pid\":{},\"rounds\":{rounds},\"ops\":[{}]}}",
        std::process::id(),
        out.join(",")
    ))
}

/// Installs an allow-everything filter and execs `command`; returns only
/// on failure.
fn under_seccomp_floor(command: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return "needs a command".into();
    };
    // SECCOMP_RET_ALLOW (linux/seccomp.h), as BPF_RET | BPF_K.
    let mut allow = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: allow.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments; seccomp with a pointer to a
    // valid one-instruction program that outlives the call (the kernel
    // copies it).
    let rc = unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            -1
        } else {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            ) as i32
        }
    };
    if rc != 0 {
        return format!("installing the filter: {}", errno());
    }
    let err = std::process::Command::new(program).args(args).exec();
    format!("exec {program}: {err}")
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn pin(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// The raw system call: glibc's `getpid()` may be served from a cache.
fn getpid(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: getpid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getpid) });
    }
    Ok(())
}

/// `ioctl(FIONREAD)` on the read end of an empty pipe.
fn fionread(n: u64) -> Result<(), String> {
    let (r, _w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&r);
    let mut avail: libc::c_int = 0;
    for _ in 0..n {
        // SAFETY: `fd` is an open pipe (kept open by `r`), FIONREAD writes
        // one c_int to the valid pointer given.
        let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail as *mut libc::c_int) };
        if rc != 0 {
            return Err(format!("ioctl FIONREAD: {}", errno()));
        }
        black_box(avail);
    }
    Ok(())
}

/// A private SysV shared memory segment holding an integer, created and
/// removed.
fn shm(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: shmget with IPC_PRIVATE takes no pointers.
        let id = unsafe {
            libc::shmget(
                libc::IPC_PRIVATE,
                std::mem::size_of::<libc::c_int>(),
                libc::IPC_CREAT | 0o600,
            )
        };
        if id < 0 {
            return Err(format!("shmget: {}", errno()));
        }
        // SAFETY: IPC_RMID ignores the buffer argument, which may be null.
        let rc = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(format!("shmctl IPC_RMID: {}", errno()));
        }
    }
    Ok(())
}

/// A private SysV semaphore set of one, created and removed.
fn sem(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: semget with IPC_PRIVATE takes no pointers.
        let id = unsafe { libc::semget(libc::IPC_PRIVATE, 1, libc::IPC_CREAT | 0o600) };
        if id < 0 {
            return Err(format!("semget: {}", errno()));
        }
        // SAFETY: IPC_RMID takes no fourth argument.
        let rc = unsafe { libc::semctl(id, 0, libc::IPC_RMID) };
        if rc != 0 {
            return Err(format!("semctl IPC_RMID: {}", errno()));
        }
    }
    Ok(())
}

/// Forks a child, which exits at once, and waits for it.
fn fork_exit(n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: this process is single-threaded; the child only calls
        // _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => return Err(format!("fork: {}", errno())),
            // SAFETY: _exit ends the child without running any Rust code.
            0 => unsafe { libc::_exit(0) },
            child => reap(child)?,
        }
    }
    Ok(())
}

/// Forks a child that execs `/bin/sh -c true`, and waits for it.
fn fork_sh(n: u64) -> Result<(), String> {
    // Built before the loop: the child may not allocate.
    let sh = CString::new("/bin/sh").map_err(|e| e.to_string())?;
    let args = [
        CString::new("sh").map_err(|e| e.to_string())?,
        CString::new("-c").map_err(|e| e.to_string())?,
        CString::new("true").map_err(|e| e.to_string())?,
    ];
    let argv: [*const libc::c_char; 4] = [
        args[0].as_ptr(),
        args[1].as_ptr(),
        args[2].as_ptr(),
        std::ptr::null(),
    ];
    for _ in 0..n {
        // SAFETY: single-threaded; the child calls only execv and _exit
        // (async-signal-safe) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => return Err(format!("fork: {}", errno())),
            0 => {
                // SAFETY: `sh` and `argv` are NUL-terminated and outlive the
                // call; argv ends with a null pointer. On failure the child
                // exits with 127, which the parent reports.
                unsafe {
                    libc::execv(sh.as_ptr(), argv.as_ptr());
                    libc::_exit(127)
                }
            }
            child => reap(child)?,
        }
    }
    Ok(())
}

fn reap(child: libc::pid_t) -> Result<(), String> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid c_int for waitpid to write.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(format!("waitpid: {}", errno()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("child ended with status {status:#x}"));
    }
    Ok(())
}
