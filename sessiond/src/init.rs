//! The session's PID 1 once set-up is done: `mobidesk-sessiond __init -- CMD`
//! (exec'd from `/.mobidesk/init` inside the session). It starts the
//! session's command, reaps every orphan of the session, forwards
//! termination signals to the command, and exits with the command's status
//! (code, or 128 + signal). Its exit ends the pid namespace, so every
//! process of the session goes with it.

use std::process::Command;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals passed on to the command.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Runs the reaper; returns the exit code for the process.
pub fn reaper_main(command: &[String]) -> i32 {
    let Some((program, args)) = command.split_first() else {
        eprintln!("mobidesk-init: no command");
        return 64;
    };
    // `ps` shows PID 1 as what it is (the binary is /.mobidesk/init).
    let _ = nix::sys::prctl::set_name(c"mobidesk-init");
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(*s);
    }
    // Blocked before the command starts, so no SIGCHLD is lost; the
    // command itself starts with an empty mask (sys::unblock_signals_in_child).
    if let Err(e) = mask.thread_block() {
        eprintln!("mobidesk-init: sigprocmask: {e}");
        return 70;
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mobidesk-init: signalfd: {e}");
            return 70;
        }
    };
    let mut command = Command::new(program);
    command.args(args);
    crate::sys::unblock_signals_in_child(&mut command);
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mobidesk-init: {program}: {e}");
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let main = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    loop {
        let info = match sfd.read_signal() {
            Ok(Some(i)) => i,
            Ok(None) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("mobidesk-init: signalfd read: {e}");
                return 70;
            }
        };
        let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
        if signo == Signal::SIGCHLD as i32 {
            // Reap everything that has exited: the command and orphans.
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                        return 128 + sig as i32
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        } else if let Ok(sig) = Signal::try_from(signo) {
            let _ = kill(main, sig);
        }
    }
}
