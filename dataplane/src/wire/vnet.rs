//! The virtio-net header that a TUN device with `IFF_VNET_HDR` (its
//! offloads on) puts in front of every packet it hands over and wants in
//! front of every packet written to it: `struct virtio_net_hdr` of
//! `include/uapi/linux/virtio_net.h`, 10 bytes, in the host's byte order (a
//! TUN device without TUNSETVNETLE/BE on a little-endian host).
//!
//! Two of its uses matter here:
//! - **checksum offload** (`NEEDS_CSUM`): the transport checksum field holds
//!   only the pseudo-header sum (uncomplemented) and whoever takes the
//!   packet finishes the checksum over `csum_start..`, storing it at
//!   `csum_start + csum_offset`;
//! - **segmentation offload** (`GSO_TCPV4`, `GSO_UDP_L4`): the packet is a
//!   super-packet of up to 64 KiB whose payload is to be cut into
//!   `gso_size` pieces, each with a copy of the headers. Its pseudo-header
//!   sum covers the super-packet's whole transport length.

use core::net::Ipv4Addr;

use super::checksum;

/// The header's length.
pub const LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum is to be finished.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on top of the type.
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers to copy into every segment (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// The header at the start of `buf`, if `buf` holds one.
    pub fn parse(buf: &[u8]) -> Option<VnetHeader> {
        let b = buf.get(..LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`LEN`] bytes of `buf` (which must
    /// hold them).
    pub fn write(&self, buf: &mut [u8]) {
        let Some(b) = buf.get_mut(..LEN) else { return };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The packet's transport checksum is partial, for the taker to finish.
    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The segmentation type, without the ECN flag.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }
}

/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation offload (USO).
pub const GSO_UDP_L4: u8 = 5;

/// Cuts an IPv4 UDP GSO super-packet (`gso_size` bytes of payload per
/// datagram, its checksum partial or not) into the datagrams it stands
/// for, as the kernel would: each gets a copy of the IP and UDP headers with
/// its own lengths, the next IP identification and complete checksums. Each
/// is built in `scratch` and handed to `each`. Returns how many there were
/// (0 for a packet that is not one: too short, or not UDP).
pub fn split_udp(
    packet: &[u8],
    gso_size: u16,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&mut [u8]),
) -> usize {
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    let headers = ihl + super::udp::HEADER_LEN;
    if ihl < 20
        || packet.len() < headers
        || packet.get(9) != Some(&super::protocol::UDP)
        || gso_size == 0
    {
        return 0;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let ident = u16::from_be_bytes([packet[4], packet[5]]);
    let mut count = 0;
    for (i, chunk) in packet[headers..].chunks(usize::from(gso_size)).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&packet[..headers]);
        scratch.extend_from_slice(chunk);
        // At most 65535: a piece of a packet of at most 65535 bytes.
        let total = u16::try_from(scratch.len()).unwrap_or(u16::MAX);
        let udp_len = u16::try_from(super::udp::HEADER_LEN + chunk.len()).unwrap_or(u16::MAX);
        let id = ident.wrapping_add(u16::try_from(i).unwrap_or(u16::MAX));
        scratch[2..4].copy_from_slice(&total.to_be_bytes());
        scratch[4..6].copy_from_slice(&id.to_be_bytes());
        scratch[10..12].copy_from_slice(&[0, 0]);
        let ip_sum = checksum::checksum(&scratch[..ihl]);
        scratch[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let udp = &mut scratch[ihl..];
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        let sum = checksum::add(
            checksum::pseudo_header(src, dst, super::protocol::UDP, udp_len),
            udp,
        );
        // RFC 768: a computed 0 is sent as 0xFFFF.
        let value = match !checksum::fold(sum) {
            0 => 0xFFFF,
            v => v,
        };
        udp[6..8].copy_from_slice(&value.to_be_bytes());
        each(scratch);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_ipv4, Transport};

    #[test]
    fn a_udp_super_packet_splits_into_checked_datagrams() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 1, 0, 100], [198, 18, 0, 20], 64)
            .udp(4433, 443)
            .write(&mut packet, &payload)
            .unwrap();
        packet[4..6].copy_from_slice(&7u16.to_be_bytes());
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        let n = split_udp(&packet, 1200, &mut scratch, |d| got.push(d.to_vec()));
        assert_eq!(n, 3);
        let mut joined = Vec::new();
        for (i, d) in got.iter().enumerate() {
            let info = parse_ipv4(d).expect("checksums right");
            assert_eq!(
                info.transport,
                Transport::Udp {
                    src_port: 4433,
                    dst_port: 443
                }
            );
            assert_eq!(u16::from_be_bytes([d[4], d[5]]), 7 + i as u16);
            joined.extend_from_slice(&d[28..]);
        }
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [1228, 1228, 628]
        );
        assert_eq!(joined, payload);
        // Not UDP, or too short: nothing.
        assert_eq!(split_udp(&packet[..20], 1200, &mut scratch, |_| {}), 0);
    }

    #[test]
    fn round_trips_in_host_byte_order() {
        let h = VnetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 60,
            gso_size: 1448,
            csum_start: 28,
            csum_offset: 16,
        };
        let mut b = [0u8; LEN];
        h.write(&mut b);
        assert_eq!(b[4..6], 1448u16.to_ne_bytes());
        assert_eq!(VnetHeader::parse(&b), Some(h));
        assert!(h.needs_csum());
        assert_eq!(h.gso(), GSO_TCPV4);
        assert_eq!(VnetHeader::parse(&b[..9]), None);
    }
}
