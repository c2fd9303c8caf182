//! UDP and ICMP echo through the proxy box's dataplane in the lab: a real
//! DNS server (dnsmasq) and a UDP echo server on the outside host, `dig`
//! and `ping` in sessions, before and after a cross-subnet migration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mobidesk_dataplane::control::ProxyStats;
use mobidesk_lab::{Lab, Netns};

use crate::dataplane::{Dataplane, Dataplanes};
use crate::support::{checksum, pattern, require_root};

/// The proxy box's address on the outside network: the source the outside
/// host sees for everything relayed.
const PROXY_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DESK: &str = "198.18.0.99";

/// dnsmasq in the outside host, answering `desk.example` with [`DESK`];
/// killed (and reaped) when dropped.
struct DnsServer(Child);

impl DnsServer {
    fn start(web: &Netns) -> Self {
        let child = web
            .spawn(
                Command::new("dnsmasq")
                    .args([
                        "--no-daemon",
                        "--conf-file=/dev/null",
                        "--no-resolv",
                        "--no-hosts",
                        "--port=53",
                        "--listen-address=198.18.0.20",
                        "--bind-interfaces",
                        "--user=root",
                        "--group=root",
                        "--pid-file=",
                    ])
                    .arg(format!("--address=/desk.example/{DESK}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .expect("dnsmasq (scripts/setup installs dnsmasq-base)");
        let server = DnsServer(child);
        // Up when it answers in its own namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        while dig(web, "desk.example", 1).as_deref() != Some(DESK) {
            assert!(Instant::now() < deadline, "dnsmasq did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig +short @198.18.0.20 NAME` from `ns`: the first answer line.
fn dig(ns: &Netns, name: &str, tries: u32) -> Option<String> {
    let out = ns
        .output(Command::new("dig").args([
            "+short",
            "+time=2",
            &format!("+tries={tries}"),
            "@198.18.0.20",
            name,
        ]))
        .expect("dig (scripts/setup installs dnsutils)");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

/// `ping -c N` from `ns`; panics with ping's output unless all N replies came.
fn ping_all(ns: &Netns, to: &str, count: u32) {
    let out = ns
        .output(Command::new("ping").args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "3",
            to,
        ]))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("{count} received")),
        "ping {to} from {}: {text}{}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP echo server on the outside host (a thread in its namespace) that
/// remembers who sent what; stopped when dropped.
struct UdpEcho {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(web: &Netns, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().unwrap();
        let socket = web.run(|| UdpSocket::bind(addr)).unwrap().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                p.lock().unwrap().push(peer);
                socket.send_to(&buf[..n], peer).unwrap();
            }
        });
        UdpEcho {
            addr,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket in `ns` connected to `to`.
fn udp_client(ns: &Netns, to: SocketAddr) -> UdpSocket {
    let s = ns
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `count` pattern datagrams one at a time and checks each comes back
/// intact.
fn echo_lockstep(client: &UdpSocket, count: usize, seed: u64) {
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        // 1 to 1472 bytes: what fits in one unfragmented packet.
        let len = 1 + (i * 331) % 1472;
        let data = pattern(len, seed + i as u64);
        client.send(&data).unwrap();
        let n = client
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} ({len} bytes) did not come back: {e}"));
        assert_eq!(
            (n, checksum(&buf[..n])),
            (len, checksum(&data)),
            "datagram {i} changed"
        );
    }
}

/// Sends `count` datagrams at once, then reads them back (in order: one
/// path, no loss in the lab).
fn echo_burst(client: &UdpSocket, count: usize, seed: u64) {
    let sent: Vec<Vec<u8>> = (0..count)
        .map(|i| pattern(100 + i * 40, seed + i as u64))
        .collect();
    for d in &sent {
        client.send(d).unwrap();
    }
    let mut buf = vec![0u8; 65536];
    for (i, d) in sent.iter().enumerate() {
        let n = client
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("burst datagram {i} did not come back: {e}"));
        assert_eq!(checksum(&buf[..n]), checksum(d), "burst datagram {i}");
    }
}

fn wait_udp(dp: &Dataplane, what: &str, f: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
    dp.wait_stats(what, f).unwrap()
}

#[test]
fn dns_from_a_session_resolves_through_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let _dns = DnsServer::start(&web);
    let before = dp.stats().unwrap();
    assert_eq!(before.udp_flows_created, 0);

    assert_eq!(dig(&s1.netns(), "desk.example", 3).as_deref(), Some(DESK));
    let s = dp.stats().unwrap();
    assert!(s.udp_flows_created >= 1, "{s:?}");
    assert!(s.udp_flows >= 1, "the flow lives on until idle: {s:?}");
    assert!(
        s.udp_datagrams_to_outside >= 1 && s.udp_datagrams_to_session >= 1,
        "{s:?}"
    );
    assert_eq!(s.vnics_created, 0, "no TCP involved: {s:?}");
    assert!(
        !s.dropped.contains_key("unsupported_protocol"),
        "UDP is relayed now: {s:?}"
    );
    // Another name, another query, another flow (dig picks a new port).
    assert_eq!(
        dig(&s1.netns(), "nothing.desk.example", 3).as_deref(),
        Some(DESK)
    );
    wait_udp(&dp, "a second flow", |s| s.udp_flows_created >= 2);
}

#[test]
fn udp_round_trips_intact_and_the_outside_sees_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let s2 = lab.add_session("s2", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let echo = UdpEcho::start(&web, "198.18.0.20:7700");

    let c1 = udp_client(&s1.netns(), echo.addr);
    echo_lockstep(&c1, 24, 100);
    echo_burst(&c1, 16, 200);
    // A second session, and a second flow of the first one.
    let c2 = udp_client(&s2.netns(), echo.addr);
    echo_lockstep(&c2, 8, 300);
    let c3 = udp_client(&s1.netns(), echo.addr);
    echo_lockstep(&c3, 8, 400);

    let peers = echo.peers();
    assert_eq!(peers.len(), 24 + 16 + 8 + 8);
    assert!(
        peers.iter().all(|p| p.ip() == IpAddr::V4(PROXY_EXT)),
        "relayed from the proxy box: {peers:?}"
    );
    // One proxy-side socket per flow, stable for the flow.
    let mut ports: Vec<u16> = peers.iter().map(SocketAddr::port).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three flows, three ports: {ports:?}");

    let s = dp.stats().unwrap();
    assert_eq!((s.udp_flows, s.udp_flows_created), (3, 3), "{s:?}");
    assert_eq!(s.udp_datagrams_to_outside, 56, "{s:?}");
    assert_eq!(s.udp_datagrams_to_session, 56, "{s:?}");
    assert!(
        !s.dropped
            .keys()
            .any(|k| k.starts_with("udp_") || k.starts_with("reply_")),
        "{s:?}"
    );
}

#[test]
fn ping_from_a_session_is_relayed_by_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let web = lab.host("web").unwrap();
    // What the outside host receives: echo requests from the proxy box.
    let watch = IcmpWatch::start(&web);

    ping_all(&s1.netns(), "198.18.0.20", 3);
    let s = wait_udp(&dp, "the echo counters", |s| {
        s.echo_requests >= 3 && s.echo_replies >= 3
    });
    // A fresh namespace allows no ICMP datagram sockets: a raw one it is.
    assert_eq!(s.echo_socket, "raw", "{s:?}");
    assert_eq!(s.echoes_outstanding, 0, "{s:?}");
    let sources = watch.echo_request_sources();
    assert!(sources.len() >= 3, "{sources:?}");
    assert!(sources.iter().all(|a| *a == PROXY_EXT), "{sources:?}");

    // Nobody at .77: the echoes time out in the dataplane too, counted.
    let out = s1
        .netns()
        .output(Command::new("ping").args(["-n", "-c", "1", "-W", "1", "198.18.0.77"]))
        .unwrap();
    assert!(!out.status.success());
    let s = dp.stats().unwrap();
    assert_eq!((s.echo_requests, s.echo_replies), (4, 3), "{s:?}");
}

#[test]
fn ping_uses_an_icmp_datagram_socket_where_the_group_range_allows_it() {
    require_root();
    let lab = Lab::for_test().unwrap();
    lab.proxy()
        .sysctl(&[("net.ipv4.ping_group_range", "0 2147483647")])
        .unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    ping_all(&s1.netns(), "198.18.0.20", 3);
    let s = wait_udp(&dp, "the echo counters", |s| s.echo_replies >= 3);
    assert_eq!(s.echo_socket, "datagram", "{s:?}");
}

#[test]
fn dns_ping_and_a_udp_flow_keep_working_across_a_cross_subnet_move() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let _dns = DnsServer::start(&web);
    let echo = UdpEcho::start(&web, "198.18.0.20:7701");
    let session = s1.netns();

    assert_eq!(dig(&session, "desk.example", 3).as_deref(), Some(DESK));
    ping_all(&session, "198.18.0.20", 2);
    let flow = udp_client(&session, echo.addr);
    echo_lockstep(&flow, 4, 500);
    let before = dps.proxy.stats().unwrap();

    let moved = dps.migrate(&lab, "s1", "b").unwrap();
    assert_ne!(moved.physical_addr, s1.virtual_addr, "across subnets");

    // New flows and echoes from the physical address.
    assert_eq!(dig(&session, "desk.example", 3).as_deref(), Some(DESK));
    ping_all(&session, "198.18.0.20", 3);
    // The flow opened before the move goes on, from the same proxy port.
    echo_lockstep(&flow, 4, 600);
    let peers = echo.peers();
    assert_eq!(peers.len(), 8);
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one flow, one peer: {peers:?}"
    );

    let after = dps.proxy.stats().unwrap();
    assert!(
        after.udp_flows_created > before.udp_flows_created,
        "{after:?}"
    );
    assert_eq!(
        after.udp_datagrams_to_session - before.udp_datagrams_to_session,
        after.udp_datagrams_to_outside - before.udp_datagrams_to_outside,
        "{after:?}"
    );
    assert!(after.echo_replies >= before.echo_replies + 3, "{after:?}");
    // Replies to the session go to its physical address: 4 datagrams, 3
    // echo replies, 1 DNS answer at least.
    assert!(after.rewrites >= before.rewrites + 8, "{after:?}");
    let b = dps.server("b").unwrap().server_stats().unwrap();
    assert!(b.counters.rewrites > 0, "{b:?}");

    // And back to subnet 1.
    dps.migrate(&lab, "s1", "a").unwrap();
    assert_eq!(dig(&session, "desk.example", 3).as_deref(), Some(DESK));
    ping_all(&session, "198.18.0.20", 2);
    echo_lockstep(&flow, 4, 700);
    assert!(echo.peers().iter().all(|p| *p == peers[0]));
}

/// A raw ICMP socket in a namespace that records the sources of the echo
/// requests it sees.
struct IcmpWatch(std::net::UdpSocket);

impl IcmpWatch {
    fn start(ns: &Netns) -> Self {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = ns
            .run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)))
            .unwrap()
            .unwrap();
        let socket = std::net::UdpSocket::from(socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        IcmpWatch(socket)
    }

    fn echo_request_sources(&self) -> Vec<Ipv4Addr> {
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        while let Ok((n, from)) = self.0.recv_from(&mut buf) {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n > ihl && buf[ihl] == 8 {
                if let IpAddr::V4(a) = from.ip() {
                    out.push(a);
                }
            }
        }
        out
    }
}

/// Datagrams larger than the path's MTU: the session's kernel sends them in
/// fragments, the proxy box reassembles them for its UDP socket, and the
/// echo comes back fragmented by the kernels on the way. Before and after a
/// cross-subnet move, by checksum.
#[test]
fn fragmented_datagrams_are_reassembled_and_relayed_both_ways() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let echo = UdpEcho::start(&web, "198.18.0.20:7702");
    let flow = udp_client(&s1.netns(), echo.addr);
    flow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut earlier = Vec::new();
    // UDP: a datagram of 45 fragments is lost if one of them is (a full
    // queue on a loaded machine), so, like any UDP client, try again. What
    // comes back must be exactly what was sent, or an echo of an earlier
    // datagram arriving late.
    let mut round = |lens: &[usize], seed: u64| {
        for (i, &len) in lens.iter().enumerate() {
            let data = pattern(len, seed + i as u64);
            let want = (len, checksum(&data));
            let mut came_back = false;
            for _attempt in 0..5 {
                flow.send(&data).unwrap();
                loop {
                    match flow.recv(&mut buf) {
                        Ok(n) if (n, checksum(&buf[..n])) == want => {
                            came_back = true;
                            break;
                        }
                        Ok(n) => assert!(
                            earlier.contains(&(n, checksum(&buf[..n]))),
                            "{n} bytes came back that were never sent"
                        ),
                        Err(_) => break,
                    }
                }
                if came_back {
                    break;
                }
            }
            assert!(came_back, "{len} bytes did not come back in 5 tries");
            earlier.push(want);
        }
    };
    round(&[1473, 4000, 20_000, 65_507], 800);
    let s = dps.proxy.stats().unwrap();
    assert!(s.datagrams_reassembled >= 4, "{s:?}");
    dps.migrate(&lab, "s1", "b").unwrap();
    round(&[3000, 30_000], 810);
    let after = dps.proxy.stats().unwrap();
    assert!(
        after.datagrams_reassembled >= s.datagrams_reassembled + 2,
        "{after:?}"
    );
    for reason in [
        "fragment",
        "fragment_overlap",
        "fragment_malformed",
        "fragment_limit",
    ] {
        assert_eq!(after.dropped.get(reason), None, "{after:?}");
    }
}

/// A datagram to a port nobody listens on: the outside host answers with
/// ICMP port unreachable to the proxy box, which passes it on to the
/// session, whose connected socket reports "connection refused" at once.
#[test]
fn port_unreachable_reaches_the_sessions_socket() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let closed: SocketAddr = "198.18.0.20:7703".parse().unwrap();
    let flow = udp_client(&s1.netns(), closed);
    flow.send(b"anyone?").unwrap();
    let mut buf = [0u8; 64];
    let err = flow
        .recv(&mut buf)
        .expect_err("nobody answers on that port");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{err}: {:?}",
        dp.stats().unwrap()
    );
    let s = dp.stats().unwrap();
    assert_eq!(s.icmp_errors_to_session, 1, "{s:?}");
}
