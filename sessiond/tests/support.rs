//! Fixtures: a launcher with cgroups and a private runtime directory, the
//! probe bound into every session, one-shot and held sessions, and a small
//! per-test "server" network namespace with a veth per session. Every
//! object has a unique name and is removed on Drop, also when a test panics.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use mobidesk_sessiond::environment::{Launcher, Session, SessionSpec, SessionStdio};
use mobidesk_sessiond::profile::Bind;
use mobidesk_sessiond::{CgroupManager, Profile};

/// Where the probe appears inside each session.
pub(crate) const PROBE: &str = "/probe";
/// How long any one wait may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across the tests of this run and other runs.
pub(crate) fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// These tests need root (namespaces, mounts, cgroups): fail, do not skip.
pub(crate) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the session tests need root (namespaces, mounts, cgroups); run them as root"
    );
}

/// A temporary directory removed on Drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("mdst-"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A launcher whose sessions live under a private runtime dir, with cgroups.
pub(crate) struct Fixture {
    pub launcher: Launcher,
    pub dir: TempDir,
    /// Sessions get a user namespace (the default profile's mapping).
    pub userns: bool,
}

impl Fixture {
    /// Sessions with a user namespace (the default).
    pub(crate) fn new() -> Fixture {
        Fixture::with_userns(true)
    }

    /// One fixture per mode: with a user namespace and without (session
    /// root = host root behind capabilities and seccomp). Every wall must
    /// hold in both.
    pub(crate) fn both() -> [Fixture; 2] {
        [Fixture::with_userns(true), Fixture::with_userns(false)]
    }

    pub(crate) fn with_userns(userns: bool) -> Fixture {
        require_root();
        let dir = TempDir::new();
        let cgroups = CgroupManager::detect().expect("cgroups");
        let launcher = Launcher::new(
            env!("CARGO_BIN_EXE_mobidesk-sessiond"),
            dir.path().join("run"),
        )
        .with_cgroups(cgroups);
        Fixture {
            launcher,
            dir,
            userns,
        }
    }

    /// The default profile plus the probe at [`PROBE`].
    pub(crate) fn profile(&self) -> Profile {
        let mut p = Profile::default();
        if !self.userns {
            p.userns = None;
        }
        p.root.binds.push(Bind {
            source: PathBuf::from(env!("CARGO_BIN_EXE_mobidesk-session-probe")),
            target: PathBuf::from(PROBE),
        });
        p
    }

    pub(crate) fn spec(&self, profile: Profile, command: &[&str]) -> SessionSpec {
        SessionSpec {
            id: unique("t-"),
            profile,
            home: None,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs a command in a fresh session to its end.
    pub(crate) fn run(&self, command: &[&str]) -> Output {
        self.run_spec(&self.spec(self.profile(), command), None)
    }

    /// Runs the probe with `args` in a fresh session; returns its line.
    pub(crate) fn probe(&self, args: &[&str]) -> String {
        let mut cmd = vec![PROBE];
        cmd.extend_from_slice(args);
        let out = self.run(&cmd);
        assert_eq!(
            out.code, 0,
            "probe {args:?} (userns {}) failed: {out:?}",
            self.userns
        );
        out.stdout.trim().to_string()
    }

    /// Runs a session to its end; `net` plumbs it into a server namespace.
    pub(crate) fn run_spec(&self, spec: &SessionSpec, net: Option<(&ServerNet, &str)>) -> Output {
        let mut held = self.hold_spec(spec, net);
        held.finish()
    }

    /// Starts a session whose stdin stays open (the test closes it).
    pub(crate) fn hold(&self, command: &[&str]) -> Held {
        self.hold_spec(&self.spec(self.profile(), command), None)
    }

    pub(crate) fn hold_spec(&self, spec: &SessionSpec, net: Option<(&ServerNet, &str)>) -> Held {
        let stdio = SessionStdio {
            stdin: Some(Stdio::piped()),
            stdout: Some(Stdio::piped()),
            stderr: Some(Stdio::piped()),
        };
        let session = match net {
            Some((server, ip)) => self
                .launcher
                .start_with_network(spec, stdio, |pid| server.attach(pid, ip)),
            None => self.launcher.start(spec, stdio),
        }
        .expect("session start");
        Held::new(session)
    }
}

/// What a finished session printed, and its status.
#[derive(Debug)]
// `stderr` is read through Debug in assertion messages.
#[allow(dead_code)]
pub(crate) struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The lines of `out`, read on a thread (until its end or the receiver's).
pub(crate) fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A running session with its stdout read line by line on a thread.
pub(crate) struct Held {
    pub session: Session,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: String,
}

impl Held {
    fn new(mut session: Session) -> Held {
        let stdin = session.take_stdin();
        let stdout = session.take_stdout().unwrap();
        let mut stderr = session.take_stderr().unwrap();
        let lines = lines_of(stdout);
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Held {
            session,
            stdin,
            lines,
            stderr: Some(stderr),
            seen: String::new(),
        }
    }

    /// The next line of stdout (fails the test at the deadline).
    pub(crate) fn line(&mut self) -> String {
        let l = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("a line from the session before the deadline");
        self.seen.push_str(&l);
        self.seen.push('\n');
        l
    }

    /// Closes stdin and waits for the end.
    pub(crate) fn finish(&mut self) -> Output {
        drop(self.stdin.take());
        let status = self
            .session
            .wait_timeout(DEADLINE)
            .unwrap()
            .expect("session ended before the deadline");
        let mut stdout = std::mem::take(&mut self.seen);
        while let Ok(l) = self.lines.recv_timeout(DEADLINE) {
            stdout.push_str(&l);
            stdout.push('\n');
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Output {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

/// Runs a host command; panics with its stderr if it fails.
pub(crate) fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace acting as the server: each session attached to it
/// gets a veth whose inner end is its `eth0` (address /32, default route
/// via [`ServerNet::GATEWAY`]). The server does not forward between
/// sessions. Deleted (with its veths) on Drop.
pub(crate) struct ServerNet {
    pub name: String,
    n: AtomicU32,
}

impl ServerNet {
    pub(crate) const GATEWAY: &'static str = "10.77.0.1";

    pub(crate) fn new() -> ServerNet {
        let name = unique("mdst-");
        sh(Command::new("ip").args(["netns", "add", &name]));
        let s = ServerNet {
            name,
            n: AtomicU32::new(0),
        };
        s.ip(&["link", "set", "lo", "up"]);
        s
    }

    pub(crate) fn ip(&self, args: &[&str]) -> String {
        sh(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Plumbs the session whose PID 1 has host pid `pid` with address `ip`.
    pub(crate) fn attach(&self, pid: u32, ip: &str) -> Result<(), String> {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let tag = format!(
            "{:05}{}{n}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed) % 1000
        );
        let (outer, inner) = (format!("mh{tag}"), format!("ms{tag}"));
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        let pid = pid.to_string();
        run(Command::new("ip").args([
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]))?;
        let r = self.plumb(&outer, &inner, &pid, ip, &run);
        if r.is_err() {
            // Whatever was made stays nowhere: the host end or the server end.
            let _ = Command::new("ip").args(["link", "del", &outer]).output();
            let _ = Command::new("ip")
                .args(["-n", &self.name, "link", "del", &outer])
                .output();
        }
        r
    }

    fn plumb(
        &self,
        outer: &str,
        inner: &str,
        pid: &str,
        ip: &str,
        run: &dyn Fn(&mut Command) -> Result<(), String>,
    ) -> Result<(), String> {
        let (outer, inner) = (outer.to_string(), inner.to_string());
        run(Command::new("ip").args(["link", "set", &outer, "netns", &self.name]))?;
        run(Command::new("ip").args(["link", "set", &inner, "netns", pid]))?;
        let gw = format!("{}/32", Self::GATEWAY);
        for args in [
            vec!["addr", "add", gw.as_str(), "dev", outer.as_str()],
            vec!["link", "set", outer.as_str(), "up"],
            vec!["route", "add", ip, "dev", outer.as_str()],
        ] {
            run(Command::new("ip").arg("-n").arg(&self.name).args(&args))?;
        }
        let addr = format!("{ip}/32");
        for args in [
            vec!["link", "set", inner.as_str(), "name", "eth0"],
            vec!["addr", "add", addr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", Self::GATEWAY, "dev", "eth0"],
            vec!["route", "add", "default", "via", Self::GATEWAY],
        ] {
            run(Command::new("nsenter")
                .args(["-t", pid, "-n", "ip"])
                .args(&args))?;
        }
        Ok(())
    }
}

impl Drop for ServerNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
