//! Virtual <-> physical address rewriting, in place (paper §5, DESIGN.md §3.3).
//!
//! A session keeps its *virtual* address for life; its *physical* address is
//! the one it has on the subnet of the server hosting it now. After a migration
//! across subnets, the hosting server rewrites virtual -> physical in the
//! source of what the session sends and physical -> virtual in the destination
//! of what it receives; the proxy does the mirror image.
//!
//! Rewriting changes one address and updates, incrementally (RFC 1624), the
//! IPv4 header checksum and, when the checksum covers the pseudo-header, the
//! TCP or UDP checksum. A UDP checksum of 0 (none) stays 0, and a computed 0
//! is sent as 0xFFFF (RFC 768). ICMP checksums do not cover addresses. Only
//! the first fragment of a datagram holds the transport header; later
//! fragments get the IPv4 checksum update alone. ICMP error messages quote
//! the header of the packet they answer; that quote is not rewritten (yet).
//!
//! Checksums are not verified here (the classifier does that): an incremental
//! update keeps a wrong checksum wrong, so corruption is still caught
//! downstream. A refused packet is left unchanged.

use core::net::Ipv4Addr;

use crate::wire::{checksum, protocol, read_u16, tcp, udp, write_u16, Ipv4Packet, WireError};

/// Which address of a packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The source address.
    Source,
    /// The destination address.
    Destination,
}

/// Sets the `endpoint` address of the IPv4 packet at the start of `packet` to
/// `addr` and updates the checksums. Returns the address it replaced.
///
/// Needs a structurally valid IPv4 packet ([`Ipv4Packet::check`]) and, for
/// an unfragmented or first-fragment TCP or UDP packet, the transport
/// checksum field within the total length.
pub fn rewrite_address(
    packet: &mut [u8],
    endpoint: Endpoint,
    addr: Ipv4Addr,
) -> Result<Ipv4Addr, WireError> {
    rewrite(packet, endpoint, addr, false)
}

/// [`rewrite_address`] for a packet whose TCP or UDP checksum is partial
/// (virtio-net `NEEDS_CSUM`, see [`crate::wire::vnet`]): the field holds the
/// uncomplemented pseudo-header sum, which covers the addresses, for the
/// kernel to finish. It is updated as such (the complement of RFC 1624's
/// update of the complement), and a UDP field of 0 is not special.
pub fn rewrite_address_partial(
    packet: &mut [u8],
    endpoint: Endpoint,
    addr: Ipv4Addr,
) -> Result<Ipv4Addr, WireError> {
    rewrite(packet, endpoint, addr, true)
}

/// [`rewrite_address`], or [`rewrite_address_partial`] when `partial`
/// (for callers that learn it per packet, from its virtio-net header).
pub fn rewrite(
    packet: &mut [u8],
    endpoint: Endpoint,
    addr: Ipv4Addr,
    partial: bool,
) -> Result<Ipv4Addr, WireError> {
    let mut packet = Ipv4Packet::new_checked(packet)?;
    let old = match endpoint {
        Endpoint::Source => packet.src_addr(),
        Endpoint::Destination => packet.dst_addr(),
    };
    let transport_checksum = if packet.frag_offset() != 0 {
        None
    } else {
        match packet.protocol() {
            protocol::TCP => Some(tcp::CHECKSUM),
            protocol::UDP => Some(udp::CHECKSUM),
            _ => None,
        }
    };
    if let Some(field) = &transport_checksum {
        if packet.payload().len() < field.end {
            return Err(WireError::TruncatedTransport);
        }
    }
    if old == addr {
        return Ok(old);
    }

    let (old_octets, new_octets) = (old.octets(), addr.octets());
    let ip_checksum = checksum::update(packet.checksum(), old_octets, new_octets);
    packet.set_checksum(ip_checksum);
    match endpoint {
        Endpoint::Source => packet.set_src_addr(addr),
        Endpoint::Destination => packet.set_dst_addr(addr),
    }
    if let Some(field) = transport_checksum {
        let is_udp = packet.protocol() == protocol::UDP;
        let transport = packet.payload_mut();
        let value = read_u16(transport, field.clone());
        if partial {
            // The sum itself, not its complement: update the complement.
            let value = !checksum::update(!value, old_octets, new_octets);
            write_u16(transport, field, value);
        } else if !(is_udp && value == 0) {
            // UDP: 0 means no checksum; a computed 0 is sent as 0xFFFF.
            let value = match checksum::update(value, old_octets, new_octets) {
                0 if is_udp => 0xFFFF,
                value => value,
            };
            write_u16(transport, field, value);
        }
    }
    Ok(old)
}

/// [`rewrite_address`] of the source address.
pub fn rewrite_source(packet: &mut [u8], addr: Ipv4Addr) -> Result<Ipv4Addr, WireError> {
    rewrite_address(packet, Endpoint::Source, addr)
}

/// [`rewrite_address`] of the destination address.
pub fn rewrite_destination(packet: &mut [u8], addr: Ipv4Addr) -> Result<Ipv4Addr, WireError> {
    rewrite_address(packet, Endpoint::Destination, addr)
}

/// A session's two addresses: the virtual one its sockets see for life, and
/// the physical one on the subnet of the server that hosts it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionAddresses {
    /// The address the session's transport layer and above see.
    pub virtual_addr: Ipv4Addr,
    /// The address the session has on its current subnet.
    pub physical_addr: Ipv4Addr,
}

impl SessionAddresses {
    /// Whether the addresses differ, i.e. the packet path must rewrite.
    pub fn is_translated(&self) -> bool {
        self.virtual_addr != self.physical_addr
    }

    /// If the `endpoint` address of `packet` is the virtual address, rewrites
    /// it to the physical one. Returns whether it did.
    pub fn virtual_to_physical(
        &self,
        packet: &mut [u8],
        endpoint: Endpoint,
    ) -> Result<bool, WireError> {
        translate(packet, endpoint, self.virtual_addr, self.physical_addr)
    }

    /// If the `endpoint` address of `packet` is the physical address, rewrites
    /// it to the virtual one. Returns whether it did.
    pub fn physical_to_virtual(
        &self,
        packet: &mut [u8],
        endpoint: Endpoint,
    ) -> Result<bool, WireError> {
        translate(packet, endpoint, self.physical_addr, self.virtual_addr)
    }
}

fn translate(
    packet: &mut [u8],
    endpoint: Endpoint,
    from: Ipv4Addr,
    to: Ipv4Addr,
) -> Result<bool, WireError> {
    let view = Ipv4Packet::new_checked(&*packet)?;
    let current = match endpoint {
        Endpoint::Source => view.src_addr(),
        Endpoint::Destination => view.dst_addr(),
    };
    if current != from || from == to {
        return Ok(false);
    }
    rewrite_address(packet, endpoint, to)?;
    Ok(true)
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::testutil::{self, Rng, L4};
    use crate::wire::{parse_ipv4, Transport};
    use etherparse::{Ipv4Header, TcpHeaderSlice, UdpHeader};

    /// The checksums a full recomputation by etherparse gives for `packet`.
    fn recomputed(packet: &[u8]) -> (u16, Option<u16>) {
        let (ip, _) = Ipv4Header::from_slice(packet).unwrap();
        let transport = &packet[ip.header_len()..usize::from(ip.total_len)];
        let l4 = match ip.protocol {
            etherparse::IpNumber::TCP => {
                let tcp = TcpHeaderSlice::from_slice(transport).unwrap();
                let payload = &transport[tcp.slice().len()..];
                Some(
                    tcp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                        .unwrap(),
                )
            }
            etherparse::IpNumber::UDP => {
                let (udp, payload) = UdpHeader::from_slice(transport).unwrap();
                (udp.checksum != 0).then(|| {
                    udp.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                        .unwrap()
                })
            }
            _ => None,
        };
        (ip.calc_header_checksum(), l4)
    }

    /// The checksum fields as they are in `packet`.
    fn stored(packet: &[u8]) -> (u16, Option<u16>) {
        let (ip, _) = Ipv4Header::from_slice(packet).unwrap();
        let at = ip.header_len();
        let field = |range: core::ops::Range<usize>| {
            u16::from_be_bytes([packet[at + range.start], packet[at + range.start + 1]])
        };
        let l4 = match ip.protocol {
            etherparse::IpNumber::TCP => Some(field(tcp::CHECKSUM)),
            etherparse::IpNumber::UDP => Some(field(udp::CHECKSUM)).filter(|&c| c != 0),
            _ => None,
        };
        (ip.header_checksum, l4)
    }

    #[test]
    fn incremental_equals_full_recompute_on_random_packets() {
        let mut rng = Rng::new(42);
        for _ in 0..20_000 {
            let original = testutil::random_packet(&mut rng);
            let mut packet = original.clone();
            let endpoint = if rng.bool() {
                Endpoint::Source
            } else {
                Endpoint::Destination
            };
            let addr = Ipv4Addr::from(rng.array4());

            let old = rewrite_address(&mut packet, endpoint, addr).unwrap();
            assert_eq!(stored(&packet), recomputed(&packet), "{original:02x?}");
            let info = parse_ipv4(&packet).unwrap();
            let before = parse_ipv4(&original).unwrap();
            match endpoint {
                Endpoint::Source => {
                    assert_eq!((info.src_addr, info.dst_addr), (addr, before.dst_addr))
                }
                Endpoint::Destination => {
                    assert_eq!((info.src_addr, info.dst_addr), (before.src_addr, addr))
                }
            }
            assert_eq!(info.transport, before.transport);

            assert_eq!(rewrite_address(&mut packet, endpoint, old), Ok(addr));
            assert_eq!(packet, original);
        }
    }

    /// A partial checksum (virtio-net NEEDS_CSUM) is the uncomplemented
    /// pseudo-header sum; rewritten, it must be the sum a fresh computation
    /// over the new addresses gives, for TCP and UDP alike (a UDP field of 0
    /// is nothing special here).
    #[test]
    fn partial_checksums_follow_the_pseudo_header() {
        let mut rng = Rng::new(7);
        let partial = |p: &[u8]| {
            let info = parse_ipv4(p).unwrap();
            let len = u16::try_from(p.len() - info.ip_header_len).unwrap();
            checksum::fold(checksum::pseudo_header(
                info.src_addr,
                info.dst_addr,
                info.protocol(),
                len,
            ))
        };
        let mut done = 0;
        while done < 5_000 {
            let original = testutil::random_packet(&mut rng);
            let info = parse_ipv4(&original).unwrap();
            let at = info.ip_header_len
                + match info.transport {
                    Transport::Tcp { .. } => tcp::CHECKSUM.start,
                    Transport::Udp { .. } => udp::CHECKSUM.start,
                    Transport::Icmp { .. } => continue,
                };
            let mut packet = original.clone();
            packet[at..at + 2].copy_from_slice(&partial(&original).to_be_bytes());
            let endpoint = if rng.bool() {
                Endpoint::Source
            } else {
                Endpoint::Destination
            };
            let addr = Ipv4Addr::from(rng.array4());
            rewrite_address_partial(&mut packet, endpoint, addr).unwrap();
            let fresh = partial(&{
                // The same packet with its full checksums: parses again.
                let mut p = original.clone();
                rewrite_address(&mut p, endpoint, addr).unwrap();
                p
            });
            let stored = u16::from_be_bytes([packet[at], packet[at + 1]]);
            // One's complement: 0x0000 and 0xFFFF are the same sum.
            assert!(
                stored == fresh || stored ^ fresh == 0xFFFF,
                "{stored:#06x} != {fresh:#06x}"
            );
            assert_eq!(recomputed(&packet).0, stored_ip(&packet));
            done += 1;
        }
    }

    fn stored_ip(packet: &[u8]) -> u16 {
        u16::from_be_bytes([packet[10], packet[11]])
    }

    /// Recomputes every checksum in full (a UDP checksum of 0 stays 0).
    fn refresh(packet: &mut [u8]) {
        let (ip_checksum, l4_checksum) = recomputed(packet);
        packet[10..12].copy_from_slice(&ip_checksum.to_be_bytes());
        if let Some(value) = l4_checksum {
            let at = 20
                + if packet[9] == protocol::TCP {
                    tcp::CHECKSUM.start
                } else {
                    udp::CHECKSUM.start
                };
            packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
    }

    /// Sets the last two payload bytes so that the transport sum's complement
    /// is `target` (a UDP 0 is then sent as 0xFFFF), and refreshes checksums.
    fn force_transport_checksum(packet: &mut [u8], target: u16) {
        let now = recomputed(packet).1.unwrap();
        // A payload word w -> w' moves the sum by w' - w; the sum must become
        // ~target, and the sum now is ~now.
        let at = packet.len() - 2;
        let word = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let new_word = checksum::fold(u64::from(word) + u64::from(now) + u64::from(!target));
        packet[at..].copy_from_slice(&new_word.to_be_bytes());
        refresh(packet);
    }

    #[test]
    fn zero_checksum_corner_cases() {
        let mut rng = Rng::new(9);
        let physical = Ipv4Addr::new(10, 2, 0, 77);
        for (l4, expected) in [
            // A UDP checksum that computes to 0 is sent as 0xFFFF (RFC 768).
            (L4::Udp, 0xFFFF),
            // TCP has no such rule: 0 is sent as 0 (as Linux and etherparse do).
            (L4::Tcp, 0x0000),
        ] {
            for _ in 0..50 {
                let len = 2 + 2 * rng.below(20);
                let payload = rng.bytes(len);
                let virtual_addr = rng.array4();
                let dst = rng.array4();
                // After the rewrite the checksum is the corner case...
                let mut rewritten =
                    testutil::build(&mut rng, physical.octets(), dst, &[], l4, &payload);
                force_transport_checksum(&mut rewritten, 0);
                assert_eq!(stored(&rewritten).1, Some(expected), "{l4:?}");
                // ...for this original.
                let mut original = rewritten.clone();
                original[12..16].copy_from_slice(&virtual_addr);
                refresh(&mut original);
                assert!(parse_ipv4(&original).is_ok());

                let mut packet = original.clone();
                rewrite_source(&mut packet, physical).unwrap();
                assert_eq!(packet, rewritten, "{l4:?}");
                assert!(parse_ipv4(&packet).is_ok());
                // And back, from the corner case.
                rewrite_source(&mut packet, Ipv4Addr::from(virtual_addr)).unwrap();
                assert_eq!(packet, original);
            }
        }
    }

    #[test]
    fn udp_without_checksum_keeps_none() {
        let mut rng = Rng::new(4);
        let mut packet = testutil::build(
            &mut rng,
            [10, 1, 0, 5],
            [1, 2, 3, 4],
            &[],
            L4::UdpNoChecksum,
            b"data",
        );
        rewrite_destination(&mut packet, Ipv4Addr::new(10, 2, 0, 5)).unwrap();
        assert_eq!(&packet[26..28], &[0, 0]);
        assert_eq!(stored(&packet), recomputed(&packet));
        assert!(parse_ipv4(&packet).is_ok());
    }

    #[test]
    fn ip_checksum_of_minus_zero_stays_valid() {
        // A header whose words sum to 0xFFFF: its checksum field may hold 0x0000
        // or 0xFFFF; both verify, and after a rewrite both still do.
        let mut rng = Rng::new(8);
        let mut found = 0;
        while found < 20 {
            let (src, dst) = (rng.array4(), rng.array4());
            let mut packet = testutil::build(&mut rng, src, dst, &[], L4::IcmpEcho, b"");
            // Choose the identification so that the header sums to 0xFFFF.
            packet[4..6].copy_from_slice(&[0, 0]);
            packet[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum::fold(checksum::add(0, &packet[..20]));
            let ident = !sum;
            packet[4..6].copy_from_slice(&ident.to_be_bytes());
            if checksum::fold(checksum::add(0, &packet[..20])) != 0xFFFF {
                continue;
            }
            found += 1;
            for field in [0x0000u16, 0xFFFF] {
                let mut packet = packet.clone();
                packet[10..12].copy_from_slice(&field.to_be_bytes());
                assert!(parse_ipv4(&packet).is_ok());
                for _ in 0..10 {
                    let addr = Ipv4Addr::from(rng.array4());
                    rewrite_address(&mut packet, Endpoint::Destination, addr).unwrap();
                    assert!(parse_ipv4(&packet).is_ok(), "{packet:02x?}");
                }
            }
        }
    }

    #[test]
    fn fragments() {
        let mut rng = Rng::new(6);
        let mut packet = testutil::build(
            &mut rng,
            [10, 1, 0, 5],
            [1, 2, 3, 4],
            &[],
            L4::Tcp,
            &[7; 64],
        );
        // A later fragment: the bytes after the header are payload, not TCP.
        packet[6..8].copy_from_slice(&[0x00, 0x10]);
        Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
        let original = packet.clone();
        rewrite_source(&mut packet, Ipv4Addr::new(10, 2, 0, 5)).unwrap();
        assert_eq!(&packet[20..], &original[20..]);
        assert!(Ipv4Packet::new_checked(&packet[..])
            .unwrap()
            .verify_checksum());

        // A first fragment: the TCP checksum (over the whole datagram) moves
        // by the same delta.
        let mut packet = testutil::build(
            &mut rng,
            [10, 1, 0, 5],
            [1, 2, 3, 4],
            &[],
            L4::Tcp,
            &[7; 64],
        );
        let whole = packet.clone();
        rewrite_source(&mut packet[..], Ipv4Addr::new(10, 2, 0, 5)).unwrap();
        let mut first = whole.clone();
        first[6] |= 0x20;
        first.truncate(20 + 24);
        first[2..4].copy_from_slice(&44u16.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut first[..]).fill_checksum();
        rewrite_source(&mut first, Ipv4Addr::new(10, 2, 0, 5)).unwrap();
        assert_eq!(&first[36..38], &packet[36..38]);
    }

    #[test]
    fn refusals_leave_the_packet_alone() {
        let mut rng = Rng::new(10);
        let mut packet = testutil::build(&mut rng, [10, 1, 0, 5], [1, 2, 3, 4], &[], L4::Tcp, b"");
        // TCP header cut off before its checksum field.
        packet.truncate(30);
        packet[3] = 30;
        let original = packet.clone();
        assert_eq!(
            rewrite_source(&mut packet, Ipv4Addr::LOCALHOST),
            Err(WireError::TruncatedTransport)
        );
        assert_eq!(packet, original);
        assert_eq!(
            rewrite_source(&mut packet[..10], Ipv4Addr::LOCALHOST),
            Err(WireError::Truncated)
        );

        for _ in 0..20_000 {
            let len = rng.below(64);
            let junk = rng.bytes(len);
            let mut packet = junk.clone();
            if rewrite_destination(&mut packet, Ipv4Addr::from(rng.array4())).is_err() {
                assert_eq!(packet, junk);
            }
        }
    }

    #[test]
    fn session_addresses() {
        let session = SessionAddresses {
            virtual_addr: Ipv4Addr::new(10, 1, 0, 10),
            physical_addr: Ipv4Addr::new(10, 2, 0, 20),
        };
        assert!(session.is_translated());
        let proxy = Ipv4Addr::new(10, 0, 0, 1);
        let mut rng = Rng::new(12);
        let original = testutil::build(
            &mut rng,
            session.virtual_addr.octets(),
            proxy.octets(),
            &[],
            L4::Tcp,
            b"GET /",
        );
        let mut packet = original.clone();

        // Server side, outbound: virtual source -> physical.
        assert_eq!(
            session.virtual_to_physical(&mut packet, Endpoint::Source),
            Ok(true)
        );
        assert_eq!(parse_ipv4(&packet).unwrap().src_addr, session.physical_addr);
        assert_eq!(
            session.virtual_to_physical(&mut packet, Endpoint::Source),
            Ok(false)
        );
        // Proxy side, inbound: physical source -> virtual.
        assert_eq!(
            session.physical_to_virtual(&mut packet, Endpoint::Source),
            Ok(true)
        );
        assert_eq!(packet, original);
        assert_eq!(
            session.physical_to_virtual(&mut packet, Endpoint::Destination),
            Ok(false)
        );
        let Transport::Tcp { .. } = parse_ipv4(&packet).unwrap().transport else {
            panic!()
        };
    }
}
