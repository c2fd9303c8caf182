//! The proxy box engine driven packet by packet, without I/O: handshakes,
//! labels, forged labels, floods, junk.

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, TcpHeader};
use smoltcp::time::Instant;

use super::*;
use crate::vnic::HEADROOM;
use crate::wire::label::{find_label, push_label};

const SESSION: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const PHYSICAL: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 100);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const SPORT: u16 = 41000;
const DPORT: u16 = 80;

#[derive(Clone, Copy, Default)]
struct Seg {
    syn: bool,
    ack: bool,
    seq: u32,
    ack_no: u32,
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seg: Seg, payload: &[u8]) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, seg.seq, 64240);
    t.syn = seg.syn;
    t.ack = seg.ack;
    t.acknowledgment_number = seg.ack_no;
    if seg.syn {
        t.set_options_raw(&[2, 4, 0x05, 0xb4]).unwrap(); // MSS 1460
    }
    t.checksum = t
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), payload)
        .unwrap();
    let body = [&t.to_bytes()[..], payload].concat();
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.octets(), dst.octets()).unwrap();
    ip.set_payload_len(body.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    [&ip.to_bytes()[..], &body].concat()
}

/// A session's SYN from `src`:`port` to REMOTE:DPORT.
fn session_syn(src: Ipv4Addr, port: u16) -> Vec<u8> {
    tcp(
        src,
        port,
        REMOTE,
        DPORT,
        Seg {
            syn: true,
            seq: 1,
            ..Seg::default()
        },
        b"",
    )
}

fn labelled(mut packet: Vec<u8>, label: Label) -> Vec<u8> {
    push_label(&mut packet, label).unwrap();
    packet
}

fn t(ms: i64) -> Instant {
    Instant::from_millis(ms)
}

/// Sequence and ack numbers of a TCP packet the engine sent.
fn seq_ack(packet: &[u8]) -> (u32, u32) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let tcp = TcpHeader::from_slice(&packet[ihl..]).unwrap().0;
    (tcp.sequence_number, tcp.acknowledgment_number)
}

struct Connected {
    engine: ProxyEngine,
    id: VnicId,
    /// The proxy's label, offered on its SYN-ACK.
    proxy_label: Label,
    /// Next sequence numbers of the session and the VNIC.
    session_seq: u32,
    vnic_seq: u32,
}

/// A connection set up with label offers on both sides, the session's
/// handshake completed.
fn connected() -> Connected {
    connected_with(false)
}

/// The packets in the outbox as the TUN device hands them on: with offload,
/// a packet marked for it gets its checksum finished the way the kernel
/// finishes it (the packet is not cut into segments here).
fn sent(engine: &mut ProxyEngine) -> Vec<(tun_rs::VirtioNetHdr, Vec<u8>)> {
    let out = engine
        .outbox
        .frames()
        .map(|f| {
            let header = tun_rs::VirtioNetHdr::decode(&f[..HEADROOM]).unwrap();
            let mut packet = f[HEADROOM..].to_vec();
            if header.flags & 1 != 0 {
                let start = usize::from(header.csum_start);
                let field = start + usize::from(header.csum_offset);
                let sum = crate::wire::checksum::add(0, &packet[start..]);
                let value = !crate::wire::checksum::fold(sum);
                packet[field..field + 2].copy_from_slice(&value.to_be_bytes());
            }
            (header, packet)
        })
        .collect();
    engine.outbox.clear();
    out
}

/// As [`connected`], with the TUN offloads on (or off).
fn connected_with(offload: bool) -> Connected {
    let mut engine = ProxyEngine::new(ProxyConfig::default(), 7);
    engine.set_offload(offload);
    connected_in(engine)
}

/// As [`connected`], in an engine of the caller's.
fn connected_in(mut engine: ProxyEngine) -> Connected {
    let server_label = Label::new(0x5e5e_0001).unwrap();
    let mut syn = labelled(
        tcp(
            SESSION,
            SPORT,
            REMOTE,
            DPORT,
            Seg {
                syn: true,
                seq: 1000,
                ..Seg::default()
            },
            b"",
        ),
        server_label,
    );
    engine.handle_packet(t(0), &mut syn);
    let events = engine.take_events();
    let Some(Event::Connect { id, tuple }) = events.first().cloned() else {
        panic!("no connect event: {events:?}");
    };
    assert_eq!(tuple.session, SocketAddrV4::new(SESSION, SPORT));
    assert_eq!(tuple.remote, SocketAddrV4::new(REMOTE, DPORT));
    assert!(
        engine.outbox.is_empty(),
        "SYN-ACK before the destination answered"
    );

    engine.accept(id);
    engine.poll_vnic(t(1), id);
    let synack = sent(&mut engine).swap_remove(0).1;
    let info = parse_ipv4(&synack).unwrap();
    assert_eq!((info.src_addr, info.dst_addr), (REMOTE, SESSION));
    let proxy_label = info
        .label
        .expect("the proxy offers its label on the SYN-ACK");
    assert_ne!(proxy_label, server_label);
    let (vnic_isn, ack) = seq_ack(&synack);
    assert_eq!(ack, 1001);
    let mut ack_seg = tcp(
        SESSION,
        SPORT,
        REMOTE,
        DPORT,
        Seg {
            ack: true,
            seq: 1001,
            ack_no: vnic_isn.wrapping_add(1),
            ..Seg::default()
        },
        b"",
    );
    engine.handle_packet(t(2), &mut ack_seg);
    assert_eq!(
        engine.socket_mut(id).unwrap().state(),
        tcp::State::Established
    );
    Connected {
        engine,
        id,
        proxy_label,
        session_seq: 1001,
        vnic_seq: vnic_isn.wrapping_add(1),
    }
}

fn received(engine: &mut ProxyEngine, id: VnicId) -> Vec<u8> {
    let socket = engine.socket_mut(id).unwrap();
    let mut buf = vec![0; 4096];
    let n = socket.recv_slice(&mut buf).unwrap_or(0);
    buf.truncate(n);
    buf
}

#[test]
fn a_handshake_is_held_until_the_destination_accepts_and_labels_are_offered() {
    let c = connected();
    assert_eq!(c.engine.vnics(), 1);
    assert_eq!(c.engine.labels_in_use(), 0);
}

#[test]
fn a_refused_destination_resets_the_session_and_frees_the_vnic() {
    let mut engine = ProxyEngine::new(ProxyConfig::default(), 1);
    let mut syn = tcp(
        SESSION,
        SPORT,
        REMOTE,
        DPORT,
        Seg {
            syn: true,
            seq: 5,
            ..Seg::default()
        },
        b"",
    );
    engine.handle_packet(t(0), &mut syn);
    let Some(Event::Connect { id, .. }) = engine.take_events().pop() else {
        panic!("no connect")
    };
    engine.refuse(id);
    engine.poll_vnic(t(1), id);
    let rst = engine.outbox.packets().next().unwrap().to_vec();
    let ihl = usize::from(rst[0] & 0x0f) * 4;
    assert!(
        TcpHeader::from_slice(&rst[ihl..]).unwrap().0.rst,
        "RST to the session"
    );
    assert_eq!(engine.vnics(), 0);
    assert!(matches!(
        engine.take_events().pop(),
        Some(Event::Closed { .. })
    ));
}

#[test]
fn after_a_move_only_the_right_label_from_the_right_place_reaches_the_connection() {
    let mut c = connected();
    assert_eq!(c.engine.session_moved(SESSION, SESSION, PHYSICAL), 1);
    assert_eq!(c.engine.labels_in_use(), 1);
    let seg = |seq| Seg {
        ack: true,
        seq,
        ack_no: c.vnic_seq,
        ..Seg::default()
    };

    // From the session's new address, with the proxy's label: delivered.
    let mut good = labelled(
        tcp(PHYSICAL, SPORT, REMOTE, DPORT, seg(c.session_seq), b"good"),
        c.proxy_label,
    );
    c.engine.handle_packet(t(10), &mut good);
    assert_eq!(received(&mut c.engine, c.id), b"good");
    c.session_seq += 4;

    // What the VNIC sends now (the delayed ACK) goes to the physical
    // address, with the server's label.
    c.engine.poll_vnic(t(20), c.id);
    let out: Vec<Vec<u8>> = c.engine.outbox.packets().map(<[u8]>::to_vec).collect();
    c.engine.outbox.clear();
    let ack = out.last().expect("an ACK for the data");
    let info = parse_ipv4(ack).unwrap();
    assert_eq!(info.dst_addr, PHYSICAL);
    assert_eq!(info.label, Label::new(0x5e5e_0001));

    let forged = [
        // The right label from another address (a session elsewhere).
        labelled(
            tcp(
                Ipv4Addr::new(10, 2, 0, 101),
                SPORT,
                REMOTE,
                DPORT,
                seg(c.session_seq),
                b"evil",
            ),
            c.proxy_label,
        ),
        // The right label, the right address, another connection's port.
        labelled(
            tcp(
                PHYSICAL,
                SPORT,
                REMOTE,
                DPORT + 1,
                seg(c.session_seq),
                b"evil",
            ),
            c.proxy_label,
        ),
    ];
    for mut p in forged {
        c.engine.handle_packet(t(11), &mut p);
    }
    assert_eq!(c.engine.counters.dropped.get("forged_label"), Some(&2));
    // A label nobody gave out.
    let mut unknown = labelled(
        tcp(PHYSICAL, SPORT, REMOTE, DPORT, seg(c.session_seq), b"evil"),
        Label::new(c.proxy_label.get() ^ 0xffff).unwrap(),
    );
    c.engine.handle_packet(t(12), &mut unknown);
    assert_eq!(c.engine.counters.dropped.get("unknown_label"), Some(&1));
    // The old tuple, unlabelled, from the old address (now someone else's):
    // not this connection any more.
    let mut reused = tcp(SESSION, SPORT, REMOTE, DPORT, seg(c.session_seq), b"evil");
    c.engine.handle_packet(t(13), &mut reused);
    assert_eq!(c.engine.counters.dropped.get("no_connection"), Some(&1));
    assert_eq!(
        received(&mut c.engine, c.id),
        b"",
        "a forged segment got through"
    );
}

#[test]
fn a_new_session_at_a_reused_address_gets_its_own_vnic() {
    let mut c = connected();
    c.engine.session_moved(SESSION, SESSION, PHYSICAL);
    let mut syn = tcp(
        SESSION,
        SPORT,
        REMOTE,
        DPORT,
        Seg {
            syn: true,
            seq: 9000,
            ..Seg::default()
        },
        b"",
    );
    c.engine.handle_packet(t(20), &mut syn);
    let Some(Event::Connect { id, tuple }) = c.engine.take_events().pop() else {
        panic!("the reused tuple got no VNIC")
    };
    assert_ne!(id, c.id);
    assert_eq!(tuple.session, SocketAddrV4::new(SESSION, SPORT));
    assert_eq!(c.engine.vnics(), 2);
}

#[test]
fn a_syn_flood_is_bounded_per_session_and_overall() {
    let config = ProxyConfig {
        max_vnics: 300,
        max_handshakes_per_session: 100,
        ..ProxyConfig::default()
    };
    let mut engine = ProxyEngine::new(config, 3);
    for port in 1..=1000u16 {
        let mut syn = session_syn(SESSION, port);
        engine.handle_packet(t(0), &mut syn);
    }
    assert_eq!(engine.vnics(), 100);
    assert_eq!(engine.counters.dropped.get("handshake_limit"), Some(&900));
    for host in 1..=5u8 {
        for port in 1..=100u16 {
            let src = Ipv4Addr::new(10, 1, 1, host);
            let mut syn = session_syn(src, port);
            engine.handle_packet(t(0), &mut syn);
        }
    }
    assert_eq!(engine.vnics(), 300);
    assert_eq!(engine.counters.dropped.get("vnic_limit"), Some(&300));
    // Nothing was sent to anyone: handshakes wait for their destinations.
    assert!(engine.outbox.is_empty());
}

#[test]
fn junk_is_counted_by_reason_and_changes_nothing() {
    let mut c = connected();
    let good = tcp(
        SESSION,
        SPORT,
        REMOTE,
        DPORT,
        Seg {
            ack: true,
            seq: c.session_seq,
            ack_no: c.vnic_seq,
            ..Seg::default()
        },
        b"data",
    );
    let mut bad_checksum = good.clone();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] ^= 0xff;
    let refill = |mut p: Vec<u8>| {
        crate::wire::Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    };
    let mut fragment = good.clone();
    fragment[6] |= 0x20; // more fragments
    let mut fragment = refill(fragment);
    let mut unknown_protocol = good.clone();
    unknown_protocol[9] = 253;
    let mut unknown_protocol = refill(unknown_protocol);
    let mut truncated = good.clone();
    truncated.truncate(30);
    let mut port_zero = tcp(
        SESSION,
        0,
        REMOTE,
        DPORT,
        Seg {
            syn: true,
            ..Seg::default()
        },
        b"",
    );
    let mut stray = tcp(
        SESSION,
        SPORT + 1,
        REMOTE,
        DPORT,
        Seg {
            ack: true,
            ..Seg::default()
        },
        b"x",
    );
    for p in [
        &mut bad_checksum,
        &mut fragment,
        &mut unknown_protocol,
        &mut truncated,
        &mut port_zero,
        &mut stray,
    ] {
        c.engine.handle_packet(t(30), p);
    }
    let d = &c.engine.counters.dropped;
    assert_eq!(d.get("bad_transport_checksum"), Some(&1), "{d:?}");
    assert_eq!(d.get("fragment"), Some(&1), "{d:?}");
    assert_eq!(d.get("unsupported_protocol"), Some(&1), "{d:?}");
    assert_eq!(d.get("no_connection"), Some(&1), "{d:?}");
    assert_eq!(d.get("port_zero"), Some(&1), "{d:?}");
    assert_eq!(d.values().sum::<u64>(), 6, "{d:?}");
    assert_eq!(received(&mut c.engine, c.id), b"");
    assert_eq!(c.engine.vnics(), 1);
    assert!(find_label(&[]).unwrap().is_none());
}

#[test]
fn a_session_that_stops_answering_is_probed_then_dropped() {
    // Short keep-alive and timeout.
    let config = ProxyConfig {
        vnic: crate::vnic::VnicConfig {
            keep_alive: Some(std::time::Duration::from_secs(1)),
            idle_timeout: std::time::Duration::from_secs(3),
            ..crate::vnic::VnicConfig::default()
        },
        ..ProxyConfig::default()
    };
    let Connected {
        mut engine,
        id,
        session_seq,
        vnic_seq,
        ..
    } = connected_in(ProxyEngine::new(config, 7));
    // Some data from the session, read by the relay, acknowledged.
    let mut data = tcp(
        SESSION,
        SPORT,
        REMOTE,
        DPORT,
        Seg {
            ack: true,
            seq: session_seq,
            ack_no: vnic_seq,
            ..Seg::default()
        },
        b"hello",
    );
    engine.handle_packet(t(3), &mut data);
    assert_eq!(received(&mut engine, id), b"hello");
    engine.poll_vnic(t(4), id);
    engine.poll_timers(t(50));
    engine.outbox.clear();
    assert!(engine.next_deadline().is_some(), "no timer for keep-alives");
    // The session goes silent: time passes, only timers run.
    let mut probes = 0;
    for ms in (100..10_000).step_by(100) {
        engine.poll_timers(t(ms));
        probes += engine.outbox.len();
        engine.outbox.clear();
    }
    assert!(probes >= 2, "{probes} keep-alive probes");
    assert_eq!(engine.vnics(), 0, "the silent connection is still there");
}

/// The relay writes more than one MSS: with offload the VNIC sends it as one
/// large segment, marked for the kernel to cut at the MSS and to finish the
/// checksum; once finished, the checksum is right (etherparse's). Also for a
/// moved session: labelled and rewritten first, then marked.
#[test]
fn with_offload_large_segments_leave_whole_for_the_kernel_to_cut() {
    for moved in [false, true] {
        let mut c = connected_with(true);
        if moved {
            c.engine.session_moved(SESSION, SESSION, PHYSICAL);
        }
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let n = c
            .engine
            .socket_mut(c.id)
            .unwrap()
            .send_slice(&data)
            .unwrap();
        assert_eq!(n, data.len());
        c.engine.poll_vnic(t(10), c.id);
        let out = sent(&mut c.engine);
        let (header, packet) = out.iter().find(|(_, p)| p.len() > 1500).unwrap_or_else(|| {
            panic!(
                "no large segment: {:?}",
                out.iter().map(|(_, p)| p.len()).collect::<Vec<_>>()
            )
        });
        let info = parse_ipv4(packet).expect("a valid packet once the checksum is finished");
        let ihl = info.ip_header_len;
        assert_eq!(ihl, if moved { 28 } else { 20 }, "label option");
        assert_eq!(info.dst_addr, if moved { PHYSICAL } else { SESSION });
        assert_eq!(header.flags, 1, "checksum left to the kernel");
        assert_eq!(header.gso_type, 1, "TCPv4 segmentation");
        // The VNIC's MTU (1492) less 40 bytes of headers; the session's MSS
        // (1460) is larger.
        assert_eq!(header.gso_size, 1452);
        assert_eq!(usize::from(header.csum_start), ihl);
        assert_eq!(header.csum_offset, 16);
        assert_eq!(usize::from(header.hdr_len), ihl + 20);
        let (tcp_header, payload) = TcpHeader::from_slice(&packet[ihl..]).unwrap();
        assert_eq!(
            tcp_header.checksum,
            tcp_header
                .calc_checksum_ipv4_raw(
                    packet[12..16].try_into().unwrap(),
                    packet[16..20].try_into().unwrap(),
                    payload
                )
                .unwrap()
        );
        assert_eq!(payload, &data[..payload.len()]);
        assert!(payload.len() > 1452 && packet.len() <= crate::vnic::MAX_OFFLOAD_PACKET);
    }
}

/// A GSO super-packet from the session (40 000 bytes, its checksum partial
/// as the kernel hands it over) goes into the VNIC as one segment: all of
/// it is received, and one ACK covers it.
#[test]
fn a_super_packet_with_a_partial_checksum_is_taken_whole_and_acked_once() {
    let mut c = connected();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
    let seg = Seg {
        ack: true,
        seq: c.session_seq,
        ack_no: c.vnic_seq,
        ..Seg::default()
    };
    let mut packet = tcp(SESSION, SPORT, REMOTE, DPORT, seg, &data);
    // What the kernel leaves in the field: the pseudo-header sum only.
    let partial = crate::wire::checksum::fold(crate::wire::checksum::pseudo_header(
        SESSION,
        REMOTE,
        crate::wire::protocol::TCP,
        u16::try_from(20 + data.len()).unwrap(),
    ));
    packet[36..38].copy_from_slice(&partial.to_be_bytes());
    assert!(parse_ipv4(&packet).is_err(), "not a complete checksum");
    c.engine.ingest_partial(t(10), &mut packet);
    c.engine.flush(t(10));
    let acks: Vec<(u32, u32)> = c.engine.outbox.packets().map(seq_ack).collect();
    c.engine.outbox.clear();
    assert_eq!(acks, [(c.vnic_seq, c.session_seq.wrapping_add(40_000))]);
    let socket = c.engine.socket_mut(c.id).unwrap();
    let mut got = vec![0; 65536];
    let n = socket.recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], &data[..]);
    assert!(c.engine.counters.dropped.is_empty());
}

const SERVICE_SOURCE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// The session's first data segment on a connection the proxy box opened
/// to its service (port 5901) from `SERVICE_SOURCE`:`port`, sent from
/// `from` (its virtual or physical address).
fn service_data(from: Ipv4Addr, port: u16, vnic_seq: u32, payload: &[u8]) -> Vec<u8> {
    tcp(
        from,
        5901,
        SERVICE_SOURCE,
        port,
        Seg {
            ack: true,
            seq: 7001,
            ack_no: vnic_seq,
            ..Seg::default()
        },
        payload,
    )
}

/// The proxy box opens a connection to a session's service; returns the
/// engine, the VNIC, its SYN (as sent) and the session's SYN-ACK (labelled
/// with the server's offer), from `from` (the session's virtual or physical
/// address).
fn opened(engine: &mut ProxyEngine, from: Ipv4Addr, server_label: Label) -> (VnicId, Label, u32) {
    let id = engine
        .open(t(0), SocketAddrV4::new(SESSION, 5901), SERVICE_SOURCE)
        .unwrap();
    engine.flush(t(0));
    let syn = sent(engine).swap_remove(0).1;
    let info = parse_ipv4(&syn).unwrap();
    let Transport::Tcp {
        src_port, flags, ..
    } = info.transport
    else {
        panic!("not TCP: {info:?}");
    };
    assert!(flags.contains(TcpFlags::SYN) && !flags.contains(TcpFlags::ACK));
    assert_eq!(info.src_addr, SERVICE_SOURCE);
    assert!(EPHEMERAL_PORTS.contains(&src_port));
    let proxy_label = info.label.expect("the proxy offers its label on its SYN");
    let (isn, _) = seq_ack(&syn);
    let mut synack = labelled(
        tcp(
            from,
            5901,
            SERVICE_SOURCE,
            src_port,
            Seg {
                syn: true,
                ack: true,
                seq: 7000,
                ack_no: isn.wrapping_add(1),
            },
            b"",
        ),
        server_label,
    );
    engine.handle_packet(t(1), &mut synack);
    assert_eq!(
        engine.socket_mut(id).unwrap().state(),
        tcp::State::Established,
        "{:?}",
        engine.counters
    );
    // The handshake's last ACK carries no label (the session never moved).
    let ack = sent(engine).swap_remove(0).1;
    let ack_info = parse_ipv4(&ack).unwrap();
    assert_eq!(ack_info.dst_addr, from);
    (id, proxy_label, isn.wrapping_add(1))
}

#[test]
fn the_proxy_box_opens_a_connection_to_a_session_and_it_follows_a_move() {
    let mut engine = ProxyEngine::new(ProxyConfig::default(), 11);
    let server_label = Label::new(0x5e5e_0042).unwrap();
    let (id, _, vnic_seq) = opened(&mut engine, SESSION, server_label);
    assert_eq!(engine.counters.dropped, BTreeMap::new());

    // Data from the session, unlabelled, found by its tuple.
    let tuple = engine.entry(id).unwrap().vnic.tuple();
    let mut data = service_data(SESSION, tuple.remote.port(), vnic_seq, b"hello");
    engine.handle_packet(t(2), &mut data);
    assert_eq!(received(&mut engine, id), b"hello");

    // The session moves across subnets: what the VNIC sends now goes to
    // its physical address with the server's label.
    assert_eq!(engine.session_moved(SESSION, SESSION, PHYSICAL), 1);
    engine.socket_mut(id).unwrap().send_slice(b"world").unwrap();
    engine.poll_vnic(t(3), id);
    let out = sent(&mut engine);
    let info = parse_ipv4(&out.last().unwrap().1).unwrap();
    assert_eq!(info.dst_addr, PHYSICAL);
    assert_eq!(info.label, Some(server_label));
}

#[test]
fn a_connection_opened_to_a_migrated_session_is_answered_from_its_physical_address() {
    let mut engine = ProxyEngine::new(ProxyConfig::default(), 12);
    engine.session_moved(SESSION, SESSION, PHYSICAL);
    let server_label = Label::new(0x5e5e_0043).unwrap();
    let (id, proxy_label, vnic_seq) = opened(&mut engine, PHYSICAL, server_label);
    let tuple = engine.entry(id).unwrap().vnic.tuple();
    assert_eq!(tuple.session, SocketAddrV4::new(SESSION, 5901));
    // From now on found by label only: the tuple is free for a new session
    // at the old address.
    assert!(!engine.by_tuple.contains_key(&tuple));
    let mut data = labelled(
        service_data(PHYSICAL, tuple.remote.port(), vnic_seq, b"moved"),
        proxy_label,
    );
    engine.handle_packet(t(2), &mut data);
    assert_eq!(received(&mut engine, id), b"moved");
}

#[test]
fn vnic_buffers_stay_within_the_memory_budget() {
    // Half of it holds 2 full VNICs (2 x 2 x 64 KiB); the other half 16
    // small ones (2 x 8 KiB).
    let vnic = VnicConfig {
        rx_buffer: 64 * 1024,
        tx_buffer: 64 * 1024,
        min_buffer: 8 * 1024,
        memory_budget: 512 * 1024,
        ..VnicConfig::default()
    };
    let mut engine = ProxyEngine::new(
        ProxyConfig {
            vnic,
            ..ProxyConfig::default()
        },
        5,
    );
    engine.set_offload(true);
    let mut ids = Vec::new();
    for port in 1..=20u16 {
        let mut syn = session_syn(SESSION, port);
        engine.handle_packet(t(0), &mut syn);
        for event in engine.take_events() {
            if let Event::Connect { id, .. } = event {
                ids.push(id);
            }
        }
    }
    let sizes: Vec<usize> = ids
        .iter()
        .map(|id| engine.socket_mut(*id).unwrap().recv_capacity())
        .collect();
    let mut expected = vec![65536; 2];
    expected.extend([8192; 16]);
    assert_eq!(sizes, expected, "two full, sixteen small");
    assert_eq!(engine.counters.dropped.get("memory_limit"), Some(&2));
    assert_eq!(engine.counters.vnics_reduced, 16);
    assert_eq!(engine.vnic_buffer_bytes(), 512 * 1024);
    // A reclaimed VNIC gives its bytes back: a new one fits again (small:
    // the first half of the budget is still taken).
    engine.refuse(ids[0]);
    engine.flush(t(1));
    assert_eq!(engine.vnic_buffer_bytes(), 384 * 1024);
    let mut syn = session_syn(SESSION, 21);
    engine.handle_packet(t(2), &mut syn);
    let Some(Event::Connect { id, .. }) = engine
        .take_events()
        .into_iter()
        .find(|e| matches!(e, Event::Connect { .. }))
    else {
        panic!("no VNIC after the budget was freed");
    };
    assert_eq!(engine.socket_mut(id).unwrap().recv_capacity(), 8192);
}
