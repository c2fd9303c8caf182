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
    // stdio and its own signalfd only. Its command may print before PID 1
    // has returned from spawning it (std's spawn holds a descriptor of its
    // own for that while): read until that one is gone, never seeing ours.
    let init = s.session.init_pid().unwrap();
    let deadline = std::time::Instant::now() + crate::support::DEADLINE;
    let held = loop {
        let mut held: Vec<String> = std::fs::read_dir(format!("/proc/{init}/fd"))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{}={}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect();
        held.sort();
        assert!(
            !held.iter().any(|h| h.contains("parent-secret")),
            "{held:?}"
        );
        if held.len() == 4 || std::time::Instant::now() >= deadline {
            break held;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(held[3].starts_with("3=anon_inode:[signalfd]"), "{held:?}");
    s.finish();
    drop(leaked);
}
