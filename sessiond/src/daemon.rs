//! The `mobidesk-sessiond --config F` daemon: sessions managed through an
//! authenticated control API on a unix socket ([`crate::api`]), its state
//! persisted ([`crate::state`]) so that a restarted daemon finds its
//! sessions again, and Prometheus metrics ([`crate::metrics`]).
//!
//! - **Sessions outlive the daemon.** A session's helper is the daemon's
//!   child but has no parent-death signal, and PID 1 leads its own session
//!   in its own pid namespace: a SIGKILL of the daemon leaves every session
//!   running. On SIGTERM/SIGINT the daemon saves its state, removes its
//!   socket and exits *without* touching the sessions.
//! - **Restart.** The state file names each session's PID 1 by pid and start
//!   time. At start the daemon re-adopts the sessions whose PID 1 is alive
//!   (same start time) and removes what is left of the others (processes
//!   still in their cgroups, cgroups, layers). An adopted session's helper is
//!   no longer our child: liveness is read from `/proc`, not from `wait`.
//! - **Exec** runs `mobidesk-sessiond __exec` (single-threaded, as `setns`
//!   into a user namespace requires): it joins the session's cgroups, enters
//!   PID 1's namespaces through a pidfd (user, mount, pid, ipc, uts, net,
//!   cgroup), becomes session root, forks, and the child drops the same
//!   capabilities and installs the same seccomp filter as the session's
//!   PID 1 ([`crate::policy`]) before it execs the command. The helper is
//!   not dumpable (session processes cannot ptrace it or open its
//!   `/proc/PID/exe`), and its descriptors are close-on-exec.
//! - **Network and desktop.** With a `[network]` table every session gets
//!   an address from the server's pool ([`crate::ipam`], or the one the
//!   request asks for) and a veth into the server's namespace
//!   ([`crate::network`]), plumbed before its command starts; a profile
//!   with `[desktop]` runs the desktop ([`crate::desktop`]) as its command,
//!   and `create` answers once the display server listens. Address and link
//!   are in the session's record, the leases in the state file; `destroy`
//!   deletes the veth and frees the address; a restarted daemon reserves the
//!   addresses of the sessions it adopts and re-plumbs their links.
//! - **Bounds.** Request lines ([`crate::api::MAX_REQUEST_LINE`]),
//!   connections, concurrent execs, exec output and time, sessions: all
//!   from the configuration's `[limits]`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::api::{
    self, ApiError, ErrorKind, ExecResult, ProfileSource, Request, Response, SessionInfo,
    SessionState,
};
use crate::cgroup::{CgroupManager, SessionCgroup};
use crate::desktop::{desktop_spec, wait_listening, DisplayTls, DEFAULT_DISPLAY_SERVER};
use crate::environment::{session_env, Launcher, Session, SessionSpec, SessionStdio};
use crate::ipam::{Ipam, IpamError, IpamState};
use crate::metrics::{SessionSample, Snapshot};
use crate::network::{
    etc_hosts, link_name, Attachment, NetworkConfig, NetworkError, ServerNetwork,
};
use crate::profile::{Limits, Profile};
use crate::state::{is_alive, ProcStat, SessionRecord, State, StateError, StateStore, VERSION};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("token file {path}: {detail}")]
    Token { path: PathBuf, detail: String },
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("cgroups: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("network: {0}")]
    Network(#[from] NetworkError),
    #[error("network: {0}")]
    Ipam(#[from] IpamError),
    #[error("control socket {path}: {detail}")]
    Socket { path: PathBuf, detail: String },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The daemon's configuration file (see `configs/sessiond.toml`, which
/// spells out every key with its default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control API's unix socket (created with mode 0600).
    #[serde(default = "defaults::socket")]
    pub socket: PathBuf,
    /// A file holding the API token (one line, at least 16 characters; the
    /// file must not be readable by group or others).
    #[serde(default = "defaults::token_file")]
    pub token_file: PathBuf,
    /// Where the state file lives (`sessions.json`, mode 0700 directory).
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Where the sessions' writable layers live (`<runtime_dir>/<id>/root`).
    #[serde(default = "defaults::runtime_dir")]
    pub runtime_dir: PathBuf,
    /// The profile of sessions created without one; absent: the built-in
    /// default profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<PathBuf>,
    /// Profiles named in `create` requests are files inside this directory.
    #[serde(default = "defaults::profiles_dir")]
    pub profiles_dir: PathBuf,
    /// Whether `create` may carry a profile inline (a JSON object) instead
    /// of naming a file in `profiles_dir`. An inline profile chooses its own
    /// read-only binds and user namespace: turn this off where the API's
    /// clients should only pick among the administrator's profiles.
    #[serde(default = "defaults::yes")]
    pub inline_profiles: bool,
    /// Homes given in `create` requests must be directories inside this one
    /// (shared storage); absent: `create` takes no `home`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homes_dir: Option<PathBuf>,
    /// Prometheus endpoint (`/metrics` over HTTP); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Put every session in its own cgroups (limits, counters).
    #[serde(default = "defaults::yes")]
    pub cgroups: bool,
    /// How long a session's start may take.
    #[serde(default = "defaults::start_timeout_s")]
    pub start_timeout_s: u64,
    #[serde(default)]
    pub limits: DaemonLimits,
    /// `[network]`: sessions get their own address on the server's subnet
    /// and a veth into the server; absent: sessions have only loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    #[serde(default)]
    pub desktop: DesktopConfig,
}

/// `[desktop]`: what desktop sessions need from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DesktopConfig {
    /// The display server binary, for profiles whose `[desktop]` names
    /// none. The same path on every server (CRIU).
    pub display_server: PathBuf,
    /// TLS 1.3 between viewers and the display server, the recommended
    /// way: a display CA (certificate and PKCS#8 key, PEM; the same on
    /// every server) from which each desktop session gets its own key and
    /// certificate at `create`, for a name of its own (`display_name` in
    /// `inspect`; [`crate::certs`]). The CA's key never enters a session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_key: Option<PathBuf>,
    /// The domain of the issued names: `<id>-<random>.<tls_domain>`.
    pub tls_domain: String,
    /// Or one certificate chain and private key (PEM) for every session:
    /// each desktop session gets a copy, readable by the session's root
    /// (the display server runs inside), so any session's root can
    /// impersonate every other session's display server. Prefer the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Plain TCP instead of TLS (tests and benchmarks on loopback only).
    /// With neither, a desktop `create` fails saying so.
    pub insecure_plaintext: bool,
}

impl Default for DesktopConfig {
    fn default() -> Self {
        DesktopConfig {
            display_server: PathBuf::from(DEFAULT_DISPLAY_SERVER),
            tls_ca_cert: None,
            tls_ca_key: None,
            tls_domain: DEFAULT_DISPLAY_DOMAIN.into(),
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
        }
    }
}

/// The default domain of desktop sessions' display names.
pub const DEFAULT_DISPLAY_DOMAIN: &str = "desktops.mobidesk.internal";

/// Largest certificate chain or key file copied into a session.
const MAX_TLS_FILE: u64 = 1 << 20;

/// `[limits]`: everything the daemon bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonLimits {
    /// Sessions at once (starting, running and being destroyed).
    pub max_sessions: usize,
    /// API connections at once; more are answered `busy` and closed.
    pub max_connections: usize,
    /// `exec` requests running at once; more are answered `busy`.
    pub max_execs: usize,
    /// Longest `timeout_s` an `exec` may ask for.
    pub max_exec_timeout_s: u64,
    /// Bytes of stdout and of stderr an `exec` returns (the rest is read
    /// and dropped; the answer says it was truncated).
    pub exec_output_bytes: usize,
    /// An API connection silent this long is closed.
    pub idle_timeout_s: u64,
}

impl Default for DaemonLimits {
    fn default() -> Self {
        DaemonLimits {
            max_sessions: 64,
            max_connections: 32,
            max_execs: 8,
            max_exec_timeout_s: 3600,
            exec_output_bytes: 1 << 20,
            idle_timeout_s: 300,
        }
    }
}

mod defaults {
    use std::path::PathBuf;
    pub(super) fn socket() -> PathBuf {
        "/run/mobidesk/sessiond.sock".into()
    }
    pub(super) fn token_file() -> PathBuf {
        "/etc/mobidesk/sessiond.token".into()
    }
    pub(super) fn state_dir() -> PathBuf {
        "/var/lib/mobidesk/sessiond".into()
    }
    pub(super) fn runtime_dir() -> PathBuf {
        "/run/mobidesk/sessions".into()
    }
    pub(super) fn profiles_dir() -> PathBuf {
        "/etc/mobidesk/profiles".into()
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn start_timeout_s() -> u64 {
        20
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: defaults::socket(),
            token_file: defaults::token_file(),
            state_dir: defaults::state_dir(),
            runtime_dir: defaults::runtime_dir(),
            default_profile: None,
            profiles_dir: defaults::profiles_dir(),
            inline_profiles: true,
            homes_dir: None,
            metrics: None,
            cgroups: true,
            start_timeout_s: defaults::start_timeout_s(),
            limits: DaemonLimits::default(),
            network: None,
            desktop: DesktopConfig::default(),
        }
    }
}

impl Config {
    /// Parses and validates the TOML text of a configuration.
    pub fn from_toml(text: &str) -> Result<Config, DaemonError> {
        let c: Config = toml::from_str(text).map_err(|e| DaemonError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, DaemonError> {
        let text = std::fs::read_to_string(path).map_err(|source| DaemonError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Config::from_toml(&text)
    }

    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        for (key, p) in [
            ("socket", &self.socket),
            ("token_file", &self.token_file),
            ("state_dir", &self.state_dir),
            ("runtime_dir", &self.runtime_dir),
            ("profiles_dir", &self.profiles_dir),
            ("desktop.display_server", &self.desktop.display_server),
        ] {
            if !p.is_absolute() {
                return bad(format!("{key} {}: an absolute path", p.display()));
            }
        }
        if let Some(h) = &self.homes_dir {
            if !h.is_absolute() {
                return bad(format!("homes_dir {}: an absolute path", h.display()));
            }
        }
        if self.socket.as_os_str().len() > 100 {
            return bad(format!(
                "socket {}: at most 100 bytes (unix socket path)",
                self.socket.display()
            ));
        }
        if let Some(a) = self.metrics {
            if a.port() == 0 {
                return bad(format!(
                    "metrics {a}: a fixed port, like \"127.0.0.1:9465\""
                ));
            }
        }
        let d = &self.desktop;
        let mut ways = 0;
        for (pair, (a, b)) in [
            (
                "tls_ca_cert and tls_ca_key",
                (&d.tls_ca_cert, &d.tls_ca_key),
            ),
            ("tls_cert and tls_key", (&d.tls_cert, &d.tls_key)),
        ] {
            match (a, b) {
                (Some(a), Some(b)) => {
                    if !a.is_absolute() || !b.is_absolute() {
                        return bad(format!("desktop.{pair}: absolute paths"));
                    }
                    ways += 1;
                }
                (None, None) => {}
                _ => return bad(format!("desktop.{pair}: both or neither")),
            }
        }
        if ways + usize::from(d.insecure_plaintext) > 1 {
            return bad(
                "desktop: one of tls_ca_cert/tls_ca_key (recommended), tls_cert/tls_key or \
                 insecure_plaintext"
                    .into(),
            );
        }
        if let Err(e) = crate::certs::check_domain(&d.tls_domain) {
            return bad(format!("desktop.tls_domain {:?}: {e}", d.tls_domain));
        }
        if let Some(n) = &self.network {
            n.validate()
                .map_err(|e| DaemonError::Config(format!("[network] {e}")))?;
        }
        if !(1..=600).contains(&self.start_timeout_s) {
            return bad(format!("start_timeout_s {}: 1..=600", self.start_timeout_s));
        }
        let l = &self.limits;
        for (key, v, max) in [
            ("limits.max_sessions", l.max_sessions, 100_000),
            ("limits.max_connections", l.max_connections, 10_000),
            ("limits.max_execs", l.max_execs, 1_000),
            ("limits.exec_output_bytes", l.exec_output_bytes, 64 << 20),
        ] {
            if !(1..=max).contains(&v) {
                return bad(format!("{key} {v}: 1..={max}"));
            }
        }
        for (key, v) in [
            ("limits.max_exec_timeout_s", l.max_exec_timeout_s),
            ("limits.idle_timeout_s", l.idle_timeout_s),
        ] {
            if !(1..=86_400).contains(&v) {
                return bad(format!("{key} {v}: 1..=86400"));
            }
        }
        Ok(())
    }
}

/// Reads the API token: one line, at least 16 characters, from a file
/// that group and others cannot read.
pub fn read_token(path: &Path) -> Result<Vec<u8>, DaemonError> {
    let err = |detail: String| DaemonError::Token {
        path: path.to_path_buf(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "readable by others (mode {:o}); chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    if meta.len() > 4096 {
        return Err(err("longer than 4096 bytes".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.len() < 16 || token.contains(char::is_whitespace) {
        return Err(err(
            "the token must be one line of at least 16 characters without spaces".into(),
        ));
    }
    Ok(token.as_bytes().to_vec())
}

/// What the `__exec` helper is told (one JSON line on its fd 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub id: String,
    pub init_pid: u32,
    pub init_start_time: u64,
    /// `cgroup.procs` files of the session's groups.
    pub cgroup_procs: Vec<PathBuf>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub timeout_ms: u64,
}

/// How the daemon holds a running session.
enum Handle {
    /// Started by this daemon: we are its helper's parent (and reap it).
    Started(ManuallyDrop<Session>),
    /// Found running at start; its cgroups, if it has them. Never dropped
    /// while the session lives (a `SessionCgroup` removes its groups when
    /// dropped).
    Adopted(Option<ManuallyDrop<SessionCgroup>>),
}

impl Handle {
    fn cgroup(&self) -> Option<&SessionCgroup> {
        match self {
            Handle::Started(s) => s.cgroup(),
            Handle::Adopted(c) => c.as_deref(),
        }
    }
}

enum Phase {
    Starting,
    Running(Handle),
    /// `in_progress`: a destroy runs now; else an earlier one failed and
    /// another `destroy` may retry it.
    Destroying {
        in_progress: bool,
    },
}

struct Entry {
    record: SessionRecord,
    phase: Phase,
    adopted: bool,
    /// The highest CPU time reported (the counter never goes back).
    cpu_seen: f64,
}

struct Registry {
    sessions: BTreeMap<String, Entry>,
    store: StateStore,
    /// The server's addresses (with a `[network]`).
    ipam: Option<Ipam>,
}

impl Registry {
    /// Writes the state file (errors are logged: the sessions go on).
    fn persist(&self) {
        let state = State {
            version: VERSION,
            sessions: self.sessions.values().map(|e| e.record.clone()).collect(),
            ipam: self.ipam.clone(),
        };
        if let Err(e) = self.store.save(&state) {
            tracing::error!(error = %e, "state not saved");
        }
    }
}

#[derive(Default)]
struct Stats {
    api: BTreeMap<(String, String), u64>,
}

/// The daemon: configuration, sessions, counters.
pub struct Daemon {
    config: Config,
    token: Vec<u8>,
    exe: PathBuf,
    launcher: Launcher,
    cgroups: Option<CgroupManager>,
    network: Option<ServerNetwork>,
    default_profile: Profile,
    registry: Mutex<Registry>,
    stats: Mutex<Stats>,
    auth_failures: AtomicU64,
    execs: AtomicUsize,
    connections: AtomicUsize,
    ids: AtomicU64,
}

/// A count that is given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(counter: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        if counter.fetch_add(1, Ordering::SeqCst) >= max {
            counter.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot(counter))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Failed, e.to_string())
}

fn kill_pid(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// Waits for a process to exit (not necessarily our child), at most
/// `timeout` (in slices: one poll is at most about a minute).
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match crate::environment::wait_for_exit(pid, left.min(Duration::from_secs(60))) {
            Ok(true) => return true,
            Ok(false) if left.is_zero() => return false,
            Ok(false) => continue,
            Err(_) => return false,
        }
    }
}

impl Daemon {
    /// Reads the token, locks and reads the state, re-adopts live sessions
    /// and cleans up after dead ones.
    pub fn start(config: Config) -> Result<Arc<Daemon>, DaemonError> {
        config.validate()?;
        let token = read_token(&config.token_file)?;
        let exe = std::env::current_exe().map_err(|source| DaemonError::Io {
            what: "locating the sessiond binary".into(),
            source,
        })?;
        let default_profile = match &config.default_profile {
            Some(p) => Profile::load(p).map_err(|e| DaemonError::Config(e.to_string()))?,
            None => Profile::default(),
        };
        std::fs::create_dir_all(&config.runtime_dir).map_err(|source| DaemonError::Io {
            what: format!("creating {}", config.runtime_dir.display()),
            source,
        })?;
        let cgroups = if config.cgroups {
            Some(CgroupManager::detect()?)
        } else {
            None
        };
        let mut launcher = Launcher::new(&exe, &config.runtime_dir)
            .with_start_timeout(Duration::from_secs(config.start_timeout_s));
        if let Some(m) = &cgroups {
            launcher = launcher.with_cgroups(m.clone());
        }
        let store = StateStore::open(&config.state_dir)?;
        let state = store.load()?;
        let (network, ipam) = match &config.network {
            Some(nc) => {
                let net = ServerNetwork::new(nc.clone())?;
                net.prepare()?;
                // Leases are rebuilt from the records of the sessions that
                // are adopted (`recover`); where the next search starts is
                // kept while the pool is the same.
                let fresh = IpamState::from(nc.ipam());
                let next = state
                    .ipam
                    .clone()
                    .map(IpamState::from)
                    .filter(|s| s.pool == fresh.pool)
                    .map_or(0, |s| s.next);
                (
                    Some(net),
                    Some(Ipam::try_from(IpamState { next, ..fresh })?),
                )
            }
            None => (None, None),
        };
        let daemon = Daemon {
            config,
            token,
            exe,
            launcher,
            cgroups,
            network,
            default_profile,
            registry: Mutex::new(Registry {
                sessions: BTreeMap::new(),
                store,
                ipam,
            }),
            stats: Mutex::new(Stats::default()),
            auth_failures: AtomicU64::new(0),
            execs: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        };
        daemon.recover(state);
        Ok(Arc::new(daemon))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recover(&self, state: State) {
        let mut reg = self.registry();
        for rec in state.sessions {
            let id = rec.id.clone();
            let alive = !rec.destroying
                && matches!((rec.init_pid, rec.init_start_time), (Some(p), Some(t)) if is_alive(p, t));
            if alive {
                let cgroup = match (&self.cgroups, rec.cgroups.is_empty()) {
                    (Some(m), false) => match m.create(&rec.id, &rec.limits) {
                        Ok(c) => Some(ManuallyDrop::new(c)),
                        Err(e) => {
                            tracing::warn!(session = %id, error = %e, "cgroups of an adopted session not found");
                            None
                        }
                    },
                    _ => None,
                };
                if let (Some(a), Some(pid)) = (&rec.network, rec.init_pid) {
                    self.readopt_network(&mut reg, a, pid);
                }
                tracing::info!(session = %id, init_pid = ?rec.init_pid, address = ?rec.network.as_ref().map(|a| a.address), "session adopted");
                reg.sessions.insert(
                    id,
                    Entry {
                        record: rec,
                        phase: Phase::Running(Handle::Adopted(cgroup)),
                        adopted: true,
                        cpu_seen: 0.0,
                    },
                );
            } else {
                match self.cleanup(&rec, None) {
                    Ok(()) => tracing::info!(session = %id, "an ended session's leftovers removed"),
                    Err(e) => {
                        // Kept (listed as destroying): a `destroy` retries.
                        // Its address stays taken until then.
                        tracing::warn!(session = %id, error = %e, "an ended session's leftovers not removed");
                        if let (Some(a), Some(ipam)) = (&rec.network, reg.ipam.as_mut()) {
                            if let Err(e) = ipam.reserve(a.physical_address(), &id) {
                                tracing::warn!(session = %id, error = %e, "address not reserved");
                            }
                        }
                        let mut record = rec;
                        record.destroying = true;
                        reg.sessions.insert(
                            id,
                            Entry {
                                record,
                                phase: Phase::Destroying { in_progress: false },
                                adopted: true,
                                cpu_seen: 0.0,
                            },
                        );
                    }
                }
            }
        }
        reg.persist();
    }

    /// An adopted session's network: its address reserved again, its link
    /// re-plumbed on the server's side (idempotent), or attached anew when
    /// the link has gone (both ends of a veth go together, so the session
    /// has no `eth0` then either).
    fn readopt_network(&self, reg: &mut Registry, a: &Attachment, init_pid: u32) {
        let id = a.session.as_str();
        if let Some(ipam) = reg.ipam.as_mut() {
            if let Err(e) = ipam.reserve(a.physical_address(), id) {
                tracing::warn!(session = %id, error = %e, "the adopted session's address not reserved");
            }
        }
        let Some(net) = &self.network else {
            tracing::warn!(session = %id, link = %a.link, "the configuration has no [network] now: the session's link is left as it is");
            return;
        };
        let r = match net.is_attached(a) {
            Ok(true) => net.plumb_server(a),
            Ok(false) => {
                tracing::warn!(session = %id, link = %a.link, "the adopted session's link is gone; attaching it again");
                net.attach(id, init_pid, a.address)
                    .and_then(|_| match a.physical {
                        Some(_) => net.plumb_server(a),
                        None => Ok(()),
                    })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(session = %id, error = %e, "the adopted session's network not re-plumbed");
        }
    }

    /// Deletes a session's veth (harmless when it is gone already).
    fn detach(&self, rec: &SessionRecord) -> Result<(), String> {
        match (&rec.network, &self.network) {
            (Some(a), Some(net)) => net.detach(a).map_err(|e| e.to_string()),
            (Some(a), None) => {
                // The veth goes with the session's network namespace.
                tracing::warn!(session = %rec.id, link = %a.link, "no [network] configured: the link is not deleted by sessiond");
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// Removes what is left of a session from its record: kills its PID 1
    /// (when it is still the same process) and anything still in its
    /// cgroups, removes the cgroups, the veth and the layer.
    fn cleanup(&self, rec: &SessionRecord, cgroup: Option<SessionCgroup>) -> Result<(), String> {
        if let (Some(pid), Some(t)) = (rec.init_pid, rec.init_start_time) {
            if is_alive(pid, t) {
                kill_pid(pid, Signal::SIGKILL);
                if !wait_gone(pid, Duration::from_secs(10)) {
                    return Err(format!("PID 1 (host pid {pid}) did not end"));
                }
            }
        }
        let cgroup = match (cgroup, &self.cgroups) {
            (Some(c), _) => Some(c),
            (None, Some(m)) if !rec.cgroups.is_empty() || rec.init_pid.is_none() => Some(
                m.create(&rec.id, &Limits::default())
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        if let Some(cg) = cgroup {
            // A session caught half-started (or processes that left PID 1's
            // tree): whatever is still in its groups goes.
            for pid in cg.pids().unwrap_or_default() {
                kill_pid(pid, Signal::SIGKILL);
            }
            cg.remove(Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
        }
        self.detach(rec)?;
        let dir = self.config.runtime_dir.join(&rec.id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", dir.display())),
        }
    }

    /// Handles one authenticated request.
    pub fn handle(&self, request: Request) -> Response {
        let op = request.op();
        let session = request.session().unwrap_or("").to_string();
        let span = tracing::info_span!("request", op, session = %session);
        let _enter = span.enter();
        let r = match request {
            Request::Create {
                id,
                profile,
                home,
                command,
                address,
            } => self.create(id, profile, home, command, address),
            Request::List {} => Ok(Response {
                sessions: Some(self.list()),
                ..Response::ok()
            }),
            Request::Inspect { id } => self.inspect(&id).map(|s| Response {
                session: Some(s),
                ..Response::ok()
            }),
            Request::Exec {
                id,
                argv,
                env,
                cwd,
                timeout_s,
            } => self.exec(&id, argv, env, cwd, timeout_s).map(|x| Response {
                exec: Some(x),
                ..Response::ok()
            }),
            Request::Resources { id, limits } => self.resources(&id, limits).map(|s| Response {
                session: Some(s),
                ..Response::ok()
            }),
            Request::Destroy { id } => self.destroy(&id).map(|()| Response::ok()),
        };
        if let Err(e) = &r {
            tracing::warn!(kind = e.kind.as_str(), error = %e.message, "request refused");
        }
        Response::from(r)
    }

    fn resolve_profile(&self, source: Option<ProfileSource>) -> Result<Profile, ApiError> {
        match source {
            None => Ok(self.default_profile.clone()),
            Some(ProfileSource::Inline(_)) if !self.config.inline_profiles => {
                Err(ApiError::bad_request(
                    "profile: inline profiles are off (inline_profiles = false); name a file",
                ))
            }
            Some(ProfileSource::Inline(p)) => Ok(*p),
            Some(ProfileSource::Path(p)) => {
                let path = inside(&self.config.profiles_dir, &p, "profile", false)?;
                Profile::load(&path).map_err(|e| ApiError::bad_request(e.to_string()))
            }
        }
    }

    fn create(
        &self,
        id: Option<String>,
        profile: Option<ProfileSource>,
        home: Option<PathBuf>,
        command: Option<Vec<String>>,
        address: Option<std::net::Ipv4Addr>,
    ) -> Result<Response, ApiError> {
        let mut profile = self.resolve_profile(profile)?;
        let home = match (home, &self.config.homes_dir) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ApiError::bad_request(
                    "home: this sessiond has no homes_dir configured",
                ))
            }
            (Some(h), Some(dir)) => Some(inside(dir, &h, "home", true)?),
        };
        if address.is_some() && self.network.is_none() {
            return Err(ApiError::bad_request(
                "address: this sessiond has no [network] configured",
            ));
        }
        if let Some(d) = &mut profile.desktop {
            if command.is_some() {
                return Err(ApiError::bad_request(
                    "command: a desktop profile runs its desktop; give no command",
                ));
            }
            let ds = d
                .display_server
                .get_or_insert_with(|| self.config.desktop.display_server.clone());
            if !ds.is_file() {
                return Err(failed(format!(
                    "the display server {} is not there: build it with `cargo build --release \
                     -p mobidesk-display --features server --bin mobidesk-display` and install \
                     target/release/mobidesk-display at that path (scripts/setup), or name \
                     another in the daemon's [desktop] display_server",
                    ds.display()
                )));
            }
        }
        let tls = match &profile.desktop {
            Some(_) => Some(self.display_credentials()?),
            None => None,
        };
        let id = match id {
            Some(id) => id,
            None => format!(
                "s{:x}-{:x}-{:x}",
                now_unix(),
                std::process::id(),
                self.ids.fetch_add(1, Ordering::Relaxed)
            ),
        };
        // A name of its own for an issued certificate: new for every
        // session (crate::certs).
        let display_name = match &tls {
            Some(DisplayCredentials::Issued { .. }) => Some(crate::certs::display_name(
                &id,
                random_u32().map_err(|e| failed(format!("reading /dev/urandom: {e}")))?,
                &self.config.desktop.tls_domain,
            )),
            _ => None,
        };
        let record = {
            let mut reg = self.registry();
            if reg.sessions.contains_key(&id) {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("session {id:?} exists"),
                ));
            }
            if reg.sessions.len() >= self.config.limits.max_sessions {
                return Err(ApiError::new(
                    ErrorKind::Limit,
                    format!(
                        "this server runs its maximum of {} sessions",
                        self.config.limits.max_sessions
                    ),
                ));
            }
            if self.config.runtime_dir.join(&id).exists() {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("a layer for {id:?} exists but no such session is known"),
                ));
            }
            // The address is leased (and the record written) before the
            // session starts: a crash in between leaves a record to clean
            // up, never a lost lease.
            let network = match (&self.network, reg.ipam.as_mut()) {
                (Some(_), Some(ipam)) => {
                    let a = match address {
                        Some(a) => {
                            ipam.reserve(a, &id).map_err(|e| {
                                let kind = match e {
                                    IpamError::Taken { .. } => ErrorKind::Conflict,
                                    _ => ErrorKind::BadRequest,
                                };
                                ApiError::new(kind, format!("address {a}: {e}"))
                            })?;
                            a
                        }
                        None => ipam
                            .allocate(&id)
                            .map_err(|e| ApiError::new(ErrorKind::Limit, e.to_string()))?,
                    };
                    Some(Attachment {
                        session: id.clone(),
                        link: link_name(&id),
                        address: a,
                        physical: None,
                    })
                }
                _ => None,
            };
            let address = network.as_ref().map(|a| a.address);
            let command = match (&profile.desktop, &tls) {
                (Some(d), Some(tls)) => {
                    d.command(address, matches!(tls, DisplayCredentials::Plaintext))
                }
                _ => command
                    .clone()
                    .unwrap_or_else(|| vec!["sleep".into(), "infinity".into()]),
            };
            let record = SessionRecord {
                id: id.clone(),
                init_pid: None,
                init_start_time: None,
                created: now_unix(),
                profile: profile.clone(),
                home: home.clone(),
                command,
                limits: profile.limits.clone(),
                cgroups: Vec::new(),
                session_dir: self.config.runtime_dir.join(&id),
                destroying: false,
                network,
                display_port: profile.desktop.as_ref().map(|d| d.port),
                display_name: display_name.clone(),
            };
            reg.sessions.insert(
                id.clone(),
                Entry {
                    record: record.clone(),
                    phase: Phase::Starting,
                    adopted: false,
                    cpu_seen: 0.0,
                },
            );
            reg.persist();
            record
        };
        let mut attached = false;
        match self.start_session(&record, tls.as_ref(), &mut attached) {
            Ok(session) => self.started(&id, session),
            Err(e) => {
                // Nothing of it may stay: the launcher has removed what it
                // made (cgroups, layer, the session's processes); the veth
                // (only when this start made it: a link of that name that
                // was there before is not ours), the host file and the
                // lease go here.
                let mut detail = e.message;
                if attached {
                    if let Err(d) = self.detach(&record) {
                        detail.push_str(&format!("; and removing its link failed: {d}"));
                    }
                }
                if let Err(d) = std::fs::remove_dir_all(&record.session_dir) {
                    if d.kind() != std::io::ErrorKind::NotFound {
                        detail.push_str(&format!(
                            "; and removing {} failed: {d}",
                            record.session_dir.display()
                        ));
                    }
                }
                let mut reg = self.registry();
                reg.sessions.remove(&id);
                if let Some(ipam) = reg.ipam.as_mut() {
                    ipam.release_session(&id);
                }
                reg.persist();
                Err(ApiError::new(e.kind, detail))
            }
        }
    }

    /// Starts the session of a new record: with its network (attached
    /// before its command starts) and its desktop (running once the
    /// display server listens).
    /// `attached`: set once the session's veth exists.
    fn start_session(
        &self,
        rec: &SessionRecord,
        tls: Option<&DisplayCredentials>,
        attached: &mut bool,
    ) -> Result<Session, ApiError> {
        let id = rec.id.as_str();
        let address = rec.network.as_ref().map(|a| a.address);
        let spec = if rec.profile.desktop.is_some() {
            // X clients resolve their own host name at start: the session
            // gets its own /etc/hosts (no DNS wait).
            let hosts = rec.session_dir.join("hosts");
            std::fs::create_dir_all(&rec.session_dir)
                .and_then(|()| std::fs::write(&hosts, etc_hosts(&rec.profile.hostname, address)))
                .map_err(|e| failed(format!("writing {}: {e}", hosts.display())))?;
            let owner = rec.profile.userns.map(|u| (u.uid_base, u.gid_base));
            let dir = &rec.session_dir;
            let (cert_file, key_file) = (dir.join("display-cert.pem"), dir.join("display-key.pem"));
            let tls = match (tls, &rec.display_name) {
                (Some(DisplayCredentials::Shared { cert, key }), _) => {
                    let cert = read_bounded(cert)?;
                    let key = read_bounded(key)?;
                    DisplayTls::Tls {
                        cert: private_file(&cert_file, &cert, 0o444, owner)?,
                        key: private_file(&key_file, &key, 0o400, owner)?,
                    }
                }
                (Some(DisplayCredentials::Issued { ca_cert, ca_key }), Some(name)) => {
                    let ca_cert = String::from_utf8(read_bounded(ca_cert)?)
                        .map_err(|_| failed(format!("{}: not PEM text", ca_cert.display())))?;
                    let ca_key = String::from_utf8(read_bounded(ca_key)?)
                        .map_err(|_| failed(format!("{}: not PEM text", ca_key.display())))?;
                    let issued =
                        crate::certs::issue(&ca_cert, &ca_key, name, std::time::SystemTime::now())
                            .map_err(|e| failed(format!("the display certificate: {e}")))?;
                    tracing::info!(session = %id, display_name = %name, "display certificate issued");
                    DisplayTls::Tls {
                        cert: private_file(&cert_file, issued.chain_pem.as_bytes(), 0o444, owner)?,
                        key: private_file(&key_file, issued.key_pem.as_bytes(), 0o400, owner)?,
                    }
                }
                _ => DisplayTls::InsecurePlaintext,
            };
            desktop_spec(
                id,
                &rec.profile,
                rec.home.clone(),
                address,
                Some(hosts),
                &tls,
            )
            .map_err(|e| ApiError::bad_request(e.to_string()))?
        } else {
            SessionSpec {
                id: id.to_string(),
                profile: rec.profile.clone(),
                home: rec.home.clone(),
                command: rec.command.clone(),
            }
        };
        let session = match (&self.network, &rec.network) {
            (Some(net), Some(a)) => {
                self.launcher
                    .start_with_network(&spec, SessionStdio::default(), |pid| {
                        net.attach(id, pid, a.address)
                            .map(|_| *attached = true)
                            .map_err(|e| e.to_string())
                    })
            }
            _ => self.launcher.start(&spec, SessionStdio::default()),
        }
        .map_err(failed)?;
        if let (Some(port), Some(pid)) = (rec.display_port, session.init_pid()) {
            let timeout = Duration::from_secs(self.config.start_timeout_s);
            if let Err(e) = wait_listening(id, pid, port, timeout) {
                let mut msg = format!("the desktop did not come up: {e}");
                if let Err(d) = session.destroy() {
                    msg.push_str(&format!("; and removing the session failed: {d}"));
                }
                return Err(failed(msg));
            }
        }
        Ok(session)
    }

    /// How desktop sessions' display servers serve viewers, from the
    /// configuration's `[desktop]` (checked: the files are there).
    fn display_credentials(&self) -> Result<DisplayCredentials, ApiError> {
        let d = &self.config.desktop;
        let there = |files: [&PathBuf; 2], keys: &str| -> Result<(), ApiError> {
            for f in files {
                if !f.is_file() {
                    return Err(failed(format!(
                        "the display server's TLS file {} is not there ([desktop] {keys})",
                        f.display()
                    )));
                }
            }
            Ok(())
        };
        match (&d.tls_ca_cert, &d.tls_ca_key, &d.tls_cert, &d.tls_key) {
            (Some(ca_cert), Some(ca_key), _, _) => {
                there([ca_cert, ca_key], "tls_ca_cert/tls_ca_key")?;
                Ok(DisplayCredentials::Issued {
                    ca_cert: ca_cert.clone(),
                    ca_key: ca_key.clone(),
                })
            }
            (_, _, Some(cert), Some(key)) => {
                there([cert, key], "tls_cert/tls_key")?;
                Ok(DisplayCredentials::Shared {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            _ if d.insecure_plaintext => Ok(DisplayCredentials::Plaintext),
            _ => Err(failed(
                "the display server needs TLS: set tls_ca_cert and tls_ca_key (a display CA) \
                 in the daemon's [desktop] (or insecure_plaintext = true, for tests on \
                 loopback only)",
            )),
        }
    }

    /// Records a started session as running.
    fn started(&self, id: &str, session: Session) -> Result<Response, ApiError> {
        let mut reg = self.registry();
        let init_pid = session.init_pid();
        let start_time = init_pid.and_then(ProcStat::read).map(|s| s.start_time);
        let Some(entry) = reg.sessions.get_mut(id) else {
            return Err(failed("session vanished while starting"));
        };
        entry.record.init_pid = init_pid;
        entry.record.init_start_time = start_time;
        entry.record.cgroups = session.cgroup().map(|c| c.paths()).unwrap_or_default();
        entry.phase = Phase::Running(Handle::Started(ManuallyDrop::new(session)));
        let info = info_of(entry);
        reg.persist();
        tracing::info!(init_pid = ?init_pid, address = ?info.address, display_port = ?info.display_port, "session created");
        Ok(Response {
            session: Some(info),
            ..Response::ok()
        })
    }

    fn list(&self) -> Vec<SessionInfo> {
        // A session that ended is not listed, even between reaper ticks.
        self.reap();
        let mut reg = self.registry();
        reg.sessions.values_mut().map(info_of).collect()
    }

    fn inspect(&self, id: &str) -> Result<SessionInfo, ApiError> {
        self.reap();
        let mut reg = self.registry();
        let entry = reg
            .sessions
            .get_mut(id)
            .ok_or_else(|| ApiError::unknown_session(id))?;
        Ok(info_of(entry))
    }

    fn resources(&self, id: &str, limits: Limits) -> Result<SessionInfo, ApiError> {
        let mut reg = self.registry();
        let entry = reg
            .sessions
            .get_mut(id)
            .ok_or_else(|| ApiError::unknown_session(id))?;
        let cg = match &entry.phase {
            Phase::Running(h) => h.cgroup(),
            Phase::Starting => return Err(starting(id)),
            Phase::Destroying { .. } => return Err(destroying(id)),
        };
        let cg = cg.ok_or_else(|| failed(format!("session {id:?} has no cgroups")))?;
        cg.update(&limits).map_err(failed)?;
        tracing::info!(limits = ?limits, "limits changed");
        entry.record.limits = limits;
        let info = info_of(entry);
        reg.persist();
        Ok(info)
    }

    fn destroy(&self, id: &str) -> Result<(), ApiError> {
        let handle = {
            let mut reg = self.registry();
            let entry = reg
                .sessions
                .get_mut(id)
                .ok_or_else(|| ApiError::unknown_session(id))?;
            let handle = match std::mem::replace(
                &mut entry.phase,
                Phase::Destroying { in_progress: true },
            ) {
                Phase::Running(h) => Some(h),
                Phase::Destroying { in_progress: false } => None,
                other => {
                    let e = match other {
                        Phase::Starting => starting(id),
                        _ => destroying(id),
                    };
                    entry.phase = other;
                    return Err(e);
                }
            };
            entry.record.destroying = true;
            reg.persist();
            handle
        };
        self.finish(id, handle).map_err(failed)?;
        tracing::info!("session destroyed");
        Ok(())
    }

    /// Ends a session marked `Destroying` and removes its entry; on failure
    /// the entry stays (a later `destroy` retries from the record).
    fn finish(&self, id: &str, handle: Option<Handle>) -> Result<(), String> {
        let record = {
            let reg = self.registry();
            match reg.sessions.get(id) {
                Some(e) => e.record.clone(),
                None => return Ok(()),
            }
        };
        let r = match handle {
            Some(Handle::Started(s)) => ManuallyDrop::into_inner(s)
                .destroy()
                .map_err(|e| e.to_string())
                .and_then(|()| self.detach(&record)),
            Some(Handle::Adopted(cg)) => self.cleanup(&record, cg.map(ManuallyDrop::into_inner)),
            None => self.cleanup(&record, None),
        };
        let mut reg = self.registry();
        match &r {
            Ok(()) => {
                reg.sessions.remove(id);
                // Its address is free once its link is gone.
                if let Some(ipam) = reg.ipam.as_mut() {
                    ipam.release_session(id);
                }
            }
            Err(_) => {
                if let Some(e) = reg.sessions.get_mut(id) {
                    e.phase = Phase::Destroying { in_progress: false };
                }
            }
        }
        reg.persist();
        r
    }

    fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
        timeout_s: Option<u64>,
    ) -> Result<ExecResult, ApiError> {
        let timeout_s = timeout_s.unwrap_or(api::DEFAULT_EXEC_TIMEOUT_S);
        let max = self.config.limits.max_exec_timeout_s;
        if timeout_s > max {
            return Err(ApiError::bad_request(format!(
                "timeout_s {timeout_s}: at most {max}"
            )));
        }
        let _slot = Slot::take(&self.execs, self.config.limits.max_execs).ok_or_else(|| {
            ApiError::new(
                ErrorKind::Busy,
                format!(
                    "{} execs run already; try again",
                    self.config.limits.max_execs
                ),
            )
        })?;
        let spec = {
            let reg = self.registry();
            let entry = reg
                .sessions
                .get(id)
                .ok_or_else(|| ApiError::unknown_session(id))?;
            match entry.phase {
                Phase::Running(_) => {}
                Phase::Starting => return Err(starting(id)),
                Phase::Destroying { .. } => return Err(destroying(id)),
            }
            let r = &entry.record;
            let (Some(init_pid), Some(init_start_time)) = (r.init_pid, r.init_start_time) else {
                return Err(failed(format!("session {id:?} has no PID 1")));
            };
            let mut vars = session_env(id, &r.profile);
            if let Some(d) = &r.profile.desktop {
                // X clients run by exec find the session's display.
                vars.push(("DISPLAY".into(), d.display_name()));
            }
            for (k, v) in env {
                vars.retain(|(name, _)| *name != k);
                vars.push((k, v));
            }
            ExecSpec {
                id: id.to_string(),
                init_pid,
                init_start_time,
                cgroup_procs: r.cgroups.iter().map(|c| c.join("cgroup.procs")).collect(),
                argv,
                env: vars,
                cwd: cwd.unwrap_or_else(|| PathBuf::from("/")),
                timeout_ms: timeout_s.saturating_mul(1000),
            }
        };
        let r = run_exec(&self.exe, &spec, self.config.limits.exec_output_bytes)?;
        tracing::info!(
            argv0 = %spec.argv[0], exit_code = r.exit_code, timed_out = r.timed_out,
            "exec finished"
        );
        Ok(r)
    }

    /// Finds sessions that ended on their own and removes their leftovers.
    pub fn reap(&self) {
        let mut ended = Vec::new();
        {
            let mut reg = self.registry();
            for (id, entry) in reg.sessions.iter_mut() {
                let r = &entry.record;
                let init_alive = matches!(
                    (r.init_pid, r.init_start_time),
                    (Some(p), Some(t)) if is_alive(p, t)
                );
                let status = match &mut entry.phase {
                    // Our child: its status when the helper has ended; PID 1
                    // (the helper's child) may end a moment before.
                    Phase::Running(Handle::Started(s)) => match s.wait_timeout(Duration::ZERO) {
                        Ok(Some(st)) => Some(format!("{st}")),
                        _ if !init_alive => Some("PID 1 ended".to_string()),
                        _ => None,
                    },
                    Phase::Running(Handle::Adopted(_)) if !init_alive => {
                        Some("PID 1 ended".to_string())
                    }
                    _ => None,
                };
                if let Some(status) = status {
                    let Phase::Running(h) = std::mem::replace(
                        &mut entry.phase,
                        Phase::Destroying { in_progress: true },
                    ) else {
                        continue;
                    };
                    entry.record.destroying = true;
                    ended.push((id.clone(), h, status));
                }
            }
            if !ended.is_empty() {
                reg.persist();
            }
        }
        for (id, h, status) in ended {
            tracing::info!(session = %id, %status, "session ended");
            if let Err(e) = self.finish(&id, Some(h)) {
                tracing::warn!(session = %id, error = %e, "an ended session's leftovers not removed");
            }
        }
    }

    /// The numbers of a scrape.
    pub fn snapshot(&self) -> Snapshot {
        let (sessions, addresses_free) = {
            let mut reg = self.registry();
            let free = reg.ipam.as_ref().map(|i| u64::from(i.free()));
            let sessions = reg
                .sessions
                .values_mut()
                .filter(|e| matches!(e.phase, Phase::Running(_)))
                .map(|e| {
                    let i = info_of(e);
                    SessionSample {
                        id: i.id,
                        processes: i.processes,
                        memory_bytes: i.memory_bytes,
                        cpu_seconds: i.cpu_seconds,
                    }
                })
                .collect();
            (sessions, free)
        };
        let api = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .api
            .clone();
        Snapshot {
            sessions,
            api_requests: api,
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            addresses_free,
        }
    }

    fn count(&self, op: &str, result: &str) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: ops and results are fixed names.
        *s.api
            .entry((op.to_string(), result.to_string()))
            .or_insert(0) += 1;
    }

    /// Serves one API connection until it closes, idles out, sends an
    /// over-long line or fails authentication.
    pub fn serve_connection(&self, stream: UnixStream) {
        let peer =
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map(|c| (c.pid(), c.uid()))
                .ok();
        let idle = Duration::from_secs(self.config.limits.idle_timeout_s);
        let _ = stream.set_read_timeout(Some(idle));
        let _ = stream.set_write_timeout(Some(idle));
        let Ok(read) = stream.try_clone() else { return };
        let mut reader = BufReader::new(read);
        let mut writer = stream;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = api::MAX_REQUEST_LINE as u64 + 1;
            match (&mut reader).take(limit).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') && buf.len() > api::MAX_REQUEST_LINE {
                self.count("none", "bad_request");
                tracing::warn!(peer = ?peer, "request line too long; connection closed");
                let e = ApiError::bad_request(format!(
                    "request line longer than {} bytes; connection closed",
                    api::MAX_REQUEST_LINE
                ));
                let _ = writer.write_all(Response::error(e).to_line().as_bytes());
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (response, close) = match api::parse_line(line, &self.token) {
                Ok(request) => {
                    let op = request.op();
                    let r = self.handle(request);
                    self.count(op, r.result());
                    (r, false)
                }
                Err(e) => {
                    self.count("none", e.kind.as_str());
                    let close = e.kind == ErrorKind::Unauthorized;
                    if close {
                        self.auth_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = ?peer, reason = %e.message, "unauthorized request; connection closed");
                    } else {
                        tracing::warn!(peer = ?peer, error = %e.message, "bad request");
                    }
                    (Response::error(e), close)
                }
            };
            if writer.write_all(response.to_line().as_bytes()).is_err() || close {
                return;
            }
        }
    }

    /// Accepts API connections (a thread each, at most `max_connections`).
    pub fn serve(self: &Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let max = self.config.limits.max_connections;
            let Some(guard) = ConnectionSlot::take(self, max) else {
                let e = ApiError::new(
                    ErrorKind::Busy,
                    format!("{max} connections open; try again"),
                );
                let _ = stream.write_all(Response::error(e).to_line().as_bytes());
                continue;
            };
            let spawned = std::thread::Builder::new()
                .name("sessiond-api".into())
                .spawn(move || {
                    let slot = guard;
                    slot.0.serve_connection(stream)
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for a connection");
            }
        }
    }
}

/// One of the `max_connections` connections; given back when dropped
/// (also when its thread panics).
struct ConnectionSlot(Arc<Daemon>);

impl ConnectionSlot {
    fn take(d: &Arc<Daemon>, max: usize) -> Option<ConnectionSlot> {
        if d.connections.fetch_add(1, Ordering::SeqCst) >= max {
            d.connections.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ConnectionSlot(d.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn starting(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Busy,
        format!("session {id:?} is still starting; try again"),
    )
}

fn destroying(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Conflict,
        format!("session {id:?} is being destroyed"),
    )
}

/// Copies `src` (at most [`MAX_TLS_FILE`] bytes) to a new file `dst` with
/// `mode`, owned by `owner` (uid, gid) when given: a session's own copy of
/// a file its root must read.
fn private_file(
    dst: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<PathBuf, ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| failed(format!("writing {}: {e}", dst.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(dst.to_path_buf())
}

/// A certificate or key file of the configuration, at most
/// [`MAX_TLS_FILE`] bytes.
fn read_bounded(src: &Path) -> Result<Vec<u8>, ApiError> {
    let mut data = Vec::new();
    std::fs::File::open(src)
        .and_then(|f| f.take(MAX_TLS_FILE + 1).read_to_end(&mut data))
        .map_err(|e| failed(format!("reading {}: {e}", src.display())))?;
    if data.len() as u64 > MAX_TLS_FILE {
        return Err(failed(format!(
            "{}: larger than {MAX_TLS_FILE} bytes",
            src.display()
        )));
    }
    Ok(data)
}

/// Four random bytes (a display name's nonce).
fn random_u32() -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

/// How desktop sessions' display servers get their certificate (checked at
/// `create`: the files are there).
#[derive(Debug, Clone)]
enum DisplayCredentials {
    /// Issued per session from the display CA ([`crate::certs`]).
    Issued { ca_cert: PathBuf, ca_key: PathBuf },
    /// One certificate and key copied into every session.
    Shared { cert: PathBuf, key: PathBuf },
    /// Plain TCP: tests and benchmarks only.
    Plaintext,
}

/// `base` joined with `p` (relative, or absolute inside `base`), resolved
/// (symbolic links followed) and still inside `base`.
fn inside(base: &Path, p: &Path, what: &str, dir: bool) -> Result<PathBuf, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("{what} {}: {m}", p.display()));
    let base = base
        .canonicalize()
        .map_err(|e| bad(format!("{} unusable: {e}", base.display())))?;
    let full = base
        .join(p)
        .canonicalize()
        .map_err(|e| bad(e.to_string()))?;
    if !full.starts_with(&base) || full == base {
        return Err(bad(format!("not inside {}", base.display())));
    }
    if full.is_dir() != dir {
        return Err(bad(
            if dir { "not a directory" } else { "not a file" }.into()
        ));
    }
    Ok(full)
}

fn info_of(e: &mut Entry) -> SessionInfo {
    let r = &e.record;
    let (state, cg) = match &e.phase {
        Phase::Starting => (SessionState::Starting, None),
        Phase::Running(h) => (SessionState::Running, h.cgroup()),
        Phase::Destroying { .. } => (SessionState::Destroying, None),
    };
    let (processes, memory_bytes, cpu) = match cg {
        Some(c) => counters(c),
        None => (None, None, None),
    };
    let cpu_seconds = cpu.map(|c| {
        e.cpu_seen = e.cpu_seen.max(c);
        e.cpu_seen
    });
    SessionInfo {
        id: r.id.clone(),
        state,
        init_pid: r.init_pid,
        created: r.created,
        adopted: e.adopted,
        profile: r.profile.clone(),
        home: r.home.clone(),
        command: r.command.clone(),
        limits: r.limits.clone(),
        layer: r.session_dir.join("root"),
        cgroups: r.cgroups.clone(),
        address: r.network.as_ref().map(|a| a.address),
        physical_address: r.network.as_ref().map(Attachment::physical_address),
        link: r.network.as_ref().map(|a| a.link.clone()),
        display_port: r.display_port,
        display_name: r.display_name.clone(),
        processes,
        memory_bytes,
        cpu_seconds,
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Processes, memory bytes and CPU seconds of a session, from its cgroups:
/// `pids.current`; `memory.usage_in_bytes` (v1) or `memory.current` (v2);
/// `cpuacct.usage` (v1: the cpuacct group, or the cpu group when both are
/// mounted together) or `usage_usec` of `cpu.stat` (v2). Without any (a v1
/// host without cpuacct), CPU time is the sum over the session's processes
/// of their own and their waited-for children's user + system time
/// (`/proc/PID/stat`), which misses what ended outside the session's
/// process tree (an exec'd command's parent is outside).
fn counters(cg: &SessionCgroup) -> (Option<u64>, Option<u64>, Option<f64>) {
    let processes = cg.pids_current().ok();
    let mut memory = None;
    let mut cpu = None;
    for d in cg.paths() {
        if memory.is_none() {
            memory = read_u64(&d.join("memory.usage_in_bytes"))
                .or_else(|| read_u64(&d.join("memory.current")));
        }
        if cpu.is_none() {
            cpu = read_u64(&d.join("cpuacct.usage"))
                .map(|ns| ns as f64 / 1e9)
                .or_else(|| {
                    let text = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
                    text.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|us| us as f64 / 1e6)
                });
        }
    }
    if cpu.is_none() {
        let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100);
        cpu = cg.pids().ok().map(|pids| {
            let ticks: u64 = pids
                .iter()
                .filter_map(|p| ProcStat::read(*p))
                .map(|s| s.cpu_ticks)
                .sum();
            ticks as f64 / tck as f64
        });
    }
    (processes, memory, cpu)
}

// ---------------------------------------------------------------------------
// exec: the daemon's side.

/// A byte sink that keeps at most `limit` bytes.
struct Capped {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
    eof: bool,
}

impl Capped {
    fn new(limit: usize) -> Capped {
        Capped {
            data: Vec::new(),
            limit,
            truncated: false,
            eof: false,
        }
    }
    fn push(&mut self, b: &[u8]) {
        let room = self.limit.saturating_sub(self.data.len());
        if b.len() > room {
            self.truncated = true;
        }
        self.data.extend_from_slice(&b[..b.len().min(room)]);
    }
}

/// The helper's final report.
#[derive(Debug, Default)]
struct Done {
    code: i32,
    signal: Option<i32>,
    timed_out: bool,
}

fn parse_done(line: &str) -> Option<Done> {
    let mut f = line.strip_prefix("done ")?.split(' ');
    let code = f.next()?.parse().ok()?;
    let signal: i32 = f.next()?.parse().ok()?;
    let timed_out = f.next()? == "1";
    Some(Done {
        code,
        signal: (signal != 0).then_some(signal),
        timed_out,
    })
}

/// Runs the `__exec` helper and collects its report and output.
fn run_exec(exe: &Path, spec: &ExecSpec, output_limit: usize) -> Result<ExecResult, ApiError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let (ours, theirs) = UnixStream::pair().map_err(failed)?;
    let mut cmd = Command::new(exe);
    // A process group of its own: a signal to the daemon's group (a
    // terminal's ^C) does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg("__exec")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::sys::pass_fd_as_3(&mut cmd, theirs.as_raw_fd());
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("starting the exec helper: {e}")))?;
    drop(theirs);
    let mut line = serde_json::to_vec(spec).map_err(failed)?;
    line.push(b'\n');
    let result = (|| {
        (&ours).write_all(&line).map_err(failed)?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(failed("exec helper without pipes"));
        };
        let mut outputs = [Capped::new(output_limit), Capped::new(output_limit)];
        let mut control = Vec::new();
        let mut control_eof = false;
        let mut report: Option<Result<Done, String>> = None;
        // The helper kills the command at its timeout; this is the bound
        // for the helper itself.
        let deadline =
            Instant::now() + Duration::from_millis(spec.timeout_ms) + Duration::from_secs(10);
        let mut grace: Option<Instant> = None;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if report.is_some() && outputs.iter().all(|o| o.eof) {
                break;
            }
            if report.is_some() && grace.is_none() {
                // The command ended; what it left running in the background
                // may hold the pipes: wait a little for their end, no more.
                grace = Some(Instant::now() + Duration::from_millis(500));
            }
            if control_eof && report.is_none() {
                report = Some(Err("the exec helper ended without a report".into()));
                continue;
            }
            let end = grace.map_or(deadline, |g| g.min(deadline));
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if report.is_none() {
                    let _ = child.kill();
                    report = Some(Err("the exec helper did not finish in time".into()));
                }
                break;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if !control_eof {
                fds.push(PollFd::new(ours.as_fd(), PollFlags::POLLIN));
                which.push(0usize);
            }
            if !outputs[0].eof {
                fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if !outputs[1].eof {
                fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(failed(format!("poll: {e}"))),
            }
            let ready: Vec<usize> = fds
                .iter()
                .zip(&which)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| *w)
                .collect();
            drop(fds);
            for w in ready {
                let n = match w {
                    0 => (&ours).read(&mut chunk),
                    1 => out.read(&mut chunk),
                    _ => err.read(&mut chunk),
                };
                let n = match n {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                match w {
                    0 if n == 0 => control_eof = true,
                    0 => {
                        control.extend_from_slice(&chunk[..n]);
                        if control.len() > 64 * 1024 {
                            control_eof = true;
                        }
                        while let Some(pos) = control.iter().position(|b| *b == b'\n') {
                            let l: Vec<u8> = control.drain(..=pos).collect();
                            let l = String::from_utf8_lossy(&l);
                            let l = l.trim_end();
                            if let Some(msg) = l.strip_prefix("error ") {
                                report = Some(Err(msg.to_string()));
                            } else if let Some(d) = parse_done(l) {
                                report = Some(Ok(d));
                            }
                        }
                    }
                    _ => {
                        let o = &mut outputs[w - 1];
                        if n == 0 {
                            o.eof = true;
                        } else {
                            o.push(&chunk[..n]);
                        }
                    }
                }
            }
        }
        let [o, e] = outputs;
        match report {
            Some(Ok(d)) => Ok(ExecResult {
                exit_code: d.code,
                signal: d.signal,
                timed_out: d.timed_out,
                stdout: String::from_utf8_lossy(&o.data).into_owned(),
                stderr: String::from_utf8_lossy(&e.data).into_owned(),
                stdout_truncated: o.truncated,
                stderr_truncated: e.truncated,
            }),
            Some(Err(msg)) => Err(failed(format!("exec in session {:?}: {msg}", spec.id))),
            None => Err(failed("exec: no report")),
        }
    })();
    // The helper has reported (or is killed): reap it.
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

// ---------------------------------------------------------------------------
// exec: the helper (`mobidesk-sessiond __exec`), inside the session.

/// `mobidesk-sessiond __exec`: reads an [`ExecSpec`] from fd 3, runs the
/// command inside the session, reports `pid N` and `done CODE SIGNAL
/// TIMED_OUT` (or `error MESSAGE`) on fd 3. Must run single-threaded.
pub fn exec_helper_main() -> ! {
    let Some(fd) = crate::sys::take_fd3_socket() else {
        eprintln!("mobidesk-sessiond __exec: no control socket on fd 3 (internal command)");
        std::process::exit(64);
    };
    let mut control = UnixStream::from(fd);
    let spec = match read_spec(&mut control) {
        Ok(s) => s,
        Err(e) => report_error(&mut control, &format!("reading the exec spec: {e}")),
    };
    match exec_in_session(&spec, &mut control) {
        Ok(done) => {
            let line = format!(
                "done {} {} {}\n",
                done.code,
                done.signal.unwrap_or(0),
                u8::from(done.timed_out)
            );
            let _ = control.write_all(line.as_bytes());
            std::process::exit(0)
        }
        Err(e) => report_error(&mut control, &e),
    }
}

fn report_error(control: &mut UnixStream, msg: &str) -> ! {
    let _ = control.write_all(format!("error {}\n", msg.replace('\n', " ")).as_bytes());
    std::process::exit(71)
}

fn read_spec(control: &mut UnixStream) -> Result<ExecSpec, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(control.try_clone().map_err(|e| e.to_string())?);
    (&mut reader)
        .take(api::MAX_REQUEST_LINE as u64 * 2)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&line).map_err(|e| e.to_string())
}

/// Whether the process `pid` lives in another user namespace than we do.
fn other_user_ns(pid: u32) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())?;
    let ours = std::fs::metadata("/proc/self/ns/user").map_err(|e| e.to_string())?;
    Ok((theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()))
}

fn exec_in_session(spec: &ExecSpec, control: &mut UnixStream) -> Result<Done, String> {
    use nix::sched::{setns, CloneFlags};
    let e = |what: &'static str| move |err: nix::errno::Errno| format!("{what}: {err}");
    // Session processes must not ptrace us or open /proc/PID/exe (the
    // host's sessiond binary) while we hold more than they do.
    nix::sys::prctl::set_dumpable(false).map_err(e("prctl(PR_SET_DUMPABLE)"))?;
    let pidfd =
        crate::sys::pidfd_open(spec.init_pid).map_err(|err| format!("session's PID 1: {err}"))?;
    // The pidfd was opened first: if the pid still has the recorded start
    // time now, the pidfd is the session's PID 1, not a reused pid.
    if !is_alive(spec.init_pid, spec.init_start_time) {
        return Err("the session's PID 1 has ended".into());
    }
    let userns = other_user_ns(spec.init_pid)?;
    let me = std::process::id().to_string();
    for f in &spec.cgroup_procs {
        std::fs::write(f, &me).map_err(|err| format!("joining {}: {err}", f.display()))?;
    }
    // Compiled before entering the session: nothing is read from it.
    let filter = crate::policy::compile_filter().map_err(|err| err.to_string())?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if userns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    setns(&pidfd, flags).map_err(e("setns into the session"))?;
    drop(pidfd);
    if userns {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let (g, u) = (Gid::from_raw(0), Uid::from_raw(0));
        setgroups(&[]).map_err(e("setgroups"))?;
        setresgid(g, g, g).map_err(e("setresgid"))?;
        setresuid(u, u, u).map_err(e("setresuid"))?;
    }
    let child = match crate::sys::fork_single_threaded().map_err(|err| format!("fork: {err}"))? {
        None => child_main(spec, &filter),
        Some(pid) => pid,
    };
    let _ = control.write_all(format!("pid {child}\n").as_bytes());
    let timeout = Duration::from_millis(spec.timeout_ms);
    let timed_out = !wait_gone(child, timeout);
    if timed_out {
        // Its process group (it leads one) and itself.
        if let Ok(p) = i32::try_from(child) {
            let _ = kill(Pid::from_raw(-p), Signal::SIGKILL);
        }
        kill_pid(child, Signal::SIGKILL);
    }
    let pid = Pid::from_raw(i32::try_from(child).map_err(|err| err.to_string())?);
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => {
                return Ok(Done {
                    code: c,
                    signal: None,
                    timed_out,
                })
            }
            Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => {
                return Ok(Done {
                    code: 128 + s as i32,
                    signal: Some(s as i32),
                    timed_out,
                })
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(format!("waitpid: {err}")),
        }
    }
}

/// The command's process, inside the session's namespaces: the same walls
/// as the session's PID 1, then exec. Never returns.
fn child_main(spec: &ExecSpec, filter: &crate::seccomp::Program) -> ! {
    use std::os::unix::process::CommandExt;
    let die = |code: i32, msg: String| -> ! {
        eprintln!("mobidesk-exec: {msg}");
        std::process::exit(code)
    };
    // A process group of its own: a timeout kills the group.
    if let Err(err) = nix::unistd::setsid() {
        die(126, format!("setsid: {err}"));
    }
    // setns into the mount namespace put us at its root: the session's.
    if !Path::new(crate::environment::INIT_PATH).exists() {
        die(126, "not inside the session's root".into());
    }
    if let Err(err) = nix::unistd::chdir(&spec.cwd) {
        die(126, format!("chdir {}: {err}", spec.cwd.display()));
    }
    // stdin: the session's own /dev/null, not a host descriptor.
    match std::fs::File::open("/dev/null") {
        Ok(f) => {
            if let Err(err) = nix::unistd::dup2_stdin(&f) {
                die(126, format!("dup2 /dev/null: {err}"));
            }
        }
        Err(err) => die(126, format!("open /dev/null: {err}")),
    }
    if let Err(err) = crate::policy::drop_capabilities() {
        die(126, err.to_string());
    }
    if let Err(err) = crate::policy::install_seccomp(filter) {
        die(126, err.to_string());
    }
    if let Err(err) = crate::sys::cloexec_from(3) {
        die(126, format!("close_range: {err}"));
    }
    // The daemon's threads block SIGTERM and SIGINT (it waits for them
    // with sigwait); a blocked mask survives exec: the command starts with
    // none blocked.
    if let Err(err) = SigSet::empty().thread_set_mask() {
        die(126, format!("sigprocmask: {err}"));
    }
    let err = Command::new(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    die(code, format!("{}: {err}", spec.argv[0]))
}

// ---------------------------------------------------------------------------
// Running the daemon, and a client.

/// Binds the API socket with mode 0600 (bound under a temporary name,
/// chmod'ed, then renamed into place: never reachable with a wider mode).
fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |detail: String| DaemonError::Socket {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err("another daemon answers on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("removing a stale socket: {e}")))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e.to_string())
        })?;
    Ok(listener)
}

/// Runs the daemon until SIGTERM or SIGINT. Sessions keep running after
/// it returns.
pub fn run(config: Config) -> Result<(), DaemonError> {
    // Blocked before any thread exists, so every thread inherits the mask
    // and only the wait below takes them (children get an empty mask).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(|e| DaemonError::Io {
        what: "blocking signals".into(),
        source: e.into(),
    })?;
    let daemon = Daemon::start(config)?;
    let listener = bind_socket(&daemon.config.socket)?;
    if let Some(addr) = daemon.config.metrics {
        let tcp = std::net::TcpListener::bind(addr)
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("sessiond-metrics".into())
            .spawn(move || {
                crate::metrics::serve(tcp, || crate::metrics::encode(&d.snapshot()).ok())
            })
            .map_err(|source| DaemonError::Io {
                what: "starting the metrics thread".into(),
                source,
            })?;
    }
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("sessiond-reaper".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            d.reap();
        })
        .map_err(|source| DaemonError::Io {
            what: "starting the reaper thread".into(),
            source,
        })?;
    let d = daemon.clone();
    std::thread::Builder::new()
        .name("sessiond-accept".into())
        .spawn(move || d.serve(listener))
        .map_err(|source| DaemonError::Io {
            what: "starting the accept thread".into(),
            source,
        })?;
    tracing::info!(
        socket = %daemon.config.socket.display(),
        state_dir = %daemon.config.state_dir.display(),
        metrics = ?daemon.config.metrics,
        sessions = daemon.registry().sessions.len(),
        "sessiond up"
    );
    let sig = mask.wait().map_err(|e| DaemonError::Io {
        what: "waiting for signals".into(),
        source: e.into(),
    })?;
    // Hold the registry: no request changes sessions from here on.
    let reg = daemon.registry();
    reg.persist();
    let _ = std::fs::remove_file(&daemon.config.socket);
    tracing::info!(signal = ?sig, sessions = reg.sessions.len(), "sessiond stopping; sessions keep running");
    // Nothing of the daemon may be dropped: dropping a session's handle
    // would end it.
    std::mem::forget(reg);
    std::mem::forget(daemon);
    Ok(())
}

/// Sends one request line (a JSON object without the token; the token is
/// added) and reads one response line. For `ctl`, tools and tests.
pub fn request(
    socket: &Path,
    token: &str,
    request: &serde_json::Value,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut req = request.clone();
    if let serde_json::Value::Object(m) = &mut req {
        m.insert("token".into(), serde_json::Value::String(token.into()));
    }
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(&req).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .take(64 << 20)
        .read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::other(format!("bad response {reply:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_spells_out_the_defaults() {
        let text = include_str!("../../configs/sessiond.toml");
        let c = Config::from_toml(text).unwrap();
        let defaults = Config {
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9465))),
            ..Config::default()
        };
        assert_eq!(c, defaults);
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
        // The commented [network] table, uncommented, spells out its
        // defaults with the example pool.
        let start = text.find("#[network]").unwrap();
        let uncommented: String = text[start..]
            .lines()
            .filter(|l| !l.starts_with("##"))
            .map(|l| format!("{}\n", l.strip_prefix('#').unwrap_or(l)))
            .collect();
        let c = Config::from_toml(&format!("{}{uncommented}", &text[..start])).unwrap();
        let mut net = NetworkConfig::new("10.1.0.100-10.1.0.199".parse().unwrap());
        net.exclude = Vec::new();
        assert_eq!(c.network, Some(net));
        assert!(err_of(
            "[network]\npool = \"10.1.0.100-10.1.0.199\"\nsession_gateway = \"10.1.0.150\""
        )
        .contains("[network]"));
    }

    fn err_of(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_configs_are_refused_with_the_key_named() {
        let err = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert!(err("typo = 1").contains("typo"));
        assert!(err("socket = \"relative.sock\"").contains("socket"));
        assert!(err("metrics = \"127.0.0.1:0\"").contains("metrics"));
        assert!(err("[limits]\nmax_sessions = 0").contains("limits.max_sessions"));
        assert!(err("[limits]\nmax_exec_timeout_s = 0").contains("limits.max_exec_timeout_s"));
        assert!(err("[limits]\nbogus = 0").contains("bogus"));
        assert!(err("start_timeout_s = 0").contains("start_timeout_s"));
    }

    #[test]
    fn the_token_file_must_be_private_and_long_enough() {
        let dir = std::env::temp_dir().join(format!("mdsd-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_token(&f)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&f).unwrap(), b"0123456789abcdef");
        std::fs::write(&f, "short\n").unwrap();
        assert!(read_token(&f).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_must_stay_inside_their_directory() {
        let dir = std::env::temp_dir().join(format!("mdsd-inside-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("homes/alice")).unwrap();
        std::fs::write(dir.join("homes/p.toml"), "").unwrap();
        let base = dir.join("homes");
        assert!(inside(&base, Path::new("alice"), "home", true).is_ok());
        assert!(inside(&base, &base.join("alice"), "home", true).is_ok());
        assert!(inside(&base, Path::new("p.toml"), "profile", false).is_ok());
        for bad in ["../homes/../..", "/etc", "nope", "p.toml"] {
            assert!(
                inside(&base, Path::new(bad), "home", true).is_err(),
                "{bad}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_exec_report_parses() {
        let d = parse_done("done 137 9 1").unwrap();
        assert_eq!((d.code, d.signal, d.timed_out), (137, Some(9), true));
        let d = parse_done("done 0 0 0").unwrap();
        assert_eq!((d.code, d.signal, d.timed_out), (0, None, false));
        assert!(parse_done("done x").is_none());
    }
}
