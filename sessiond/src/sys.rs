//! The few system calls that have no safe wrapper in `nix` or the standard
//! library. The only module of the crate allowed `unsafe`; each block says
//! why it is needed (JUSTIFICATION) and why it is sound (SAFETY).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::seccomp::Program;

/// Installs one seccomp filter on the calling thread without setting
/// `no_new_privs` (the caller has CAP_SYS_ADMIN).
pub(crate) fn seccomp_set_filter(prog: &Program) -> io::Result<()> {
    let insns = prog.instructions();
    let len =
        u16::try_from(insns.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog {
        len,
        filter: insns.as_ptr().cast_mut(),
    };
    // JUSTIFICATION: no safe wrapper installs a filter without also setting
    // no_new_privs, which would stop setuid programs inside the session.
    // SAFETY: `fprog` points to `len` valid filter instructions that live
    // until the call returns; the kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fork(2)`. Returns `None` in the child, `Some(pid)` in the parent.
///
/// The caller must be single-threaded (the session helper is: it is a
/// fresh process that has started no thread).
pub(crate) fn fork_single_threaded() -> io::Result<Option<u32>> {
    // JUSTIFICATION: the session's PID 1 must be a child of the process that
    // called unshare(CLONE_NEWPID); std's Command cannot run our own code in
    // the child.
    // SAFETY: the helper is single-threaded, so the child cannot inherit a
    // lock held by another thread; it only makes system calls and execs.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(None),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Some(child.as_raw().unsigned_abs())),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Gives the child of `cmd` an empty signal mask. A `Command` child keeps
/// its parent's mask through exec (std resets dispositions, not the mask),
/// and PID 1 blocks the signals it forwards: without this the session's
/// command would start with SIGTERM & co. blocked and never see them.
pub(crate) fn unblock_signals_in_child(cmd: &mut Command) {
    // JUSTIFICATION: std has no way to set the child's signal mask.
    // SAFETY: the closure only calls sigemptyset and sigprocmask, which
    // are async-signal-safe, on a set on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `fd` the child's fd 3 (without close-on-exec) when `cmd` spawns.
pub(crate) fn pass_fd_as_3(cmd: &mut Command, fd: RawFd) {
    // JUSTIFICATION: std has no way to hand a child an extra descriptor.
    // SAFETY: the closure only calls dup2 and fcntl, which are
    // async-signal-safe, on descriptors that stay open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` on close-on-exec
/// (`close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`): nothing of sessiond
/// survives the exec into the session.
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    // JUSTIFICATION: no wrapper in nix 0.30 or std.
    // SAFETY: plain system call on integers; it changes descriptor flags only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // JUSTIFICATION: SIOCGIFFLAGS/SIOCSIFFLAGS have no safe wrapper; the
    // alternative is running `ip` inside a half-built session.
    // SAFETY: `req` is a valid ifreq naming "lo", alive during both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the
/// process exits (for waits with a deadline).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // JUSTIFICATION: no wrapper in nix 0.30 or std (stable).
    // SAFETY: plain system call on integers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of fd 3 if it is a socket (the helper's control socket,
/// handed over by [`pass_fd_as_3`]).
pub(crate) fn take_fd3_socket() -> Option<OwnedFd> {
    // SAFETY: fstat only reads the descriptor table entry; an fd 3 that is
    // not open makes it fail cleanly.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(3, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    // JUSTIFICATION: the helper is handed its control socket by number.
    // SAFETY: fd 3 is an open socket that nothing else in this process owns
    // (the helper opens nothing before taking it).
    Some(unsafe { OwnedFd::from_raw_fd(3) })
}
