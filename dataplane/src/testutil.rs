//! Test helpers: a seeded PRNG and packets built by etherparse, whose
//! checksums serve as the independent reference.

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpNumber, Ipv4Header, Ipv4Options};
use etherparse::{TcpHeader, UdpHeader};

use crate::wire::label::{option_bytes, Label};

/// SplitMix64: small, fast, deterministic.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    pub(crate) fn next_u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    /// Uniform-enough in `0..n`; 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    pub(crate) fn array4(&mut self) -> [u8; 4] {
        self.next_u32().to_be_bytes()
    }
}

/// The transport part of a test packet.
#[derive(Debug, Clone, Copy)]
pub(crate) enum L4 {
    Tcp,
    Udp,
    /// UDP sent without a checksum (field 0).
    UdpNoChecksum,
    IcmpEcho,
    IcmpOther,
}

/// Builds a valid packet with etherparse computing every checksum.
pub(crate) fn build(
    rng: &mut Rng,
    src: [u8; 4],
    dst: [u8; 4],
    ip_options: &[u8],
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let transport: Vec<u8> = match l4 {
        L4::Tcp => {
            let mut tcp = TcpHeader::new(
                rng.next_u16(),
                rng.next_u16(),
                rng.next_u32(),
                rng.next_u16(),
            );
            let flags = rng.next_u64();
            (tcp.fin, tcp.syn, tcp.rst, tcp.psh) = (
                flags & 1 != 0,
                flags & 2 != 0,
                flags & 4 != 0,
                flags & 8 != 0,
            );
            (tcp.ack, tcp.urg, tcp.ece, tcp.cwr) = (
                flags & 16 != 0,
                flags & 32 != 0,
                flags & 64 != 0,
                flags & 128 != 0,
            );
            tcp.acknowledgment_number = rng.next_u32();
            if rng.bool() {
                // MSS and two NOPs plus a window scale.
                let mss = rng.next_u16().to_be_bytes();
                tcp.set_options_raw(&[2, 4, mss[0], mss[1], 1, 3, 3, 7])
                    .unwrap();
            }
            tcp.checksum = tcp.calc_checksum_ipv4_raw(src, dst, payload).unwrap();
            [&tcp.to_bytes()[..], payload].concat()
        }
        L4::Udp | L4::UdpNoChecksum => {
            let mut udp = UdpHeader {
                source_port: rng.next_u16(),
                destination_port: rng.next_u16(),
                length: u16::try_from(8 + payload.len()).unwrap(),
                checksum: 0,
            };
            if let L4::Udp = l4 {
                udp.checksum = udp.calc_checksum_ipv4_raw(src, dst, payload).unwrap();
            }
            [&udp.to_bytes()[..], payload].concat()
        }
        L4::IcmpEcho | L4::IcmpOther => {
            let echo = IcmpEchoHeader {
                id: rng.next_u16(),
                seq: rng.next_u16(),
            };
            let icmp_type = match l4 {
                L4::IcmpEcho if rng.bool() => Icmpv4Type::EchoRequest(echo),
                L4::IcmpEcho => Icmpv4Type::EchoReply(echo),
                _ => Icmpv4Type::Unknown {
                    type_u8: 3,
                    code_u8: 4,
                    bytes5to8: rng.array4(),
                },
            };
            [
                &Icmpv4Header::with_checksum(icmp_type, payload).to_bytes()[..],
                payload,
            ]
            .concat()
        }
    };
    let protocol = match l4 {
        L4::Tcp => IpNumber::TCP,
        L4::Udp | L4::UdpNoChecksum => IpNumber::UDP,
        L4::IcmpEcho | L4::IcmpOther => IpNumber::ICMP,
    };
    let mut ip = Ipv4Header::new(0, 1 + rng.below(255) as u8, protocol, src, dst).unwrap();
    ip.identification = rng.next_u16();
    ip.dont_fragment = rng.bool();
    ip.options = Ipv4Options::try_from(ip_options).unwrap();
    ip.set_payload_len(transport.len()).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    [&ip.to_bytes()[..], &transport].concat()
}

/// Random well-formed IPv4 option lists, some with a label.
pub(crate) fn random_options(rng: &mut Rng) -> Vec<u8> {
    let label = Label::new(rng.next_u32() | 1).unwrap();
    let stream_id = rng.array4();
    match rng.below(6) {
        0 | 1 => Vec::new(),
        2 => vec![1, 1, 1, 0],
        3 => vec![0x88, 4, stream_id[0], stream_id[1]],
        4 => option_bytes(label).to_vec(),
        _ => [&[0x94, 4, 0, 0][..], &option_bytes(label)].concat(),
    }
}

/// A random valid packet: any of the transports, random addresses, options,
/// and payload.
pub(crate) fn random_packet(rng: &mut Rng) -> Vec<u8> {
    let l4 = match rng.below(5) {
        0 => L4::Tcp,
        1 => L4::Udp,
        2 => L4::UdpNoChecksum,
        3 => L4::IcmpEcho,
        _ => L4::IcmpOther,
    };
    let options = random_options(rng);
    let len = rng.below(300);
    let payload = rng.bytes(len);
    let (src, dst) = (rng.array4(), rng.array4());
    build(rng, src, dst, &options, l4, &payload)
}

/// A UDP packet 10.1.0.5:4000 -> 192.0.2.1:53 with the given IP options.
pub(crate) fn udp_packet_with_options(options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut rng = Rng::new(0);
    let mut packet = build(
        &mut rng,
        [10, 1, 0, 5],
        [192, 0, 2, 1],
        options,
        L4::Udp,
        payload,
    );
    // Fixed ports, so the packet does not depend on the PRNG's stream.
    packet[20 + options.len()..][..4].copy_from_slice(&[0x0f, 0xa0, 0, 53]);
    let (ip, rest) = packet.split_at_mut(20 + options.len());
    let (udp, body) = rest.split_at_mut(8);
    let header = UdpHeader::from_slice(udp).unwrap().0;
    let checksum = header
        .calc_checksum_ipv4_raw(
            ip[12..16].try_into().unwrap(),
            ip[16..20].try_into().unwrap(),
            body,
        )
        .unwrap();
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    packet
}
