//! Per-session cgroups: CPU weight and bandwidth, memory limit, pids limit,
//! changeable while the session runs.
//!
//! Two backends, chosen once at start by [`CgroupManager::detect`]:
//! - **v2** (unified hierarchy with the `memory` and `pids` controllers):
//!   one group `<v2 root>/mobidesk/<session>`, controllers enabled through
//!   `cgroup.subtree_control`;
//! - **v1** (one hierarchy per controller, as on these machines):
//!   `<cpu mount>/mobidesk/<session>`, `<memory mount>/mobidesk/<session>`,
//!   `<pids mount>/mobidesk/<session>`, and `<cpuacct mount>/...` when
//!   `cpuacct` has a hierarchy of its own (as here): the session's CPU
//!   time (`cpuacct.usage`, the metrics' counter) then comes from the
//!   kernel, not from a sum over its processes.
//!
//! Only the `mobidesk` parent and the groups below it are ever created,
//! written or removed: the machine's own groups are never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::profile::Limits;

/// The parent group every session group lives under.
pub const PARENT: &str = "mobidesk";

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid cgroup name {0:?} (letters, digits, '-', '_', '.' only)")]
    BadName(String),
    #[error("cgroup {0} still has processes after the deadline")]
    Busy(PathBuf),
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup version the host offers, with the mount points used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The unified hierarchy, mounted at `root`.
    V2 { root: PathBuf },
    /// Separate hierarchies; `memory` and `pids` are required, `cpu` is used
    /// when present, `cpuacct` when it is mounted apart from `cpu` (with
    /// `cpu`, its files are in the cpu group already).
    V1 {
        cpu: Option<PathBuf>,
        memory: PathBuf,
        pids: PathBuf,
        cpuacct: Option<PathBuf>,
    },
}

/// Creates session groups under [`PARENT`] with the detected backend.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    backend: Backend,
}

impl CgroupManager {
    /// Reads `/proc/self/mountinfo` and picks v2 when its hierarchy carries
    /// the `memory` and `pids` controllers, else v1 when `memory` and `pids`
    /// hierarchies exist.
    pub fn detect() -> Result<CgroupManager> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        let backend = Self::backend_from_mountinfo(&text, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        })?;
        Ok(CgroupManager { backend })
    }

    /// A manager for a known backend (tests, or a config that pins one).
    pub fn with_backend(backend: Backend) -> CgroupManager {
        CgroupManager { backend }
    }

    /// The decision of [`Self::detect`], from mountinfo text and a reader of
    /// a v2 root's `cgroup.controllers`.
    pub fn backend_from_mountinfo(
        mountinfo: &str,
        v2_controllers: impl Fn(&Path) -> String,
    ) -> Result<Backend> {
        let mut v2 = None;
        let (mut cpu, mut memory, mut pids, mut cpuacct) = (None, None, None, None);
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(m),
                None => continue,
            };
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let _source = r.next();
            let options = r.next().unwrap_or("");
            match fstype {
                "cgroup2" => {
                    let ctl = v2_controllers(&mount_point);
                    let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
                    if has("memory") && has("pids") && v2.is_none() {
                        v2 = Some(mount_point);
                    }
                }
                "cgroup" => {
                    for opt in options.split(',') {
                        match opt {
                            "cpu" if cpu.is_none() => cpu = Some(mount_point.clone()),
                            "memory" if memory.is_none() => memory = Some(mount_point.clone()),
                            "pids" if pids.is_none() => pids = Some(mount_point.clone()),
                            "cpuacct" if cpuacct.is_none() => cpuacct = Some(mount_point.clone()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = v2 {
            return Ok(Backend::V2 { root });
        }
        match (memory, pids) {
            (Some(memory), Some(pids)) => Ok(Backend::V1 {
                cpuacct: cpuacct.filter(|a| cpu.as_ref() != Some(a)),
                cpu,
                memory,
                pids,
            }),
            _ => Err(CgroupError::NotFound(
                "neither a cgroup2 mount with memory+pids nor cgroup v1 memory and pids hierarchies"
                    .into(),
            )),
        }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self.backend {
            Backend::V1 { .. } => 1,
            Backend::V2 { .. } => 2,
        }
    }

    /// Creates the session's group(s) under [`PARENT`] and applies `limits`.
    /// An existing group of the same name (left by a killed run) is reused.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<SessionCgroup> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(CgroupError::BadName(name.to_string()));
        }
        let group = match &self.backend {
            Backend::V2 { root } => {
                let wanted = ["cpu", "memory", "pids"];
                let available = std::fs::read_to_string(root.join("cgroup.controllers"))
                    .map_err(io_err("read", root))?;
                let enable: Vec<String> = wanted
                    .iter()
                    .filter(|c| available.split_whitespace().any(|a| a == **c))
                    .map(|c| format!("+{c}"))
                    .collect();
                let enable = enable.join(" ");
                write(&root.join("cgroup.subtree_control"), &enable)?;
                let parent = root.join(PARENT);
                mkdir(&parent)?;
                write(&parent.join("cgroup.subtree_control"), &enable)?;
                let dir = parent.join(name);
                mkdir(&dir)?;
                SessionCgroup {
                    version: 2,
                    dirs: vec![Dir {
                        kind: Kind::All,
                        path: dir,
                    }],
                }
            }
            Backend::V1 {
                cpu,
                memory,
                pids,
                cpuacct,
            } => {
                let mut dirs = Vec::new();
                let mut add = |kind, mount: &Path| -> Result<()> {
                    let parent = mount.join(PARENT);
                    mkdir(&parent)?;
                    let dir = parent.join(name);
                    mkdir(&dir)?;
                    dirs.push(Dir { kind, path: dir });
                    Ok(())
                };
                if let Some(cpu) = cpu {
                    add(Kind::Cpu, cpu)?;
                }
                add(Kind::Memory, memory)?;
                add(Kind::Pids, pids)?;
                if let Some(cpuacct) = cpuacct {
                    add(Kind::Cpuacct, cpuacct)?;
                }
                SessionCgroup { version: 1, dirs }
            }
        };
        if let Err(e) = group.update(limits) {
            let _ = group.remove_dirs(Duration::from_millis(200));
            return Err(e);
        }
        tracing::debug!(cgroup = name, version = group.version, "cgroup created");
        Ok(group)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The v2 group (all controllers).
    All,
    Cpu,
    Memory,
    Pids,
    /// v1 `cpuacct` mounted apart: accounting only, no limits.
    Cpuacct,
}

#[derive(Debug)]
struct Dir {
    kind: Kind,
    path: PathBuf,
}

/// One session's group(s). Dropping it removes the groups when they are
/// empty (best effort); [`SessionCgroup::remove`] reports failures.
#[derive(Debug)]
pub struct SessionCgroup {
    version: u8,
    dirs: Vec<Dir>,
}

impl SessionCgroup {
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The directories of this session's groups (one for v2, one per
    /// controller for v1).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// Moves a process into the session's groups.
    pub fn add_process(&self, pid: u32) -> Result<()> {
        for f in self.procs_files() {
            write(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// The pids in the session's groups (from the pids group).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let d = self.dir(Kind::Pids)?;
        let f = d.join("cgroup.procs");
        let text = std::fs::read_to_string(&f).map_err(io_err("read", &f))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Applies new limits (at start or at run time). A `None` lifts a limit.
    pub fn update(&self, limits: &Limits) -> Result<()> {
        for d in &self.dirs {
            let p = &d.path;
            let cpu = matches!(d.kind, Kind::All | Kind::Cpu);
            let mem = matches!(d.kind, Kind::All | Kind::Memory);
            let pids = matches!(d.kind, Kind::All | Kind::Pids);
            match self.version {
                2 => {
                    if cpu && p.join("cpu.weight").exists() {
                        write(
                            &p.join("cpu.weight"),
                            &limits.cpu_weight.unwrap_or(100).to_string(),
                        )?;
                        let max = match limits.cpu_max {
                            Some(c) => format!("{} {}", c.quota_us, c.period_us),
                            None => "max 100000".to_string(),
                        };
                        write(&p.join("cpu.max"), &max)?;
                    }
                    if mem {
                        let v = limits
                            .memory_max
                            .map_or("max".to_string(), |m| m.to_string());
                        write(&p.join("memory.max"), &v)?;
                        // No swap for a limited session: the limit is real memory.
                        if p.join("memory.swap.max").exists() {
                            let s = if limits.memory_max.is_some() {
                                "0"
                            } else {
                                "max"
                            };
                            write(&p.join("memory.swap.max"), s)?;
                        }
                    }
                    if pids {
                        let v = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
                        write(&p.join("pids.max"), &v)?;
                    }
                }
                _ => {
                    if cpu {
                        let shares = limits.cpu_weight.unwrap_or(100) * 1024 / 100;
                        write(&p.join("cpu.shares"), &shares.max(2).to_string())?;
                        match limits.cpu_max {
                            Some(c) => {
                                write(&p.join("cpu.cfs_quota_us"), "-1")?;
                                write(&p.join("cpu.cfs_period_us"), &c.period_us.to_string())?;
                                write(&p.join("cpu.cfs_quota_us"), &c.quota_us.to_string())?;
                            }
                            None => write(&p.join("cpu.cfs_quota_us"), "-1")?,
                        }
                    }
                    if mem {
                        let v = limits
                            .memory_max
                            .map_or("-1".to_string(), |m| m.to_string());
                        let memsw = p.join("memory.memsw.limit_in_bytes");
                        let has_memsw = memsw.exists();
                        if has_memsw {
                            write(&memsw, "-1")?;
                        }
                        write(&p.join("memory.limit_in_bytes"), &v)?;
                        if has_memsw {
                            write(&memsw, &v)?;
                        }
                    }
                    if pids {
                        let v = limits.pids_max.map_or("max".to_string(), |n| n.to_string());
                        write(&p.join("pids.max"), &v)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// How many processes of the session the kernel's OOM killer has killed
    /// (`oom_kill` in `memory.events` on v2, `memory.oom_control` on v1).
    pub fn oom_kills(&self) -> Result<u64> {
        let d = self.dir(Kind::Memory)?;
        let f = if self.version == 2 {
            d.join("memory.events")
        } else {
            d.join("memory.oom_control")
        };
        read_key(&f, "oom_kill")
    }

    /// How many forks the pids limit refused (`max` in `pids.events`).
    pub fn pids_refused(&self) -> Result<u64> {
        read_key(&self.dir(Kind::Pids)?.join("pids.events"), "max")
    }

    /// `pids.current`.
    pub fn pids_current(&self) -> Result<u64> {
        let f = self.dir(Kind::Pids)?.join("pids.current");
        let text = std::fs::read_to_string(&f).map_err(io_err("read", &f))?;
        text.trim().parse().map_err(|_| CgroupError::Io {
            op: "parse",
            path: f,
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })
    }

    fn dir(&self, kind: Kind) -> Result<&Path> {
        self.dirs
            .iter()
            .find(|d| d.kind == kind || d.kind == Kind::All)
            .map(|d| d.path.as_path())
            .ok_or_else(|| CgroupError::NotFound(format!("no {kind:?} group")))
    }

    /// Removes the groups. Their processes must be gone (a dead session's
    /// last tasks may take a moment to leave the group: EBUSY is retried
    /// until `deadline`).
    pub fn remove(mut self, deadline: Duration) -> Result<()> {
        let r = self.remove_dirs(deadline);
        self.dirs.clear();
        r
    }

    fn remove_dirs(&self, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        for d in &self.dirs {
            let mut pause = Duration::from_millis(1);
            loop {
                match std::fs::remove_dir(&d.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        if Instant::now() >= end {
                            return Err(CgroupError::Busy(d.path.clone()));
                        }
                        // The kernel gives no event for "the last task has
                        // left" on v1: retry with a short, growing pause.
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(20));
                    }
                    Err(e) => return Err(io_err("rmdir", &d.path)(e)),
                }
            }
        }
        Ok(())
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        if !self.dirs.is_empty() {
            if let Err(e) = self.remove_dirs(Duration::from_secs(2)) {
                tracing::warn!(error = %e, "cgroup not removed");
            }
        }
    }
}

fn mkdir(p: &Path) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("mkdir", p)(e)),
    }
}

fn write(p: &Path, value: &str) -> Result<()> {
    std::fs::write(p, value).map_err(io_err("write", p))
}

fn read_key(f: &Path, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(f).map_err(io_err("read", f))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
35 25 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory
37 25 0:32 / /sys/fs/cgroup/pids rw,relatime shared:11 - cgroup cgroup rw,pids
38 25 0:33 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_without_v2_controllers_is_v1() {
        let b = CgroupManager::backend_from_mountinfo(V1, |_| String::new()).unwrap();
        assert_eq!(
            b,
            Backend::V1 {
                cpu: Some("/sys/fs/cgroup/cpu".into()),
                memory: "/sys/fs/cgroup/memory".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                cpuacct: None,
            }
        );
    }

    #[test]
    fn v2_with_controllers_wins() {
        let m = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let b = CgroupManager::backend_from_mountinfo(m, |_| "cpuset cpu io memory pids".into())
            .unwrap();
        assert_eq!(
            b,
            Backend::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert!(CgroupManager::backend_from_mountinfo(m, |_| "cpu".into()).is_err());
    }

    #[test]
    fn co_mounted_cpu_cpuacct() {
        let m = "35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                 36 25 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                 37 25 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        match CgroupManager::backend_from_mountinfo(m, |_| String::new()).unwrap() {
            Backend::V1 { cpu, cpuacct, .. } => {
                assert_eq!(cpu, Some("/sys/fs/cgroup/cpu,cpuacct".into()));
                assert_eq!(cpuacct, None, "its files are in the cpu group");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cpuacct_apart_from_cpu_is_a_group_of_its_own() {
        let m = format!("{V1}39 25 0:34 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n");
        match CgroupManager::backend_from_mountinfo(&m, |_| String::new()).unwrap() {
            Backend::V1 { cpuacct, .. } => {
                assert_eq!(cpuacct, Some("/sys/fs/cgroup/cpuacct".into()))
            }
            other => panic!("{other:?}"),
        }
    }
}
