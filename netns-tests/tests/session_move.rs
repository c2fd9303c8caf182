//! Moving a session namespace between servers: the TCP state stays in the
//! session's own kernel, and traffic flows again once the network knows the
//! new location — here by kernel routes, later by the dataplane.

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use mobidesk_lab::{Lab, LabError};

use crate::support::{connect, established, listen, ping, require_root, transfer};

#[test]
fn cross_subnet_move_keeps_the_connection_and_it_flows_once_routed() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let session = s1.netns();
    let web = lab.host("web").unwrap();

    let listener = listen(&web, "198.18.0.20:7300");
    let mut at_session = connect(&session, "198.18.0.20:7300".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    let tuple = (
        at_session.local_addr().unwrap().to_string(),
        "198.18.0.20:7300".to_string(),
    );
    assert_eq!(
        tuple.0,
        format!(
            "{}:{}",
            s1.virtual_addr,
            at_session.local_addr().unwrap().port()
        )
    );
    transfer(&mut at_session, &mut at_web, 1 << 20, 10);
    transfer(&mut at_web, &mut at_session, 1 << 20, 11);

    // A (subnet 1) -> B (subnet 2).
    let moved = lab.move_session("s1", "b").unwrap();
    assert_eq!(moved.server, "b");
    assert_eq!(
        moved.virtual_addr, s1.virtual_addr,
        "the virtual address stays"
    );
    assert!(
        lab.topology()
            .network("sub2")
            .unwrap()
            .prefix
            .contains(&moved.physical_addr),
        "new physical address {} on subnet 2",
        moved.physical_addr
    );
    assert!(
        established(&session).contains(&tuple),
        "the connection is still established in the session's kernel: {:?}",
        established(&session)
    );
    assert!(
        lab.server("a")
            .unwrap()
            .1
            .ip(&["link", "show", "ses-s1"])
            .is_err(),
        "nothing left on a"
    );

    // Until the proxy box routes the virtual address to B, what the outside
    // host sends does not reach the session...
    at_web.write_all(b"sent while the route was stale").unwrap();
    at_session
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match at_session.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("data reached the session before its route was fixed: {other:?}"),
    }
    // ...and once it does, TCP delivers it (retransmitted), then everything else.
    lab.route_on_proxy(&moved).unwrap();
    at_session
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut early = [0u8; 30];
    at_session.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"sent while the route was stale");
    transfer(&mut at_session, &mut at_web, 1 << 20, 12);
    transfer(&mut at_web, &mut at_session, 1 << 20, 13);

    // And back: B -> A.
    let back = lab.move_session("s1", "a").unwrap();
    assert_eq!(
        back.physical_addr, s1.virtual_addr,
        "home again with its first address"
    );
    lab.route_on_proxy(&back).unwrap();
    transfer(&mut at_session, &mut at_web, 1 << 20, 14);
    transfer(&mut at_web, &mut at_session, 1 << 20, 15);
    assert!(established(&session).contains(&tuple));
}

#[test]
fn same_subnet_move_keeps_the_address() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7400");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7400".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    transfer(&mut at_session, &mut at_web, 64 << 10, 20);

    let moved = lab.move_session("s1", "a2").unwrap();
    assert_eq!(
        moved.physical_addr, s1.physical_addr,
        "same subnet, same address"
    );
    // The proxy box still has server a's MAC for the address; once it
    // forgets it (the dataplane will announce the move with a gratuitous
    // ARP instead), a2 answers for the session.
    lab.proxy()
        .ip(&["neigh", "flush", &s1.virtual_addr.to_string()])
        .unwrap();
    transfer(&mut at_web, &mut at_session, 1 << 20, 21);
    transfer(&mut at_session, &mut at_web, 1 << 20, 22);
    assert_eq!(ping(&web, &s1.virtual_addr.to_string()), Some(62));
}

#[test]
fn bad_moves_are_refused_and_change_nothing() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    assert!(matches!(
        lab.move_session("s1", "a"),
        Err(LabError::SameServer { .. })
    ));
    assert!(matches!(
        lab.move_session("s1", "web"),
        Err(LabError::UnknownServer(_))
    ));
    assert!(matches!(
        lab.move_session("nope", "b"),
        Err(LabError::UnknownSession(_))
    ));
    assert!(matches!(
        lab.move_session_to("s1", "b", "10.1.0.150".parse().unwrap()),
        Err(LabError::AddressOffSubnet { .. })
    ));
    assert_eq!(lab.session("s1").unwrap(), s1);
    assert_eq!(ping(&s1.netns(), "198.18.0.20"), Some(62));
}
