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

#[cfg(test)]
mod tests {
    use super::*;

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
