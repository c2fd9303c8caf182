//! The proxy box's user-space dataplane in the lab: real TUN device, real
//! kernels on both ends, bytes compared by checksum.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) use mobidesk_lab::dataplane::{Dataplane, Dataplanes};
use mobidesk_lab::{Lab, Netns};

use crate::support::{connect, established, listen, require_root, transfer};

#[test]
fn tcp_from_a_session_is_terminated_and_relayed_by_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let web = lab.host("web").unwrap();

    let listener = listen(&web, "198.18.0.20:7500");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7500".parse().unwrap());
    let (mut at_web, peer) = listener.accept().unwrap();
    // Relayed at L7: the outside host sees the proxy box, not the session.
    assert_eq!(peer.ip(), IpAddr::from([198, 18, 0, 1]));
    assert_eq!(dp.stats().unwrap().vnics, 1);

    transfer(&mut at_session, &mut at_web, 32 << 20, 30);
    transfer(&mut at_web, &mut at_session, 32 << 20, 31);
    let s = dp.stats().unwrap();
    assert!(s.bytes_in > 32 << 20, "{s:?}");
    assert_eq!(s.vnics_created, 1);
    assert_eq!(s.labels_in_use, 0, "no migration, no labels");

    // Both close: the VNIC is reclaimed.
    drop(at_session);
    drop(at_web);
    dp.wait_stats("the vnic to be reclaimed", |s| s.vnics == 0)
        .unwrap();
}

#[test]
fn a_refused_destination_refuses_the_session_too() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dp = Dataplane::proxy(&lab).unwrap();
    let to: SocketAddr = "198.18.0.20:7501".parse().unwrap();
    let err = s1
        .netns()
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    dp.wait_stats("the refused vnic to be reclaimed", |s| {
        s.vnics == 0 && s.vnics_reclaimed == 1
    })
    .unwrap();
}

/// Sends `len` pattern bytes each way at once on a thread; returns the
/// streams when both arrived intact.
fn transfer_both_ways(
    mut a: TcpStream,
    mut b: TcpStream,
    len: usize,
    seed: u64,
) -> JoinHandle<(TcpStream, TcpStream)> {
    std::thread::spawn(move || {
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::scope(|s| {
            s.spawn(|| transfer(&mut a, &mut b, len, seed));
            s.spawn(|| transfer(&mut b2, &mut a2, len, seed + 1));
        });
        (a, b)
    })
}

#[test]
fn a_connection_survives_cross_subnet_moves_during_a_transfer() {
    cross_subnet_moves_during_a_transfer(true);
}

/// The same with the servers' kernel fast path off: the server engine
/// labels and rewrites every packet itself.
#[test]
fn a_connection_survives_cross_subnet_moves_without_the_fast_path() {
    cross_subnet_moves_during_a_transfer(false);
}

fn cross_subnet_moves_during_a_transfer(fast_path: bool) {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start_with(&lab, Dataplane::proxy_config(&lab).unwrap(), |s| {
        s.fast_path = fast_path;
    })
    .unwrap();
    let web = lab.host("web").unwrap();

    let listener = listen(&web, "198.18.0.20:7600");
    let at_session = connect(&s1.netns(), "198.18.0.20:7600".parse().unwrap());
    let (at_web, _) = listener.accept().unwrap();
    let tuple = (
        at_session.local_addr().unwrap().to_string(),
        "198.18.0.20:7600".to_string(),
    );
    // The labels were exchanged in the handshake.
    let a = dps.server("a").unwrap().server_stats().unwrap();
    assert_eq!(
        (a.counters.offers_sent, a.counters.offers_received),
        (1, 1),
        "{a:?}"
    );
    assert_eq!(a.connections, 1);

    // A -> B while 24 MiB go each way.
    let running = transfer_both_ways(at_session, at_web, 24 << 20, 40);
    dps.proxy
        .wait_stats("the transfer to be under way", |s| s.bytes_in > 4 << 20)
        .unwrap();
    let moved = dps.migrate(&lab, "s1", "b").unwrap();
    assert_ne!(moved.physical_addr, s1.virtual_addr);
    let (mut at_session, mut at_web) = running.join().expect("bytes lost, duplicated or stuck");
    // How much of that went after the move depends on when the move came
    // (late, on a loaded machine): 4 MiB more each way certainly do.
    transfer(&mut at_session, &mut at_web, 4 << 20, 44);
    transfer(&mut at_web, &mut at_session, 4 << 20, 45);

    let proxy = dps.proxy.stats().unwrap();
    assert_eq!(proxy.labels_in_use, 1, "{proxy:?}");
    assert!(
        proxy.rewrites > 0 && proxy.labelled_packets > 0,
        "{proxy:?}"
    );
    let b = dps.server("b").unwrap().server_stats().unwrap();
    assert!(
        b.counters.labelled_in > 0 && b.counters.labelled_out > 0,
        "{b:?}"
    );
    if fast_path {
        // Most of them in the kernel's fast path; the engine read little
        // more than the packets in flight during the move.
        let fast = b.fast_path.expect("the fast path is on");
        assert!(fast.out_packets > 0 && fast.in_packets > 0, "{b:?}");
        assert!(fast.out_bytes > 4 << 20 && fast.in_bytes > 4 << 20, "{b:?}");
        assert!(b.counters.bytes < fast.out_bytes + fast.in_bytes, "{b:?}");
    } else {
        assert_eq!(b.fast_path, None);
        assert!(b.counters.bytes > 8 << 20, "{b:?}");
    }
    assert_eq!(b.labelled_sessions, 1);
    assert_eq!(
        dps.server("a").unwrap().server_stats().unwrap().connections,
        0,
        "labels left a"
    );
    assert!(established(&s1.netns()).contains(&tuple));

    // And back, B -> A, again mid-transfer.
    let running = transfer_both_ways(at_session, at_web, 16 << 20, 42);
    let bytes = dps.proxy.stats().unwrap().bytes_in;
    dps.proxy
        .wait_stats("the transfer to be under way", |s| {
            s.bytes_in > bytes + (4 << 20)
        })
        .unwrap();
    let back = dps.migrate(&lab, "s1", "a").unwrap();
    let (at_session, at_web) = running.join().expect("bytes lost, duplicated or stuck");
    assert_eq!(
        dps.server("a")
            .unwrap()
            .server_stats()
            .unwrap()
            .labelled_sessions,
        1,
        "labelled for life"
    );
    assert!(established(&s1.netns()).contains(&tuple));
    assert_eq!(back.server, "a");
    drop((at_session, at_web));
}

/// A TCP connection from `ns`, bound to `from` (address and port) first.
fn connect_from(ns: &Netns, from: SocketAddr, to: SocketAddr) -> TcpStream {
    try_connect_from(ns, from, to).unwrap()
}

fn try_connect_from(ns: &Netns, from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = ns
        .run(|| -> std::io::Result<TcpStream> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&from.into())?;
            socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
            Ok(socket.into())
        })
        .unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

#[test]
fn a_reused_address_and_identical_tuple_do_not_cross_talk() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let service: SocketAddr = "198.18.0.20:7700".parse().unwrap();
    let listener = listen(&web, "198.18.0.20:7700");

    let from: SocketAddr = (s1.virtual_addr, 41000).into();
    let first = connect_from(&s1.netns(), from, service);
    let (first_web, _) = listener.accept().unwrap();
    let moved = dps.migrate(&lab, "s1", "b").unwrap();
    assert_ne!(moved.physical_addr, s1.virtual_addr);

    // A new session on server a takes the address s1 had, and opens the
    // very same tuple to the very same service.
    let s2 = lab.add_session_at("s2", "a", s1.virtual_addr).unwrap();
    let second = connect_from(&s2.netns(), from, service);
    let (second_web, _) = listener.accept().unwrap();
    assert_eq!(first.local_addr().unwrap(), second.local_addr().unwrap());
    assert_eq!(first.peer_addr().unwrap(), second.peer_addr().unwrap());
    assert_eq!(
        dps.proxy.stats().unwrap().vnics,
        2,
        "two VNICs for one tuple"
    );

    // Both at once, different bytes each way: a mix-up breaks a checksum.
    let one = transfer_both_ways(first, first_web, 8 << 20, 50);
    let two = transfer_both_ways(second, second_web, 8 << 20, 60);
    let (one, two) = (one.join(), two.join());
    if one.is_err() || two.is_err() {
        panic!(
            "a connection broke (first ok: {}, second ok: {}); proxy {:?}; a {:?}; b {:?}",
            one.is_ok(),
            two.is_ok(),
            dps.proxy.stats().unwrap(),
            dps.server("a").unwrap().server_stats().unwrap(),
            dps.server("b").unwrap().server_stats().unwrap()
        );
    }
    let ((first, first_web), (second, second_web)) = (one.unwrap(), two.unwrap());
    let s = dps.proxy.stats().unwrap();
    assert_eq!(
        s.labels_in_use, 1,
        "only the migrated connection is labelled: {s:?}"
    );
    assert_eq!(s.dropped.get("forged_label"), None, "{s:?}");
    drop((first, first_web, second, second_web));
}

/// Lines tcpdump prints in `ns` on `iface` for `filter`, as they come.
fn tcpdump(
    ns: &Netns,
    iface: &str,
    filter: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = ns
        .spawn(
            std::process::Command::new("tcpdump")
                .args(["-l", "-n", "-e", "-i", iface, filter])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped()),
        )
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready = tx.clone();
    // tcpdump says "listening on ..." on stderr once it captures.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = ready.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("listening on") => return (child, rx),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tcpdump did not start: {e}");
            }
        }
    }
}

#[test]
fn a_same_subnet_move_is_announced_and_traffic_resumes_at_once() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7800");
    let at_session = connect(&s1.netns(), "198.18.0.20:7800".parse().unwrap());
    let (at_web, _) = listener.accept().unwrap();
    let a2_mac = lab
        .host("a2")
        .unwrap()
        .ip_json(&["link", "show", "eth0"])
        .unwrap()[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let neighbour = || {
        lab.proxy()
            .ip_json(&["neigh", "show", &s1.virtual_addr.to_string(), "dev", "sub1"])
            .unwrap()[0]["lladdr"]
            .as_str()
            .map(str::to_string)
    };
    assert_ne!(neighbour().as_deref(), Some(a2_mac.as_str()));

    let (mut capture, lines) = tcpdump(&lab.proxy(), "sub1", "arp");
    let running = transfer_both_ways(at_session, at_web, 8 << 20, 70);
    dps.proxy
        .wait_stats("the transfer to be under way", |s| s.bytes_in > 2 << 20)
        .unwrap();
    let moved = dps.migrate(&lab, "s1", "a2").unwrap();
    assert_eq!(
        moved.physical_addr, s1.virtual_addr,
        "same subnet, same address"
    );

    // The gratuitous ARP from a2: "a2-mac > ff:ff:ff:ff:ff:ff ... Request
    // who-has 10.1.0.100 (ff:ff:ff:ff:ff:ff) tell 10.1.0.100".
    let (who_has, tell) = (
        format!("Request who-has {} ", s1.virtual_addr),
        format!("tell {},", s1.virtual_addr),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no gratuitous ARP seen on subnet 1");
        if line.contains(&who_has) && line.contains(&tell) {
            assert!(
                line.contains(&format!("{a2_mac} > ff:ff:ff:ff:ff:ff")),
                "{line}"
            );
            break;
        }
    }
    let _ = capture.kill();
    let _ = capture.wait();
    // The proxy box took it: its neighbour entry points at a2 now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while neighbour().as_deref() != Some(a2_mac.as_str()) {
        assert!(
            Instant::now() < deadline,
            "proxy box still has {:?}",
            neighbour()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (at_session, at_web) = running.join().expect("bytes lost, duplicated or stuck");
    assert_eq!(
        dps.proxy.stats().unwrap().labels_in_use,
        0,
        "same subnet: no labels"
    );
    drop((at_session, at_web));
}

/// An IPv4 packet by hand (checksums computed), for what a socket would
/// never send.
fn raw_packet(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, transport: &[u8]) -> Vec<u8> {
    let mut ip =
        etherparse::Ipv4Header::new(0, 64, protocol.into(), src.octets(), dst.octets()).unwrap();
    ip.set_payload_len(transport.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    [&ip.to_bytes()[..], transport].concat()
}

fn raw_tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    let mut t = etherparse::TcpHeader::new(sport, dport, 7, 64240);
    t.syn = syn;
    t.ack = !syn;
    t.checksum = t
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), b"junk")
        .unwrap();
    [&t.to_bytes()[..], b"junk"].concat()
}

#[test]
fn junk_and_a_syn_flood_from_a_session_are_counted_and_harm_nothing() {
    use socket2::{Domain, Protocol, Socket, Type};
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let s2 = lab.add_session("s2", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7900");
    let mut at_s1 = connect(&s1.netns(), "198.18.0.20:7900".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    transfer(&mut at_s1, &mut at_web, 1 << 20, 80);

    let src = s2.virtual_addr;
    let web_addr = Ipv4Addr::new(198, 18, 0, 20);
    // Nobody answers at .77: the flood's handshakes stay open for seconds.
    let nowhere = Ipv4Addr::new(198, 18, 0, 77);
    let mut junk = Vec::new();
    let mut bad_checksum = raw_packet(src, web_addr, 6, &raw_tcp(src, 5000, web_addr, 7900, false));
    *bad_checksum.last_mut().unwrap() ^= 0xff;
    junk.push(bad_checksum);
    let mut fragment = raw_packet(src, web_addr, 6, &raw_tcp(src, 5001, web_addr, 7900, false));
    fragment[6] |= 0x20; // more fragments (the kernel refills the checksum)
    junk.push(fragment);
    junk.push(raw_packet(src, web_addr, 253, b"what is this"));
    let mut forged = raw_packet(src, web_addr, 6, &raw_tcp(src, 5002, web_addr, 7900, false));
    mobidesk_dataplane::wire::label::push_label(
        &mut forged,
        mobidesk_dataplane::wire::Label::new(0x1234_5678).unwrap(),
    )
    .unwrap();
    junk.push(forged);
    for port in 20_000..21_000u16 {
        junk.push(raw_packet(
            src,
            nowhere,
            6,
            &raw_tcp(src, port, nowhere, 80, true),
        ));
    }
    s2.netns()
        .run(|| {
            let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
            for (i, p) in junk.iter().enumerate() {
                let to = SocketAddr::from((Ipv4Addr::from([p[16], p[17], p[18], p[19]]), 0));
                raw.send_to(p, &to.into()).unwrap();
                if i % 64 == 63 {
                    // Let the queues drain: this is a flood, not a queue-overflow test.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .unwrap();

    let s = dps
        .proxy
        .wait_stats("the junk to be counted", |s| {
            [
                "bad_transport_checksum",
                "fragment",
                "unsupported_protocol",
                "unknown_label",
            ]
            .iter()
            .all(|r| s.dropped.contains_key(*r))
                && s.dropped.get("handshake_limit").copied().unwrap_or(0) > 0
        })
        .unwrap();
    assert!(
        s.vnics_created <= 1 + 256,
        "the flood was not bounded: {s:?}"
    );
    assert_eq!(s.dropped.get("forged_label"), None);
    // The established connection did not notice.
    transfer(&mut at_s1, &mut at_web, 1 << 20, 81);
    transfer(&mut at_web, &mut at_s1, 1 << 20, 82);
    // The flood's handshakes fail and are reclaimed.
    dps.proxy
        .wait_stats("the flood's VNICs to go", |s| s.vnics == 1)
        .unwrap();
}

#[test]
fn the_vnic_of_a_session_that_vanished_is_reclaimed() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let mut config = mobidesk_dataplane::daemon::ProxyBoxConfig::new(
        vec!["sub1".into(), "sub2".into()],
        lab.run_dir().unwrap().join("dataplane-proxy.sock"),
    );
    config.vnic.keep_alive_secs = 1;
    config.vnic.idle_timeout_secs = 3;
    let dp = Dataplane::proxy_with(&lab, config).unwrap();
    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7950");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7950".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    transfer(&mut at_session, &mut at_web, 64 << 10, 90);
    assert_eq!(dp.stats().unwrap().vnics, 1);

    // The session disappears without a FIN or a reset (its veth and
    // namespace are gone; this test still holds its socket, which will never
    // send again): only its silence tells.
    lab.remove_session("s1").unwrap();
    dp.wait_stats("the silent session's VNIC to be reclaimed", |s| {
        s.vnics == 0 && s.vnics_reclaimed == 1
    })
    .unwrap();
    // And the outside host's side of the relay is closed too.
    at_web
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    match std::io::Read::read(&mut at_web, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the relay to the outside host is still open: {other:?}"),
    }
    drop(at_session);
    dp.stop().unwrap();
}

/// Forged labels sent to a migrated session's physical address from the
/// server subnet: a label that exists but arrives with the wrong address
/// tuple, and one that does not exist. Neither may reach the session by the
/// kernel fast path; the engine counts both; the real connection carries on.
#[test]
fn forged_labels_towards_a_migrated_session_are_refused_and_counted() {
    use mobidesk_dataplane::control::ServerRequest;
    use mobidesk_dataplane::wire::{label::push_label, Label};
    use socket2::{Domain, Protocol, Socket, Type};
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7610");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7610".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    let moved = dps.migrate(&lab, "s1", "b").unwrap();
    transfer(&mut at_session, &mut at_web, 1 << 20, 90);
    transfer(&mut at_web, &mut at_session, 1 << 20, 91);

    // The connection's real server label: out and back in again.
    let b = dps.server("b").unwrap();
    let state = b
        .request(&ServerRequest::ExportSession {
            virtual_addr: s1.virtual_addr,
        })
        .unwrap()
        .session
        .unwrap();
    let real = state.connections[0];
    b.request(&ServerRequest::ImportSession {
        session: state.clone(),
        announce: false,
    })
    .unwrap();
    let before = b.server_stats().unwrap();
    let forged_before = before.counters.dropped.get("forged_label").copied();

    let (remote, session_port) = (*real.remote.ip(), real.session.port());
    let physical = moved.physical_addr;
    let mut packets = Vec::new();
    // The real label, from another port of the outside address.
    let mut wrong_tuple = raw_packet(
        remote,
        physical,
        6,
        &raw_tcp(
            remote,
            real.remote.port() + 1,
            physical,
            session_port,
            false,
        ),
    );
    push_label(&mut wrong_tuple, Label::new(real.server_label).unwrap()).unwrap();
    packets.push(wrong_tuple);
    // A label nobody gave out.
    let unknown = Label::new(real.server_label ^ 0x5a5a_5a5a).unwrap();
    let mut made_up = raw_packet(
        remote,
        physical,
        6,
        &raw_tcp(remote, real.remote.port(), physical, session_port, false),
    );
    push_label(&mut made_up, unknown).unwrap();
    packets.push(made_up);
    lab.proxy()
        .run(|| {
            let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
            for p in &packets {
                raw.send_to(p, &SocketAddr::from((physical, 0)).into())
                    .unwrap();
            }
        })
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let s = b.server_stats().unwrap();
        let forged = s.counters.dropped.get("forged_label").copied();
        if forged.unwrap_or(0) >= forged_before.unwrap_or(0) + 2 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "forged labels not counted: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (fast_before, fast_after) = (before.fast_path.unwrap(), after.fast_path.unwrap());
    assert_eq!(
        fast_after.in_packets, fast_before.in_packets,
        "the fast path took a forged packet: {after:?}"
    );
    // The real connection is untouched.
    transfer(&mut at_session, &mut at_web, 1 << 20, 92);
    transfer(&mut at_web, &mut at_session, 1 << 20, 93);
}

/// A session's service published on the proxy box: an outside host
/// connects to the proxy box, which opens a connection from a VNIC to the
/// session (seen there as coming from the service address 100.64.0.1).
/// Bytes both ways by checksum, during a cross-subnet move too; after
/// unpublishing, new connections are refused and the old one goes on.
#[test]
fn a_published_service_of_a_session_is_reachable_from_outside_across_a_move() {
    use mobidesk_dataplane::control::ProxyRequest;
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    let service = SocketAddr::from((s1.virtual_addr, 7620));
    let listener = listen(&s1.netns(), &service.to_string());

    let published = dps
        .proxy
        .request(&ProxyRequest::Publish {
            listen: "198.18.0.1:0".parse().unwrap(),
            session: match service {
                SocketAddr::V4(v4) => v4,
                SocketAddr::V6(_) => unreachable!(),
            },
        })
        .unwrap()
        .published
        .unwrap();
    let entry = published[0].listen;
    assert_ne!(entry.port(), 0);

    let at_web = connect(&web, entry);
    let (at_session, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
        "the session sees the service address"
    );
    let (mut at_web, mut at_session) = (at_web, at_session);
    transfer(&mut at_web, &mut at_session, 4 << 20, 100);
    transfer(&mut at_session, &mut at_web, 4 << 20, 101);

    // Across subnets while 16 MiB go each way.
    let running = transfer_both_ways(at_session, at_web, 16 << 20, 102);
    let bytes = dps.proxy.stats().unwrap().bytes_in;
    dps.proxy
        .wait_stats("the transfer to be under way", |s| {
            s.bytes_in > bytes + (2 << 20)
        })
        .unwrap();
    dps.migrate(&lab, "s1", "b").unwrap();
    let (mut at_session, mut at_web) = running.join().expect("bytes lost, duplicated or stuck");
    // On a quiet machine the rest of the 16 MiB may pass before the move
    // takes effect: bytes after it, on the same connection, go through b.
    transfer(&mut at_web, &mut at_session, 1 << 20, 105);
    transfer(&mut at_session, &mut at_web, 1 << 20, 106);
    let proxy = dps.proxy.stats().unwrap();
    assert_eq!(proxy.labels_in_use, 1, "{proxy:?}");
    let b = dps.server("b").unwrap().server_stats().unwrap();
    assert!(
        b.counters.labelled_in > 0 && b.counters.labelled_out > 0,
        "{b:?}"
    );

    // Unpublished: the proxy box no longer listens; the relayed
    // connection carries on.
    dps.proxy
        .request(&ProxyRequest::Unpublish { listen: entry })
        .unwrap();
    let refused = web
        .run(|| TcpStream::connect_timeout(&entry, Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
    transfer(&mut at_web, &mut at_session, 1 << 20, 103);
    transfer(&mut at_session, &mut at_web, 1 << 20, 104);
}

/// A migrated session opens connection after connection from the same
/// source port (the tuple reused each time: the outside host closes first,
/// so the port is free at once). Each new connection gets new labels; the
/// server's fast path must know them before the session's first segment
/// after the handshake, or the proxy box sees the previous connection's
/// label on it and drops it.
#[test]
fn a_migrated_session_reusing_a_tuple_gets_fresh_labels_every_time() {
    use std::io::{Read, Write};
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let web = lab.host("web").unwrap();
    dps.migrate(&lab, "s1", "b").unwrap();
    let listener = listen(&web, "198.18.0.20:7630");
    let to: SocketAddr = "198.18.0.20:7630".parse().unwrap();
    let from = SocketAddr::from((s1.virtual_addr, 47_630));
    for round in 0..20u8 {
        // The last round's socket may still be in LAST_ACK for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut at_session = loop {
            match try_connect_from(&s1.netns(), from, to) {
                Ok(s) => break s,
                Err(e) if e.kind() == ErrorKind::AddrNotAvailable && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        let (mut at_web, _) = listener.accept().unwrap();
        at_session.write_all(&[round; 100]).unwrap();
        let mut got = [0u8; 100];
        at_web.read_exact(&mut got).unwrap();
        assert_eq!(got, [round; 100]);
        // The outside host closes first; the session sees the end.
        drop(at_web);
        assert_eq!(at_session.read(&mut got).unwrap(), 0);
    }
    let proxy = dps.proxy.stats().unwrap();
    for reason in ["forged_label", "unknown_label"] {
        assert_eq!(proxy.dropped.get(reason), None, "{proxy:?}");
    }
}
