//! Escape attempts from session root: each fails with the errno the policy
//! documents (EPERM/EACCES, or ESRCH/ENOENT/EADDRNOTAVAIL where a namespace
//! makes the target not exist at all).

use crate::support::{Fixture, ServerNet, PROBE};

const EPERM: &str = "errno 1 EPERM";

#[test]
fn mknod_of_a_char_or_block_device_is_refused() {
    for f in Fixture::both() {
        assert_eq!(
            f.probe(&["mknod-dev", "/tmp/mem", "c"]),
            EPERM,
            "userns {}",
            f.userns
        );
        assert_eq!(
            f.probe(&["mknod-dev", "/tmp/sda", "b"]),
            EPERM,
            "userns {}",
            f.userns
        );
        assert_eq!(
            f.probe(&["mknodat-dev", "/root/sda"]),
            EPERM,
            "userns {}",
            f.userns
        );
    }
}

#[test]
fn mount_of_a_new_filesystem_over_a_host_path_is_refused() {
    for f in Fixture::both() {
        assert_eq!(
            f.probe(&["mount-tmpfs", "/usr"]),
            EPERM,
            "userns {}",
            f.userns
        );
        assert_eq!(
            f.probe(&["mount-tmpfs", "/etc"]),
            EPERM,
            "userns {}",
            f.userns
        );
        // Nor can the read-only system dirs be taken away.
        assert_eq!(f.probe(&["umount", "/usr"]), EPERM, "userns {}", f.userns);
    }
}

#[test]
fn loading_a_module_is_refused() {
    for f in Fixture::both() {
        assert_eq!(f.probe(&["load-module"]), EPERM, "userns {}", f.userns);
    }
}

#[test]
fn reboot_is_refused() {
    for f in Fixture::both() {
        assert_eq!(f.probe(&["reboot"]), EPERM, "userns {}", f.userns);
    }
}

#[test]
fn setting_the_clock_is_refused() {
    for f in Fixture::both() {
        assert_eq!(f.probe(&["settime"]), EPERM, "userns {}", f.userns);
    }
}

#[test]
fn ptrace_of_a_host_process_finds_no_such_process() {
    for f in Fixture::both() {
        // The test process itself is a host process: it has no pid in the
        // session (ESRCH is the documented answer: there is nothing to name).
        let me = std::process::id().to_string();
        assert_eq!(
            f.probe(&["ptrace", &me]),
            "errno 3 ESRCH",
            "userns {}",
            f.userns
        );
    }
}

#[test]
fn reading_a_host_file_outside_the_session_root_fails() {
    for f in Fixture::both() {
        let secret = f.dir.path().join("host-secret");
        std::fs::write(&secret, "host only").unwrap();
        assert_eq!(
            f.probe(&["read", secret.to_str().unwrap()]),
            "errno 2 ENOENT"
        );
        // Opening by file handle (which bypasses the mount tree) is refused.
        assert_eq!(f.probe(&["open-by-handle"]), EPERM, "userns {}", f.userns);
    }
}

#[test]
fn chroot_break_out_fails() {
    for f in Fixture::both() {
        // chroot is refused, and `..` from a saved descriptor of / stays in the
        // session's root (the host's root was detached by pivot_root).
        assert_eq!(
            f.probe(&["chroot-escape"]),
            "first errno 1 EPERM; second errno 1 EPERM; dotdot-is-root true; session-root true"
        );
    }
}

#[test]
fn raising_an_rlimit_above_the_hard_limit_is_refused() {
    for f in Fixture::both() {
        assert_eq!(f.probe(&["rlimit-raise"]), EPERM, "userns {}", f.userns);
        // Priority above normal: EACCES.
        assert_eq!(
            f.probe(&["nice-raise"]),
            "errno 13 EACCES",
            "userns {}",
            f.userns
        );
    }
}

#[test]
fn binding_another_sessions_ip_address_fails() {
    for f in Fixture::both() {
        let server = ServerNet::new();
        let mut a = f.hold_spec(
            &f.spec(f.profile(), &["sh", "-c", "echo up; cat"]),
            Some((&server, "10.77.0.2")),
        );
        assert_eq!(a.line(), "up");
        let script = format!(
            "{PROBE} bind 10.77.0.3; {PROBE} bind 10.77.0.2; {PROBE} freebind; \
         ip addr add 10.77.0.2/32 dev eth0 2>&1; echo rc=$?"
        );
        let out = f.run_spec(
            &f.spec(f.profile(), &["sh", "-c", &script]),
            Some((&server, "10.77.0.3")),
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], "ok", "B binds its own address: {out:?}");
        assert_eq!(
            lines[1], "errno 99 EADDRNOTAVAIL",
            "A's address is not in B"
        );
        assert_eq!(lines[2], EPERM, "IP_FREEBIND (bind any address) is refused");
        assert!(
            lines[3].contains("Operation not permitted"),
            "taking A's address: {out:?}"
        );
        assert_eq!(lines[4], "rc=2");
        a.finish();
    }
}

#[test]
fn raw_sockets_to_spoof_another_address_are_refused() {
    for f in Fixture::both() {
        let server = ServerNet::new();
        let script = format!("{PROBE} raw-socket; {PROBE} packet-socket");
        let out = f.run_spec(
            &f.spec(f.profile(), &["sh", "-c", &script]),
            Some((&server, "10.77.0.3")),
        );
        assert_eq!(out.stdout, format!("{EPERM}\n{EPERM}\n"), "{out:?}");
    }
}

#[test]
fn further_walls_hold() {
    for f in Fixture::both() {
        // A user namespace would give every dropped capability back.
        assert_eq!(f.probe(&["new-userns"]), EPERM, "userns {}", f.userns);
        // Typing into a terminal (stdin could be a host terminal): refused
        // by seccomp before the kernel even looks at the descriptor (which
        // is a pipe here: ENOTTY without the rule).
        assert_eq!(f.probe(&["tiocsti"]), EPERM, "userns {}", f.userns);
        // Host-wide sysctls are read-only.
        assert_eq!(
            f.probe(&["write", "/proc/sys/kernel/core_pattern", "|/bin/sh"]),
            "errno 30 EROFS"
        );
        // So are the system directories.
        assert_eq!(
            f.probe(&["write", "/usr/evil", "x"]),
            "errno 30 EROFS",
            "userns {}",
            f.userns
        );
        // No keys of the host, no eBPF.
        let out = f.run(&["sh", "-c", "cat /proc/keys | wc -c"]);
        assert_eq!(out.stdout.trim(), "0", "{out:?}");
    }
}
