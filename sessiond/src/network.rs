//! Network attachment of a session to its server (DESIGN.md §3.3), the way
//! the lab (`netns-tests/src/lab.rs`) and the server dataplane
//! (`dataplane/README.md`, steering of `ses-*` links) expect it:
//!
//! ```text
//!  subnet ── uplink (proxy ARP) ── server ── ses-<id> ═══ eth0 ── session
//!                                   169.254.0.1/32      ADDR/32
//!                                   route ADDR/32 dev ses-<id>
//! ```
//!
//! - the session's `eth0` (the inner end of a veth, moved into the
//!   session's network namespace) has the session's address as a /32, an
//!   on-link route to the gateway [`NetworkConfig::session_gateway`]
//!   (169.254.0.1, the same on every server, so a migrated session needs no
//!   change inside) and the default route via it;
//! - the server's end `ses-<short id>` has the gateway address, and the
//!   server routes the session's address into it;
//! - the server answers ARP for the address on its uplink (proxy ARP, no
//!   delay) and forwards; when a session appears it announces the address
//!   (gratuitous ARP with `arping`), so the subnet learns at once where it is;
//! - a session that arrived from another subnet keeps its own (virtual)
//!   address inside; its physical address on this subnet is routed into the
//!   same link and announced ([`ServerNetwork::plumb_server`]; the
//!   dataplane rewrites between the two);
//! - detaching deletes the veth (both ends; its routes go with it).
//!
//! Everything is done with iproute2 (`ip`), util-linux (`nsenter`) and
//! `arping`; every failure names the command and its stderr.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ipam::{Ipam, IpamError, Pool};

/// Prefix of the server's end of every session veth (the dataplane steers
/// `ses-*`).
pub const LINK_PREFIX: &str = "ses-";
/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// How long a new veth may take to come up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on any one iproute2 command's output kept in an error.
const MAX_ERROR_TEXT: usize = 2048;

/// Why a session could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("link {link} in {netns} not up within {timeout:?}")]
    LinkDown {
        link: String,
        netns: String,
        timeout: Duration,
    },
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// The server's side of session networking (a `[network]` table of the
/// server's configuration). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The server's interface on its subnet.
    #[serde(default = "default_uplink")]
    pub uplink: String,
    /// The sessions' physical addresses: `FIRST-LAST` or a prefix.
    pub pool: Pool,
    /// Addresses of the pool never given to a session (the server's own,
    /// the gateway, ...).
    #[serde(default)]
    pub exclude: Vec<Ipv4Addr>,
    /// The sessions' gateway: the server's end of every session veth.
    #[serde(default = "default_gateway")]
    pub session_gateway: Ipv4Addr,
    /// Announce a new session's address with a gratuitous ARP.
    #[serde(default = "default_true")]
    pub announce: bool,
    /// The server's network namespace as `ip netns` names it; absent:
    /// sessiond's own (production). Tests and the lab set it.
    #[serde(default)]
    pub netns: Option<String>,
}

fn default_uplink() -> String {
    "eth0".into()
}
fn default_gateway() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 0, 1)
}
fn default_true() -> bool {
    true
}

impl NetworkConfig {
    /// A configuration with the defaults and this pool.
    pub fn new(pool: Pool) -> NetworkConfig {
        NetworkConfig {
            uplink: default_uplink(),
            pool,
            exclude: Vec::new(),
            session_gateway: default_gateway(),
            announce: true,
            netns: None,
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), NetworkError> {
        if !valid_ifname(&self.uplink) {
            return Err(NetworkError::Config(format!(
                "uplink {:?}: 1-{MAX_IFNAME} characters, no '/', ':' or blanks",
                self.uplink
            )));
        }
        if let Some(ns) = &self.netns {
            if ns.is_empty() || ns.len() > 200 || ns.contains('/') || ns.starts_with('.') {
                return Err(NetworkError::Config(format!("netns {ns:?}")));
            }
        }
        if self.pool.contains(self.session_gateway) {
            return Err(NetworkError::Config(format!(
                "session_gateway {} lies in the pool {}",
                self.session_gateway, self.pool
            )));
        }
        Ok(())
    }

    /// An empty allocator over this pool, excluding `exclude` and the
    /// session gateway.
    pub fn ipam(&self) -> Ipam {
        let mut ex = self.exclude.clone();
        ex.push(self.session_gateway);
        Ipam::new(self.pool, ex)
    }
}

fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_IFNAME
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// The server's end of a session's veth: `ses-<id>` when the id fits
/// (11 characters), else `ses-` + the id's first 4 characters + 7 hex
/// digits of a hash of the whole id. Always at most 15 characters; two
/// long ids can collide (1 in 2^28), which attaching reports as "exists".
pub fn link_name(session: &str) -> String {
    let room = MAX_IFNAME - LINK_PREFIX.len();
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    if session.len() <= room && session.is_ascii() && !session.is_empty() {
        return format!("{LINK_PREFIX}{}", clean(session));
    }
    // FNV-1a: stable across builds and servers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let head: String = clean(session).chars().take(4).collect();
    format!("{LINK_PREFIX}{head}{:07x}", h & 0x0fff_ffff)
}

/// How one session is attached: enough to detach it, also after a restart
/// of sessiond (persist it with the session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub session: String,
    /// The server's end of the veth.
    pub link: String,
    /// The session's own (virtual) address: its `eth0`, /32, for its whole
    /// life.
    pub address: Ipv4Addr,
    /// Its physical address on this server's subnet when that differs (a
    /// session that arrived from another subnet); absent: `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Ipv4Addr>,
}

impl Attachment {
    /// The address the subnet knows the session by here.
    pub fn physical_address(&self) -> Ipv4Addr {
        self.physical.unwrap_or(self.address)
    }
}

/// Attaches sessions to the server's network.
#[derive(Debug, Clone)]
pub struct ServerNetwork {
    config: NetworkConfig,
}

impl ServerNetwork {
    pub fn new(config: NetworkConfig) -> Result<ServerNetwork, NetworkError> {
        config.validate()?;
        Ok(ServerNetwork { config })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The server-wide settings, once at start (idempotent): forwarding,
    /// proxy ARP on the uplink without delay, no ICMP redirects (the
    /// sessions' gateway is the server itself).
    pub fn prepare(&self) -> Result<(), NetworkError> {
        let up = &self.config.uplink;
        self.sysctls(
            None,
            &[
                ("net.ipv4.ip_forward", "1"),
                (&format!("net.ipv4.conf.{up}.proxy_arp"), "1"),
                // Answer at once, not after up to 0.8 s (the default).
                (&format!("net.ipv4.neigh.{up}.proxy_delay"), "0"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                (&format!("net.ipv4.conf.{up}.send_redirects"), "0"),
            ],
        )
    }

    /// Plumbs the session whose PID 1 has host pid `init_pid` with
    /// `address` (see the module docs). Run it from
    /// [`crate::Launcher::start_with_network`]'s hook: before the session's
    /// command starts. On error nothing of it is left.
    pub fn attach(
        &self,
        session: &str,
        init_pid: u32,
        address: Ipv4Addr,
    ) -> Result<Attachment, NetworkError> {
        let link = link_name(session);
        let pid = init_pid.to_string();
        let span = tracing::debug_span!("attach", session = %session, %link, %address);
        let _enter = span.enter();
        // The veth: server end here, inner end straight into the session
        // as eth0 (`netns PID` is the session's PID 1's network namespace).
        self.ip(&[
            "link", "add", "name", &link, "type", "veth", "peer", "name", "eth0", "netns", &pid,
        ])?;
        let attachment = Attachment {
            session: session.into(),
            link,
            address,
            physical: None,
        };
        match self.plumb(&attachment, &pid) {
            Ok(()) => {
                tracing::info!(session = %session, link = %attachment.link, %address, "session attached");
                Ok(attachment)
            }
            Err(e) => {
                let _ = self.detach(&attachment);
                Err(e)
            }
        }
    }

    fn plumb(&self, a: &Attachment, pid: &str) -> Result<(), NetworkError> {
        let gw = self.config.session_gateway;
        // Inside: no IPv6 chatter (best effort: a host may have no IPv6),
        // the address, the gateway on-link.
        self.quiet_ipv6(Some(pid), "all");
        run_batch(
            Command::new("nsenter").args(["-t", pid, "-n", "ip"]),
            &[
                format!("addr add {}/32 dev eth0", a.address),
                "link set eth0 up".into(),
                format!("route add {gw}/32 dev eth0 scope link"),
                format!("route add default via {gw} dev eth0"),
            ],
        )?;
        self.plumb_server(a)
    }

    /// The server's end of a session's link, which exists already: the
    /// gateway address on it, up, the session's virtual address (and its
    /// physical one, when that differs) routed into it, and the physical
    /// address announced. Idempotent (`replace`): also what a server does
    /// for a session whose veth CRIU has just restored (`--external
    /// veth[eth0]:ses-<id>`, the session's inside restored as it was), or
    /// to re-plumb after a restart.
    pub fn plumb_server(&self, a: &Attachment) -> Result<(), NetworkError> {
        let gw = self.config.session_gateway;
        let link = a.link.as_str();
        self.quiet_ipv6(None, link);
        let mut cmds = vec![
            format!("addr replace {gw}/32 dev {link}"),
            format!("link set {link} up"),
            format!("route replace {}/32 dev {link}", a.address),
        ];
        let physical = a.physical_address();
        if physical != a.address {
            cmds.push(format!("route replace {physical}/32 dev {link}"));
        }
        run_batch(&mut self.ip_command(), &cmds)?;
        self.wait_link_up(link)?;
        if self.config.announce {
            self.announce(physical);
        }
        Ok(())
    }

    /// Removes a session's veth (its route goes with it). A link that is
    /// gone already is fine: detaching twice is harmless.
    pub fn detach(&self, a: &Attachment) -> Result<(), NetworkError> {
        match self.ip(&["link", "del", "dev", &a.link]) {
            Ok(_) => {
                tracing::info!(session = %a.session, link = %a.link, address = %a.address, "session detached");
                Ok(())
            }
            Err(NetworkError::Command { stderr, .. })
                if stderr.contains("Cannot find device") || stderr.contains("does not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Tells the subnet that `address` is here now: a gratuitous ARP from
    /// the uplink. Best effort: `arping` runs in the background (a thread
    /// reaps it); a failure to start it is logged.
    pub fn announce(&self, address: Ipv4Addr) {
        let a = address.to_string();
        let mut cmd = self.in_server("arping");
        cmd.args([
            "-q",
            "-U",
            "-c",
            "1",
            "-i",
            &self.config.uplink,
            "-S",
            &a,
            &a,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::debug!(%address, uplink = %self.config.uplink, "gratuitous ARP");
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
            Err(e) => tracing::warn!(%address, error = %e, "could not send a gratuitous ARP"),
        }
    }

    /// Whether the server still has the session's link (for re-adoption
    /// after a restart).
    pub fn is_attached(&self, a: &Attachment) -> Result<bool, NetworkError> {
        match self.ip(&["link", "show", "dev", &a.link]) {
            Ok(_) => Ok(true),
            Err(NetworkError::Command { stderr, .. })
                if stderr.contains("does not exist") || stderr.contains("Cannot find device") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn wait_link_up(&self, link: &str) -> Result<(), NetworkError> {
        // The kernel sends no event we could wait on without a netlink
        // socket of our own; `ip` is asked with a short pause instead.
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        loop {
            let out = self.ip(&["-o", "link", "show", "dev", link])?;
            if out.contains("state UP") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NetworkError::LinkDown {
                    link: link.into(),
                    netns: self
                        .config
                        .netns
                        .clone()
                        .unwrap_or_else(|| "the host".into()),
                    timeout: LINK_UP_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `ip` in the server's namespace.
    fn ip_command(&self) -> Command {
        let mut c = Command::new("ip");
        if let Some(ns) = &self.config.netns {
            c.args(["-n", ns]);
        }
        c
    }

    fn ip(&self, args: &[&str]) -> Result<String, NetworkError> {
        run(self.ip_command().args(args))
    }

    /// A program in the server's network namespace (`nsenter --net`, not
    /// `ip netns exec`, which also remounts /sys).
    fn in_server(&self, program: &str) -> Command {
        match &self.config.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns_path(ns).display()))
                    .arg("--")
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// Turns IPv6 off on `dev` (no router solicitations or DAD on the
    /// veth); a failure (no IPv6 on this host) is only logged.
    fn quiet_ipv6(&self, pid: Option<&str>, dev: &str) {
        let key = format!("net.ipv6.conf.{dev}.disable_ipv6");
        if let Err(e) = self.sysctls(pid, &[(&key, "1")]) {
            tracing::debug!(error = %e, "IPv6 left as it is");
        }
    }

    /// Writes sysctls in the server's namespace, or in the session's of
    /// PID `pid`.
    fn sysctls(&self, pid: Option<&str>, kv: &[(&str, &str)]) -> Result<(), NetworkError> {
        let mut cmd = match pid {
            Some(p) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", p, "-n", "--", "sysctl"]);
                c
            }
            None => self.in_server("sysctl"),
        };
        cmd.arg("-q").arg("-w");
        for (k, v) in kv {
            cmd.arg(format!("{k}={v}"));
        }
        run(&mut cmd).map(|_| ())
    }
}

/// The text of a session's `/etc/hosts`: the loopback names and the
/// session's host name at its address (127.0.1.1 without one, as Debian
/// does), so a program resolving its own host name gets an answer without
/// DNS.
pub fn etc_hosts(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let own = address.unwrap_or(Ipv4Addr::new(127, 0, 1, 1));
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n")
}

/// Where `ip netns` keeps a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn bounded(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    match s.char_indices().nth(MAX_ERROR_TEXT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn run(cmd: &mut Command) -> Result<String, NetworkError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetworkError::Spawn {
            command: describe(cmd),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: bounded(&out.stderr),
        })
    }
}

/// `ip ... -batch -` with `lines` on stdin: one process for many commands.
fn run_batch(cmd: &mut Command, lines: &[String]) -> Result<(), NetworkError> {
    use std::io::Write as _;
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let text = lines.join("\n");
    let command = format!("{} <<< {text:?}", describe(cmd));
    let mut child = cmd.spawn().map_err(|source| NetworkError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command,
            status: out.status.to_string(),
            stderr: bounded(&out.stderr),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_fit_and_differ() {
        assert_eq!(link_name("alice-1"), "ses-alice-1");
        assert_eq!(link_name("abcdefghijk"), "ses-abcdefghijk");
        let long = link_name("t-12345-0-desktop");
        assert!(long.len() <= MAX_IFNAME, "{long}");
        assert!(long.starts_with("ses-t-12"), "{long}");
        assert_ne!(long, link_name("t-12345-1-desktop"));
        assert_eq!(long, link_name("t-12345-0-desktop"));
        for id in ["a", "x".repeat(40).as_str(), "a.b"] {
            let l = link_name(id);
            assert!(valid_ifname(&l) && l.len() <= MAX_IFNAME, "{l}");
        }
    }

    #[test]
    fn the_hosts_file_names_the_session() {
        let h = etc_hosts("desk", Some(Ipv4Addr::new(10, 1, 0, 100)));
        assert!(h.contains("10.1.0.100\tdesk\n") && h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(etc_hosts("desk", None).contains("127.0.1.1\tdesk"));
    }

    #[test]
    fn config_parses_with_defaults_and_is_checked() {
        let c: NetworkConfig = toml::from_str(
            r#"
            pool = "10.1.0.100-10.1.0.199"
            exclude = ["10.1.0.150"]
            "#,
        )
        .unwrap();
        assert_eq!(c.uplink, "eth0");
        assert_eq!(c.session_gateway, Ipv4Addr::new(169, 254, 0, 1));
        assert!(c.announce);
        c.validate().unwrap();
        let mut ipam = c.ipam();
        for n in 0..99 {
            assert_ne!(ipam.allocate(&format!("s{n}")).unwrap(), c.exclude[0]);
        }
        assert!(ipam.allocate("s99").is_err());
        assert!(
            toml::from_str::<NetworkConfig>("pool = \"10.1.0.100-10.1.0.199\"\nuplnk = \"x\"")
                .is_err()
        );
        assert!(toml::from_str::<NetworkConfig>("pool = \"10.1.0.199-10.1.0.100\"").is_err());
        let mut bad = c.clone();
        bad.uplink = "eth0/../x".into();
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.session_gateway = Ipv4Addr::new(10, 1, 0, 120);
        assert!(bad.validate().is_err());
    }
}
