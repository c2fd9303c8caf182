//! Fuzz oracles, shared by the targets in `dataplane/fuzz/` and the
//! regression replay in `tests/main.rs` (feature `fuzzing`; not part of the
//! API).
//!
//! An oracle panics when a property fails; that panic is the finding. Crash
//! inputs go to `tests/data/fuzz_regression/`, which `cargo test` replays.

use core::net::Ipv4Addr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::rewrite::{rewrite_address, Endpoint};
use crate::wire::label::{
    find_label, insert_label, pop_label, push_label, strip_label, LABEL_OPTION_SPACE,
};
use crate::wire::{checksum, parse_ipv4, protocol, read_u16, tcp, udp, write_u16};
use crate::wire::{Ipv4Options, Ipv4Packet, Ipv4Repr, Label, LabelError, PacketInfo, Transport};

/// The classifier never panics, and what it accepts is consistent with itself
/// and with etherparse. Runs on `data` as it is and after
/// [`make_plausible`], which gets random bytes past the checksum checks.
pub fn parse_oracle(data: &[u8]) {
    check_parse(data);
    let mut plausible = data.to_vec();
    make_plausible(&mut plausible);
    check_parse(&plausible);
    check_reassembly(data);
}

/// Reassembly never panics and stays within its bounds, and what it gives
/// back is a whole, well-formed IPv4 packet. `data` is read as a sequence
/// of packets, each a 2-byte length and that many bytes (made plausible),
/// arriving 100 ms apart.
fn check_reassembly(data: &[u8]) {
    use crate::wire::reassembly::{Reassembler, ReassemblyConfig};
    use smoltcp::time::{Duration, Instant};
    let config = ReassemblyConfig {
        max_datagrams: 4,
        max_bytes: 8192,
        timeout: Duration::from_millis(1000),
    };
    let mut r = Reassembler::new(config);
    let (mut rest, mut now) = (data, 0i64);
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])) % 2048;
        let (chunk, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let mut packet = chunk.to_vec();
        make_plausible(&mut packet);
        if let Ok(Some(whole)) = r.push(Instant::from_millis(now), &packet) {
            let Ok(view) = Ipv4Packet::new_checked(&whole[..]) else {
                panic!("reassembled a malformed packet: {whole:02x?}");
            };
            assert!(!view.is_fragment());
            assert!(view.verify_checksum());
            assert_eq!(usize::from(view.total_len()), whole.len());
        }
        assert!(r.bytes() <= config.max_bytes && r.len() <= config.max_datagrams);
        now += 100;
        r.expire(Instant::from_millis(now));
    }
}

fn check_parse(data: &[u8]) {
    if let Ok(view) = Ipv4Packet::new_checked(data) {
        let _ = (
            view.payload(),
            view.verify_checksum(),
            Ipv4Repr::parse(&view),
        );
        Ipv4Options::new(view.options()).for_each(drop);
    }
    let Ok(info) = parse_ipv4(data) else {
        return;
    };
    assert_eq!(info.total_len, data.len());
    assert!((20..=60).contains(&info.ip_header_len) && info.ip_header_len % 4 == 0);
    assert!(info.ip_header_len + info.transport_header_len <= info.total_len);
    let options = data.get(20..info.ip_header_len).unwrap_or_default();
    assert_eq!(find_label(options), Ok(info.label));

    // etherparse accepts it too and reads the same fields.
    let sliced = SlicedPacket::from_ip(data);
    let Ok(SlicedPacket {
        net: Some(NetSlice::Ipv4(ip)),
        transport: Some(transport),
        ..
    }) = sliced
    else {
        panic!("etherparse refuses what we accept: {sliced:?}");
    };
    assert_eq!(ip.header().source_addr(), info.src_addr);
    assert_eq!(ip.header().destination_addr(), info.dst_addr);
    assert_eq!(ip.header().slice().len(), info.ip_header_len);
    let ports = match transport {
        TransportSlice::Tcp(tcp) => Some((tcp.source_port(), tcp.destination_port())),
        TransportSlice::Udp(udp) => Some((udp.source_port(), udp.destination_port())),
        TransportSlice::Icmpv4(icmp) => {
            let Transport::Icmp { icmp_type, .. } = info.transport else {
                panic!("{info:?}")
            };
            assert_eq!(icmp_type, icmp.type_u8());
            None
        }
        other => panic!("unexpected transport {other:?}"),
    };
    assert_eq!(ports, info.ports());
}

/// Rewriting, label insertion and stripping never panic and leave a refused
/// packet unchanged. For a packet that classifies: a rewrite keeps it valid
/// and changes only the address, the reverse rewrite restores it, and a label
/// can be inserted and stripped again.
///
/// Layout of `data`: a control byte (bit 0: destination instead of source;
/// bit 1: [`make_plausible`] first), 4 bytes of new address, 4 bytes of label,
/// then the packet.
pub fn rewrite_oracle(data: &[u8]) {
    let [control, a, b, c, d, l0, l1, l2, l3, packet @ ..] = data else {
        return;
    };
    let endpoint = match control & 1 {
        0 => Endpoint::Source,
        _ => Endpoint::Destination,
    };
    let addr = Ipv4Addr::new(*a, *b, *c, *d);
    let label = Label::new(u32::from_be_bytes([*l0, *l1, *l2, *l3]));
    let mut packet = packet.to_vec();
    if control & 2 != 0 {
        make_plausible(&mut packet);
    }

    check_refusals_leave_packet(&packet, endpoint, addr, label);
    let Ok(info) = parse_ipv4(&packet) else {
        return;
    };
    check_rewrite_roundtrip(&packet, &info, endpoint, addr);
    check_label_roundtrip(&packet, &info, label);
}

fn check_refusals_leave_packet(
    packet: &[u8],
    endpoint: Endpoint,
    addr: Ipv4Addr,
    label: Option<Label>,
) {
    let mut scratch = packet.to_vec();
    if rewrite_address(&mut scratch, endpoint, addr).is_err() {
        assert_eq!(scratch, packet, "a refused rewrite changed the packet");
    }
    let mut scratch = [&[0; LABEL_OPTION_SPACE][..], packet].concat();
    if strip_label(&mut scratch, LABEL_OPTION_SPACE).is_err() {
        assert_eq!(
            &scratch[LABEL_OPTION_SPACE..],
            packet,
            "a refused strip changed the packet"
        );
    }
    let mut scratch = packet.to_vec();
    if pop_label(&mut scratch).is_err() {
        assert_eq!(scratch, packet, "a refused pop changed the packet");
    }
    if let Some(label) = label {
        let mut scratch = [&[0; LABEL_OPTION_SPACE][..], packet].concat();
        if insert_label(&mut scratch, LABEL_OPTION_SPACE, label).is_err() {
            assert_eq!(
                &scratch[LABEL_OPTION_SPACE..],
                packet,
                "a refused insert changed the packet"
            );
        }
        let mut scratch = packet.to_vec();
        if push_label(&mut scratch, label).is_err() {
            assert_eq!(scratch, packet, "a refused push changed the packet");
        }
        // No headroom at all.
        let mut scratch = packet.to_vec();
        assert!(insert_label(&mut scratch, 0, label).is_err());
        assert_eq!(scratch, packet);
    }
}

fn check_rewrite_roundtrip(packet: &[u8], info: &PacketInfo, endpoint: Endpoint, addr: Ipv4Addr) {
    let mut rewritten = packet.to_vec();
    let old = match rewrite_address(&mut rewritten, endpoint, addr) {
        Ok(old) => old,
        Err(error) => panic!("a valid packet could not be rewritten: {error}"),
    };
    let expected_old = match endpoint {
        Endpoint::Source => info.src_addr,
        Endpoint::Destination => info.dst_addr,
    };
    assert_eq!(old, expected_old);
    let after = match parse_ipv4(&rewritten) {
        Ok(after) => after,
        Err(error) => panic!("the rewrite broke the packet: {error}"),
    };
    let mut expected = *info;
    match endpoint {
        Endpoint::Source => expected.src_addr = addr,
        Endpoint::Destination => expected.dst_addr = addr,
    }
    assert_eq!(after, expected);

    assert_eq!(rewrite_address(&mut rewritten, endpoint, old), Ok(addr));
    assert_eq!(
        normalize_zero_checksums(&rewritten),
        normalize_zero_checksums(packet),
        "rewrite and reverse did not restore the packet"
    );
}

fn check_label_roundtrip(packet: &[u8], info: &PacketInfo, label: Option<Label>) {
    let mut buf = [&[0; LABEL_OPTION_SPACE][..], packet].concat();
    match (info.label, label) {
        (None, Some(label)) => match insert_label(&mut buf, LABEL_OPTION_SPACE, label) {
            Ok(start) => {
                assert_eq!(start, 0);
                let labelled = match parse_ipv4(&buf) {
                    Ok(labelled) => labelled,
                    Err(error) => panic!("inserting a label broke the packet: {error}"),
                };
                assert_eq!(labelled.label, Some(label));
                assert_eq!(
                    labelled.ip_header_len,
                    info.ip_header_len + LABEL_OPTION_SPACE
                );
                assert_eq!(
                    (labelled.transport, labelled.src_addr),
                    (info.transport, info.src_addr)
                );
                assert_eq!(
                    strip_label(&mut buf, 0),
                    Ok(Some((label, LABEL_OPTION_SPACE)))
                );
                assert_eq!(
                    normalize_zero_checksums(&buf[LABEL_OPTION_SPACE..]),
                    normalize_zero_checksums(packet)
                );
            }
            Err(LabelError::OptionsFull | LabelError::TooLong) => {}
            Err(error) => panic!("a valid packet could not be labelled: {error}"),
        },
        (Some(carried), _) => {
            let start = match strip_label(&mut buf, LABEL_OPTION_SPACE) {
                Ok(Some((stripped, start))) if stripped == carried => start,
                other => panic!("could not strip {carried}: {other:?}"),
            };
            let stripped = buf.get(start..).unwrap_or_default().to_vec();
            let after = match parse_ipv4(&stripped) {
                Ok(after) => after,
                Err(error) => panic!("stripping the label broke the packet: {error}"),
            };
            assert_eq!(after.label, None);
            assert_eq!(
                (after.transport, after.dst_addr),
                (info.transport, info.dst_addr)
            );
            assert_eq!(
                after.ip_header_len + (start - LABEL_OPTION_SPACE),
                info.ip_header_len
            );
            // Labelling what was stripped, and stripping again, gives it back.
            let mut again = stripped.clone();
            match push_label(&mut again, carried) {
                Ok(()) => {
                    assert_eq!(pop_label(&mut again), Ok(Some(carried)));
                    assert_eq!(
                        normalize_zero_checksums(&again),
                        normalize_zero_checksums(&stripped)
                    );
                }
                // A label placed without padding frees only 4 bytes.
                Err(LabelError::OptionsFull) => {}
                Err(error) => panic!("could not label a stripped packet: {error}"),
            }
        }
        (None, None) => {}
    }
}

/// 0x0000 and 0xFFFF both encode a zero sum in the IPv4 header and TCP
/// checksums; an incremental update may turn the second into the first.
fn normalize_zero_checksums(packet: &[u8]) -> Vec<u8> {
    let mut packet = packet.to_vec();
    let header_len = Ipv4Packet::new_unchecked(&packet[..]).header_len();
    let is_tcp = Ipv4Packet::new_unchecked(&packet[..]).protocol() == protocol::TCP;
    let tcp_checksum = tcp::CHECKSUM.start + header_len..tcp::CHECKSUM.end + header_len;
    for (field, applies) in [(10..12, true), (tcp_checksum, is_tcp)] {
        if applies && read_u16(&packet, field.clone()) == 0xFFFF {
            write_u16(&mut packet, field, 0);
        }
    }
    packet
}

/// Makes random bytes more likely to classify: version 4, total length and
/// UDP length set to fit the buffer, all checksums filled (a UDP checksum of
/// 0 stays 0). Leaves what it cannot make sense of alone.
pub fn make_plausible(packet: &mut [u8]) {
    let Some(first) = packet.first_mut() else {
        return;
    };
    *first = 0x40 | (*first & 0x0F);
    let Ok(total_len) = u16::try_from(packet.len()) else {
        return;
    };
    Ipv4Packet::new_unchecked(&mut *packet).set_total_len(total_len);
    let Ok(mut view) = Ipv4Packet::new_checked(&mut *packet) else {
        return;
    };
    let (src, dst, proto) = (view.src_addr(), view.dst_addr(), view.protocol());
    let payload = view.payload_mut();
    let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    match proto {
        protocol::TCP if payload.len() >= 20 => {
            write_u16(payload, tcp::CHECKSUM, 0);
            let sum = checksum::add(
                checksum::pseudo_header(src, dst, proto, payload_len),
                payload,
            );
            write_u16(payload, tcp::CHECKSUM, !checksum::fold(sum));
        }
        protocol::UDP if payload.len() >= udp::HEADER_LEN => {
            write_u16(payload, 4..6, payload_len);
            if read_u16(payload, udp::CHECKSUM) != 0 {
                write_u16(payload, udp::CHECKSUM, 0);
                let sum = checksum::add(
                    checksum::pseudo_header(src, dst, proto, payload_len),
                    payload,
                );
                let value = match !checksum::fold(sum) {
                    0 => 0xFFFF,
                    value => value,
                };
                write_u16(payload, udp::CHECKSUM, value);
            }
        }
        protocol::ICMP if payload.len() >= 4 => {
            write_u16(payload, 2..4, 0);
            let value = checksum::checksum(payload);
            write_u16(payload, 2..4, value);
        }
        _ => {}
    }
    view.fill_checksum();
}
