//! What session root may do: FIFOs, ping in its own network, root over its
//! own files, the root file system as designed.

use crate::support::{Fixture, ServerNet, TempDir, PROBE};

#[test]
fn mknod_of_a_fifo_works() {
    let f = Fixture::new();
    let out = f.run(&[
        "sh",
        "-c",
        &format!("{PROBE} mknod-fifo /tmp/fifo && test -p /tmp/fifo && echo fifo"),
    ]);
    assert_eq!(out.stdout, "ok\nfifo\n", "{out:?}");
}

#[test]
fn ping_works_inside_the_sessions_own_network() {
    let f = Fixture::new();
    let server = ServerNet::new();
    let cmd = format!(
        "ping -c 1 -W 10 {} && ping -c 1 -W 10 127.0.0.1",
        ServerNet::GATEWAY
    );
    let out = f.run_spec(
        &f.spec(f.profile(), &["sh", "-c", &cmd]),
        Some((&server, "10.77.0.2")),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.matches("1 received").count(), 2, "{out:?}");
}

#[test]
fn running_as_root_inside_works() {
    let f = Fixture::new();
    let home = TempDir::new();
    // The home on shared storage belongs to session root's host uid.
    let base = f.profile().userns.map_or(0, |u| u.uid_base);
    std::os::unix::fs::chown(home.path(), Some(base), Some(base)).unwrap();
    let mut spec = f.spec(
        f.profile(),
        &["sh", "-c", "id -u; echo layer > /root/f && cat /root/f; echo mine > $HOME/note; chown 1000:1000 $HOME/note && echo chown"],
    );
    spec.home = Some(home.path().to_path_buf());
    let out = f.run_spec(&spec, None);
    assert_eq!(out.stdout, "0\nlayer\nchown\n", "{out:?}");
    // The home is the shared-storage directory on the host.
    let note = home.path().join("note");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "mine\n");
    use std::os::unix::fs::MetadataExt;
    // uid 1000 inside is host uid base + 1000 (host root owns nothing new).
    assert_eq!(std::fs::metadata(&note).unwrap().uid(), base + 1000);
}

#[test]
fn the_root_file_system_is_as_designed() {
    let f = Fixture::new();
    let out = f.run(&[
        "sh",
        "-c",
        "ls /dev | tr '\\n' ' '; echo; \
        findmnt -rn -o TARGET,FSTYPE,OPTIONS | awk '{print $1, $2, substr($3,1,2)}'",
    ]);
    let mut lines = out.stdout.lines();
    assert_eq!(
        lines.next().unwrap().trim(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{out:?}"
    );
    let mounts: Vec<&str> = lines.collect();
    for want in [
        "/usr ext4 ro",
        "/etc ext4 ro",
        "/proc proc rw",
        "/dev tmpfs rw",
        "/dev/pts devpts rw",
        "/dev/shm tmpfs rw",
        "/tmp tmpfs rw",
        "/proc/sys proc ro",
        "/.mobidesk/init ext4 ro",
    ] {
        let (target, rest) = want.split_once(' ').unwrap();
        let (_, flag) = rest.rsplit_once(' ').unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("{target} ")) && m.ends_with(flag)),
            "missing {want} in {mounts:#?}"
        );
    }
    // devpts is a new instance: no host pty is visible.
    let pts = f.run(&["ls", "/dev/pts"]);
    assert_eq!(pts.stdout, "ptmx\n", "{pts:?}");
}

/// The session's command starts with no signal blocked (PID 1 blocks the
/// ones it forwards; a child must not inherit that), so a SIGTERM that PID
/// 1 forwards reaches it.
#[test]
fn the_sessions_command_starts_with_no_signal_blocked() {
    let f = Fixture::new();
    let out = f.run(&["sh", "-c", "grep SigBlk /proc/self/status"]);
    assert_eq!(out.stdout, "SigBlk:\t0000000000000000\n", "{out:?}");
}

/// A session whose PID 1 fails its set-up (here: session root cannot reach
/// its layer under a private directory) before the network step: the error
/// says what PID 1 said, not what the network step then ran into (`ip`'s
/// "No such process" for the vanished PID 1, which sent an operator looking
/// in the wrong place).
#[test]
fn a_pid_1_that_fails_before_the_network_step_is_reported_as_such() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    let f = Fixture::new();
    let private = f.dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let launcher = mobidesk_sessiond::Launcher::new(
        env!("CARGO_BIN_EXE_mobidesk-sessiond"),
        private.join("run"),
    );
    let spec = f.spec(f.profile(), &["true"]);
    let result = launcher.start_with_network(&spec, Default::default(), |pid| {
        // As `ip ... netns PID` finds it: gone.
        assert!(
            mobidesk_sessiond::environment::wait_for_exit(pid, Duration::from_secs(20)).unwrap(),
            "PID 1 did not exit"
        );
        Err(format!("ip: netns {pid}: No such process"))
    });
    let Err(err) = result else {
        panic!("the session started");
    };
    let err = err.to_string();
    assert!(err.contains("EACCES"), "{err}");
    assert!(!err.contains("No such process"), "{err}");
}
