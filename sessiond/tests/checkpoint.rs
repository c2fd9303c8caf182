//! A session as built here stays checkpointable: CRIU (the project's 4.2.1
//! at /opt/mobidesk/bin/criu, installed by scripts/setup) dumps it and
//! restores it with its namespaces, mounts, seccomp filters, capabilities
//! and /tmp contents. This is the base the migration step builds on.

use std::path::Path;
use std::process::Command;

use mobidesk_sessiond::environment::{wait_for_exit, SessionStdio};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::{Fixture, TempDir, DEADLINE};

const CRIU: &str = "/opt/mobidesk/bin/criu";

/// Kills a restored session (not our child) on Drop.
struct Restored(u32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        let _ = wait_for_exit(self.0, DEADLINE);
    }
}

fn criu(args: &[String], log: &Path) {
    let out = Command::new(CRIU).args(args).output().unwrap();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    assert!(
        out.status.success(),
        "criu {args:?}: {}\n{errors:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn criu_dumps_and_restores_a_session() {
    assert!(
        Path::new(CRIU).exists(),
        "{CRIU} missing: run scripts/setup"
    );
    for userns in [true, false] {
        let f = Fixture::with_userns(userns);
        let launcher = f.launcher.clone().keep_layer(true);
        // The session tells us it has written its state through a FIFO in
        // its home (shared storage): an event, and no descriptor of ours
        // inside the session.
        let home = TempDir::new();
        let fifo = home.path().join("ready");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let base = f.profile().userns.map_or(0, |u| u.uid_base);
        for p in [home.path(), fifo.as_path()] {
            std::os::unix::fs::chown(p, Some(base), Some(base)).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(reader));
        });
        let mut spec = f.spec(
            f.profile(),
            &[
                "sh",
                "-c",
                "echo kept > /tmp/state; echo ready > $HOME/ready; sleep 1000 & sleep 1001 & wait",
            ],
        );
        spec.home = Some(home.path().to_path_buf());
        // The session's own /dev/null as stdio: nothing from outside.
        let mut session = launcher.start(&spec, SessionStdio::default()).unwrap();
        let pid = session.init_pid().unwrap();
        let layer = session.layer();
        let before = (
            status_field(pid, "Seccomp_filters"),
            status_field(pid, "CapBnd"),
        );
        assert_eq!(before.0, "1", "one seccomp program");
        let said = rx
            .recv_timeout(DEADLINE)
            .expect("the session reports ready");
        assert_eq!(said.unwrap(), "ready\n");

        let images = TempDir::new();
        let dir = images.path().display().to_string();
        let mut dump = vec![
            "dump".to_string(),
            "-t".into(),
            pid.to_string(),
            "-D".into(),
            dir.clone(),
            "-o".into(),
            "dump.log".into(),
        ];
        for m in session.external_mounts() {
            dump.push("--external".into());
            dump.push(m.criu_dump_arg());
        }
        criu(&dump, &images.path().join("dump.log"));
        // The dump ended the session (no --leave-running).
        assert!(session.wait_timeout(DEADLINE).unwrap().is_some());

        let pidfile = images.path().join("restored.pid");
        let mut restore = vec![
            "restore".to_string(),
            "-D".into(),
            dir.clone(),
            "-o".into(),
            "restore.log".into(),
            "--root".into(),
            layer.display().to_string(),
            "--restore-detached".into(),
            "--pidfile".into(),
            pidfile.display().to_string(),
        ];
        for m in session.external_mounts() {
            restore.push("--external".into());
            restore.push(m.criu_restore_arg());
        }
        criu(&restore, &images.path().join("restore.log"));
        let new_pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let restored = Restored(new_pid);

        // Same walls, same ids, same files.
        assert_eq!(
            status_field(new_pid, "NSpid").split_whitespace().last(),
            Some("1")
        );
        assert_eq!(
            (
                status_field(new_pid, "Seccomp_filters"),
                status_field(new_pid, "CapBnd")
            ),
            before
        );
        let map = std::fs::read_to_string(format!("/proc/{new_pid}/uid_map")).unwrap();
        let map: Vec<&str> = map.split_whitespace().collect();
        if userns {
            assert_eq!(map, ["0", "100000", "65536"], "userns {userns}");
        } else {
            assert_eq!(map[..2], ["0", "0"], "userns {userns}");
        }
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{new_pid}/root/tmp/state")).unwrap(),
            "kept\n"
        );
        let comm = std::fs::read_to_string(format!("/proc/{new_pid}/comm")).unwrap();
        assert_eq!(comm, "mobidesk-init\n");

        drop(restored);
        // The restored tree went back into the session's cgroups; the
        // session's Drop removes them (and the layer lives in f.dir).
        drop(session);
    }
}
