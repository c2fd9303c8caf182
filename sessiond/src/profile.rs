//! The session profile: what a session looks like (host name, root file
//! system, home, limits), read from TOML. One profile describes many sessions;
//! what differs per session (its id, its home directory on shared storage, the
//! command) is in [`crate::environment::SessionSpec`].
//!
//! ```toml
//! hostname = "desk"
//!
//! [root]
//! system_dirs = ["/usr", "/etc", "/opt"]
//!
//! [limits]
//! cpu_weight = 100
//! cpu_max = { quota_us = 50000, period_us = 100000 }
//! memory_max = "512M"
//! pids_max = 256
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing profile {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid profile: {0}")]
    Invalid(String),
}

/// A session profile (TOML). Unknown keys are refused: a typo must fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The session's host name (UTS namespace), 1–64 characters.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub root: RootImage,
    /// Where the user's home appears inside the session (the host directory,
    /// on shared storage, is given per session).
    #[serde(default = "default_home_path")]
    pub home_path: PathBuf,
    /// Size of the session's private `/tmp` (tmpfs) in MiB. CRIU archives it
    /// during the freeze: keep it small.
    #[serde(default = "default_tmp_mib")]
    pub tmp_mib: u64,
    /// Size of `/dev/shm` (tmpfs) in MiB.
    #[serde(default = "default_shm_mib")]
    pub shm_mib: u64,
    #[serde(default)]
    pub limits: Limits,
    /// The session's user namespace: session root is host uid `uid_base`,
    /// not host root. `userns = false` in TOML turns it off (session root
    /// is then host root, behind capabilities and seccomp only).
    #[serde(default = "default_userns", with = "userns_opt")]
    pub userns: Option<UserNs>,
    /// Extra environment for the session's command (on top of PATH, HOME,
    /// USER, LANG, HOSTNAME and MOBIDESK_SESSION).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The desktop started in the session (`[desktop]`, see
    /// [`crate::desktop`]); absent: the session runs only its command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<crate::desktop::DesktopProfile>,
}

/// The read-only system part of the root file system, taken from the
/// server's own image. Everything else in the root is the session's private
/// writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootImage {
    /// Host directories bind-mounted read-only at the same path. A path that
    /// is a symbolic link on the host (Debian's merged `/bin -> usr/bin`) is
    /// recreated as the same link.
    #[serde(default = "default_system_dirs")]
    pub system_dirs: Vec<PathBuf>,
    /// Further read-only bind mounts (`source` on the host, `target` in the
    /// session), e.g. a shared tool directory. Files or directories.
    #[serde(default)]
    pub binds: Vec<Bind>,
}

/// An id mapping: ids `0..count` inside are `base..base+count` on the host.
/// Every server must use the same mapping (a migrated session keeps its
/// file ownership), and the user's home on shared storage belongs to
/// `uid_base + uid inside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserNs {
    pub uid_base: u32,
    pub gid_base: u32,
    #[serde(default = "default_id_count")]
    pub count: u32,
}

impl Default for UserNs {
    fn default() -> Self {
        UserNs {
            uid_base: 100_000,
            gid_base: 100_000,
            count: default_id_count(),
        }
    }
}

fn default_id_count() -> u32 {
    65_536
}

fn default_userns() -> Option<UserNs> {
    Some(UserNs::default())
}

/// `userns = false`, or a table.
mod userns_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::UserNs;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Flag(bool),
        Map(UserNs),
    }

    pub(super) fn serialize<S: Serializer>(v: &Option<UserNs>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(u) => u.serialize(s),
            None => false.serialize(s),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UserNs>, D::Error> {
        Ok(match Raw::deserialize(d)? {
            Raw::Flag(false) => None,
            Raw::Flag(true) => Some(UserNs::default()),
            Raw::Map(m) => Some(m),
        })
    }
}

/// One extra read-only bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// Resource limits of a session (its cgroup). `None` means "no limit".
/// All of them can be changed while the session runs
/// ([`crate::cgroup::SessionCgroup::update`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Relative CPU weight, 1–10000 (cgroup v2 `cpu.weight`; 100 is the
    /// default share; on v1 it becomes `cpu.shares` = weight × 1024 / 100).
    pub cpu_weight: Option<u64>,
    /// Hard CPU bandwidth limit.
    pub cpu_max: Option<CpuMax>,
    /// Memory limit in bytes; TOML accepts a number or a string with a K, M
    /// or G suffix (powers of 1024).
    #[serde(default, with = "bytes_opt")]
    pub memory_max: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids_max: Option<u64>,
}

/// `quota_us` of CPU time per `period_us` (50000/100000 = half a CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

fn default_hostname() -> String {
    "mobidesk".to_string()
}
fn default_home_path() -> PathBuf {
    PathBuf::from("/home/user")
}
fn default_tmp_mib() -> u64 {
    64
}
fn default_shm_mib() -> u64 {
    64
}
fn default_system_dirs() -> Vec<PathBuf> {
    ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt"]
        .iter()
        .map(PathBuf::from)
        .collect()
}

impl Default for RootImage {
    fn default() -> Self {
        RootImage {
            system_dirs: default_system_dirs(),
            binds: Vec::new(),
        }
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            hostname: default_hostname(),
            root: RootImage::default(),
            home_path: default_home_path(),
            tmp_mib: default_tmp_mib(),
            shm_mib: default_shm_mib(),
            limits: Limits::default(),
            userns: default_userns(),
            env: Vec::new(),
            desktop: None,
        }
    }
}

/// Paths the session environment builds itself; a system dir or bind may not
/// cover them.
const RESERVED: &[&str] = &["/", "/proc", "/dev", "/tmp", "/.mobidesk", "/sys"];

impl Profile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::parse(&text).map_err(|e| match e {
            ProfileError::Parse { source, .. } => ProfileError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates a profile from TOML text.
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: PathBuf::from("<text>"),
            source: Box::new(e),
        })?;
        profile.validate()?;
        Ok(profile)
    }

    /// Checks what serde cannot: names, paths, ranges.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |m: String| Err(ProfileError::Invalid(m));
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return bad(format!(
                "hostname {h:?}: 1-64 characters of letters, digits, '-' and '.'"
            ));
        }
        let mut targets: Vec<&Path> = self.root.system_dirs.iter().map(PathBuf::as_path).collect();
        targets.extend(self.root.binds.iter().map(|b| b.target.as_path()));
        targets.push(&self.home_path);
        for t in targets {
            check_session_path(t)?;
        }
        for b in &self.root.binds {
            if !b.source.is_absolute() {
                return bad(format!("bind source {:?} must be absolute", b.source));
            }
        }
        if self.tmp_mib == 0 || self.shm_mib == 0 {
            return bad("tmp_mib and shm_mib must be at least 1".into());
        }
        if let Some(u) = self.userns {
            let ok = |base: u32| base > 0 && u.count >= 1 && base.checked_add(u.count).is_some();
            if !ok(u.uid_base) || !ok(u.gid_base) {
                return bad(format!(
                    "userns {}/{}/{}: bases above 0 (host root is never mapped), count at least 1",
                    u.uid_base, u.gid_base, u.count
                ));
            }
        }
        if let Some(d) = &self.desktop {
            d.validate()
                .map_err(|e| ProfileError::Invalid(e.to_string()))?;
        }
        self.limits.validate()
    }
}

/// A path inside the session: absolute, normal components only, not one of
/// the paths the environment builds itself.
fn check_session_path(p: &Path) -> Result<(), ProfileError> {
    use std::path::Component;
    let ok = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(ProfileError::Invalid(format!(
            "{p:?}: a session path must be absolute without '.' or '..'"
        )));
    }
    for r in RESERVED {
        let r = Path::new(r);
        if p == r || (r != Path::new("/") && p.starts_with(r)) {
            return Err(ProfileError::Invalid(format!(
                "{p:?} is built by the session environment itself"
            )));
        }
    }
    Ok(())
}

impl Limits {
    /// Checks the ranges the kernel accepts.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |m: String| Err(ProfileError::Invalid(m));
        if let Some(w) = self.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return bad(format!("cpu_weight {w}: must be 1-10000"));
            }
        }
        if let Some(c) = self.cpu_max {
            if !(1_000..=1_000_000).contains(&c.period_us) || c.quota_us < 1_000 {
                return bad(format!(
                    "cpu_max {}/{}: period 1000-1000000 us, quota at least 1000 us",
                    c.quota_us, c.period_us
                ));
            }
        }
        if let Some(m) = self.memory_max {
            if m < 4 * 1024 * 1024 {
                return bad(format!("memory_max {m}: at least 4 MiB"));
            }
        }
        if let Some(p) = self.pids_max {
            if p < 2 {
                return bad(format!(
                    "pids_max {p}: at least 2 (the session's init and one process)"
                ));
            }
        }
        Ok(())
    }
}

/// Parses "512M", "2G", "65536" (bytes, powers of 1024).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

mod bytes_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Num(n)) => Ok(Some(n)),
            Some(Raw::Text(t)) => super::parse_bytes(&t)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not a size"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_profile_parses() {
        let p = Profile::parse(
            r#"
            hostname = "desk-1"
            home_path = "/home/alice"
            [root]
            system_dirs = ["/usr", "/etc"]
            binds = [{ source = "/srv/tools", target = "/opt/tools" }]
            [limits]
            cpu_weight = 200
            cpu_max = { quota_us = 50000, period_us = 100000 }
            memory_max = "512M"
            pids_max = 100
            "#,
        )
        .unwrap();
        assert_eq!(p.hostname, "desk-1");
        assert_eq!(p.limits.memory_max, Some(512 << 20));
        assert_eq!(p.limits.pids_max, Some(100));
        assert_eq!(p.root.binds[0].target, PathBuf::from("/opt/tools"));
        assert_eq!(p.userns, Some(UserNs::default()));
    }

    #[test]
    fn user_namespace_can_be_mapped_or_turned_off() {
        assert_eq!(Profile::parse("userns = false").unwrap().userns, None);
        let p = Profile::parse("[userns]\nuid_base = 200000\ngid_base = 300000").unwrap();
        assert_eq!(
            p.userns,
            Some(UserNs {
                uid_base: 200_000,
                gid_base: 300_000,
                count: 65_536
            })
        );
        assert!(Profile::parse("[userns]\nuid_base = 0\ngid_base = 1").is_err());
        // Round trip through TOML (check-profile prints it).
        let text = toml::to_string(&Profile::default()).unwrap();
        assert_eq!(Profile::parse(&text).unwrap(), Profile::default());
        let off = Profile {
            userns: None,
            ..Profile::default()
        };
        assert_eq!(
            Profile::parse(&toml::to_string(&off).unwrap()).unwrap(),
            off
        );
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Profile::parse("hostnme = \"x\"").is_err());
        assert!(Profile::parse("hostname = \"a b\"").is_err());
        assert!(Profile::parse("[limits]\ncpu_weight = 0").is_err());
        assert!(Profile::parse("[limits]\nmemory_max = \"12Q\"").is_err());
        assert!(Profile::parse("[root]\nsystem_dirs = [\"usr\"]").is_err());
        assert!(Profile::parse("[root]\nsystem_dirs = [\"/usr/../etc\"]").is_err());
        assert!(Profile::parse("[root]\nsystem_dirs = [\"/proc\"]").is_err());
        assert!(Profile::parse("home_path = \"/tmp/home\"").is_err());
        assert!(Profile::parse("[desktop]\nscreen = \"1x1x24\"").is_err());
        assert!(Profile::parse("[desktop]\nwm = [\"openbox\"]").is_err());
    }

    #[test]
    fn a_desktop_table_round_trips() {
        let p = Profile::parse(
            "[desktop]\nscreen = \"800x600x24\"\napps = [[\"xterm\"], [\"xclock\"]]",
        )
        .unwrap();
        let d = p.desktop.clone().unwrap();
        assert_eq!(d.screen.to_string(), "800x600x24");
        assert_eq!(d.window_manager, ["openbox"]);
        assert_eq!(Profile::parse(&toml::to_string(&p).unwrap()).unwrap(), p);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64K"), Some(65536));
        assert_eq!(parse_bytes("3G"), Some(3 << 30));
        assert_eq!(parse_bytes("17"), Some(17));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("99999999999999G"), None);
    }
}
