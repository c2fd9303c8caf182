//! Helpers shared by the namespace tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use mobidesk_lab::Netns;

/// These tests create namespaces: without root they cannot run, and a
/// skipped test must not look like a passed one.
pub(crate) fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "namespace tests need root (run them through scripts/test as root)"
    );
}

/// `ping -c 1` from `ns`; returns the reply's TTL, or None if no reply came.
pub(crate) fn ping(ns: &Netns, to: &str) -> Option<u8> {
    let out = ns
        .output(Command::new("ping").args(["-c", "1", "-W", "2", "-n", to]))
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ttl = text.split("ttl=").nth(1)?.split_whitespace().next()?;
    ttl.parse().ok()
}

/// A TCP listener made inside `ns`.
pub(crate) fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(|| TcpListener::bind(addr)).unwrap().unwrap()
}

/// A TCP connection made from inside `ns`.
pub(crate) fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    let s = ns
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(10)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Deterministic bytes that differ at every offset and seed.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, enough to compare streams.
pub(crate) fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Sends `len` pattern bytes from `tx` to `rx` and checks they arrive intact.
pub(crate) fn transfer(tx: &mut TcpStream, rx: &mut TcpStream, len: usize, seed: u64) {
    let data = pattern(len, seed);
    let mut got = vec![0u8; len];
    std::thread::scope(|s| {
        s.spawn(|| tx.write_all(&data).unwrap());
        rx.read_exact(&mut got).unwrap();
    });
    assert_eq!(checksum(&got), checksum(&data), "bytes differ after {len}");
}

/// The established TCP connections in `ns`, as (local, peer) address pairs
/// read from the kernel with `ss`.
pub(crate) fn established(ns: &Netns) -> Vec<(String, String)> {
    let out = ns
        .output(Command::new("ss").args(["-Htn", "state", "established"]))
        .unwrap();
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Recv-Q Send-Q Local Peer
            Some((f.get(2)?.to_string(), f.get(3)?.to_string()))
        })
        .collect()
}
