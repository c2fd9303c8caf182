//! The lab's shape: who reaches whom, through how many routers, and that the
//! subnets meet only at the proxy box.

use std::net::SocketAddr;
use std::process::Command;

use mobidesk_lab::Lab;

use crate::support::{connect, listen, ping, require_root, transfer};

#[test]
fn client_proxy_servers_sessions_and_outside_host_reach_each_other() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let client = lab.host("alice").unwrap();
    let web = lab.host("web").unwrap();
    let a = lab.host("a").unwrap();
    let session = s1.netns();

    // Hops are counted by the TTL of the reply (64 at the sender, minus one
    // per router on the way back).
    assert_eq!(
        ping(&client, "198.18.0.20"),
        Some(64),
        "same external network"
    );
    assert_eq!(ping(&client, "198.18.0.1"), Some(64), "proxy box");
    assert_eq!(ping(&client, "10.1.0.10"), Some(63), "server a via proxy");
    assert_eq!(ping(&web, "10.2.0.10"), Some(63), "server b via proxy");
    assert_eq!(ping(&a, "10.2.0.10"), Some(63), "subnet 1 -> 2 via proxy");
    assert_eq!(ping(&a, "10.1.0.11"), Some(64), "same subnet, no router");
    assert_eq!(
        ping(&session, "198.18.0.20"),
        Some(62),
        "session -> outside"
    );
    assert_eq!(
        ping(&web, &s1.virtual_addr.to_string()),
        Some(62),
        "outside -> session"
    );
    assert_eq!(ping(&session, "169.254.0.1"), Some(64), "session's gateway");

    // TCP both ways, bytes compared.
    let listener = listen(&web, "198.18.0.20:7100");
    let mut from_session = connect(&session, "198.18.0.20:7100".parse().unwrap());
    let (mut at_web, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        s1.virtual_addr,
        "the outside host sees the session's address"
    );
    transfer(&mut from_session, &mut at_web, 1 << 20, 1);
    transfer(&mut at_web, &mut from_session, 1 << 20, 2);

    let listener = listen(&session, "0.0.0.0:7200");
    let to: SocketAddr = (s1.virtual_addr, 7200).into();
    let mut from_client = connect(&client, to);
    let (mut at_session, _) = listener.accept().unwrap();
    transfer(&mut from_client, &mut at_session, 256 << 10, 3);
}

#[test]
fn subnets_meet_only_at_the_proxy_box() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let a = lab.host("a").unwrap();
    let proxy = lab.proxy();

    // Layer 2: server a's segment has a2 on it, not b.
    let arping = |to: &str| {
        a.output(
            Command::new("arping").args(["-q", "-c", "2", "-C", "1", "-w", "1", "-i", "eth0", to]),
        )
        .unwrap()
        .status
        .success()
    };
    assert!(arping("10.1.0.11"), "a2 answers ARP on subnet 1");
    assert!(
        !arping("10.2.0.10"),
        "b must not be reachable on subnet 1's segment"
    );
    assert!(
        !arping("198.18.0.20"),
        "the external network is another segment"
    );

    // Layer 3: with the proxy box not forwarding, nothing crosses.
    proxy.sysctl(&[("net.ipv4.ip_forward", "0")]).unwrap();
    assert_eq!(
        ping(&a, "10.2.0.10"),
        None,
        "subnet 1 -> 2 without the proxy box"
    );
    assert_eq!(
        ping(&s1.netns(), "198.18.0.20"),
        None,
        "session -> outside without the proxy box"
    );
    assert_eq!(ping(&a, "10.1.0.11"), Some(64), "same subnet still works");
    proxy.sysctl(&[("net.ipv4.ip_forward", "1")]).unwrap();
    assert_eq!(ping(&a, "10.2.0.10"), Some(63));
    assert_eq!(ping(&s1.netns(), "198.18.0.20"), Some(62));
}

#[test]
fn session_addresses_come_from_the_server_pool_and_are_refused_when_taken() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let s2 = lab.add_session("s2", "a").unwrap();
    let s3 = lab.add_session("s3", "b").unwrap();
    assert_eq!(s1.virtual_addr.to_string(), "10.1.0.100");
    assert_eq!(s2.virtual_addr.to_string(), "10.1.0.101");
    assert_eq!(s3.virtual_addr.to_string(), "10.2.0.100");
    assert_eq!(s1.physical_addr, s1.virtual_addr);
    assert!(matches!(
        lab.add_session_at("s4", "a2", s1.virtual_addr),
        Err(mobidesk_lab::LabError::AddressInUse { .. })
    ));
    assert!(matches!(
        lab.add_session("s1", "b"),
        Err(mobidesk_lab::LabError::SessionExists(_))
    ));
    assert!(matches!(
        lab.add_session("s5", "web"),
        Err(mobidesk_lab::LabError::UnknownServer(_))
    ));
    // Two sessions on one server are separate hosts: each reaches the other
    // through the server, with its own address.
    assert_eq!(ping(&s1.netns(), "10.1.0.101"), Some(63));
    lab.remove_session("s2").unwrap();
    assert_eq!(ping(&s1.netns(), "10.1.0.101"), None);
}
