//! The desktop of a session (DESIGN.md §3.1, issue 5): inside the session,
//! Xvfb with a memory-mapped framebuffer, a window manager, the profile's
//! applications and the display server `mobidesk-display`, from the
//! profile's `[desktop]` table:
//!
//! ```toml
//! [desktop]
//! screen = "1024x768x24"
//! display = 1
//! window_manager = ["openbox"]
//! apps = [["xterm"]]
//! port = 5901
//! display_server = "/opt/mobidesk/bin/mobidesk-display"
//! ```
//!
//! The session's command is a small POSIX shell script ([`desktop_spec`])
//! that the session's PID 1 runs like any command, so everything of the
//! desktop is a process of the session (its namespaces, cgroups, walls):
//!
//! 1. `Xvfb :N -screen 0 WxHxD -nolisten tcp -noreset -fbdir /run/mobidesk/fb
//!    -displayfd 3`, with fd 3 a FIFO the script reads: Xvfb writes the
//!    display number there once it accepts clients (the event; nothing is
//!    polled), EOF if it dies first;
//! 2. `/.mobidesk/mobidesk-display --display :N --listen ADDR:PORT --fbdir
//!    /run/mobidesk/fb`, where `/.mobidesk/mobidesk-display` is the server's
//!    `display_server` binary bound read-only (like `/.mobidesk/init`: the
//!    same host path on every server, so CRIU finds identical files);
//! 3. the window manager with `DISPLAY=:N`, then — once it has finished
//!    starting (`_NET_CLIENT_LIST` on the root window, seen by
//!    `xprop -spy`, at most 10 s) — the applications;
//! 4. the script waits for Xvfb: the session lives as long as its X server.
//!
//! The framebuffer file lies in the session's writable layer
//! (`<layer>/run/mobidesk/fb/Xvfb_screen0`, XWD format), not in its tmpfs
//! `/tmp`: CRIU would copy a tmpfs into the image during the freeze.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::environment::SessionSpec;
use crate::profile::{Bind, Profile};

/// Where the display server binary appears inside the session.
pub const DISPLAY_SERVER_PATH: &str = "/.mobidesk/mobidesk-display";
/// Where the display server's TLS certificate chain and key appear inside
/// the session.
pub const TLS_CERT_PATH: &str = "/.mobidesk/display-cert.pem";
pub const TLS_KEY_PATH: &str = "/.mobidesk/display-key.pem";
/// The display server binary on a server when neither the profile nor the
/// daemon's configuration names one.
pub const DEFAULT_DISPLAY_SERVER: &str = "/opt/mobidesk/bin/mobidesk-display";
/// Xvfb's `-fbdir` inside the session (in the writable layer).
pub const FBDIR: &str = "/run/mobidesk/fb";
/// The FIFO on which Xvfb reports that it is ready (`-displayfd`).
const READY_FIFO: &str = "/run/mobidesk/x-ready";
/// The FIFO on which `xprop -spy` reports the window manager.
const WM_FIFO: &str = "/run/mobidesk/wm-ready";
/// How long applications wait for the window manager (seconds).
const WM_WAIT_S: u32 = 10;
/// Bounds on what a profile may ask for.
const MAX_APPS: usize = 32;
const MAX_ARGS: usize = 64;
const MAX_ARG_LEN: usize = 4096;

/// Why a desktop could not be described or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("invalid desktop: {0}")]
    Invalid(String),
    #[error(
        "session {session}: the display server did not listen on port {port} within {timeout:?}"
    )]
    NotListening {
        session: String,
        port: u16,
        timeout: Duration,
    },
    #[error("session {session} ended before its display server listened")]
    SessionGone { session: String },
    #[error("session {session}: reading {path}: {source}")]
    Io {
        session: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How the display server protects its viewers' connections (it refuses to
/// start without one of the two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayTls {
    /// TLS 1.3 with this certificate chain and private key (host paths,
    /// PEM), bound read-only at [`TLS_CERT_PATH`] and [`TLS_KEY_PATH`]:
    /// the session's root must be able to read them.
    Tls { cert: PathBuf, key: PathBuf },
    /// Plain TCP (`--insecure-plaintext`): tests and benchmarks only.
    InsecurePlaintext,
}

/// The screen of the session's X server: `WIDTHxHEIGHTxDEPTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    pub width: u16,
    pub height: u16,
    pub depth: u8,
}

impl std::fmt::Display for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.width, self.height, self.depth)
    }
}

impl FromStr for Screen {
    type Err = DesktopError;

    fn from_str(s: &str) -> Result<Screen, DesktopError> {
        let bad = || {
            DesktopError::Invalid(format!(
                "screen {s:?}: WIDTHxHEIGHTx24, width and height 64-8192"
            ))
        };
        let mut it = s.split('x').map(|p| p.trim().parse::<u16>().ok());
        let (Some(Some(width)), Some(Some(height)), Some(Some(depth)), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        // The display server reads 32-bit TrueColor pixels (depth 24).
        if !(64..=8192).contains(&width) || !(64..=8192).contains(&height) || depth != 24 {
            return Err(bad());
        }
        Ok(Screen {
            width,
            height,
            depth: 24,
        })
    }
}

impl Serialize for Screen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Screen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Screen, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The `[desktop]` table of a profile. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesktopProfile {
    /// The X screen, `WIDTHxHEIGHTx24`.
    #[serde(default = "default_screen")]
    pub screen: Screen,
    /// The X display number inside the session (every session has its own
    /// `/tmp`, so all may use the same).
    #[serde(default = "default_display")]
    pub display: u16,
    /// The window manager's command line.
    #[serde(default = "default_wm")]
    pub window_manager: Vec<String>,
    /// The applications started with the desktop, one command line each.
    #[serde(default = "default_apps")]
    pub apps: Vec<Vec<String>>,
    /// The display server's TCP port on the session's address.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The display server binary on the server (bound read-only at
    /// [`DISPLAY_SERVER_PATH`]; the same path on every server). Absent: the
    /// server's own (the daemon's `[desktop] display_server`, else
    /// [`DEFAULT_DISPLAY_SERVER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_server: Option<PathBuf>,
}

fn default_screen() -> Screen {
    Screen {
        width: 1024,
        height: 768,
        depth: 24,
    }
}
fn default_display() -> u16 {
    1
}
fn default_wm() -> Vec<String> {
    vec!["openbox".into()]
}
fn default_apps() -> Vec<Vec<String>> {
    vec![vec!["xterm".into()]]
}
fn default_port() -> u16 {
    5901
}

impl Default for DesktopProfile {
    fn default() -> Self {
        DesktopProfile {
            screen: default_screen(),
            display: default_display(),
            window_manager: default_wm(),
            apps: default_apps(),
            port: default_port(),
            display_server: None,
        }
    }
}

impl DesktopProfile {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), DesktopError> {
        let bad = |m: String| Err(DesktopError::Invalid(m));
        if self.display > 999 {
            return bad(format!("display {}: 0-999", self.display));
        }
        if self.port == 0 {
            return bad("port 0: the display server needs a fixed port".into());
        }
        if let Some(ds) = &self.display_server {
            if !ds.is_absolute() {
                return bad(format!("display_server {ds:?} must be an absolute path"));
            }
        }
        if self.apps.len() > MAX_APPS {
            return bad(format!("{} apps: at most {MAX_APPS}", self.apps.len()));
        }
        for cmd in std::iter::once(&self.window_manager).chain(&self.apps) {
            if cmd.is_empty() || cmd.len() > MAX_ARGS {
                return bad(format!("command {cmd:?}: 1-{MAX_ARGS} words"));
            }
            if cmd
                .iter()
                .any(|a| a.len() > MAX_ARG_LEN || a.contains('\0'))
            {
                return bad(format!(
                    "command {cmd:?}: words up to {MAX_ARG_LEN} bytes, no NUL"
                ));
            }
        }
        Ok(())
    }

    /// The display server binary on the server: the profile's, else
    /// [`DEFAULT_DISPLAY_SERVER`].
    pub fn display_server(&self) -> PathBuf {
        self.display_server
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DISPLAY_SERVER))
    }

    /// The X display name, e.g. `:1`.
    pub fn display_name(&self) -> String {
        format!(":{}", self.display)
    }

    /// The session's command: the start-up script (module docs). The
    /// display server listens on `address` (the session's own; `None`: on
    /// every address of the session), with TLS (its certificate and key at
    /// [`TLS_CERT_PATH`] and [`TLS_KEY_PATH`]) or, `insecure_plaintext`,
    /// plain TCP.
    pub fn command(&self, address: Option<Ipv4Addr>, insecure_plaintext: bool) -> Vec<String> {
        let d = self.display_name();
        let listen = format!("{}:{}", address.unwrap_or(Ipv4Addr::UNSPECIFIED), self.port);
        let mut s = String::new();
        s.push_str("set -u\n");
        s.push_str(&format!(
            "mkdir -p {FBDIR}\nrm -f {READY_FIFO}\nmkfifo {READY_FIFO}\n"
        ));
        s.push_str(&format!(
            "Xvfb {d} -screen 0 {} -nolisten tcp -noreset -fbdir {FBDIR} -displayfd 3 3>{READY_FIFO} >&2 &\n",
            self.screen
        ));
        s.push_str("x=$!\n");
        s.push_str(&format!(
            "n=; read -r n <{READY_FIFO}\nrm -f {READY_FIFO}\n"
        ));
        s.push_str(&format!(
            "if [ \"$n\" != {} ]; then echo 'mobidesk-desktop: Xvfb did not start' >&2; kill $x 2>/dev/null; exit 1; fi\n",
            self.display
        ));
        s.push_str(&format!("export DISPLAY={d}\n"));
        // The display server first: viewers see the desktop come up.
        let security = if insecure_plaintext {
            "--insecure-plaintext".to_string()
        } else {
            format!("--tls-cert {TLS_CERT_PATH} --tls-key {TLS_KEY_PATH}")
        };
        s.push_str(&format!(
            "{DISPLAY_SERVER_PATH} --display {d} --listen {listen} {security} --fbdir {FBDIR} >&2 &\n"
        ));
        // Applications start once the window manager has finished starting:
        // an EWMH window manager publishes _NET_CLIENT_LIST on the root after
        // it has taken over the existing windows (`xprop -spy` reports it as
        // an event). A window mapped while the WM starts may stay unmanaged
        // or 1x1, and xterm then waits 5 s (Xt's wmTimeout) for an answer to
        // its geometry request; _NET_SUPPORTING_WM_CHECK comes too early
        // for that (measured with openbox).
        s.push_str(&format!(
            "rm -f {WM_FIFO}\nmkfifo {WM_FIFO}\n\
             xprop -root -spy >{WM_FIFO} 2>/dev/null &\n\
             p=$!\n"
        ));
        // The programs' output goes to stderr: stdout carries only the
        // script's own lines ("mobidesk-desktop: started").
        s.push_str(&format!("{} >&2 &\n", shell_words(&self.window_manager)));
        s.push_str(&format!(
            "if ! timeout {WM_WAIT_S} sh -c 'while read -r l; do case \"$l\" in _NET_CLIENT_LIST\\(*) exit 0;; esac; done; exit 1' <{WM_FIFO}; then \
             echo 'mobidesk-desktop: the window manager did not announce itself within {WM_WAIT_S} s' >&2; fi\n\
             kill $p 2>/dev/null\nrm -f {WM_FIFO}\n"
        ));
        for app in &self.apps {
            s.push_str(&format!("{} >&2 &\n", shell_words(app)));
        }
        s.push_str("echo 'mobidesk-desktop: started'\n");
        // The session lives as long as its X server.
        s.push_str("wait $x\n");
        vec!["sh".into(), "-c".into(), s]
    }
}

/// POSIX single quotes around each word.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The session to start for a profile with a `[desktop]` table: the
/// profile plus the read-only bind of the display server, and the desktop
/// script as command. `address`: the session's address (the display server
/// listens there). `etc_hosts`: a host file bound read-only over the
/// session's `/etc/hosts` (write it with [`crate::network::etc_hosts`]):
/// X clients resolve their own host name at start, and without an answer
/// from `/etc/hosts` each waits for DNS (5 s when no resolver answers).
/// `tls`: how the display server serves its viewers (certificate and key
/// bound read-only too). Refused when the profile has no desktop.
pub fn desktop_spec(
    id: &str,
    profile: &Profile,
    home: Option<PathBuf>,
    address: Option<Ipv4Addr>,
    etc_hosts: Option<PathBuf>,
    tls: &DisplayTls,
) -> Result<SessionSpec, DesktopError> {
    let desktop = profile
        .desktop
        .as_ref()
        .ok_or_else(|| DesktopError::Invalid("the profile has no [desktop] table".into()))?;
    desktop.validate()?;
    let mut profile = profile.clone();
    profile.root.binds.push(Bind {
        source: desktop.display_server(),
        target: PathBuf::from(DISPLAY_SERVER_PATH),
    });
    if let Some(hosts) = etc_hosts {
        profile.root.binds.push(Bind {
            source: hosts,
            target: PathBuf::from("/etc/hosts"),
        });
    }
    if let DisplayTls::Tls { cert, key } = tls {
        for (source, target) in [(cert, TLS_CERT_PATH), (key, TLS_KEY_PATH)] {
            profile.root.binds.push(Bind {
                source: source.clone(),
                target: PathBuf::from(target),
            });
        }
    }
    Ok(SessionSpec {
        id: id.into(),
        command: desktop.command(address, *tls == DisplayTls::InsecurePlaintext),
        profile,
        home,
    })
}

/// The host path of a running session's framebuffer file (XWD), given its
/// writable layer ([`crate::Session::layer`]).
pub fn framebuffer_file(layer: &Path) -> PathBuf {
    layer
        .join(FBDIR.trim_start_matches('/'))
        .join("Xvfb_screen0")
}

/// Waits until a TCP socket listens on `port` in the network namespace of
/// the session whose PID 1 has host pid `init_pid` (its display server is
/// up), at most `timeout`. The kernel has no event for a `listen()` in
/// another namespace: the session's `/proc/PID/net/tcp` is read again
/// after a short pause (2 ms, doubling to 50 ms).
pub fn wait_listening(
    session: &str,
    init_pid: u32,
    port: u16,
    timeout: Duration,
) -> Result<(), DesktopError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        for table in ["tcp", "tcp6"] {
            let path = PathBuf::from(format!("/proc/{init_pid}/net/{table}"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if listens(&text, port) {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if table == "tcp" {
                        return Err(DesktopError::SessionGone {
                            session: session.into(),
                        });
                    }
                }
                Err(source) => {
                    return Err(DesktopError::Io {
                        session: session.into(),
                        path,
                        source,
                    })
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(DesktopError::NotListening {
                session: session.into(),
                port,
                timeout,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether a `/proc/net/tcp` table has a socket in LISTEN (0A) on `port`.
fn listens(table: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let (_, local, _, state) = (f.next(), f.next(), f.next(), f.next());
        state == Some("0A") && local.and_then(|a| a.rsplit(':').next()) == Some(want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_parse_and_bad_ones_are_refused() {
        let s: Screen = "1024x768x24".parse().unwrap();
        assert_eq!((s.width, s.height, s.depth), (1024, 768, 24));
        assert_eq!(s.to_string(), "1024x768x24");
        for bad in [
            "1024x768",
            "1024x768x16",
            "10x10x24",
            "axbx24",
            "1024x768x24x1",
            "",
        ] {
            assert!(bad.parse::<Screen>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_desktop_table_has_defaults_and_refuses_typos() {
        let d: DesktopProfile = toml::from_str("").unwrap();
        assert_eq!(d, DesktopProfile::default());
        let d: DesktopProfile = toml::from_str(
            "screen = \"800x600x24\"\ndisplay = 3\napps = [[\"xterm\", \"-geometry\", \"80x24+10+10\"], [\"xclock\"]]\nport = 6000",
        )
        .unwrap();
        assert_eq!(d.screen.width, 800);
        assert_eq!(d.apps.len(), 2);
        d.validate().unwrap();
        assert!(toml::from_str::<DesktopProfile>("scren = \"800x600x24\"").is_err());
        let bad = DesktopProfile {
            apps: vec![vec![]],
            ..DesktopProfile::default()
        };
        assert!(bad.validate().is_err());
        let bad = DesktopProfile {
            display_server: Some("mobidesk-display".into()),
            ..DesktopProfile::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_script_quotes_every_word() {
        let d = DesktopProfile {
            apps: vec![vec!["xterm".into(), "-T".into(), "it's $HOME".into()]],
            ..DesktopProfile::default()
        };
        let cmd = d.command(Some(Ipv4Addr::new(10, 1, 0, 100)), false);
        assert_eq!(&cmd[..2], ["sh", "-c"]);
        let script = &cmd[2];
        assert!(
            script.contains(r"'xterm' '-T' 'it'\''s $HOME' >&2 &"),
            "{script}"
        );
        assert!(
            script.contains("--listen 10.1.0.100:5901 --tls-cert /.mobidesk/display-cert.pem --tls-key /.mobidesk/display-key.pem --fbdir /run/mobidesk/fb"),
            "{script}"
        );
        assert!(
            script.contains("Xvfb :1 -screen 0 1024x768x24 -nolisten tcp -noreset"),
            "{script}"
        );
        let plain = d.command(None, true);
        assert!(
            plain[2].contains("--listen 0.0.0.0:5901 --insecure-plaintext --fbdir"),
            "{}",
            plain[2]
        );
        // The script is valid shell.
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", script])
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn listening_sockets_are_found_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 6400010A:170D 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
   1: 0100007F:1234 0100007F:170D 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listens(table, 5901));
        assert!(!listens(table, 0x1234));
        assert!(!listens(table, 80));
    }
}
