//! The packet classifier: one pass over an IPv4 packet that checks everything
//! the dataplane relies on and returns what forwarding decisions need.

use core::net::Ipv4Addr;

use etherparse::{Icmpv4Slice, Icmpv4Type, TcpHeaderSlice, UdpHeaderSlice};

use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::label::Label;
use super::{checksum, protocol, udp, WireError};

/// TCP control flags (the low byte of the flags field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: Self = Self(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x02);
    /// Reset the connection.
    pub const RST: Self = Self(0x04);
    /// Push.
    pub const PSH: Self = Self(0x08);
    /// The acknowledgment field is significant.
    pub const ACK: Self = Self(0x10);
    /// The urgent pointer is significant.
    pub const URG: Self = Self(0x20);
    /// ECN echo.
    pub const ECE: Self = Self(0x40);
    /// Congestion window reduced.
    pub const CWR: Self = Self(0x80);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The transport-layer part of a classified packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP segment.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Control flags.
        flags: TcpFlags,
    },
    /// A UDP datagram.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// An ICMP message.
    Icmp {
        /// ICMP type.
        icmp_type: u8,
        /// ICMP code.
        code: u8,
        /// The identifier of an echo request or reply.
        echo_id: Option<u16>,
    },
}

/// What the dataplane needs to know about a valid packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketInfo {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// The transport protocol and its fields.
    pub transport: Transport,
    /// IPv4 header length in bytes, options included.
    pub ip_header_len: usize,
    /// Transport header length in bytes (TCP options included; 8 for UDP and
    /// ICMP).
    pub transport_header_len: usize,
    /// Total packet length in bytes (the whole buffer).
    pub total_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// The connection label, if the packet carries one.
    pub label: Option<Label>,
}

impl PacketInfo {
    /// The IP protocol number (see [`super::protocol`]).
    pub const fn protocol(&self) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => protocol::TCP,
            Transport::Udp { .. } => protocol::UDP,
            Transport::Icmp { .. } => protocol::ICMP,
        }
    }

    /// Source and destination port, for TCP and UDP.
    pub const fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp {
                src_port, dst_port, ..
            }
            | Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            Transport::Icmp { .. } => None,
        }
    }
}

/// Classifies the IPv4 packet that fills `buf` (its total length must be the
/// buffer's length).
///
/// Checks, in order: the IPv4 structure, the header checksum, the option list
/// and label, that it is not a fragment, that it is TCP, UDP or ICMP, the
/// transport header, and the transport checksum (a UDP checksum of 0 means
/// none). The first failing check gives the error.
pub fn parse_ipv4(buf: &[u8]) -> Result<PacketInfo, WireError> {
    parse(buf, true)
}

/// [`parse_ipv4`] for a packet whose TCP or UDP checksum is partial: the
/// field holds the pseudo-header sum, for the kernel to finish (virtio-net
/// `NEEDS_CSUM`, see [`super::vnet`]). The kernel made that packet or
/// verified what it was made from, and finishes the checksum over what is
/// there when the packet leaves; so every check but the transport checksum.
pub fn parse_ipv4_partial(buf: &[u8]) -> Result<PacketInfo, WireError> {
    parse(buf, false)
}

fn parse(buf: &[u8], verify_transport: bool) -> Result<PacketInfo, WireError> {
    let packet = Ipv4Packet::new_checked(buf)?;
    if usize::from(packet.total_len()) != buf.len() {
        return Err(WireError::BadTotalLength);
    }
    let ip = Ipv4Repr::parse(&packet)?;
    let payload = packet.payload();
    // Fits: the payload is part of a packet of at most 65535 bytes.
    let payload_len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let pseudo_header =
        |proto| checksum::pseudo_header(ip.src_addr, ip.dst_addr, proto, payload_len);

    let (transport, transport_header_len) = match ip.protocol {
        protocol::TCP => {
            let tcp = TcpHeaderSlice::from_slice(payload).map_err(|error| match error {
                etherparse::err::tcp::HeaderSliceError::Len(_) => WireError::TruncatedTransport,
                etherparse::err::tcp::HeaderSliceError::Content(_) => WireError::BadTcpDataOffset,
            })?;
            if verify_transport
                && checksum::fold(checksum::add(pseudo_header(protocol::TCP), payload)) != 0xFFFF
            {
                return Err(WireError::BadTransportChecksum);
            }
            let flags = tcp.slice().get(13).copied().unwrap_or(0);
            let transport = Transport::Tcp {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: TcpFlags(flags),
            };
            (transport, tcp.slice().len())
        }
        protocol::UDP => {
            let udp =
                UdpHeaderSlice::from_slice(payload).map_err(|_| WireError::TruncatedTransport)?;
            if udp.length() != payload_len {
                return Err(WireError::BadUdpLength);
            }
            if verify_transport
                && udp.checksum() != 0
                && checksum::fold(checksum::add(pseudo_header(protocol::UDP), payload)) != 0xFFFF
            {
                return Err(WireError::BadTransportChecksum);
            }
            let transport = Transport::Udp {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
            };
            (transport, udp::HEADER_LEN)
        }
        protocol::ICMP => {
            let icmp =
                Icmpv4Slice::from_slice(payload).map_err(|_| WireError::TruncatedTransport)?;
            if !checksum::verify(payload) {
                return Err(WireError::BadTransportChecksum);
            }
            let echo_id = match icmp.icmp_type() {
                Icmpv4Type::EchoRequest(echo) | Icmpv4Type::EchoReply(echo) => Some(echo.id),
                _ => None,
            };
            let transport = Transport::Icmp {
                icmp_type: icmp.type_u8(),
                code: icmp.code_u8(),
                echo_id,
            };
            (transport, icmp.header_len())
        }
        other => return Err(WireError::UnsupportedProtocol(other)),
    };

    Ok(PacketInfo {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        transport,
        ip_header_len: packet.header_len(),
        transport_header_len,
        total_len: buf.len(),
        ttl: ip.ttl,
        label: ip.label,
    })
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::testutil::{self, Rng};
    use etherparse::PacketBuilder;

    const A: [u8; 4] = [10, 1, 0, 5];
    const B: [u8; 4] = [192, 0, 2, 80];

    fn tcp_syn() -> Vec<u8> {
        let builder = PacketBuilder::ipv4(A, B, 64)
            .tcp(40000, 443, 1, 64240)
            .syn();
        let mut packet = Vec::new();
        builder.write(&mut packet, &[]).unwrap();
        packet
    }

    fn fix_ip_checksum(packet: &mut [u8]) {
        Ipv4Packet::new_unchecked(packet).fill_checksum();
    }

    #[test]
    fn classifies_tcp() {
        let info = parse_ipv4(&tcp_syn()).unwrap();
        assert_eq!(info.src_addr, Ipv4Addr::from(A));
        assert_eq!(info.dst_addr, Ipv4Addr::from(B));
        assert_eq!(info.protocol(), protocol::TCP);
        assert_eq!(info.ports(), Some((40000, 443)));
        let Transport::Tcp { flags, .. } = info.transport else {
            panic!("{info:?}")
        };
        assert!(flags.contains(TcpFlags::SYN));
        assert!(!flags.contains(TcpFlags::ACK));
        assert_eq!((info.ip_header_len, info.transport_header_len), (20, 20));
        assert_eq!(info.total_len, 40);
        assert_eq!(info.label, None);
    }

    #[test]
    fn classifies_udp_and_icmp() {
        let mut packet = Vec::new();
        PacketBuilder::ipv4(A, B, 64)
            .udp(5353, 53)
            .write(&mut packet, b"query")
            .unwrap();
        let info = parse_ipv4(&packet).unwrap();
        assert_eq!(
            info.transport,
            Transport::Udp {
                src_port: 5353,
                dst_port: 53
            }
        );
        assert_eq!(info.transport_header_len, 8);

        let mut packet = Vec::new();
        PacketBuilder::ipv4(A, B, 64)
            .icmpv4_echo_request(0x1234, 7)
            .write(&mut packet, b"ping")
            .unwrap();
        let info = parse_ipv4(&packet).unwrap();
        assert_eq!(
            info.transport,
            Transport::Icmp {
                icmp_type: 8,
                code: 0,
                echo_id: Some(0x1234)
            }
        );
        assert_eq!(info.ports(), None);
    }

    #[test]
    fn udp_checksum_zero_means_none() {
        let mut packet = Vec::new();
        PacketBuilder::ipv4(A, B, 64)
            .udp(1, 2)
            .write(&mut packet, b"payload")
            .unwrap();
        packet[26..28].copy_from_slice(&[0, 0]);
        assert!(parse_ipv4(&packet).is_ok());
    }

    #[test]
    fn each_fault_has_its_reason() {
        type Fault = fn(&mut Vec<u8>);
        let cases: [(Fault, WireError); 14] = [
            (|p| p.truncate(10), WireError::Truncated),
            (|p| p[0] = 0x60, WireError::BadVersion(6)),
            (|p| p[0] = 0x43, WireError::BadHeaderLength),
            (|p| p.push(0), WireError::BadTotalLength),
            (|p| p[8] ^= 1, WireError::BadHeaderChecksum),
            (
                |p| {
                    // IHL 6 with a truncated option.
                    p.splice(20..20, [0x88, 9, 0, 0]);
                    p[0] = 0x46;
                    p[3] += 4;
                    fix_ip_checksum(p);
                },
                WireError::BadOption,
            ),
            (
                |p| {
                    p.splice(20..20, [0x9E, 4, 1, 1]);
                    p[0] = 0x46;
                    p[3] += 4;
                    fix_ip_checksum(p);
                },
                WireError::BadLabel,
            ),
            (
                |p| {
                    p.splice(20..20, [1, 1, 0x9E, 6, 0, 0, 0, 0]);
                    p[0] = 0x47;
                    p[3] += 8;
                    fix_ip_checksum(p);
                },
                WireError::ZeroLabel,
            ),
            (
                |p| {
                    p[7] = 1; // offset 8 bytes
                    fix_ip_checksum(p);
                },
                WireError::Fragment,
            ),
            (
                |p| {
                    p[9] = 47; // GRE
                    fix_ip_checksum(p);
                },
                WireError::UnsupportedProtocol(47),
            ),
            (
                |p| {
                    p.truncate(30);
                    p[3] = 30;
                    fix_ip_checksum(p);
                },
                WireError::TruncatedTransport,
            ),
            (
                |p| {
                    p[32] = 0x40; // data offset 4
                    p[36] ^= 0x10; // keep the TCP checksum right
                },
                WireError::BadTcpDataOffset,
            ),
            (|p| p[39] ^= 1, WireError::BadTransportChecksum),
            (
                |p| {
                    p[9] = protocol::UDP;
                    fix_ip_checksum(p);
                },
                WireError::BadUdpLength,
            ),
        ];
        let mut reasons = std::collections::HashSet::new();
        for (fault, expected) in cases {
            let mut packet = tcp_syn();
            fault(&mut packet);
            assert_eq!(parse_ipv4(&packet), Err(expected), "{}", expected.reason());
            reasons.insert(expected.reason());
        }
        assert_eq!(reasons.len(), cases.len());
    }

    #[test]
    fn agrees_with_etherparse_on_random_packets() {
        let mut rng = Rng::new(1);
        for _ in 0..5_000 {
            let packet = testutil::random_packet(&mut rng);
            let info = parse_ipv4(&packet).unwrap();
            let sliced = etherparse::SlicedPacket::from_ip(&packet).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
                panic!("not ipv4")
            };
            assert_eq!(info.src_addr, ip.header().source_addr());
            assert_eq!(info.dst_addr, ip.header().destination_addr());
            assert_eq!(info.ip_header_len, ip.header().slice().len());
            match (info.transport, sliced.transport) {
                (Transport::Tcp { src_port, .. }, Some(etherparse::TransportSlice::Tcp(tcp))) => {
                    assert_eq!(src_port, tcp.source_port());
                }
                (Transport::Udp { dst_port, .. }, Some(etherparse::TransportSlice::Udp(udp))) => {
                    assert_eq!(dst_port, udp.destination_port());
                }
                (
                    Transport::Icmp { icmp_type, .. },
                    Some(etherparse::TransportSlice::Icmpv4(i)),
                ) => {
                    assert_eq!(icmp_type, i.type_u8());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(2);
        for _ in 0..20_000 {
            let mut packet = testutil::random_packet(&mut rng);
            let flips = rng.below(4);
            for _ in 0..flips {
                let at = rng.below(packet.len());
                packet[at] ^= 1 << rng.below(8);
            }
            let _ = parse_ipv4(&packet);
            let _ = parse_ipv4(&packet[..rng.below(packet.len() + 1)]);
        }
    }
}
