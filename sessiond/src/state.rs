//! The daemon's persisted state: one JSON file (`sessions.json`) in the
//! state directory, rewritten after every change, crash-safe (written to a
//! temporary file, fsync'ed, renamed over the old one, directory fsync'ed:
//! a reader finds the old or the new file whole, never a mix).
//!
//! The state directory is locked (`flock` on `lock`) for the daemon's
//! lifetime, so two daemons never share it; the lock goes with the process,
//! also when it is killed.
//!
//! Each record names the session's PID 1 by host pid *and* its start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot): a restarted
//! daemon re-adopts a session only when both match, so a reused pid is
//! never taken for the session.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::ipam::Ipam;
use crate::network::Attachment;
use crate::profile::{Limits, Profile};

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "sessions.json";
/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "lock";
/// The format's version (refused when different).
pub const VERSION: u32 = 1;
/// A state file larger than this is refused (a corrupt or foreign file).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {0} is in use by another sessiond")]
    Locked(PathBuf),
    #[error("state file {path} is not valid (fix or move it away; sessions in it are not adopted): {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

/// One session as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    pub id: String,
    /// Host pid of the session's PID 1; `None` while it is being started
    /// (a record without it is cleaned up at the next start).
    #[serde(default)]
    pub init_pid: Option<u32>,
    /// PID 1's start time (`/proc/PID/stat` field 22).
    #[serde(default)]
    pub init_start_time: Option<u64>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub profile: Profile,
    #[serde(default)]
    pub home: Option<PathBuf>,
    pub command: Vec<String>,
    /// The limits in force (changed by `resources`).
    pub limits: Limits,
    /// The session's cgroup directories.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// The session's directory (`<runtime_dir>/<id>`, the layer is `root`
    /// in it).
    pub session_dir: PathBuf,
    /// Being destroyed (a crash in the middle is finished at the next start).
    #[serde(default)]
    pub destroying: bool,
    /// Its network attachment (address, link), when the daemon has a
    /// `[network]`; written before the session starts, so that a crash in
    /// the middle of a start still finds what to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Attachment>,
    /// The TCP port of its display server, for a desktop session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_port: Option<u16>,
    /// The name on its display certificate, when issued from the display
    /// CA (viewers check it with `--server-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub sessions: Vec<SessionRecord>,
    /// The server's address allocator (with a `[network]`): its leases
    /// (address -> session) and where the next search starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
}

/// The locked state directory.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl StateStore {
    /// Creates the directory (mode 0700) if needed and locks it.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io("chmod", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(dir.to_path_buf()))?;
        Ok(StateStore {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state; an absent file is an empty state.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: VERSION,
                    sessions: Vec::new(),
                    ipam: None,
                })
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let len = file.metadata().map_err(io("reading", &path))?.len();
        if len > MAX_STATE_BYTES {
            return Err(StateError::Corrupt {
                path,
                detail: format!("{len} bytes, more than {MAX_STATE_BYTES}"),
            });
        }
        let state: State = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
            StateError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            }
        })?;
        if state.version != VERSION {
            return Err(StateError::Corrupt {
                path,
                detail: format!("version {} (this sessiond reads {VERSION})", state.version),
            });
        }
        Ok(state)
    }

    /// Replaces the state file: temporary file, fsync, rename, fsync of
    /// the directory.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        f.write_all(&bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))?;
        Ok(())
    }
}

/// A process as `/proc/PID/stat` shows it: its state letter and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_time: u64,
    /// user + system time of the process and of its waited-for children,
    /// in clock ticks (fields 14–17).
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `None` when there is no such process.
    pub fn read(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        ProcStat::parse(&text)
    }

    /// Parses the text of `/proc/PID/stat` (the command name, field 2, may
    /// hold spaces and parentheses: fields are counted after the last `)`).
    pub fn parse(text: &str) -> Option<ProcStat> {
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state), so field N is f[N - 3].
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let state = f.first()?.chars().next()?;
        let cpu_ticks = (14..=17).try_fold(0u64, |acc, n| Some(acc.saturating_add(num(n)?)))?;
        Some(ProcStat {
            state,
            start_time: num(22)?,
            cpu_ticks,
        })
    }

    /// Still running (not a zombie or dead).
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Whether the process `pid` started at `start_time` is alive: the same
/// pid with another start time is another process.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    ProcStat::read(pid).is_some_and(|s| s.is_live() && s.start_time == start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            init_pid: Some(42),
            init_start_time: Some(4242),
            created: 1,
            profile: Profile::default(),
            home: None,
            command: vec!["sleep".into(), "infinity".into()],
            limits: Limits {
                pids_max: Some(64),
                ..Limits::default()
            },
            cgroups: vec!["/sys/fs/cgroup/pids/mobidesk/a".into()],
            session_dir: "/run/mobidesk/sessions/a".into(),
            destroying: false,
            network: None,
            display_port: None,
            display_name: None,
        }
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mdsd-state-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_round_trips_and_the_directory_is_locked() {
        let dir = tempdir();
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap().sessions, vec![]);
        let mut ipam = Ipam::new("10.1.0.100-10.1.0.103".parse().unwrap(), []);
        let address = ipam.allocate("b").unwrap();
        let mut b = record("b");
        b.network = Some(Attachment {
            session: "b".into(),
            link: "ses-b".into(),
            address,
            physical: None,
        });
        b.display_port = Some(5901);
        let state = State {
            version: VERSION,
            sessions: vec![record("a"), b],
            ipam: Some(ipam),
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!dir.join("sessions.json.tmp").exists());
        assert!(matches!(StateStore::open(&dir), Err(StateError::Locked(_))));
        drop(store);
        let store = StateStore::open(&dir).unwrap();
        std::fs::write(store.path(), "{\"version\":1,\"sessions\":[{").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("not valid"), "{e}");
        std::fs::write(store.path(), "{\"version\":9,\"sessions\":[]}").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("version 9"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn proc_stat_is_parsed_after_the_command_name() {
        let text = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = ProcStat::parse(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
        assert_eq!(s.cpu_ticks, 13);
        assert!(s.is_live());
        assert!(ProcStat::parse("garbage").is_none());
        let me = ProcStat::read(std::process::id()).unwrap();
        assert!(is_alive(std::process::id(), me.start_time));
        assert!(!is_alive(std::process::id(), me.start_time + 1));
    }
}
