//! The server engine driven packet by packet, without I/O.

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, TcpHeader};

use super::*;
use crate::wire::label::push_label;

const VIRTUAL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const PHYSICAL: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 100);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 1, 64240);
    t.syn = syn;
    t.ack = ack;
    t.checksum = t
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), b"x")
        .unwrap();
    let body = [&t.to_bytes()[..], b"x"].concat();
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.octets(), dst.octets()).unwrap();
    ip.set_payload_len(body.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    [&ip.to_bytes()[..], &body].concat()
}

/// Runs one packet through the engine; returns what it let through.
fn run(engine: &mut ServerEngine, packet: &[u8], side: Side) -> Option<Vec<u8>> {
    let mut buf = vec![0; ServerEngine::HEADROOM];
    buf.extend_from_slice(packet);
    engine.handle_packet(&mut buf, ServerEngine::HEADROOM, side);
    let out = engine.outbox.packets().next().map(<[u8]>::to_vec);
    engine.outbox.clear();
    out
}

/// A session's connection with labels exchanged both ways.
fn exchanged(engine: &mut ServerEngine) -> (Label, Label) {
    let syn = run(
        engine,
        &tcp(VIRTUAL, 4000, REMOTE, 80, true, false),
        Side::Session,
    )
    .unwrap();
    let server_label = parse_ipv4(&syn)
        .unwrap()
        .label
        .expect("the SYN carries an offer");
    let proxy_label = Label::new(0x0bad_cafe).unwrap();
    let mut synack = tcp(REMOTE, 80, VIRTUAL, 4000, true, true);
    push_label(&mut synack, proxy_label).unwrap();
    let passed = run(engine, &synack, Side::Uplink).unwrap();
    assert_eq!(
        parse_ipv4(&passed).unwrap().label,
        None,
        "the offer is stripped"
    );
    (server_label, proxy_label)
}

#[test]
fn labels_are_exchanged_in_the_handshake_and_move_with_the_session() {
    let mut a = ServerEngine::new(100, 1);
    let (server_label, proxy_label) = exchanged(&mut a);
    // A retransmitted SYN offers the same label.
    let again = run(
        &mut a,
        &tcp(VIRTUAL, 4000, REMOTE, 80, true, false),
        Side::Session,
    )
    .unwrap();
    assert_eq!(parse_ipv4(&again).unwrap().label, Some(server_label));

    let mut state = a.export_session(VIRTUAL);
    assert_eq!(a.connections(), 0);
    assert_eq!(state.connections.len(), 1);
    state.physical = PHYSICAL;
    state.labelled = true;
    let mut b = ServerEngine::new(100, 2);
    assert_eq!(b.import_session(&state), 1);
    assert_eq!(
        b.take_steer_changes(),
        vec![SteerChange::Add {
            virtual_addr: VIRTUAL,
            physical: PHYSICAL
        }]
    );

    // Out: source rewritten, the proxy's label attached.
    let out = run(
        &mut b,
        &tcp(VIRTUAL, 4000, REMOTE, 80, false, true),
        Side::Session,
    )
    .unwrap();
    let info = parse_ipv4(&out).unwrap();
    assert_eq!((info.src_addr, info.label), (PHYSICAL, Some(proxy_label)));
    // In: the server's own label checked and stripped, destination rewritten.
    let mut inbound = tcp(REMOTE, 80, PHYSICAL, 4000, false, true);
    push_label(&mut inbound, server_label).unwrap();
    let passed = run(&mut b, &inbound, Side::Uplink).unwrap();
    let info = parse_ipv4(&passed).unwrap();
    assert_eq!((info.dst_addr, info.label), (VIRTUAL, None));
}

/// A TCP super-packet as a TUN device with offloads hands it over: 40 000
/// bytes of payload, the checksum field holding the pseudo-header sum only.
fn partial_super_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let mut t = TcpHeader::new(sport, dport, 1, 64240);
    t.ack = true;
    let tcp_len = u16::try_from(20 + payload.len()).unwrap();
    t.checksum = crate::wire::checksum::fold(crate::wire::checksum::pseudo_header(
        src,
        dst,
        crate::wire::protocol::TCP,
        tcp_len,
    ));
    let body = [&t.to_bytes()[..], &payload].concat();
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.octets(), dst.octets()).unwrap();
    ip.set_payload_len(body.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    [&ip.to_bytes()[..], &body].concat()
}

/// What the kernel does with a `NEEDS_CSUM` packet: finish its checksum.
fn finish_checksum(packet: &mut [u8]) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let sum = crate::wire::checksum::add(0, &packet[ihl..]);
    let value = !crate::wire::checksum::fold(sum);
    packet[ihl + 16..ihl + 18].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn super_packets_with_partial_checksums_are_labelled_and_rewritten_whole() {
    let mut a = ServerEngine::new(100, 1);
    let (server_label, proxy_label) = exchanged(&mut a);
    let mut state = a.export_session(VIRTUAL);
    state.physical = PHYSICAL;
    state.labelled = true;
    let mut b = ServerEngine::new(100, 2);
    assert_eq!(b.import_session(&state), 1);
    let room = ServerEngine::HEADROOM;

    // Out: labelled and rewritten in its headers; once the kernel finishes
    // the checksum it is right for the new source.
    let packet = partial_super_packet(VIRTUAL, REMOTE, 4000, 80);
    let mut buf = [vec![0; room], packet.clone()].concat();
    let start = b.forward(&mut buf, room, Side::Session, true).unwrap();
    assert_eq!(start, 0, "the label went in front");
    let mut out = buf[start..].to_vec();
    assert!(
        parse_ipv4(&out).is_err(),
        "the checksum is still partial: the kernel finishes it"
    );
    finish_checksum(&mut out);
    let info = parse_ipv4(&out).unwrap();
    assert_eq!((info.src_addr, info.label), (PHYSICAL, Some(proxy_label)));
    assert_eq!(&out[info.ip_header_len + 20..], &packet[40..]);

    // In: the label checked and stripped, the destination rewritten back.
    let mut inbound = partial_super_packet(REMOTE, PHYSICAL, 80, 4000);
    push_label(&mut inbound, server_label).unwrap();
    let mut buf = [vec![0; room], inbound].concat();
    let start = b.forward(&mut buf, room, Side::Uplink, true).unwrap();
    assert_eq!(start, room + 8, "the label is gone");
    let mut passed = buf[start..].to_vec();
    finish_checksum(&mut passed);
    let info = parse_ipv4(&passed).unwrap();
    assert_eq!((info.dst_addr, info.label), (VIRTUAL, None));
    // Nothing was dropped on the way.
    assert!(b.counters.dropped.is_empty(), "{:?}", b.counters.dropped);
}

#[test]
fn forged_labels_and_labels_from_sessions_are_dropped() {
    let mut a = ServerEngine::new(100, 1);
    let (server_label, _) = exchanged(&mut a);
    let mut state = a.export_session(VIRTUAL);
    state.physical = PHYSICAL;
    state.labelled = true;
    let mut b = ServerEngine::new(100, 2);
    b.import_session(&state);

    // The right label for another connection's ports.
    let mut other_port = tcp(REMOTE, 81, PHYSICAL, 4000, false, true);
    push_label(&mut other_port, server_label).unwrap();
    assert_eq!(run(&mut b, &other_port, Side::Uplink), None);
    // A label nobody gave out.
    let mut unknown = tcp(REMOTE, 80, PHYSICAL, 4000, false, true);
    push_label(&mut unknown, Label::new(server_label.get() ^ 1).unwrap()).unwrap();
    assert_eq!(run(&mut b, &unknown, Side::Uplink), None);
    assert_eq!(b.counters.dropped.get("forged_label"), Some(&2));
    // A session may not speak labels.
    let mut from_session = tcp(VIRTUAL, 4000, REMOTE, 80, false, true);
    push_label(&mut from_session, server_label).unwrap();
    assert_eq!(run(&mut b, &from_session, Side::Session), None);
    assert_eq!(b.counters.dropped.get("label_from_session"), Some(&1));
    // An offer on a SYN-ACK for a connection nobody opened.
    let mut stray = tcp(REMOTE, 80, VIRTUAL, 5000, true, true);
    push_label(&mut stray, server_label).unwrap();
    assert_eq!(run(&mut b, &stray, Side::Uplink), None);
    assert_eq!(
        b.counters.dropped.get("offer_for_unknown_connection"),
        Some(&1)
    );
}

#[test]
fn the_label_table_is_bounded() {
    let mut a = ServerEngine::new(10, 1);
    for port in 1..=50u16 {
        run(
            &mut a,
            &tcp(VIRTUAL, port, REMOTE, 80, true, false),
            Side::Session,
        )
        .unwrap();
    }
    assert_eq!(a.connections(), 10);
    assert_eq!(a.counters.evicted, 40);
}

#[test]
fn the_fast_path_learns_labelled_connections_only_and_forgets_them() {
    let tuple = FourTuple {
        session: SocketAddrV4::new(VIRTUAL, 4000),
        remote: SocketAddrV4::new(REMOTE, 80),
    };
    // Server a: the session was never labelled; nothing for the fast path.
    let mut a = ServerEngine::new(100, 1);
    a.enable_fast_path();
    let (server_label, proxy_label) = exchanged(&mut a);
    assert_eq!(a.take_fast_path_changes(), []);
    let mut state = a.export_session(VIRTUAL);
    let forget = FastPathChange::Forget {
        tuple,
        server_label: server_label.get(),
    };
    assert_eq!(a.take_fast_path_changes(), [forget]);

    // Server b: labelled on import, with both labels known.
    state.physical = PHYSICAL;
    state.labelled = true;
    let mut b = ServerEngine::new(100, 2);
    b.enable_fast_path();
    b.import_session(&state);
    let learn = FastPathChange::Connection {
        tuple,
        physical: PHYSICAL,
        server_label: server_label.get(),
        proxy_label: proxy_label.get(),
    };
    assert_eq!(b.take_fast_path_changes(), [learn]);

    // A new connection of the labelled session: learnt once the proxy's
    // offer arrived (its SYN-ACK), not at the session's SYN.
    let syn = run(
        &mut b,
        &tcp(VIRTUAL, 4001, REMOTE, 80, true, false),
        Side::Session,
    )
    .unwrap();
    let new_label = parse_ipv4(&syn).unwrap().label.unwrap();
    assert_eq!(b.take_fast_path_changes(), []);
    let mut synack = tcp(REMOTE, 80, PHYSICAL, 4001, true, true);
    push_label(&mut synack, Label::new(0x0123_4567).unwrap()).unwrap();
    run(&mut b, &synack, Side::Uplink).unwrap();
    assert_eq!(
        b.take_fast_path_changes(),
        [FastPathChange::Connection {
            tuple: FourTuple {
                session: SocketAddrV4::new(VIRTUAL, 4001),
                remote: SocketAddrV4::new(REMOTE, 80),
            },
            physical: PHYSICAL,
            server_label: new_label.get(),
            proxy_label: 0x0123_4567,
        }]
    );

    // Without enable_fast_path nothing is recorded.
    let mut c = ServerEngine::new(100, 3);
    c.import_session(&state);
    c.export_session(VIRTUAL);
    assert_eq!(c.take_fast_path_changes(), []);
}
