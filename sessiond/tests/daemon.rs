//! The `mobidesk-sessiond --config` daemon with real sessions: the control
//! API (create, list, inspect, exec, resources, destroy), bad calls, a
//! restart after SIGKILL, metrics. Each test runs its own daemon (own
//! socket, token, state and runtime dirs, metrics port); sessions and daemon
//! are removed on Drop, also on panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use mobidesk_sessiond::api::{ErrorKind, Response, SessionInfo};
use mobidesk_sessiond::state::{is_alive, ProcStat, State};
use mobidesk_sessiond::{CgroupManager, Limits};
use serde_json::{json, Value};

use crate::support::{require_root, unique, TempDir, DEADLINE, PROBE};

const BIN: &str = env!("CARGO_BIN_EXE_mobidesk-sessiond");

/// A daemon under test, with its directories, token and log.
pub(crate) struct TestDaemon {
    pub(crate) dir: TempDir,
    pub(crate) config: PathBuf,
    pub(crate) socket: PathBuf,
    token: String,
    metrics: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl TestDaemon {
    /// A daemon (not started) whose config adds `limits` to `[limits]`.
    pub(crate) fn new(limits: &str) -> TestDaemon {
        TestDaemon::with_tables(limits, "")
    }

    /// A daemon (not started) whose config adds `limits` to `[limits]` and
    /// ends with `tables` (e.g. `[network]`).
    pub(crate) fn with_tables(limits: &str, tables: &str) -> TestDaemon {
        require_root();
        let dir = TempDir::new();
        let p = dir.path();
        let token = format!("tok-{}-0123456789abcdef", unique("t"));
        std::fs::write(p.join("token"), format!("{token}\n")).unwrap();
        std::fs::set_permissions(p.join("token"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let profiles = p.join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        std::fs::create_dir_all(p.join("homes/alice")).unwrap();
        let probe = env!("CARGO_BIN_EXE_mobidesk-session-probe");
        for (name, userns) in [
            ("probe.toml", ""),
            ("probe-nouserns.toml", "userns = false\n"),
        ] {
            std::fs::write(
                profiles.join(name),
                format!(
                    "hostname = \"dmn-host\"\n{userns}\n[[root.binds]]\nsource = \"{probe}\"\ntarget = \"{PROBE}\"\n"
                ),
            )
            .unwrap();
        }
        // A free port now; the daemon binds it right after.
        let metrics = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = p.join("api.sock");
        let config = p.join("sessiond.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\ntoken_file = \"{}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n\
                 profiles_dir = \"{}\"\nhomes_dir = \"{}\"\ndefault_profile = \"{}\"\n\
                 metrics = \"{metrics}\"\n[limits]\n{limits}\n{tables}\n",
                socket.display(),
                p.join("token").display(),
                p.join("state").display(),
                p.join("run").display(),
                profiles.display(),
                p.join("homes").display(),
                profiles.join("probe.toml").display(),
            ),
        )
        .unwrap();
        TestDaemon {
            dir,
            config,
            socket,
            token,
            metrics,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        }
    }

    /// Starts the daemon and waits for its "sessiond up" log line.
    pub(crate) fn start(&mut self) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .env("MOBIDESK_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    // Nobody waits any more; keep collecting the log.
                }
            }
        });
        self.child = Some(child);
        loop {
            match rx.recv_timeout(DEADLINE) {
                Ok(l) if l.contains("sessiond up") => return,
                Ok(_) => continue,
                Err(_) => panic!("daemon did not come up:\n{}", self.log()),
            }
        }
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, and wait for the daemon's end.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One request (token added) on a fresh connection.
    pub(crate) fn call(&self, request: Value) -> Response {
        mobidesk_sessiond::daemon::request(&self.socket, &self.token, &request, DEADLINE)
            .unwrap_or_else(|e| panic!("{request}: {e}\n{}", self.log()))
    }

    pub(crate) fn ok(&self, request: Value) -> Response {
        let r = self.call(request.clone());
        assert!(r.ok, "{request} failed: {r:?}\n{}", self.log());
        r
    }

    pub(crate) fn err(&self, request: Value) -> ErrorKind {
        let r = self.call(request.clone());
        assert!(!r.ok, "{request} succeeded: {r:?}");
        let e = r.error.unwrap();
        assert!(!e.message.is_empty());
        e.kind
    }

    pub(crate) fn create(&self, profile: &str) -> SessionInfo {
        let id = unique("dm-");
        self.ok(json!({"op": "create", "id": id, "profile": profile}))
            .session
            .unwrap()
    }

    /// Runs `argv` in the session; returns (exit code, stdout, stderr).
    pub(crate) fn exec(&self, id: &str, argv: &[&str]) -> (i32, String, String) {
        let x = self
            .ok(json!({"op": "exec", "id": id, "argv": argv}))
            .exec
            .unwrap();
        (x.exit_code, x.stdout, x.stderr)
    }

    pub(crate) fn probe(&self, id: &str, args: &[&str]) -> String {
        let mut argv = vec![PROBE];
        argv.extend_from_slice(args);
        let (code, out, err) = self.exec(id, &argv);
        assert_eq!(code, 0, "{argv:?}: {out} {err}");
        out.trim().to_string()
    }

    pub(crate) fn state(&self) -> State {
        let text = std::fs::read_to_string(self.dir.path().join("state/sessions.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Runs the daemon once, which must refuse to start: exit code 1 and
    /// `why` on stderr.
    pub(crate) fn refused(&self, why: &str) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{out:?}"
        );
    }

    /// Leaves `state` as the daemon's state file, and an (empty) layer of
    /// each of its sessions, as a daemon that ended would.
    pub(crate) fn leave_state(&self, state: &State) {
        let dir = self.dir.path().join("state");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("sessions.json"),
            serde_json::to_string(state).unwrap(),
        )
        .unwrap();
        for s in &state.sessions {
            std::fs::create_dir_all(self.layer_dir(&s.id).join("root")).unwrap();
        }
    }

    pub(crate) fn layer_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("run").join(id)
    }

    /// A raw connection for malformed requests.
    fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            stream: s,
        }
    }

    pub(crate) fn scrape(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // Through the API while the daemon runs, then from the state file:
        // sessions outlive the daemon, so they are ended here.
        if self.child.is_some() {
            if let Ok(r) = mobidesk_sessiond::daemon::request(
                &self.socket,
                &self.token,
                &json!({"op": "list"}),
                DEADLINE,
            ) {
                for s in r.sessions.unwrap_or_default() {
                    let _ = mobidesk_sessiond::daemon::request(
                        &self.socket,
                        &self.token,
                        &json!({"op": "destroy", "id": s.id}),
                        DEADLINE,
                    );
                }
            }
        }
        self.kill9();
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("state/sessions.json")) else {
            return;
        };
        let Ok(state) = serde_json::from_str::<State>(&text) else {
            return;
        };
        for rec in state.sessions {
            if let (Some(pid), Some(t)) = (rec.init_pid, rec.init_start_time) {
                if is_alive(pid, t) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    let _ = mobidesk_sessiond::environment::wait_for_exit(pid, DEADLINE);
                }
            }
            if let Ok(m) = CgroupManager::detect() {
                if let Ok(cg) = m.create(&rec.id, &Limits::default()) {
                    let _ = cg.remove(Duration::from_secs(10));
                }
            }
            let _ = std::fs::remove_dir_all(self.layer_dir(&rec.id));
        }
    }
}

/// A raw API connection.
struct Conn {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response line.
    fn response(&mut self) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn error_kind(&mut self, line: &str) -> ErrorKind {
        self.send(format!("{line}\n").as_bytes());
        let r = self.response();
        assert!(!r.ok, "{line}: {r:?}");
        r.error.unwrap().kind
    }

    /// The daemon closed the connection (EOF before the deadline).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// A session's cgroup directories that exist now.
fn existing(paths: &[PathBuf]) -> Vec<&PathBuf> {
    paths.iter().filter(|p| p.exists()).collect()
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{key} missing"))
        .trim()
        .to_string()
}

#[test]
fn create_list_inspect_exec_destroy() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    assert_eq!(s.state, mobidesk_sessiond::api::SessionState::Running);
    let init = s.init_pid.unwrap();
    assert!(ProcStat::read(init).is_some());
    assert!(!s.cgroups.is_empty() && existing(&s.cgroups).len() == s.cgroups.len());
    assert!(s.layer.is_dir());

    let list = d.ok(json!({"op": "list"})).sessions.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, s.id);
    let i = d.ok(json!({"op": "inspect", "id": s.id})).session.unwrap();
    assert!(i.processes.unwrap() >= 2, "{i:?}");
    assert!(i.memory_bytes.unwrap() > 0, "{i:?}");
    let cpu_before = i.cpu_seconds.unwrap();
    assert_eq!(i.profile.hostname, "dmn-host");
    // CPU time spent by a command that has ended is still the session's
    // (the kernel's cgroup accounting, not a sum over live processes: an
    // exec'd command's parent is outside the session).
    let (code, _, err) = d.exec(
        &s.id,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let i = d.ok(json!({"op": "inspect", "id": s.id})).session.unwrap();
    let spent = i.cpu_seconds.unwrap() - cpu_before;
    assert!(
        spent >= 0.1,
        "the loop's CPU time is not counted: {spent} s"
    );

    // Inside the session: its host name, its pid namespace.
    assert_eq!(d.exec(&s.id, &["hostname"]).1, "dmn-host\n");
    let (code, ps, _) = d.exec(&s.id, &["ps", "-e", "-o", "pid=,comm="]);
    assert_eq!(code, 0);
    let procs: Vec<(u32, String)> = ps
        .lines()
        .map(|l| {
            let (pid, comm) = l.trim().split_once(' ').unwrap();
            (pid.parse().unwrap(), comm.trim().to_string())
        })
        .collect();
    assert_eq!(procs[0], (1, "mobidesk-init".to_string()), "{ps}");
    assert!(procs.iter().any(|(_, c)| c == "ps"), "{ps}");
    assert!(procs.iter().all(|(p, _)| *p < 100), "small pids: {ps}");
    // Its cgroups are the exec'd process's cgroup root.
    let (_, cg, _) = d.exec(&s.id, &["cat", "/proc/self/cgroup"]);
    assert!(cg.lines().all(|l| l.ends_with(":/")), "{cg}");
    // The exit status and stderr come back.
    let (code, out, err) = d.exec(&s.id, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));
    let (code, _, err) = d.exec(&s.id, &["/no/such/program"]);
    assert_eq!(code, 127, "{err}");

    // Destroy: processes, cgroups, layer and state entry gone.
    d.ok(json!({"op": "destroy", "id": s.id}));
    assert!(mobidesk_sessiond::environment::wait_for_exit(init, DEADLINE).unwrap());
    assert_eq!(existing(&s.cgroups), Vec::<&PathBuf>::new());
    assert!(!d.layer_dir(&s.id).exists());
    assert!(d.state().sessions.is_empty());
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
}

#[test]
fn an_exec_has_the_sessions_walls_in_both_modes() {
    let mut d = TestDaemon::new("");
    d.start();
    for profile in ["probe.toml", "probe-nouserns.toml"] {
        let s = d.create(profile);
        let init = s.init_pid.unwrap();
        // The same seccomp filters, bounding set and no_new_privs as PID 1.
        let (_, status, _) = d.exec(&s.id, &["cat", "/proc/self/status"]);
        // Both read inside the session (ids as the session sees them).
        let (_, pid1, _) = d.exec(&s.id, &["cat", "/proc/1/status"]);
        let host = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
        assert_eq!(status_field(&host, "CapBnd"), status_field(&pid1, "CapBnd"));
        for key in ["Seccomp", "Seccomp_filters", "CapBnd", "NoNewPrivs", "Uid"] {
            assert_eq!(
                status_field(&status, key),
                status_field(&pid1, key),
                "{profile}: {key}"
            );
        }
        assert_eq!(status_field(&status, "Seccomp_filters"), "1", "{profile}");
        // The walls hold for it as for the session.
        for (args, want) in [
            (&["mknod-dev", "/tmp/mem", "c"][..], "errno 1 EPERM"),
            (&["mount-tmpfs", "/usr"][..], "errno 1 EPERM"),
            (&["new-userns"][..], "errno 1 EPERM"),
            (&["mknod-fifo", "/tmp/fifo"][..], "ok"),
        ] {
            assert_eq!(d.probe(&s.id, args), want, "{profile}: {args:?}");
        }
        d.ok(json!({"op": "destroy", "id": s.id}));
    }
}

#[test]
fn resources_change_shows_in_inspect_and_the_cgroup() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    let r = d
        .ok(json!({"op": "resources", "id": s.id,
                   "limits": {"pids_max": 33, "memory_max": "96M", "cpu_weight": 50}}))
        .session
        .unwrap();
    assert_eq!(r.limits.pids_max, Some(33));
    let i = d.ok(json!({"op": "inspect", "id": s.id})).session.unwrap();
    assert_eq!(i.limits.memory_max, Some(96 << 20));
    let file = |name: &str| -> String {
        let p = s
            .cgroups
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} in {:?}", s.cgroups));
        std::fs::read_to_string(p).unwrap().trim().to_string()
    };
    assert_eq!(file("pids.max"), "33");
    let mem = if s.cgroups.iter().any(|d| d.join("memory.max").exists()) {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(file(mem), (96u64 << 20).to_string());
    let state = d.state();
    let rec = state.sessions.iter().find(|r| r.id == s.id).unwrap();
    assert_eq!(rec.limits.pids_max, Some(33), "persisted");
    // A bad limit changes nothing.
    assert_eq!(
        d.err(json!({"op": "resources", "id": s.id, "limits": {"pids_max": 1}})),
        ErrorKind::BadRequest
    );
    assert_eq!(file("pids.max"), "33");
}

#[test]
fn bad_calls_get_clear_errors() {
    let mut d = TestDaemon::new("max_sessions = 1\nexec_output_bytes = 4096");
    d.start();
    let s = d.create("probe.toml");
    // Unknown session, for every op that names one.
    for op in ["inspect", "destroy"] {
        assert_eq!(
            d.err(json!({"op": op, "id": "no-such"})),
            ErrorKind::UnknownSession
        );
    }
    assert_eq!(
        d.err(json!({"op": "exec", "id": "no-such", "argv": ["true"]})),
        ErrorKind::UnknownSession
    );
    assert_eq!(
        d.err(json!({"op": "resources", "id": "no-such", "limits": {}})),
        ErrorKind::UnknownSession
    );
    // Invalid arguments.
    for bad in [
        json!({"op": "create", "profile": "../../etc/passwd"}),
        json!({"op": "create", "profile": "/etc/passwd"}),
        json!({"op": "create", "home": "/etc"}),
        json!({"op": "create", "id": "a/b"}),
        json!({"op": "create", "profile": {"hostname": "x", "typo": 1}}),
        json!({"op": "exec", "id": s.id, "argv": []}),
        json!({"op": "exec", "id": s.id, "argv": ["true"], "timeout_s": 999999}),
    ] {
        assert_eq!(d.err(bad.clone()), ErrorKind::BadRequest, "{bad}");
    }
    // The id in use, the session limit.
    assert_eq!(
        d.err(json!({"op": "create", "id": s.id})),
        ErrorKind::Conflict
    );
    assert_eq!(d.err(json!({"op": "create"})), ErrorKind::Limit);

    // Malformed JSON and an unknown op: an error, the connection stays.
    let mut c = d.connect();
    let tok = &d.token;
    assert_eq!(c.error_kind("{not json"), ErrorKind::BadRequest);
    assert_eq!(
        c.error_kind(&format!(r#"{{"token":"{tok}","op":"bogus"}}"#)),
        ErrorKind::BadRequest
    );
    assert_eq!(
        c.error_kind(&format!(r#"{{"token":"{tok}","op":"list","extra":1}}"#)),
        ErrorKind::BadRequest
    );
    c.send(format!("{{\"token\":\"{tok}\",\"op\":\"list\"}}\n").as_bytes());
    assert!(c.response().ok, "the connection is still usable");

    // Missing and wrong token: unauthorized, then the connection is closed.
    let mut c = d.connect();
    assert_eq!(c.error_kind(r#"{"op":"list"}"#), ErrorKind::Unauthorized);
    assert!(c.closed());
    let mut c = d.connect();
    assert_eq!(
        c.error_kind(r#"{"token":"wrong-token-0123456789","op":"destroy","id":"x"}"#),
        ErrorKind::Unauthorized
    );
    assert!(c.closed());
    assert!(
        !d.log().contains("wrong-token-0123456789") && !d.log().contains(&d.token),
        "no token in the log"
    );

    // An over-long line: an error, then the connection is closed.
    let mut c = d.connect();
    let mut big = vec![b'a'; mobidesk_sessiond::api::MAX_REQUEST_LINE + 10];
    big.push(b'\n');
    c.send(&big);
    let r = c.response();
    assert_eq!(r.error.unwrap().kind, ErrorKind::BadRequest);
    assert!(c.closed());

    // Exec: output bounded, timeout kills.
    let x = d
        .ok(json!({"op": "exec", "id": s.id,
                   "argv": ["sh", "-c", "head -c 10000 /dev/zero | tr '\\0' a"]}))
        .exec
        .unwrap();
    assert_eq!(x.stdout.len(), 4096);
    assert!(x.stdout_truncated && !x.stderr_truncated);
    let x = d
        .ok(json!({"op": "exec", "id": s.id, "argv": ["sleep", "100"], "timeout_s": 1}))
        .exec
        .unwrap();
    assert!(x.timed_out);
    assert_eq!((x.exit_code, x.signal), (137, Some(9)));

    // The daemon lives on and counted the failures.
    let metrics = d.scrape();
    let auth: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mobidesk_sessiond_auth_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(auth, 2, "{metrics}");
    assert!(metrics.contains(
        r#"mobidesk_sessiond_api_requests_total{op="inspect",result="unknown_session"} 1"#
    ));
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().len() == 1);
}

#[test]
fn two_concurrent_destroys_one_wins() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    let barrier = Arc::new(Barrier::new(2));
    let d = Arc::new(d);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (d, b, id) = (d.clone(), barrier.clone(), s.id.clone());
            std::thread::spawn(move || {
                b.wait();
                d.call(json!({"op": "destroy", "id": id}))
            })
        })
        .collect();
    let results: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.ok).count();
    assert_eq!(ok, 1, "{results:?}");
    let loser = results.iter().find(|r| !r.ok).unwrap();
    let e = loser.error.as_ref().unwrap();
    assert!(
        matches!(e.kind, ErrorKind::Conflict | ErrorKind::UnknownSession),
        "{e:?}"
    );
    assert!(e.message.contains(&s.id), "{e:?}");
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    assert_eq!(existing(&s.cgroups), Vec::<&PathBuf>::new());
}

#[test]
fn a_session_whose_command_ends_is_cleaned_up() {
    let mut d = TestDaemon::new("");
    d.start();
    // No id (the daemon picks one), an inline profile.
    let s = d
        .ok(json!({"op": "create", "profile": {"hostname": "inline-host"}}))
        .session
        .unwrap();
    assert!(s.id.starts_with('s'), "{}", s.id);
    let init = s.init_pid.unwrap();
    assert_eq!(d.exec(&s.id, &["hostname"]).1, "inline-host\n");
    // An exec'd command starts with no signal blocked.
    let (_, status, _) = d.exec(&s.id, &["cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "SigBlk"), "0000000000000000");
    // PID 1's child is the session's command (sleep infinity; exec'd
    // processes are not PID 1's children): when it ends, so does the
    // session. (SIGKILL: the reaper's command inherits its blocked signals,
    // see the README's known limits. `kill` itself may be killed with the
    // ending pid namespace: 137.)
    let (code, _, err) = d.exec(
        &s.id,
        &["sh", "-c", "kill -KILL $(cat /proc/1/task/1/children)"],
    );
    assert!(code == 0 || code == 137, "{code} {err}");
    assert!(mobidesk_sessiond::environment::wait_for_exit(init, DEADLINE).unwrap());
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    assert_eq!(
        d.err(json!({"op": "inspect", "id": s.id})),
        ErrorKind::UnknownSession
    );
    assert_eq!(existing(&s.cgroups), Vec::<&PathBuf>::new());
    assert!(!d.layer_dir(&s.id).exists());
    assert!(d.state().sessions.is_empty());
    assert!(d.log().contains("session ended"), "{}", d.log());
}

/// The pid of PID 1's first child (the session's command) on the host.
fn first_child(pid: u32) -> u32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn sessions_survive_a_daemon_sigkill_and_are_adopted_again() {
    let mut d = TestDaemon::new("");
    d.start();
    let kept = d.create("probe.toml");
    let ended = d.create("probe-nouserns.toml");
    let init = kept.init_pid.unwrap();
    let start = ProcStat::read(init).unwrap().start_time;
    let command = first_child(init);
    let command_start = ProcStat::read(command).unwrap().start_time;
    let ended_init = ended.init_pid.unwrap();

    d.kill9();
    assert!(is_alive(init, start), "PID 1 outlived the daemon");
    assert!(is_alive(command, command_start), "so did its command");
    // One session ends while no daemon runs.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ended_init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(mobidesk_sessiond::environment::wait_for_exit(ended_init, DEADLINE).unwrap());

    d.start();
    let list = d.ok(json!({"op": "list"})).sessions.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].id, kept.id);
    assert!(list[0].adopted);
    assert_eq!(list[0].init_pid, Some(init));
    // The ended one's leftovers are gone.
    assert_eq!(existing(&ended.cgroups), Vec::<&PathBuf>::new());
    assert!(!d.layer_dir(&ended.id).exists());
    assert_eq!(d.state().sessions.len(), 1);
    // The adopted session works as before.
    assert_eq!(d.exec(&kept.id, &["hostname"]).1, "dmn-host\n");
    d.ok(json!({"op": "resources", "id": kept.id, "limits": {"pids_max": 50}}));
    let i = d
        .ok(json!({"op": "inspect", "id": kept.id}))
        .session
        .unwrap();
    assert!(i.processes.unwrap() >= 1 && i.memory_bytes.is_some());
    d.ok(json!({"op": "destroy", "id": kept.id}));
    assert!(mobidesk_sessiond::environment::wait_for_exit(init, DEADLINE).unwrap());
    assert!(!is_alive(command, command_start));
    assert_eq!(existing(&kept.cgroups), Vec::<&PathBuf>::new());
    assert!(!d.layer_dir(&kept.id).exists());
}

#[test]
fn sigterm_stops_the_daemon_and_leaves_sessions_running() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    let init = s.init_pid.unwrap();
    let start = ProcStat::read(init).unwrap().start_time;
    let mut child = d.child.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!d.socket.exists(), "socket removed");
    assert!(is_alive(init, start));
    d.start();
    assert_eq!(d.exec(&s.id, &["hostname"]).1, "dmn-host\n");
}

#[test]
fn metrics_are_scraped_and_well_formed() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    d.exec(&s.id, &["true"]);
    let text = d.scrape();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .unwrap()
    };
    let label = format!("{{session=\"{}\"}}", s.id);
    assert_eq!(value("mobidesk_sessiond_sessions"), 1.0);
    assert!(value(&format!("mobidesk_sessiond_session_processes{label}")) >= 2.0);
    assert!(value(&format!("mobidesk_sessiond_session_memory_bytes{label}")) > 0.0);
    assert!(
        value(&format!(
            "mobidesk_sessiond_session_cpu_seconds_total{label}"
        )) >= 0.0
    );
    assert_eq!(
        value(r#"mobidesk_sessiond_api_requests_total{op="create",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"mobidesk_sessiond_api_requests_total{op="exec",result="ok"}"#),
        1.0
    );
    assert_eq!(value("mobidesk_sessiond_auth_failures_total"), 0.0);
    let promtool = Path::new("/usr/bin/promtool");
    if promtool.exists() {
        let mut p = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn ctl_runs_a_command_with_its_exit_status() {
    let mut d = TestDaemon::new("");
    d.start();
    let s = d.create("probe.toml");
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .arg("--token-file")
        .arg(d.dir.path().join("token"))
        .args(["exec", &s.id, "--", "sh", "-c", "hostname; exit 5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dmn-host\n");
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .arg("--token-file")
        .arg(d.dir.path().join("token"))
        .args(["inspect", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown_session"));
}

#[test]
fn a_bad_configuration_is_refused_before_anything_starts() {
    let dir = TempDir::new();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "socket = \"/run/x.sock\"\ntypo = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));
    // --check-config prints the configuration with every default.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[limits]\nmax_sessions = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("max_sessions = 3") && text.contains("token_file"),
        "{text}"
    );
    // A token file others can read: the daemon does not start.
    let d = TestDaemon::new("");
    std::fs::set_permissions(
        d.dir.path().join("token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    d.refused("chmod 600");
    assert!(!d.socket.exists());
    // A state file that does not parse: refused, named, left as it is.
    std::fs::set_permissions(
        d.dir.path().join("token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let state = d.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("sessions.json"), "{\"version\":1,\"sess").unwrap();
    d.refused("sessions.json is not valid");
    assert_eq!(
        std::fs::read_to_string(state.join("sessions.json")).unwrap(),
        "{\"version\":1,\"sess"
    );
}

#[test]
fn execs_are_bounded_and_a_destroy_ends_a_running_one() {
    let mut d = TestDaemon::new("max_execs = 1");
    d.start();
    let s = d.create("probe.toml");
    // A FIFO in the layer (the session's /root), visible from the host.
    assert_eq!(d.exec(&s.id, &["mkfifo", "/root/gate"]).0, 0);
    let d = Arc::new(d);
    let running = {
        let (d, id) = (d.clone(), s.id.clone());
        std::thread::spawn(move || {
            d.call(json!({"op": "exec", "id": id, "argv": ["cat", "/root/gate"]}))
        })
    };
    // Opening the FIFO for writing returns once `cat` has opened it: the
    // first exec runs now.
    let gate = std::fs::OpenOptions::new()
        .write(true)
        .open(s.layer.join("root/gate"))
        .unwrap();
    assert_eq!(
        d.err(json!({"op": "exec", "id": s.id, "argv": ["true"]})),
        ErrorKind::Busy
    );
    d.ok(json!({"op": "destroy", "id": s.id}));
    let r = running.join().unwrap();
    let x = r.exec.clone().unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!((x.exit_code, x.signal), (137, Some(9)), "{x:?}");
    drop(gate);
    assert_eq!(existing(&s.cgroups), Vec::<&PathBuf>::new());
}

#[test]
fn a_reused_pid_is_not_taken_for_a_session() {
    use mobidesk_sessiond::state::SessionRecord;
    let mut d = TestDaemon::new("");
    // A record whose PID 1 has ended and whose pid now belongs to another
    // process (here: a `sleep` of ours, with another start time).
    let other = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
    let pid = other.0.id();
    let start = ProcStat::read(pid).unwrap().start_time;
    let id = unique("ghost-");
    let state = State {
        version: mobidesk_sessiond::state::VERSION,
        sessions: vec![SessionRecord {
            id: id.clone(),
            init_pid: Some(pid),
            init_start_time: Some(start.saturating_sub(1)),
            created: 0,
            profile: mobidesk_sessiond::Profile::default(),
            home: None,
            command: vec!["sleep".into(), "infinity".into()],
            limits: Limits::default(),
            cgroups: Vec::new(),
            session_dir: d.layer_dir(&id),
            destroying: false,
            network: None,
            display_port: None,
            display_name: None,
        }],
        ipam: None,
    };
    d.leave_state(&state);
    d.start();
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    assert!(is_alive(pid, start), "the other process was left alone");
    assert!(
        !d.layer_dir(&id).exists(),
        "the dead session's layer removed"
    );
    assert!(d.state().sessions.is_empty());
    drop(other);
}

/// A child process killed (and reaped) on Drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sessions_are_created_used_and_destroyed_concurrently() {
    let mut d = TestDaemon::new("max_sessions = 4");
    d.start();
    let d = Arc::new(d);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                let profile = if i % 2 == 0 {
                    "probe.toml"
                } else {
                    "probe-nouserns.toml"
                };
                let s = d.create(profile);
                let (code, out, _) = d.exec(&s.id, &["sh", "-c", "echo $MOBIDESK_SESSION"]);
                assert_eq!((code, out.trim()), (0, s.id.as_str()));
                d.ok(json!({"op": "destroy", "id": s.id}));
                s
            })
        })
        .collect();
    let sessions: Vec<SessionInfo> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    for s in &sessions {
        assert_eq!(existing(&s.cgroups), Vec::<&PathBuf>::new());
        assert!(!d.layer_dir(&s.id).exists());
    }
    assert!(d.state().sessions.is_empty());
}
