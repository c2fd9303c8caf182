//! The smoltcp device behind a VNIC: at most one packet in, any number (up
//! to a burst) out into the shared [`Outbox`], each rewritten on the way.

use std::net::Ipv4Addr;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::rewrite::{rewrite_address, Endpoint};
use crate::wire::label::{insert_label, Label, LABEL_OPTION_SPACE};

/// Bytes kept free in front of every outgoing packet, for the virtio-net
/// header the TUN device wants when offloads are on.
pub const HEADROOM: usize = 10;

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
    /// label), reused from an earlier flush when possible.
    pub fn push(&mut self, len: usize) -> &mut Vec<u8> {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(HEADROOM + len));
        }
        let buf = &mut self.bufs[self.len];
        self.len += 1;
        buf.clear();
        buf.resize(HEADROOM + len, 0);
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

    /// The queued packets without headroom.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.len].iter().map(|b| &b[HEADROOM..])
    }

    /// Empties the outbox, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Adds a finished packet (no headroom) from elsewhere, e.g. a UDP reply.
    pub fn push_packet(&mut self, packet: &[u8]) {
        let buf = self.push(packet.len());
        buf[HEADROOM..].copy_from_slice(packet);
    }
}

pub(crate) struct VnicDevice<'a> {
    rx: Option<&'a [u8]>,
    outbox: Option<&'a mut Outbox>,
    egress: Egress,
    mtu: usize,
    burst_left: usize,
    max_burst: usize,
}

impl<'a> VnicDevice<'a> {
    pub(crate) fn new(
        rx: Option<&'a [u8]>,
        outbox: &'a mut Outbox,
        egress: Egress,
        mtu: usize,
        max_burst: usize,
    ) -> Self {
        VnicDevice {
            rx,
            outbox: Some(outbox),
            egress,
            mtu,
            burst_left: max_burst,
            max_burst,
        }
    }

    /// A device that only reports capabilities (for `Interface::new`).
    pub(crate) fn probe(mtu: usize, max_burst: usize) -> VnicDevice<'static> {
        VnicDevice {
            rx: None,
            outbox: None,
            egress: Egress::default(),
            mtu,
            burst_left: 0,
            max_burst,
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
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = Some(self.max_burst);
        // The classifier has verified every checksum of what comes in.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
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
}

impl phy::TxToken for TxToken<'_> {
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
            }
        }
        r
    }
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
