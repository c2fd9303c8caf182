//! Network attachment with real sessions: a per-test "server" namespace on
//! a subnet with a "peer" namespace (the proxy box / gateway) on it; each
//! session gets its address from the server's IPAM and a `ses-*` veth.
//!
//! ```text
//!  peer ns  eth0 10.1.0.1/24 ══ eth0 10.1.0.10/24  server ns  ses-* ══ eth0 (session)
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use mobidesk_sessiond::environment::{Session, SessionSpec, SessionStdio};
use mobidesk_sessiond::ipam::Ipam;
use mobidesk_sessiond::network::{netns_path, Attachment, NetworkConfig, ServerNetwork};

use crate::support::{lines_of, sh, unique, Fixture, DEADLINE};

/// The peer's (gateway's) address on the test subnet.
pub(crate) const PEER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The server's own address on it.
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);

/// Two namespaces joined by a veth: the server (uplink `eth0`) and the
/// peer. Both deleted on Drop (with every veth in them).
pub(crate) struct Lan {
    pub server: String,
    pub peer: String,
}

impl Lan {
    /// The server's network on this LAN, prepared.
    pub(crate) fn network(&self) -> ServerNetwork {
        let net = ServerNetwork::new(self.config()).unwrap();
        net.prepare().unwrap();
        net
    }

    /// Adds a veth pair `link`/`peer` in the server's namespace (a name a
    /// session's attachment would want, taken beforehand).
    pub(crate) fn add_veth(&self, link: &str, peer: &str) {
        sh(Command::new("ip").args([
            "-n",
            &self.server,
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ]));
    }

    pub(crate) fn new() -> Lan {
        let lan = Lan {
            server: unique("mdsn-s"),
            peer: unique("mdsn-p"),
        };
        for ns in [&lan.server, &lan.peer] {
            sh(Command::new("ip").args(["netns", "add", ns]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        sh(Command::new("ip").args([
            "-n",
            &lan.server,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lan.peer,
        ]));
        for (ns, addr) in [(&lan.server, SERVER), (&lan.peer, PEER)] {
            sh(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", "eth0", "up"]));
        }
        sh(Command::new("ip").args([
            "-n",
            &lan.server,
            "route",
            "add",
            "default",
            "via",
            &PEER.to_string(),
        ]));
        lan
    }

    /// The server's network configuration: pool 10.1.0.100-10.1.0.199.
    pub(crate) fn config(&self) -> NetworkConfig {
        let mut c = NetworkConfig::new("10.1.0.100-10.1.0.199".parse().unwrap());
        c.exclude = vec![SERVER, PEER];
        c.netns = Some(self.server.clone());
        c
    }

    /// `nsenter --net=<ns>` + a command.
    pub(crate) fn run_in(ns: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", netns_path(ns).display()))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.server, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns` (setns affects only
/// the calling thread); sockets it makes stay in that namespace.
pub(crate) fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(netns_path(ns)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A running session whose stdout is read line by line on a thread.
pub(crate) struct Running {
    pub session: Session,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    pub(crate) fn new(mut session: Session) -> Running {
        let stdin = session.take_stdin();
        let lines = match session.take_stdout() {
            Some(out) => lines_of(out),
            None => mpsc::channel().1,
        };
        Running {
            session,
            stdin,
            lines,
        }
    }

    /// The next line of stdout (fails the test at the deadline).
    pub(crate) fn line(&mut self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("a line from the session before the deadline")
    }

    /// Closes stdin and waits for the end; the exit code.
    pub(crate) fn finish(&mut self) -> i32 {
        drop(self.stdin.take());
        let status = self
            .session
            .wait_timeout(DEADLINE)
            .unwrap()
            .expect("session ended before the deadline");
        status.code().unwrap_or(-1)
    }
}

/// A session attached to the server.
pub(crate) struct Attached {
    pub held: Running,
    pub attachment: Attachment,
    stderr: std::path::PathBuf,
}

impl Attached {
    /// What the session wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Starts `spec` with an address from `ipam`, attached by `net`.
pub(crate) fn start_attached(
    fx: &Fixture,
    net: &ServerNetwork,
    spec: &SessionSpec,
    address: Ipv4Addr,
) -> Attached {
    // The session's stderr (Xvfb, the display server...) goes to a file
    // that failure messages show.
    let stderr = fx.dir.path().join(format!("{}.stderr", spec.id));
    let stdio = SessionStdio {
        stdin: Some(Stdio::piped()),
        stdout: Some(Stdio::piped()),
        stderr: Some(Stdio::from(std::fs::File::create(&stderr).unwrap())),
    };
    let mut attachment = None;
    let session: Session = fx
        .launcher
        .start_with_network(spec, stdio, |pid| {
            attachment = Some(
                net.attach(&spec.id, pid, address)
                    .map_err(|e| e.to_string())?,
            );
            Ok(())
        })
        .expect("session start");
    Attached {
        held: Running::new(session),
        attachment: attachment.unwrap(),
        stderr,
    }
}

/// A deterministic payload of `len` bytes, different per `seed`.
pub(crate) fn payload(seed: u8, len: usize) -> Vec<u8> {
    let mut s = u32::from(seed) | 0x1000;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64 of the bytes (a checksum both ends compute the same way).
pub(crate) fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Inside the session: fetch the peer's payload (outbound TCP), print its
/// checksum, then serve a payload on port 7000 (inbound TCP) once, then
/// wait for stdin to close.
const SESSION_SCRIPT: &str = r#"
import socket, sys
def fnv(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xffffffffffffffff
    return h
peer = sys.argv[1]
c = socket.create_connection((peer, 7001), timeout=60)
data = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    data += b
print("got %d %x" % (len(data), fnv(data)), flush=True)
s = socket.socket()
s.bind(("0.0.0.0", 7000))
s.listen(1)
print("listening", flush=True)
a, _ = s.accept()
a.sendall(bytes(range(256)) * 1024)
a.close()
sys.stdin.read()
"#;

#[test]
fn two_sessions_get_their_own_addresses_and_reach_the_peer_both_ways() {
    let fx = Fixture::new();
    let lan = Lan::new();
    let net = lan.network();
    let mut ipam: Ipam = net.config().ipam();

    // The peer serves a different payload to each session, on one port.
    let listener = {
        let (tx, rx) = mpsc::channel();
        let t = spawn_in(&lan.peer, move || {
            let l = TcpListener::bind((PEER, 7001)).unwrap();
            tx.send(()).unwrap();
            for seed in 0..2u8 {
                let (mut c, from) = l.accept().unwrap();
                // The payload depends on who asks: its address's last byte.
                let SocketAddr::V4(from) = from else { panic!() };
                let data = payload(from.ip().octets()[3], 1 << 20);
                c.write_all(&data).unwrap();
                let _ = seed;
            }
        });
        rx.recv_timeout(DEADLINE).unwrap();
        t
    };

    let mut sessions = Vec::new();
    for _ in 0..2 {
        let spec = fx.spec(
            fx.profile(),
            &["/usr/bin/python3", "-c", SESSION_SCRIPT, &PEER.to_string()],
        );
        let address = ipam.allocate(&spec.id).unwrap();
        sessions.push(start_attached(&fx, &net, &spec, address));
    }
    let addrs: Vec<Ipv4Addr> = sessions.iter().map(|s| s.attachment.address).collect();
    assert_eq!(
        addrs,
        [Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 101)],
        "each session its own address from the pool"
    );
    for s in &mut sessions {
        // Outbound: the session fetched its payload through the server.
        let line = s.held.line();
        let want = payload(s.attachment.address.octets()[3], 1 << 20);
        assert_eq!(line, format!("got {} {:x}", want.len(), fnv(&want)));
        assert_eq!(s.held.line(), "listening");
    }
    listener.join().unwrap();

    // Inbound: the peer reaches each session's address (proxy ARP). The
    // first session's packets cross its own link, never the other's.
    let (a, b) = (&sessions[0].attachment, &sessions[1].attachment);
    let filter = format!("host {}", a.address);
    let on_a = Capture::start(&lan.server, &a.link, &filter);
    let on_b = Capture::start(&lan.server, &b.link, &filter);
    for s in &sessions {
        let addr = s.attachment.address;
        let got = spawn_in(&lan.peer, move || {
            let mut c = TcpStream::connect((addr, 7000)).unwrap();
            let mut v = Vec::new();
            c.read_to_end(&mut v).unwrap();
            v
        })
        .join()
        .unwrap();
        let want: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
        assert_eq!(fnv(&got), fnv(&want), "payload from {addr}");
        // The peer learned the address at the server's MAC (proxy ARP).
        let neigh =
            sh(Command::new("ip").args(["-n", &lan.peer, "neigh", "show", &addr.to_string()]));
        let server_mac =
            sh(Command::new("ip").args(["-n", &lan.server, "-o", "link", "show", "eth0"]));
        let mac = neigh
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .unwrap();
        assert!(server_mac.contains(mac), "{neigh} / {server_mac}");
    }
    let (seen_a, seen_b) = (on_a.stop(), on_b.stop());
    assert!(
        seen_a > 10,
        "{seen_a} packets of {} on its own link",
        a.address
    );
    assert_eq!(seen_b, 0, "packets of {} on {}", a.address, b.link);

    // The server side as designed: the veth and the route into it.
    for s in &sessions {
        let a = &s.attachment;
        assert!(
            a.link.starts_with("ses-") && a.link.len() <= 15,
            "{}",
            a.link
        );
        let route = sh(Command::new("ip").args([
            "-n",
            &lan.server,
            "route",
            "get",
            &a.address.to_string(),
        ]));
        assert!(route.contains(&format!("dev {}", a.link)), "{route}");
        assert!(net.is_attached(a).unwrap());
    }

    // Destroying one removes its veth and route and frees its address; the
    // other carries on.
    let gone = sessions.remove(0);
    let Attached {
        mut held,
        attachment,
        ..
    } = gone;
    held.finish();
    net.detach(&attachment).unwrap();
    assert_eq!(
        ipam.release_session(&attachment.session),
        Some(attachment.address)
    );
    assert!(!net.is_attached(&attachment).unwrap());
    let links = sh(Command::new("ip").args(["-n", &lan.server, "-o", "link", "show"]));
    assert!(!links.contains(&attachment.link), "{links}");
    let routes = sh(Command::new("ip").args(["-n", &lan.server, "route", "show"]));
    assert!(
        !routes.contains(&attachment.address.to_string()),
        "{routes}"
    );
    // Detaching again is harmless.
    net.detach(&attachment).unwrap();
    // The other session still answers the peer.
    let other = sessions[0].attachment.address.to_string();
    sh(Lan::run_in(&lan.peer, "ping").args(["-c", "1", "-W", "10", &other]));
    // The freed address comes back after the rest of the pool.
    assert_eq!(ipam.free(), 99);
    assert_eq!(ipam.allocate("next").unwrap(), Ipv4Addr::new(10, 1, 0, 102));
    let s = sessions.remove(0);
    let Attached {
        mut held,
        attachment,
        ..
    } = s;
    held.finish();
    net.detach(&attachment).unwrap();
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let fx = Fixture::new();
    let lan = Lan::new();
    let net = lan.network();
    let spec = fx.spec(fx.profile(), &["true"]);
    // The server already has a link of that name: attaching must fail with
    // the command named, and the session must not start.
    let link = mobidesk_sessiond::network::link_name(&spec.id);
    lan.add_veth(&link, "squatter");
    let err = fx
        .launcher
        .start_with_network(&spec, SessionStdio::default(), |pid| {
            net.attach(&spec.id, pid, Ipv4Addr::new(10, 1, 0, 100))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("network set-up failed") && err.contains("ip -n"),
        "{err}"
    );
    assert!(err.contains("exists"), "{err}");
    // The squatter's link is still there (not ours to remove).
    sh(Command::new("ip").args(["-n", &lan.server, "link", "show", &link]));
}

/// `tcpdump` on a link of a namespace, counting the packets that match a
/// filter. Killed on Drop.
struct Capture {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts and waits until tcpdump says it is listening.
    fn start(ns: &str, link: &str, filter: &str) -> Capture {
        let mut child = KillOnDrop(
            Lan::run_in(ns, "tcpdump")
                .args(["-n", "-i", link, "-w", "/dev/null", filter])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let lines = lines_of(child.0.stderr.take().unwrap());
        loop {
            let line = lines
                .recv_timeout(DEADLINE)
                .expect("tcpdump listening before the deadline");
            if line.contains("listening on") {
                break;
            }
        }
        Capture { child, lines }
    }

    /// Stops it (SIGINT) and returns how many packets it captured.
    fn stop(mut self) -> u64 {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let _ = self.child.0.wait();
        let mut all = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            if let Some(n) = line.strip_suffix(" packets captured") {
                return n.trim().parse().unwrap();
            }
            if let Some(n) = line.strip_suffix(" packet captured") {
                return n.trim().parse().unwrap();
            }
            all.push(line);
        }
        panic!("no packet count from tcpdump: {all:?}");
    }
}

/// A child process killed (and reaped) on Drop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peer's neighbour table as events (`ip monitor neigh`), with the
/// peer taking unsolicited ARP (`arp_accept`, as the proxy box does to learn
/// a moved session at once).
struct NeighWatch {
    _monitor: KillOnDrop,
    events: mpsc::Receiver<String>,
    server_mac: String,
}

impl NeighWatch {
    fn start(lan: &Lan) -> NeighWatch {
        sh(Lan::run_in(&lan.peer, "sysctl").args(["-qw", "net.ipv4.conf.eth0.arp_accept=1"]));
        let link = sh(Command::new("ip").args(["-n", &lan.server, "-o", "link", "show", "eth0"]));
        let server_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .to_string();
        let mut monitor = KillOnDrop(
            Command::new("ip")
                .args(["-n", &lan.peer, "monitor", "neigh"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let events = lines_of(monitor.0.stdout.take().unwrap());
        NeighWatch {
            _monitor: monitor,
            events,
            server_mac,
        }
    }

    /// Waits until the peer has `address` at the server's MAC.
    fn wait_for(&self, address: Ipv4Addr) {
        let deadline = std::time::Instant::now() + DEADLINE;
        let want = format!("{address} dev eth0 lladdr {}", self.server_mac);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) if line.starts_with(&want) => return,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no neighbour entry {want:?} on the peer ({e}); seen {seen:?}"),
            }
        }
    }
}

#[test]
fn a_new_session_is_announced_by_gratuitous_arp() {
    let fx = Fixture::new();
    let lan = Lan::new();
    let net = lan.network();
    let mut ipam = net.config().ipam();
    let watch = NeighWatch::start(&lan);
    // A session that sends nothing: only the announcement can teach the
    // peer where its address is.
    let spec = fx.spec(fx.profile(), &["cat"]);
    let address = ipam.allocate(&spec.id).unwrap();
    let mut s = start_attached(&fx, &net, &spec, address);
    watch.wait_for(address);
    assert_eq!(s.held.finish(), 0);
    net.detach(&s.attachment).unwrap();
}

#[test]
fn a_session_from_another_subnet_is_routed_and_announced_by_its_physical_address() {
    let fx = Fixture::new();
    let lan = Lan::new();
    let net = lan.network();
    let mut ipam = net.config().ipam();
    let watch = NeighWatch::start(&lan);
    // Its own address is on another subnet (where it started); here it
    // gets a physical address from the pool. The server's end is plumbed
    // again for it, as after a CRIU restore (idempotent).
    let spec = fx.spec(fx.profile(), &["cat"]);
    let virtual_addr = Ipv4Addr::new(10, 2, 0, 100);
    let physical = ipam.allocate(&spec.id).unwrap();
    let mut s = start_attached(&fx, &net, &spec, virtual_addr);
    let moved = Attachment {
        physical: Some(physical),
        ..s.attachment.clone()
    };
    net.plumb_server(&moved).unwrap();
    net.plumb_server(&moved).unwrap();
    watch.wait_for(physical);
    for a in [virtual_addr, physical] {
        let route =
            sh(Command::new("ip").args(["-n", &lan.server, "route", "get", &a.to_string()]));
        assert!(route.contains(&format!("dev {}", moved.link)), "{route}");
    }
    assert_eq!(moved.physical_address(), physical);
    // Persisted and read back as it was.
    let json = serde_json::to_string(&moved).unwrap();
    assert_eq!(serde_json::from_str::<Attachment>(&json).unwrap(), moved);
    assert_eq!(s.held.finish(), 0);
    net.detach(&moved).unwrap();
    let routes = sh(Command::new("ip").args(["-n", &lan.server, "route", "show"]));
    assert!(!routes.contains(&physical.to_string()), "{routes}");
}
