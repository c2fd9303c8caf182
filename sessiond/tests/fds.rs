//! No descriptor of sessiond leaks into a session.

use std::os::fd::OwnedFd;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use crate::support::{Fixture, TempDir, PROBE};

#[test]
fn a_descriptor_opened_without_cloexec_does_not_reach_the_session() {
    let f = Fixture::new();
    let dir = TempDir::new();
    let path = dir.path().join("parent-secret");
    std::fs::write(&path, "x").unwrap();
    // Opened without O_CLOEXEC, as careless code in sessiond might.
    let leaked: OwnedFd = open(&path, OFlag::O_RDONLY, Mode::empty()).unwrap();
    let flags = nix::fcntl::fcntl(&leaked, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(
        flags & libc::FD_CLOEXEC,
        0,
        "the test fd must be inheritable"
    );

    let mut s = f.hold(&["sh", "-c", &format!("{PROBE} fds; echo up; cat")]);
    let fds = s.line();
    assert_eq!(s.line(), "up");
    // The probe has 0, 1, 2 and the descriptor of the directory it lists.
    let entries: Vec<&str> = fds.strip_prefix("ok ").unwrap().split(' ').collect();
    assert_eq!(entries.len(), 4, "{fds}");
    assert!(
        entries[0].starts_with("0=")
            && entries[1].starts_with("1=")
            && entries[2].starts_with("2="),
        "{fds}"
    );
    assert!(
        entries[3].starts_with("3=/proc/") && entries[3].ends_with("/fd"),
        "{fds}"
    );
    assert!(!fds.contains("parent-secret"), "{fds}");

    // The session's PID 1 (seen from the host) holds nothing of ours either:
    // stdio and its own signalfd only.
    let init = s.session.init_pid().unwrap();
    let mut held: Vec<String> = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let target = std::fs::read_link(e.path()).unwrap();
            format!("{}={}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    held.sort();
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(held[3].starts_with("3=anon_inode:[signalfd]"), "{held:?}");
    assert!(
        !held.iter().any(|h| h.contains("parent-secret")),
        "{held:?}"
    );
    s.finish();
    drop(leaked);
}
