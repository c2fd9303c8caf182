//! The user-space link emulator (`mobidesk_lab::linkemu`): delay, rate
//! limit, drop-tail queue, order, cleanup; in a lab and by hand.
//!
//! Timing is asserted only where a loaded machine cannot make a correct
//! emulator fail: a delay is a lower bound (a packet is never early, and a
//! broken delay gives well under 1 ms), a rate limit is a lower bound on a
//! transfer's duration (a broken limiter is many times faster). Upper bounds
//! are generous. Figures are printed (`--nocapture`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mobidesk_lab::lab::{netns_name, unique_lab_name};
use mobidesk_lab::linkemu::{LinkConfig, LinkEmulator, LinkStats, Side};
use mobidesk_lab::{Lab, Netns};

use crate::cleanup::host_links;
use crate::support::{checksum, connect, listen, pattern, ping, require_root};

const ADDR_A: &str = "198.19.255.1";
const ADDR_B: &str = "198.19.255.2";

/// Two fresh namespaces, removed on drop (also while a test unwinds). They
/// are named like a lab's, so `mobidesk-lab down` finds what a killed run
/// left.
struct Pair {
    lab: String,
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new() -> Pair {
        let lab = unique_lab_name();
        let pair = Pair {
            a: Netns::existing(&netns_name(&lab, "a")),
            b: Netns::existing(&netns_name(&lab, "b")),
            lab,
        };
        // Made after `pair`, so a failure half-way still removes them.
        for ns in [&pair.a, &pair.b] {
            Netns::create(ns.name()).unwrap();
        }
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Lab::down(&self.lab);
    }
}

fn wan(rtt_ms: u64, rate_mbit: Option<u64>) -> LinkConfig {
    LinkConfig::wan(
        Duration::from_millis(rtt_ms),
        rate_mbit.map(|m| m * 1_000_000),
    )
}

/// Round trips measured by `ping` from `ns`: (min, avg, max) in ms.
fn ping_rtt(ns: &Netns, to: &str, count: u32) -> (f64, f64, f64) {
    let out = ns
        .output(Command::new("ping").args([
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "5",
            "-n",
            "-q",
            to,
        ]))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping {to} failed: {text}");
    // rtt min/avg/max/mdev = 66.379/67.556/72.164/2.304 ms
    let figures = text
        .lines()
        .find_map(|l| l.split(" = ").nth(1).filter(|_| l.starts_with("rtt")))
        .unwrap_or_else(|| panic!("no rtt line in {text}"));
    let v: Vec<f64> = figures
        .split([' ', '/'])
        .filter_map(|x| x.parse().ok())
        .collect();
    (v[0], v[1], v[2])
}

/// Sends `len` pattern bytes over a new TCP connection from `from` to
/// `to_ns` at `to`, checks them by checksum, and returns how long the bytes
/// took (first write to last read) and the connect time.
fn bulk(from: &Netns, to_ns: &Netns, to: &str, len: usize) -> (Duration, Duration) {
    let addr: SocketAddr = to.parse().unwrap();
    let listener = listen(to_ns, to);
    let started = Instant::now();
    let mut tx = connect(from, addr);
    let connect_time = started.elapsed();
    let (mut rx, _) = listener.accept().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    tx.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let data = pattern(len, len as u64);
    let mut got = vec![0u8; len];
    let started = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| tx.write_all(&data).unwrap());
        rx.read_exact(&mut got).unwrap();
    });
    let took = started.elapsed();
    assert_eq!(checksum(&got), checksum(&data), "bytes differ");
    (took, connect_time)
}

fn mbit_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
}

fn link_names(ns: &Netns) -> Vec<String> {
    ns.ip_json(&["link", "show"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Polls `cond` every few ms until it holds; panics after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_66_ms_link_delays_every_round_trip_by_at_least_66_ms() {
    require_root();
    let pair = Pair::new();
    let emu = LinkEmulator::between(&pair.a, &pair.b, wan(66, Some(100))).unwrap();

    let (min, avg, max) = ping_rtt(&pair.a, ADDR_B, 10);
    eprintln!("linkemu 66 ms / 100 Mbit/s: ping rtt min/avg/max {min}/{avg}/{max} ms");
    assert!(
        min >= 66.0,
        "no round trip is shorter than the link's: {min} ms"
    );
    assert!(
        avg < 5.0 * 66.0,
        "round trips are near the link's: {avg} ms"
    );
    // Both ways: B pings A.
    let (min_b, _, _) = ping_rtt(&pair.b, ADDR_A, 3);
    assert!(min_b >= 66.0, "B -> A: {min_b} ms");

    // A TCP handshake is one round trip.
    let (_, connect_time) = bulk(&pair.a, &pair.b, &format!("{ADDR_B}:7300"), 1000);
    eprintln!("linkemu 66 ms: TCP connect {connect_time:?}");
    assert!(
        connect_time >= Duration::from_millis(66),
        "{connect_time:?}"
    );

    let stats = emu.stats();
    assert!(stats.a_to_b.packets_out >= 13 && stats.b_to_a.packets_out >= 13);
    assert_eq!(stats.a_to_b.dropped_queue + stats.b_to_a.dropped_queue, 0);
}

#[test]
fn a_zero_delay_unlimited_link_adds_no_delay() {
    require_root();
    let pair = Pair::new();
    let _emu = LinkEmulator::between(&pair.a, &pair.b, wan(0, None)).unwrap();
    let (min, avg, max) = ping_rtt(&pair.a, ADDR_B, 10);
    eprintln!("linkemu 0 ms / unlimited: ping rtt min/avg/max {min}/{avg}/{max} ms");
    // A link that added a delay anyway would give tens of ms every time.
    assert!(min < 33.0, "{min} ms");
    let len = 64 << 20;
    let (took, _) = bulk(&pair.a, &pair.b, &format!("{ADDR_B}:7301"), len);
    eprintln!(
        "linkemu 0 ms / unlimited: TCP bulk {} MiB in {took:?} = {:.0} Mbit/s (the emulator's own ceiling, this build)",
        len >> 20,
        mbit_s(len, took)
    );
}

#[test]
fn the_rate_limit_holds_for_a_bulk_transfer() {
    require_root();
    // The lab's WAN link: 16 MiB at 100 Mbit/s need 1.34 s of payload alone.
    let pair = Pair::new();
    let emu = LinkEmulator::between(&pair.a, &pair.b, wan(66, Some(100))).unwrap();
    let len = 16 << 20;
    let (took, _) = bulk(&pair.a, &pair.b, &format!("{ADDR_B}:7302"), len);
    let floor = Duration::from_secs_f64(len as f64 * 8.0 / 100e6);
    let stats = emu.stats();
    eprintln!(
        "linkemu 66 ms / 100 Mbit/s: TCP bulk {} MiB in {took:?} = {:.1} Mbit/s; {} tail drops, max backlog {} bytes",
        len >> 20,
        mbit_s(len, took),
        stats.a_to_b.dropped_queue,
        stats.a_to_b.max_backlog_bytes
    );
    assert!(took >= floor, "{took:?} beats the rate limit ({floor:?})");
    assert!(stats.a_to_b.bytes_out >= len as u64);
    assert!(stats.a_to_b.max_backlog_bytes <= emu.config().queue_limit() as u64);
    drop(emu);

    // Without delay the limit alone: 2.5 MB at 20 Mbit/s need 1 s.
    let emu = LinkEmulator::between(&pair.a, &pair.b, wan(0, Some(20))).unwrap();
    let len = 2_500_000;
    let (took, _) = bulk(&pair.a, &pair.b, &format!("{ADDR_B}:7303"), len);
    eprintln!(
        "linkemu 0 ms / 20 Mbit/s: TCP bulk 2.5 MB in {took:?} = {:.1} Mbit/s",
        mbit_s(len, took)
    );
    assert!(
        took >= Duration::from_secs(1),
        "{took:?} beats the rate limit"
    );
    assert!(emu.stats().a_to_b.bytes_out >= len as u64);
}

/// A UDP flood into a small queue: the tail is dropped, what is held stays
/// under the queue plus what is on the wire, and what arrives arrives in
/// order.
#[test]
fn a_full_queue_drops_the_tail_and_holds_no_more_than_it_may() {
    require_root();
    let pair = Pair::new();
    let config = LinkConfig {
        queue_bytes: Some(30_000),
        ..wan(20, Some(10))
    };
    let emu = LinkEmulator::between(&pair.a, &pair.b, config).unwrap();
    let rx = pair
        .b
        .run(|| UdpSocket::bind(format!("{ADDR_B}:7304")))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let tx = pair
        .a
        .run(|| UdpSocket::bind(format!("{ADDR_A}:0")))
        .unwrap()
        .unwrap();
    tx.connect(format!("{ADDR_B}:7304")).unwrap();

    const SENT: u32 = 2000;
    const END: u32 = u32::MAX;
    let receiver = std::thread::spawn(move || {
        let mut seqs = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let n = rx.recv(&mut buf).unwrap();
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if seq == END {
                return seqs;
            }
            assert_eq!(n, 1400);
            seqs.push(seq);
        }
    });
    // 2.8 MB offered at once to a 10 Mbit/s link (2.2 s of it).
    let mut datagram = [0u8; 1400];
    for seq in 0..SENT {
        datagram[..4].copy_from_slice(&seq.to_be_bytes());
        // A full socket or device queue on the sending side may refuse one.
        let _ = tx.send(&datagram);
    }
    // Drained: every packet that entered the link left or was dropped.
    let balanced = |s: &LinkStats| {
        let d = s.a_to_b;
        d.packets_in > 0
            && d.packets_in == d.packets_out + d.dropped_queue + d.dropped_memory + d.write_errors
    };
    wait_for("the link to drain", Duration::from_secs(30), || {
        balanced(&emu.stats())
    });
    // An end marker follows everything sent (the link keeps order); the
    // queue may still be full of what the device had not handed over yet,
    // so markers go until one arrives.
    datagram[..4].copy_from_slice(&END.to_be_bytes());
    wait_for("an end marker to arrive", Duration::from_secs(30), || {
        let _ = tx.send(&datagram);
        receiver.is_finished()
    });
    let seqs = receiver.join().unwrap();
    wait_for("the link to drain", Duration::from_secs(30), || {
        balanced(&emu.stats())
    });

    let d = emu.stats().a_to_b;
    eprintln!(
        "linkemu flood: {SENT} sent, {} entered the link, {} tail drops, {} left it, {} arrived; max backlog {} bytes, max held {} bytes",
        d.packets_in,
        d.dropped_queue,
        d.packets_out,
        seqs.len(),
        d.max_backlog_bytes,
        d.max_in_flight_bytes
    );
    assert!(d.dropped_queue > 0, "a flood into a small queue drops");
    assert_eq!(d.dropped_memory, 0);
    assert!(d.max_backlog_bytes <= 30_000, "{}", d.max_backlog_bytes);
    // What it holds is the queue (30 000) plus the wire (10 ms at 10 Mbit/s:
    // 12 500), plus what fell due while its thread was off the CPU; never
    // what was offered: an unbounded queue would hold most of the 2.8 MB
    // (it drains at 10 Mbit/s for seconds).
    let offered = u64::from(SENT) * 1428;
    assert!(
        d.max_in_flight_bytes <= offered / 10,
        "held {} bytes of {offered} offered",
        d.max_in_flight_bytes
    );
    // A marker left the link too.
    assert!((seqs.len() as u64) < d.packets_out);
    assert!(!seqs.is_empty() && seqs.len() < SENT as usize);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "datagrams arrive in the order sent"
    );
}

#[test]
fn dropping_the_emulator_removes_its_devices_and_a_deleted_device_stops_it() {
    require_root();
    let links_before = host_links();
    let pair = Pair::new();
    let emu = LinkEmulator::between(&pair.a, &pair.b, wan(66, Some(100))).unwrap();
    assert!(link_names(&pair.a).contains(&"lemu0".to_string()));
    assert!(link_names(&pair.b).contains(&"lemu0".to_string()));
    assert!(emu.is_running());
    // Packets in flight when it goes down are simply dropped.
    let mut flood = pair
        .a
        .spawn(
            Command::new("ping")
                .args(["-f", "-c", "200", "-n", "-q", ADDR_B])
                .stdout(Stdio::null()),
        )
        .unwrap();
    wait_for("packets in flight", Duration::from_secs(10), || {
        emu.stats().a_to_b.packets_in > 0
    });
    drop(emu);
    let _ = flood.kill();
    let _ = flood.wait();
    assert!(!link_names(&pair.a).contains(&"lemu0".to_string()));
    assert!(!link_names(&pair.b).contains(&"lemu0".to_string()));
    assert!(ping(&pair.a, ADDR_B).is_none(), "the path is gone");

    // A device removed under it: the direction reading it ends, drop works.
    let emu = LinkEmulator::between(&pair.a, &pair.b, wan(0, None)).unwrap();
    assert!(ping(&pair.a, ADDR_B).is_some());
    pair.b.ip(&["link", "del", "lemu0"]).unwrap();
    wait_for("the emulator to notice", Duration::from_secs(10), || {
        !emu.is_running()
    });
    drop(emu);
    assert!(!link_names(&pair.a).contains(&"lemu0".to_string()));
    drop(pair);
    assert_eq!(host_links(), links_before, "nothing lands in the host");
}

#[test]
fn a_lab_client_behind_a_slow_link_reaches_sessions_and_the_proxy_through_it() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let alice = lab.host("alice").unwrap();
    let web = lab.host("web").unwrap();
    let session = s1.virtual_addr.to_string();

    let (before, _, _) = ping_rtt(&alice, &session, 3);
    let emu = lab.slow_link("alice", wan(66, Some(100))).unwrap();
    assert_eq!(emu.netns(Side::B), &lab.proxy());

    let (min, avg, max) = ping_rtt(&alice, &session, 5);
    eprintln!("linkemu lab alice -> session: before {before} ms, through the link min/avg/max {min}/{avg}/{max} ms");
    assert!(min >= 66.0, "{min} ms");
    let (min_proxy, _, _) = ping_rtt(&alice, "198.18.0.1", 3);
    assert!(min_proxy >= 66.0, "the proxy box itself is behind the link");
    // Hops are unchanged: session -> server -> proxy -> client.
    assert_eq!(ping(&alice, &session), Some(62));
    // The external network stays direct.
    let (min_web, _, _) = ping_rtt(&alice, "198.18.0.20", 3);
    assert!(min_web < 33.0, "alice -> web: {min_web} ms");
    let (min_web_proxy, _, _) = ping_rtt(&web, "198.18.0.1", 3);
    assert!(min_web_proxy < 33.0, "web -> proxy: {min_web_proxy} ms");

    // The session sees alice's own address; bytes arrive intact.
    let (took, _) = bulk(&alice, &s1.netns(), &format!("{session}:7305"), 1 << 20);
    eprintln!("linkemu lab alice -> session: 1 MiB in {took:?}");
    let stats = emu.stats();
    assert!(stats.a_to_b.bytes_out >= 1 << 20);
    assert!(stats.b_to_a.packets_out > 0);

    drop(emu);
    let (after, _, _) = ping_rtt(&alice, &session, 3);
    assert!(after < 33.0, "the old path is back: {after} ms");
    let routes = alice.ip(&["route", "show"]).unwrap();
    assert!(
        routes.contains("default via 198.18.0.1 dev eth0"),
        "{routes}"
    );
    assert!(!routes.contains("le-proxy"), "{routes}");
}

/// Stops the child if the test fails half-way.
struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mobidesk_lab_link_runs_until_interrupted() {
    require_root();
    let lab = Lab::for_test().unwrap();
    // `mobidesk-lab` finds labs by their recorded topology.
    lab.keep().unwrap();
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Lab::down(&self.0);
        }
    }
    let _down = Down(lab.name().to_string());
    let alice = lab.host("alice").unwrap();

    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_mobidesk-lab"))
            .args([
                "link",
                "--lab",
                lab.name(),
                "--rtt-ms",
                "66",
                "--rate-mbit",
                "100",
                "alice",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("link up") {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "mobidesk-lab link ended before the link was up");
    }
    let (min, _, _) = ping_rtt(&alice, "10.1.0.10", 3);
    assert!(min >= 66.0, "{min} ms");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(rest.contains("SIGINT: link down"), "{rest}");
    assert!(rest.contains("\"packets_out\""), "stats printed: {rest}");
    assert!(!link_names(&alice).contains(&"le-proxy".to_string()));
    let (after, _, _) = ping_rtt(&alice, "10.1.0.10", 3);
    assert!(after < 33.0, "{after} ms");
}
