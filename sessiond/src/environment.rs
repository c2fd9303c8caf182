//! Starting a session: a process tree in its own pid, mount, ipc, uts and
//! net namespaces, with a root file system built by `pivot_root`, behind the
//! walls of [`crate::policy`] and in its own cgroups.
//!
//! How a session starts (the sessiond binary plays three parts):
//!
//! 1. sessiond ([`Launcher::start`]) creates the session's cgroups and its
//!    writable layer, and runs `mobidesk-sessiond __spawn` (the *helper*)
//!    with a control socket as fd 3, over which it sends a [`LaunchSpec`];
//! 2. the helper (single-threaded, [`helper_main`]) joins the cgroups,
//!    unshares the namespaces and forks: the child is the session's PID 1.
//!    The helper reports PID 1's host pid, then only waits for it and exits
//!    with its status;
//! 3. PID 1 builds the root file system and `pivot_root`s into it, waits for
//!    sessiond to plumb its network ("go"), sets host name, loopback and
//!    sysctls, masks /proc, drops capabilities, installs the seccomp filter,
//!    marks every descriptor above 2 close-on-exec, answers "ready" and
//!    execs the reaper ([`crate::init`]) from `/.mobidesk/init` inside the
//!    new root, which runs the session's command.
//!
//! The layout follows what CRIU needs to checkpoint the session later
//! (../shared/NOTES.md): PID 1 leads its own session, no inherited
//! descriptor above 2, read-only bind mounts, a tmpfs /dev with the listed
//! nodes, devpts `newinstance` with a `ptmx` link, `pivot_root`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupError, CgroupManager, SessionCgroup};
use crate::profile::{Profile, UserNs};

/// Where the reaper binary appears inside every session.
pub const INIT_PATH: &str = "/.mobidesk/init";

/// Why a session could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session id {0:?} (1-40 letters, digits, '-', '_')")]
    BadId(String),
    #[error("session {id}: no command given")]
    NoCommand { id: String },
    #[error("session {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: std::io::Error,
    },
    #[error("session {id}: cgroup: {source}")]
    Cgroup { id: String, source: CgroupError },
    #[error("session {id}: set-up failed inside the session: {detail}")]
    Setup { id: String, detail: String },
    #[error("session {id}: network set-up failed: {detail}")]
    Network { id: String, detail: String },
    #[error("session {id}: not ready within {0:?}", .timeout)]
    Timeout { id: String, timeout: Duration },
}

/// What one session is: its id, profile, home, and command.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// Unique on this server; names the cgroup and the layer directory.
    pub id: String,
    pub profile: Profile,
    /// The user's home on shared storage (host path), mounted read-write at
    /// `profile.home_path`. `None`: an empty directory in the layer.
    pub home: Option<PathBuf>,
    /// The command the reaper runs inside the session (looked up in PATH).
    pub command: Vec<String>,
}

/// The standard streams of the session's command. `None`: the session's own
/// `/dev/null`, opened inside the session (a descriptor of the host's
/// `/dev/null` would be outside the session's mount tree, which CRIU
/// refuses to checkpoint).
#[derive(Debug, Default)]
pub struct SessionStdio {
    pub stdin: Option<Stdio>,
    pub stdout: Option<Stdio>,
    pub stderr: Option<Stdio>,
}

/// What the helper and PID 1 need, sent over the control socket as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub id: String,
    pub hostname: String,
    /// The writable layer: becomes `/`.
    pub root: PathBuf,
    pub system_dirs: Vec<PathBuf>,
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub home: Option<PathBuf>,
    pub home_path: PathBuf,
    pub tmp_mib: u64,
    pub shm_mib: u64,
    /// `cgroup.procs` files the helper writes its pid to before unsharing.
    pub cgroup_procs: Vec<PathBuf>,
    /// The host path of the sessiond binary, bind-mounted at [`INIT_PATH`].
    pub init_exe: PathBuf,
    /// Which of stdin, stdout, stderr PID 1 points at the session's own
    /// `/dev/null`.
    pub own_null: [bool; 3],
    /// The user namespace's mapping, when the session has one.
    pub userns: Option<UserNs>,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

/// Starts sessions. Holds the path of the sessiond binary (which plays the
/// helper and the reaper), the cgroup backend and the runtime directory
/// under which each session's writable layer lives.
#[derive(Debug, Clone)]
pub struct Launcher {
    exe: PathBuf,
    runtime_dir: PathBuf,
    cgroups: Option<CgroupManager>,
    start_timeout: Duration,
    keep_layer: bool,
}

impl Launcher {
    /// `exe`: the `mobidesk-sessiond` binary; `runtime_dir`: where layers go
    /// (`<runtime_dir>/<id>/root`).
    pub fn new(exe: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> Launcher {
        Launcher {
            exe: exe.into(),
            runtime_dir: runtime_dir.into(),
            cgroups: None,
            start_timeout: Duration::from_secs(20),
            keep_layer: false,
        }
    }

    /// Put every session in its own cgroups (limits from its profile).
    pub fn with_cgroups(mut self, m: CgroupManager) -> Launcher {
        self.cgroups = Some(m);
        self
    }

    /// How long the start may take before it is abandoned.
    pub fn with_start_timeout(mut self, t: Duration) -> Launcher {
        self.start_timeout = t;
        self
    }

    /// Keep the writable layer on disk when the session ends.
    pub fn keep_layer(mut self, keep: bool) -> Launcher {
        self.keep_layer = keep;
        self
    }

    /// Starts a session with no network other than its loopback.
    pub fn start(&self, spec: &SessionSpec, stdio: SessionStdio) -> Result<Session, SessionError> {
        self.start_with_network(spec, stdio, |_| Ok(()))
    }

    /// Starts a session; `network(host_pid_of_session_init)` runs after the
    /// namespaces exist and before the session's command starts (move a veth
    /// into `/proc/PID/ns/net`, give it an address...).
    pub fn start_with_network(
        &self,
        spec: &SessionSpec,
        stdio: SessionStdio,
        network: impl FnOnce(u32) -> Result<(), String>,
    ) -> Result<Session, SessionError> {
        let id = spec.id.clone();
        if id.is_empty()
            || id.len() > 40
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SessionError::BadId(id));
        }
        if spec.command.is_empty() {
            return Err(SessionError::NoCommand { id });
        }
        let ioe = |what: &str| {
            let id = id.clone();
            let what = what.to_string();
            move |source| SessionError::Io { id, what, source }
        };
        let span = tracing::info_span!("session", session = %id);
        let _enter = span.enter();

        let cgroup = match &self.cgroups {
            Some(m) => Some(m.create(&id, &spec.profile.limits).map_err(|source| {
                SessionError::Cgroup {
                    id: id.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let session_dir = self.runtime_dir.join(&id);
        let root = session_dir.join("root");
        std::fs::create_dir_all(&root).map_err(ioe("creating the writable layer"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(ioe("chmod of the writable layer"))?;
        if let Some(u) = spec.profile.userns {
            // The layer belongs to session root (host uid `uid_base`).
            std::os::unix::fs::chown(&root, Some(u.uid_base), Some(u.gid_base))
                .map_err(ioe("chown of the writable layer"))?;
        }

        let p = &spec.profile;
        let env = session_env(&id, p);
        let launch = LaunchSpec {
            id: id.clone(),
            hostname: p.hostname.clone(),
            root: root.clone(),
            system_dirs: p.root.system_dirs.clone(),
            binds: p
                .root
                .binds
                .iter()
                .map(|b| (b.source.clone(), b.target.clone()))
                .collect(),
            home: spec.home.clone(),
            home_path: p.home_path.clone(),
            tmp_mib: p.tmp_mib,
            shm_mib: p.shm_mib,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            init_exe: self.exe.clone(),
            own_null: [
                stdio.stdin.is_none(),
                stdio.stdout.is_none(),
                stdio.stderr.is_none(),
            ],
            userns: p.userns,
            env,
            command: spec.command.clone(),
        };

        let (ours, theirs) = UnixStream::pair().map_err(ioe("socketpair"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("__spawn").env_clear();
        cmd.stdin(stdio.stdin.unwrap_or_else(Stdio::null));
        cmd.stdout(stdio.stdout.unwrap_or_else(Stdio::null));
        cmd.stderr(stdio.stderr.unwrap_or_else(Stdio::null));
        crate::sys::pass_fd_as_3(&mut cmd, theirs.as_raw_fd());
        let helper = match cmd.spawn() {
            Ok(h) => h,
            Err(e) => {
                if !self.keep_layer {
                    let _ = remove_layer(&session_dir);
                }
                return Err(ioe("starting the session helper")(e));
            }
        };
        drop(theirs);

        let mut session = Session {
            id: id.clone(),
            external_mounts: external_mounts(&launch),
            helper,
            init_pid: None,
            cgroup,
            session_dir,
            keep_layer: self.keep_layer,
            status: None,
        };
        let deadline = Instant::now() + self.start_timeout;
        let mut control = Control::new(ours, id.clone(), deadline)?;

        let mut json = serde_json::to_vec(&launch).map_err(|e| SessionError::Setup {
            id: id.clone(),
            detail: e.to_string(),
        })?;
        json.push(b'\n');
        control.write(&json)?;
        if let Some(u) = p.userns {
            // The helper has made its user namespace; only a process outside
            // it may write the mapping.
            let line = control.line(self.start_timeout)?;
            if line != "mapme" {
                return Err(setup_err(&id, &line));
            }
            let hp = session.helper.id();
            for (file, base) in [("uid_map", u.uid_base), ("gid_map", u.gid_base)] {
                std::fs::write(
                    format!("/proc/{hp}/{file}"),
                    format!("0 {base} {}\n", u.count),
                )
                .map_err(ioe(&format!("writing {file}")))?;
            }
            control.write(b"mapped\n")?;
        }
        let line = control.line(self.start_timeout)?;
        let pid: u32 = line
            .strip_prefix("pid ")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| setup_err(&id, &line))?;
        session.init_pid = Some(pid);
        tracing::debug!(init_pid = pid, "session namespaces created");
        if let Err(detail) = network(pid) {
            // A PID 1 that failed its own set-up is gone by now, and the
            // network step fails for that with an unrelated error (`ip`:
            // "No such process"): report what the session said instead.
            // (A zombie the helper has not reaped yet counts as gone.)
            let pid1_gone = wait_for_exit(pid, Duration::ZERO).unwrap_or(true);
            if pid1_gone {
                return Err(match control.line(self.start_timeout) {
                    Ok(line) => setup_err(&id, &line),
                    Err(e) => e,
                });
            }
            return Err(SessionError::Network { id, detail });
        }
        control.write(b"go\n")?;
        let line = control.line(self.start_timeout)?;
        if line != "ready" {
            return Err(setup_err(&id, &line));
        }
        tracing::info!(init_pid = pid, "session started");
        Ok(session)
    }
}

/// The environment of a session's command: the fixed variables, then the
/// profile's own (the daemon's `exec` gives the same as [`Launcher`]).
pub(crate) fn session_env(id: &str, p: &Profile) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME".into(), p.home_path.display().to_string()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOSTNAME".into(), p.hostname.clone()),
        ("MOBIDESK_SESSION".into(), id.to_string()),
    ];
    env.extend(p.env.iter().cloned());
    env
}

fn setup_err(id: &str, line: &str) -> SessionError {
    SessionError::Setup {
        id: id.to_string(),
        detail: line.strip_prefix("error ").unwrap_or(line).to_string(),
    }
}

/// A mount of the session whose source is outside the session's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMount {
    /// Where it is mounted inside the session.
    pub target: PathBuf,
    /// The host path it comes from (the same path on every server).
    pub source: PathBuf,
}

impl ExternalMount {
    /// A key naming the mount in a CRIU image: the target without slashes
    /// and dots (`/dev/null` -> `dev_null`).
    pub fn key(&self) -> String {
        self.target
            .to_string_lossy()
            .trim_start_matches('/')
            .replace(['/', '.'], "_")
    }

    /// `mnt[TARGET]:KEY`, for `criu dump --external`.
    pub fn criu_dump_arg(&self) -> String {
        format!("mnt[{}]:{}", self.target.display(), self.key())
    }

    /// `mnt[KEY]:SOURCE`, for `criu restore --external`.
    pub fn criu_restore_arg(&self) -> String {
        format!("mnt[{}]:{}", self.key(), self.source.display())
    }
}

/// What [`build_root`] and [`mask_proc`] bind from outside the tree.
fn external_mounts(spec: &LaunchSpec) -> Vec<ExternalMount> {
    let mut v = Vec::new();
    let mut add = |target: PathBuf, source: PathBuf| v.push(ExternalMount { target, source });
    for dir in &spec.system_dirs {
        let is_link = std::fs::symlink_metadata(dir).map(|m| m.file_type().is_symlink());
        if let Ok(false) = is_link {
            add(dir.clone(), dir.clone());
        }
    }
    for (source, target) in &spec.binds {
        add(target.clone(), source.clone());
    }
    if let Some(h) = &spec.home {
        add(spec.home_path.clone(), h.clone());
    }
    add(PathBuf::from(INIT_PATH), spec.init_exe.clone());
    if spec.userns.is_some() {
        for name in DEV_NODES.iter().map(|(n, _, _)| n) {
            let p = Path::new("/dev").join(name);
            add(p.clone(), p);
        }
        // The /proc masks are binds of the session's /dev/null, which is
        // itself the host's node here.
        for p in PROC_MASKED_FILES {
            if Path::new(p).exists() {
                add(PathBuf::from(p), PathBuf::from("/dev/null"));
            }
        }
    }
    v
}

/// Waits until a process (not necessarily our child, e.g. a session that
/// CRIU restored) has exited, at most `timeout`. `Ok(false)`: still there.
pub fn wait_for_exit(pid: u32, timeout: Duration) -> std::io::Result<bool> {
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    poll_readable(&pidfd, timeout)
}

/// Polls one descriptor for readability with a deadline (EINTR retried).
fn poll_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) -> std::io::Result<bool> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [nix::poll::PollFd::new(
        std::os::fd::AsFd::as_fd(fd),
        nix::poll::PollFlags::POLLIN,
    )];
    loop {
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

/// The parent's end of the control socket, read with a deadline.
struct Control {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    id: String,
    deadline: Instant,
}

impl Control {
    fn new(stream: UnixStream, id: String, deadline: Instant) -> Result<Control, SessionError> {
        let reader = stream.try_clone().map_err(|source| SessionError::Io {
            id: id.clone(),
            what: "control socket".into(),
            source,
        })?;
        Ok(Control {
            stream,
            reader: BufReader::new(reader),
            id,
            deadline,
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<(), SessionError> {
        self.stream.write_all(b).map_err(|source| SessionError::Io {
            id: self.id.clone(),
            what: "writing to the session helper".into(),
            source,
        })
    }

    fn line(&mut self, timeout: Duration) -> Result<String, SessionError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SessionError::Timeout {
                id: self.id.clone(),
                timeout,
            });
        }
        let _ = self.reader.get_ref().set_read_timeout(Some(left));
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(SessionError::Setup {
                id: self.id.clone(),
                detail: "the session helper exited during set-up".into(),
            }),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(SessionError::Timeout {
                    id: self.id.clone(),
                    timeout,
                })
            }
            Err(source) => Err(SessionError::Io {
                id: self.id.clone(),
                what: "reading from the session helper".into(),
                source,
            }),
        }
    }
}

/// A running session. Dropping it kills every process in it, removes its
/// cgroups and (unless kept) its writable layer.
#[derive(Debug)]
pub struct Session {
    id: String,
    external_mounts: Vec<ExternalMount>,
    helper: Child,
    init_pid: Option<u32>,
    cgroup: Option<SessionCgroup>,
    session_dir: PathBuf,
    keep_layer: bool,
    status: Option<ExitStatus>,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The session's bind mounts whose source lies outside its own tree:
    /// what CRIU must be told about (`--external mnt[...]`) to checkpoint
    /// and restore the session.
    pub fn external_mounts(&self) -> &[ExternalMount] {
        &self.external_mounts
    }

    /// The host pid of the session's PID 1 (for `/proc/PID/ns/*`, CRIU).
    pub fn init_pid(&self) -> Option<u32> {
        self.init_pid
    }

    /// The session's cgroups (to read counters or change limits at run time).
    pub fn cgroup(&self) -> Option<&SessionCgroup> {
        self.cgroup.as_ref()
    }

    /// The host path of the writable layer (the session's `/`).
    pub fn layer(&self) -> PathBuf {
        self.session_dir.join("root")
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.helper.stdin.take()
    }
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.helper.stdout.take()
    }
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.helper.stderr.take()
    }

    /// Waits until the session ends, at most `timeout`. The status is the
    /// command's: its exit code, or 128 + the signal that killed it (137
    /// when it was SIGKILLed, e.g. by the OOM killer). `Ok(None)`: still
    /// running at the deadline.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, SessionError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let ioe = |source| SessionError::Io {
            id: self.id.clone(),
            what: "waiting for the session".into(),
            source,
        };
        let pidfd = crate::sys::pidfd_open(self.helper.id()).map_err(ioe)?;
        let ready = poll_readable(&pidfd, timeout).map_err(ioe)?;
        if !ready {
            return Ok(None);
        }
        let s = self.helper.wait().map_err(ioe)?;
        self.status = Some(s);
        Ok(Some(s))
    }

    /// Kills every process of the session (SIGKILL to its PID 1 ends the
    /// whole pid namespace) and waits for the helper.
    pub fn kill(&mut self) -> Result<ExitStatus, SessionError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        if let Some(pid) = self.init_pid {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let _ = self.helper.kill();
        let s = self.helper.wait().map_err(|source| SessionError::Io {
            id: self.id.clone(),
            what: "waiting for the session".into(),
            source,
        })?;
        self.status = Some(s);
        tracing::info!(session = %self.id, "session stopped");
        Ok(s)
    }

    /// Kills the session and removes its cgroups and layer, reporting errors.
    pub fn destroy(mut self) -> Result<(), SessionError> {
        self.kill()?;
        if let Some(cg) = self.cgroup.take() {
            cg.remove(Duration::from_secs(5))
                .map_err(|source| SessionError::Cgroup {
                    id: self.id.clone(),
                    source,
                })?;
        }
        if !self.keep_layer {
            let dir = std::mem::take(&mut self.session_dir);
            remove_layer(&dir).map_err(|source| SessionError::Io {
                id: self.id.clone(),
                what: format!("removing {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.kill();
        drop(self.cgroup.take());
        if !self.keep_layer && !self.session_dir.as_os_str().is_empty() {
            if let Err(e) = remove_layer(&self.session_dir) {
                tracing::warn!(session = %self.id, error = %e, "layer not removed");
            }
        }
    }
}

/// Removes a session directory. The session's mounts live only in its own
/// mount namespace (gone with its processes), so this sees plain
/// directories: the home on shared storage is not reachable from here.
fn remove_layer(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

// ---------------------------------------------------------------------------
// Inside: the helper and the session's PID 1.

/// `mobidesk-sessiond __spawn`: the helper. Never returns; exits with the
/// session's status. Must run single-threaded, with the control socket as
/// fd 3.
pub fn helper_main() -> ! {
    let control = match control_from_fd3() {
        Some(c) => c,
        None => {
            eprintln!("mobidesk-sessiond __spawn: no control socket on fd 3 (internal command)");
            std::process::exit(64);
        }
    };
    let mut control = control;
    let spec: LaunchSpec = match read_line_raw(&mut control)
        .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(&mut control, &format!("reading the launch spec: {e}")),
    };
    let me = std::process::id().to_string();
    for f in &spec.cgroup_procs {
        if let Err(e) = std::fs::write(f, &me) {
            fail(&mut control, &format!("joining {}: {e}", f.display()));
        }
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        // After joining the session's groups: they become its cgroup root,
        // and the host's cgroup paths stay hidden.
        | CloneFlags::CLONE_NEWCGROUP;
    if spec.userns.is_some() {
        // In the same call: the other namespaces then belong to the new
        // user namespace, so session root administers them and nothing else.
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    if let Err(e) = unshare(flags) {
        fail(&mut control, &format!("unshare: {e}"));
    }
    if spec.userns.is_some() {
        if let Err(e) = become_mapped_root(&mut control) {
            fail(&mut control, &e);
        }
    }
    match crate::sys::fork_single_threaded() {
        Err(e) => fail(&mut control, &format!("fork: {e}")),
        Ok(None) => {
            // PID 1 of the session.
            if let Err(e) = pid1(&spec, &mut control) {
                fail(&mut control, &e);
            }
            unreachable_exit()
        }
        Ok(Some(child)) => {
            if control
                .write_all(format!("pid {child}\n").as_bytes())
                .is_err()
            {
                std::process::exit(70);
            }
            drop(control);
            let status = loop {
                match nix::sys::wait::waitpid(Pid::from_raw(child as i32), None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => break c,
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break 70,
                }
            };
            std::process::exit(status)
        }
    }
}

/// Asks sessiond for the id mapping, then becomes root of the new user
/// namespace (host uid `uid_base`). The capabilities that unshare gave us in
/// the namespace survive: no exec happens in between.
fn become_mapped_root(control: &mut UnixStream) -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    control.write_all(b"mapme\n").map_err(err("control"))?;
    match read_line_raw(control)?.as_str() {
        "mapped" => {}
        other => return Err(format!("expected mapped, got {other:?}")),
    }
    let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(g, g, g).map_err(err("setresgid"))?;
    setgroups(&[]).map_err(err("setgroups"))?;
    setresuid(u, u, u).map_err(err("setresuid"))?;
    Ok(())
}

fn unreachable_exit() -> ! {
    std::process::exit(70)
}

fn control_from_fd3() -> Option<UnixStream> {
    crate::sys::take_fd3_socket().map(UnixStream::from)
}

/// Reads one line byte by byte (no read-ahead: PID 1 inherits the socket
/// and must find the next line there).
fn read_line_raw(s: &mut UnixStream) -> Result<String, String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err("control socket closed".into()),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
        if out.len() > 1 << 20 {
            return Err("control line too long".into());
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

fn fail(control: &mut UnixStream, msg: &str) -> ! {
    let line = format!("error {}\n", msg.replace('\n', " "));
    let _ = control.write_all(line.as_bytes());
    std::process::exit(71)
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// PID 1 before it becomes the reaper. Returns only on error.
fn pid1(spec: &LaunchSpec, control: &mut UnixStream) -> Result<(), String> {
    umask(Mode::empty());
    build_root(spec)?;
    match read_line_raw(control)?.as_str() {
        "go" => {}
        other => return Err(format!("expected go, got {other:?}")),
    }
    nix::unistd::sethostname(&spec.hostname).map_err(err("sethostname"))?;
    crate::sys::loopback_up().map_err(err("loopback up"))?;
    // ping without raw sockets: ICMP datagram sockets for every group
    // (per network namespace; the default "1 0" allows none).
    // (In a user namespace the range must be mapped gids.)
    let last_gid = spec.userns.map_or(2_147_483_647, |u| u.count - 1);
    std::fs::write(
        "/proc/sys/net/ipv4/ping_group_range",
        format!("0 {last_gid}"),
    )
    .map_err(err("ping_group_range"))?;
    mask_proc()?;
    if spec.own_null.iter().any(|b| *b) {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(err("open /dev/null"))?;
        let dups: [fn(&std::fs::File) -> nix::Result<()>; 3] = [
            |f| nix::unistd::dup2_stdin(f),
            |f| nix::unistd::dup2_stdout(f),
            |f| nix::unistd::dup2_stderr(f),
        ];
        for (own, dup) in spec.own_null.iter().zip(dups) {
            if *own {
                dup(&null).map_err(err("dup2 of /dev/null"))?;
            }
        }
    }
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    // PID 1 leads its own session and process group (CRIU needs it).
    nix::unistd::setsid().map_err(err("setsid"))?;
    let filter = crate::policy::compile_filter().map_err(|e| e.to_string())?;
    crate::policy::drop_capabilities().map_err(|e| e.to_string())?;
    crate::policy::install_seccomp(&filter).map_err(|e| e.to_string())?;
    // Nothing of sessiond (nor the control socket) survives the exec.
    crate::sys::cloexec_from(3).map_err(err("close_range"))?;
    control.write_all(b"ready\n").map_err(err("control"))?;

    let mut cmd = std::process::Command::new(INIT_PATH);
    cmd.arg0("mobidesk-init")
        .arg("__init")
        .arg("--")
        .args(&spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    Err(format!("exec {INIT_PATH}: {e}"))
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::errno::Errno) -> String {
    let m = format!("{what} {}", target.display());
    move |e| format!("{m}: {e}")
}

fn bind(source: &Path, target: &Path, read_only: bool, extra: MsFlags) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("bind", target))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .map_err(mount_err("remount", target))
}

/// `<root>` + an absolute session path.
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn mkdirs(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(err(format!("mkdir {}", p.display())))
}

/// Builds the session's root file system in its mount namespace and
/// `pivot_root`s into it.
fn build_root(spec: &LaunchSpec) -> Result<(), String> {
    let root = &spec.root;
    // Nothing we mount may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_err("make-rprivate", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root.as_path()),
        root.as_path(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("bind", root))?;

    // Read-only system directories of the server's image.
    for dir in &spec.system_dirs {
        let target = inside(root, dir);
        let meta = match std::fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(_) => {
                tracing::debug!(dir = %dir.display(), "system dir missing on this host");
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(dir).map_err(err(format!("readlink {}", dir.display())))?;
            if std::fs::symlink_metadata(&target).is_err() {
                if let Some(parent) = target.parent() {
                    mkdirs(parent)?;
                }
                symlink(&to, &target).map_err(err(format!("symlink {}", target.display())))?;
            }
            continue;
        }
        mkdirs(&target)?;
        bind(dir, &target, true, MsFlags::MS_NODEV)?;
    }
    for (source, target_path) in &spec.binds {
        let target = inside(root, target_path);
        let is_dir = std::fs::metadata(source)
            .map_err(err(format!("bind source {}", source.display())))?
            .is_dir();
        make_mount_point(&target, is_dir)?;
        bind(source, &target, true, MsFlags::MS_NODEV)?;
    }
    for d in ["root", "var/tmp", "run"] {
        mkdirs(&root.join(d))?;
    }

    // The user's home: read-write, from shared storage.
    let home = inside(root, &spec.home_path);
    mkdirs(&home)?;
    if let Some(h) = &spec.home {
        bind(h, &home, false, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    }

    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // /proc of the session's pid namespace.
    let proc_ = root.join("proc");
    mkdirs(&proc_)?;
    mount(
        Some("proc"),
        &proc_,
        Some("proc"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(mount_err("mount proc", &proc_))?;

    // A minimal /dev.
    let dev = root.join("dev");
    mkdirs(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1m"),
    )
    .map_err(mount_err("mount tmpfs", &dev))?;
    for &(name, major, minor) in DEV_NODES {
        let p = dev.join(name);
        if spec.userns.is_some() {
            // No mknod in a user namespace (and a tmpfs mounted there is
            // nodev): bind the host's node, as rootless containers do.
            make_mount_point(&p, false)?;
            mount(
                Some(Path::new("/dev").join(name).as_path()),
                &p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mount_err("bind", &p))?;
        } else {
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .map_err(mount_err("mknod", &p))?;
        }
    }
    let pts = dev.join("pts");
    mkdirs(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(mount_err("mount devpts", &pts))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(err(format!("symlink /dev/{link}")))?;
    }
    let shm = dev.join("shm");
    mkdirs(&shm)?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev,
        Some(format!("mode=1777,size={}m", spec.shm_mib).as_str()),
    )
    .map_err(mount_err("mount tmpfs", &shm))?;

    // A private /tmp.
    let tmp = root.join("tmp");
    mkdirs(&tmp)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        nosuid_nodev,
        Some(format!("mode=1777,size={}m", spec.tmp_mib).as_str()),
    )
    .map_err(mount_err("mount tmpfs", &tmp))?;

    // The reaper, from the server's own sessiond binary.
    let init = inside(root, Path::new(INIT_PATH));
    make_mount_point(&init, false)?;
    bind(
        &spec.init_exe,
        &init,
        true,
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
    )?;

    // Into the new root; the old one is detached and unreachable.
    nix::unistd::chdir(root.as_path()).map_err(err("chdir to the new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    Ok(())
}

/// The device nodes of a session's `/dev` (name, major, minor).
const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// An empty file or directory to mount over.
fn make_mount_point(target: &Path, dir: bool) -> Result<(), String> {
    if dir {
        return mkdirs(target);
    }
    if let Some(parent) = target.parent() {
        mkdirs(parent)?;
    }
    if std::fs::symlink_metadata(target).is_err() {
        std::fs::File::create(target).map_err(err(format!("create {}", target.display())))?;
    }
    Ok(())
}

/// /proc paths that reach the host: read-only or hidden (as container
/// runtimes do). /proc/sys would let root set host-wide sysctls such as
/// `kernel.core_pattern` (a host program run as root), /proc/sysrq-trigger
/// reboots the host: file permissions are the only check on those.
/// /proc files covered by `/dev/null`.
const PROC_MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
];

fn mask_proc() -> Result<(), String> {
    for p in [
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/irq",
        "/proc/bus",
        "/proc/fs",
    ] {
        let p = Path::new(p);
        if p.exists() {
            bind(
                p,
                p,
                true,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )?;
        }
    }
    for p in PROC_MASKED_FILES {
        let p = Path::new(p);
        if p.exists() {
            mount(
                Some("/dev/null"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mount_err("mask", p))?;
        }
    }
    for p in ["/proc/acpi", "/proc/scsi"] {
        let p = Path::new(p);
        if p.is_dir() {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
            .map_err(mount_err("mask", p))?;
        }
    }
    Ok(())
}
