//! The smoltcp device behind a VNIC: at most one packet in, any number (up
//! to a burst) out into the shared [`Outbox`], each rewritten on the way.

use std::net::Ipv4Addr;
use std::num::{NonZeroU16, NonZeroUsize};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;

use crate::rewrite::{rewrite_address, Endpoint};
use crate::wire::label::{insert_label, Label, LABEL_OPTION_SPACE};
use crate::wire::{checksum, protocol};

/// Bytes kept free in front of every outgoing packet, for the virtio-net
/// header the TUN device wants when offloads are on. A producer leaves it
/// zero (a complete packet, nothing for the kernel to do) or writes a header
/// there (see [`VnicDevice`] with offload).
pub const HEADROOM: usize = 10;

/// The largest IPv4 packet a VNIC emits with segmentation offload. A GSO
/// packet whose frame (with a label and link headers) reaches a device's
/// `gso_max_size` (64 KiB by default) is cut up in software on the way, at
/// every hop; 1 KiB of room keeps it whole to the session.
pub const MAX_OFFLOAD_PACKET: usize = 64 * 1024 - 1024;

/// How many bytes at the front of a reused outbox buffer are zeroed: the
/// headroom, a label's room, and the largest IPv4 and TCP headers (smoltcp
/// leaves the padding after a TCP option list's end as it finds it).
const ZEROED_PREFIX: usize = HEADROOM + LABEL_OPTION_SPACE + 60 + 60;

/// Buffers an [`Outbox`] keeps for reuse after it is cleared.
pub(crate) const RETAINED_BUFFERS: usize = 64;

/// virtio-net header fields (`include/uapi/linux/virtio_net.h`).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// What happens to a packet a VNIC emits before it leaves for the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Egress {
    /// The session migrated: (virtual, physical) — the destination is
    /// rewritten from the first to the second.
    pub rewrite_dst: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The label of the session's server for this connection, attached to
    /// every packet but SYNs once the session migrated.
    pub label: Option<Label>,
    /// The proxy's own label, offered in the handshake (on the SYN-ACK).
    pub offer: Option<Label>,
}

/// Packets waiting for the TUN device, in reusable buffers. Each buffer
/// holds [`HEADROOM`] spare bytes, then one IPv4 packet.
#[derive(Debug, Default)]
pub struct Outbox {
    bufs: Vec<Vec<u8>>,
    len: usize,
    /// Packets dropped because the egress rewrite failed (counted by the caller).
    pub rewrite_failures: u64,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer for a packet of `len` bytes (plus headroom and room for a
    /// label), reused from an earlier flush when possible. Its headroom and
    /// its first bytes (where headers and a label's room go) are zero; the
    /// rest holds whatever was there before and must be written in full by
    /// the producer (a packet's payload always is).
    pub fn push(&mut self, len: usize) -> &mut Vec<u8> {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(HEADROOM + len));
        }
        let buf = &mut self.bufs[self.len];
        self.len += 1;
        let n = HEADROOM + len;
        // Not a full clear: a 64 KiB segment is mostly payload that the
        // producer copies in anyway.
        let stale = buf.len().min(n);
        buf.resize(n, 0);
        buf[..stale.min(ZEROED_PREFIX)].fill(0);
        buf
    }

    /// Forgets the last pushed packet (its rewrite failed).
    pub fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The queued packets (each with headroom in front).
    pub fn packets_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[..self.len]
    }

    /// The queued packets, each with its headroom in front.
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.len].iter().map(Vec::as_slice)
    }

    /// The queued packets without headroom.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.len].iter().map(|b| &b[HEADROOM..])
    }

    /// Empties the outbox, keeping (up to [`RETAINED_BUFFERS`] of) the
    /// buffers for reuse: with offloads, a buffer may have grown to 64 KiB.
    pub fn clear(&mut self) {
        self.len = 0;
        self.bufs.truncate(RETAINED_BUFFERS);
    }

    /// Adds a finished packet (no headroom) from elsewhere, e.g. a UDP reply.
    pub fn push_packet(&mut self, packet: &[u8]) {
        let buf = self.push(packet.len());
        buf[HEADROOM..].copy_from_slice(packet);
    }
}

/// The VNIC's view of the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) mtu: usize,
    pub(crate) max_burst: usize,
    /// The TUN device takes virtio-net headers: TCP segments leave with
    /// their checksum for the kernel to finish and may be up to
    /// [`MAX_OFFLOAD_PACKET`] long (the kernel cuts them into MSS-sized
    /// segments, or passes them on whole to a stack that takes them so).
    pub(crate) offload: bool,
}

pub(crate) struct VnicDevice<'a> {
    rx: Option<&'a [u8]>,
    outbox: Option<&'a mut Outbox>,
    egress: Egress,
    link: Link,
    burst_left: usize,
}

impl<'a> VnicDevice<'a> {
    pub(crate) fn new(
        rx: Option<&'a [u8]>,
        outbox: &'a mut Outbox,
        egress: Egress,
        link: Link,
    ) -> Self {
        VnicDevice {
            rx,
            outbox: Some(outbox),
            egress,
            link,
            burst_left: link.max_burst,
        }
    }

    /// A device that only reports capabilities (for `Interface::new`).
    pub(crate) fn probe(link: Link) -> VnicDevice<'static> {
        VnicDevice {
            rx: None,
            outbox: None,
            egress: Egress::default(),
            link,
            burst_left: 0,
        }
    }
}

impl phy::Device for VnicDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.take()?;
        let outbox = self.outbox.as_deref_mut()?;
        Some((
            RxToken { packet },
            TxToken {
                outbox,
                egress: self.egress,
                offload: self.link.offload,
                segment: None,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.burst_left == 0 {
            return None;
        }
        self.burst_left -= 1;
        let outbox = self.outbox.as_deref_mut()?;
        Some(TxToken {
            outbox,
            egress: self.egress,
            offload: self.link.offload,
            segment: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.link.mtu;
        caps.max_burst_size = Some(self.link.max_burst);
        // The classifier has verified every checksum of what comes in.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        if self.link.offload {
            // TCP segments up to 64 KiB, their checksums finished by the
            // kernel (smoltcp leaves the field 0; the TxToken writes the
            // pseudo-header sum and the virtio-net header).
            checksum.tcp = Checksum::None;
            caps.segmentation.tcpv4 = NonZeroUsize::new(MAX_OFFLOAD_PACKET);
        }
        caps.checksum = checksum;
        caps
    }
}

pub(crate) struct RxToken<'a> {
    packet: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.packet)
    }
}

pub(crate) struct TxToken<'a> {
    outbox: &'a mut Outbox,
    egress: Egress,
    offload: bool,
    /// The segment size smoltcp asks the device to cut this packet into.
    segment: Option<NonZeroU16>,
}

impl phy::TxToken for TxToken<'_> {
    fn set_meta(&mut self, meta: PacketMeta) {
        self.segment = meta.segmentation_offload_size;
    }

    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let egress = self.egress;
        // A packet that may get a label is written 8 bytes further in:
        // inserting the label moves its header forward into that room.
        let room = if egress.label.is_some() || egress.offer.is_some() {
            LABEL_OPTION_SPACE
        } else {
            0
        };
        let buf = self.outbox.push(room + len);
        let r = f(&mut buf[HEADROOM + room..]);
        match apply_egress(&mut buf[HEADROOM..], room, egress) {
            Ok(true) => {}
            Ok(false) => {
                // No label after all: close the gap.
                buf.copy_within(HEADROOM + room.., HEADROOM);
                buf.truncate(HEADROOM + len);
            }
            Err(()) => {
                self.outbox.pop();
                self.outbox.rewrite_failures += 1;
                return r;
            }
        }
        if self.offload {
            let (header, packet) = buf.split_at_mut(HEADROOM);
            offload_header(header, packet, self.segment);
        }
        r
    }
}

/// For a TUN device with virtio-net headers: writes the header for the
/// finished IPv4 `packet` into `header` (zero for a complete packet). A TCP
/// segment (whose checksum smoltcp left out) gets the pseudo-header sum in
/// its checksum field and is marked for the kernel to finish the checksum;
/// one with more than `segment` bytes of payload is also marked for
/// segmentation into `segment`-sized pieces.
pub(crate) fn offload_header(header: &mut [u8], packet: &mut [u8], segment: Option<NonZeroU16>) {
    header.fill(0);
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    if packet.get(9) != Some(&protocol::TCP) || ihl < 20 || packet.len() < ihl + 20 {
        return;
    }
    let tcp_header = usize::from(packet[ihl + 12] >> 4) * 4;
    let tcp_len = packet.len() - ihl;
    let (Ok(tcp_len16), Ok(ihl16), Ok(headers)) = (
        u16::try_from(tcp_len),
        u16::try_from(ihl),
        u16::try_from(ihl + tcp_header),
    ) else {
        return;
    };
    if tcp_header < 20 || tcp_header > tcp_len {
        return;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    // The field holds the (uncomplemented) pseudo-header sum over the whole
    // segment's length, as the kernel's own TSO leaves it.
    let partial = checksum::fold(checksum::pseudo_header(src, dst, protocol::TCP, tcp_len16));
    packet[ihl + 16..ihl + 18].copy_from_slice(&partial.to_be_bytes());
    let payload = tcp_len - tcp_header;
    let (gso_type, gso_size) = match segment {
        Some(size) if payload > usize::from(size.get()) => (VIRTIO_NET_HDR_GSO_TCPV4, size.get()),
        _ => (0, 0),
    };
    // struct virtio_net_hdr, in the host's byte order (a TUN device without
    // TUNSETVNETLE/BE on a little-endian host).
    header[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    header[1] = gso_type;
    header[2..4].copy_from_slice(&headers.to_ne_bytes());
    header[4..6].copy_from_slice(&gso_size.to_ne_bytes());
    header[6..8].copy_from_slice(&ihl16.to_ne_bytes());
    header[8..10].copy_from_slice(&16u16.to_ne_bytes());
}

/// Whether the IPv4 packet is a TCP segment with SYN set.
fn is_syn(packet: &[u8]) -> bool {
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    packet.get(9) == Some(&crate::wire::protocol::TCP)
        && packet.get(ihl + 13).is_some_and(|f| f & 0x02 != 0)
}

/// Rewrites and labels one packet (at `buf[room..]`) for the session's
/// server; a labelled packet ends up at `buf[0..]`. Returns whether it got
/// a label.
fn apply_egress(buf: &mut [u8], room: usize, egress: Egress) -> Result<bool, ()> {
    if let Some((_virtual, physical)) = egress.rewrite_dst {
        rewrite_address(&mut buf[room..], Endpoint::Destination, physical).map_err(drop)?;
    }
    let label = if is_syn(&buf[room..]) {
        egress.offer
    } else {
        egress.label
    };
    match label {
        Some(label) => {
            insert_label(buf, room, label).map_err(drop)?;
            Ok(true)
        }
        None => Ok(false),
    }
}
