//! What the UDP and ICMP relays share: the packets they build for the
//! sessions, and the bounded queue those wait in for the device loop.
//!
//! Replies are built when a relay's kernel socket hands over a datagram,
//! which happens outside the device loop; the engine's [`Outbox`] is the
//! device loop's alone (it is taken out while the TUN write awaits), so
//! replies wait here until [`ProxyEngine::flush_replies`] moves them over.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::ProxyEngine;
use crate::rewrite::{rewrite_address, Endpoint};
use crate::vnic::{Outbox, HEADROOM};
use crate::wire::{checksum, protocol, Ipv4Packet, Ipv4Repr};

/// Replies waiting for the device loop, at most (more are dropped and
/// counted as `reply_queue_full`).
pub const MAX_QUEUED_REPLIES: usize = 1024;
/// ... and at most this many bytes of them.
pub const MAX_QUEUED_REPLY_BYTES: usize = 4 << 20;

/// IPv4 header length of the packets built here (no options: datagrams
/// carry no labels).
pub(crate) const IPV4_HEADER_LEN: usize = 20;
/// UDP and ICMP echo headers are both 8 bytes.
pub(crate) const L4_HEADER_LEN: usize = 8;
/// The largest payload a built packet can carry.
pub(crate) const MAX_PAYLOAD: usize = 65535 - IPV4_HEADER_LEN - L4_HEADER_LEN;

/// TTL of the packets built here.
const TTL: u8 = 64;

/// Built packets waiting for the device loop, bounded in number and bytes.
#[derive(Debug, Default)]
pub(super) struct ReplyQueue {
    outbox: Outbox,
    bytes: usize,
    next_ident: u16,
}

impl ReplyQueue {
    pub(super) fn len(&self) -> usize {
        self.outbox.len()
    }

    /// Queues a packet of `len` bytes that `build` writes (given a fresh
    /// IPv4 identification); `build` returns false if it could not.
    pub(super) fn push(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8], u16) -> bool,
    ) -> Result<(), &'static str> {
        if self.outbox.len() >= MAX_QUEUED_REPLIES
            || self.bytes.saturating_add(len) > MAX_QUEUED_REPLY_BYTES
        {
            return Err("reply_queue_full");
        }
        let ident = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1);
        let buf = self.outbox.push(len);
        if !build(&mut buf[HEADROOM..], ident) {
            self.outbox.pop();
            return Err("rewrite_failed");
        }
        self.bytes += len;
        Ok(())
    }

    /// Moves every queued packet to `to`; returns (packets, bytes).
    fn drain_into(&mut self, to: &mut Outbox) -> (u64, u64) {
        let (mut packets, mut bytes) = (0u64, 0u64);
        for p in self.outbox.packets() {
            to.push_packet(p);
            packets += 1;
            bytes += p.len() as u64;
        }
        self.outbox.clear();
        self.bytes = 0;
        (packets, bytes)
    }
}

impl ProxyEngine {
    /// Moves the UDP and ICMP replies built since the last call into the
    /// outbox (the device loop calls this while it holds the outbox).
    pub fn flush_replies(&mut self) {
        let (packets, bytes) = self.replies.drain_into(&mut self.outbox);
        self.counters.packets_out += packets;
        self.counters.bytes_out += bytes;
    }

    /// Replies built and not yet flushed.
    pub fn queued_replies(&self) -> usize {
        self.replies.len()
    }

    /// Queues a reply for the session at `session` (virtual address) that
    /// is reached at `at` now: built to the virtual address, then rewritten
    /// virtual -> physical like everything a VNIC sends to a migrated
    /// session. Returns whether it was queued (a drop is counted).
    pub(super) fn queue_reply(
        &mut self,
        session: Ipv4Addr,
        at: Ipv4Addr,
        len: usize,
        build: impl FnOnce(&mut [u8], u16),
    ) -> bool {
        if len > usize::from(u16::MAX) {
            self.counters.drop("reply_too_big");
            return false;
        }
        let rewrite = at != session;
        let pushed = self.replies.push(len, |buf, ident| {
            build(buf, ident);
            !rewrite || rewrite_address(buf, Endpoint::Destination, at).is_ok()
        });
        match pushed {
            Ok(()) => {
                if rewrite {
                    self.counters.rewrites += 1;
                }
                true
            }
            Err(reason) => {
                self.counters.drop(reason);
                false
            }
        }
    }
}

/// Whether packets to `addr` may be relayed: a unicast address elsewhere
/// (never the proxy box's loopback, a broadcast or multicast group).
pub(super) fn relayable(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.octets()[0] == 0)
}

/// Writes a 20-byte IPv4 header for `payload_len` bytes of `protocol`.
/// Don't-fragment is clear: the kernel may fragment a reply larger than the
/// path to the session.
fn emit_ipv4(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ident: u16,
    payload_len: usize,
) {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len,
        ttl: TTL,
        label: None,
    };
    let mut packet = Ipv4Packet::new_unchecked(buf);
    repr.emit(&mut packet);
    packet.set_ident(ident);
    packet.set_unfragmented(false);
    packet.fill_checksum();
}

/// The length of a UDP packet built by [`emit_udp`] for `payload_len` bytes.
pub(crate) const fn udp_packet_len(payload_len: usize) -> usize {
    IPV4_HEADER_LEN + L4_HEADER_LEN + payload_len
}

/// Writes an IPv4/UDP packet from `src` to `dst` into `buf`, which must be
/// [`udp_packet_len`] bytes long, with both checksums.
pub(crate) fn emit_udp(
    buf: &mut [u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ident: u16,
    payload: &[u8],
) {
    let udp_len = L4_HEADER_LEN + payload.len();
    emit_ipv4(buf, *src.ip(), *dst.ip(), protocol::UDP, ident, udp_len);
    let Some(udp) = buf.get_mut(IPV4_HEADER_LEN..IPV4_HEADER_LEN + udp_len) else {
        return;
    };
    // Fits: callers keep packets within 65535 bytes.
    let len16 = u16::try_from(udp_len).unwrap_or(u16::MAX);
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&len16.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[8..].copy_from_slice(payload);
    let sum = checksum::add(
        checksum::pseudo_header(*src.ip(), *dst.ip(), protocol::UDP, len16),
        udp,
    );
    // RFC 768: a computed 0 is sent as 0xFFFF (0 means "no checksum").
    let value = match !checksum::fold(sum) {
        0 => 0xFFFF,
        v => v,
    };
    udp[6..8].copy_from_slice(&value.to_be_bytes());
}

/// ICMP types of echo messages.
pub(crate) const ICMP_ECHO_REPLY: u8 = 0;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 8;

/// The length of an echo packet built by [`emit_echo`] for `payload_len` bytes.
pub(crate) const fn echo_packet_len(payload_len: usize) -> usize {
    IPV4_HEADER_LEN + L4_HEADER_LEN + payload_len
}

/// Writes the ICMP echo message (`icmp_type` request or reply) into
/// `buf`, which must be `8 + payload.len()` bytes long, checksum included.
pub(crate) fn write_echo(buf: &mut [u8], icmp_type: u8, ident: u16, seq: u16, payload: &[u8]) {
    if buf.len() != L4_HEADER_LEN + payload.len() {
        return;
    }
    buf[0] = icmp_type;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&[0, 0]);
    buf[4..6].copy_from_slice(&ident.to_be_bytes());
    buf[6..8].copy_from_slice(&seq.to_be_bytes());
    buf[8..].copy_from_slice(payload);
    let value = checksum::checksum(buf);
    buf[2..4].copy_from_slice(&value.to_be_bytes());
}

/// Writes an IPv4/ICMP echo reply from `src` to `dst` into `buf`, which must
/// be [`echo_packet_len`] bytes long.
pub(crate) fn emit_echo_reply(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ip_ident: u16,
    echo: (u16, u16),
    payload: &[u8],
) {
    let icmp_len = L4_HEADER_LEN + payload.len();
    emit_ipv4(buf, src, dst, protocol::ICMP, ip_ident, icmp_len);
    if let Some(icmp) = buf.get_mut(IPV4_HEADER_LEN..IPV4_HEADER_LEN + icmp_len) {
        write_echo(icmp, ICMP_ECHO_REPLY, echo.0, echo.1, payload);
    }
}

/// ICMP destination unreachable (RFC 792), and the codes the UDP relay
/// passes on to sessions.
pub(crate) const ICMP_DEST_UNREACHABLE: u8 = 3;

/// Why a UDP flow's destination cannot be reached: an ICMP destination
/// unreachable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Net = 0,
    Host = 1,
    Port = 3,
}

/// The length of a destination-unreachable packet built by
/// [`emit_udp_unreachable`]: IPv4, ICMP header, the quoted IPv4 and UDP
/// headers.
pub(crate) const UNREACHABLE_PACKET_LEN: usize =
    IPV4_HEADER_LEN + L4_HEADER_LEN + IPV4_HEADER_LEN + L4_HEADER_LEN;

/// Writes an ICMP destination unreachable from `remote`'s address to
/// `session` into `buf` ([`UNREACHABLE_PACKET_LEN`] bytes), quoting the
/// headers of a datagram `session` -> `remote` as the session sent it: its
/// kernel finds the socket by them and reports the error there.
pub(crate) fn emit_udp_unreachable(
    buf: &mut [u8],
    remote: SocketAddrV4,
    session: SocketAddrV4,
    why: Unreachable,
    ident: u16,
) {
    let icmp_len = UNREACHABLE_PACKET_LEN - IPV4_HEADER_LEN;
    emit_ipv4(
        buf,
        *remote.ip(),
        *session.ip(),
        protocol::ICMP,
        ident,
        icmp_len,
    );
    let Some(icmp) = buf.get_mut(IPV4_HEADER_LEN..UNREACHABLE_PACKET_LEN) else {
        return;
    };
    icmp.fill(0);
    icmp[0] = ICMP_DEST_UNREACHABLE;
    icmp[1] = why as u8;
    // The quoted datagram: IPv4 header session -> remote, UDP ports.
    let quoted_len = IPV4_HEADER_LEN + L4_HEADER_LEN;
    emit_ipv4(
        &mut icmp[L4_HEADER_LEN..],
        *session.ip(),
        *remote.ip(),
        protocol::UDP,
        0,
        L4_HEADER_LEN,
    );
    let udp = &mut icmp[L4_HEADER_LEN + IPV4_HEADER_LEN..];
    udp[0..2].copy_from_slice(&session.port().to_be_bytes());
    udp[2..4].copy_from_slice(&remote.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(L4_HEADER_LEN as u16).to_be_bytes());
    debug_assert_eq!(icmp.len(), L4_HEADER_LEN + quoted_len);
    let value = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_ipv4, Transport};
    use etherparse::{Icmpv4Type, SlicedPacket, TransportSlice};

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn port_unreachable_quotes_the_sessions_datagram() {
        let mut buf = vec![0; UNREACHABLE_PACKET_LEN];
        let (web, session) = (addr("198.18.0.20:53"), addr("10.1.0.100:40000"));
        emit_udp_unreachable(&mut buf, web, session, Unreachable::Port, 9);
        let info = parse_ipv4(&buf).unwrap();
        assert_eq!((info.src_addr, info.dst_addr), (*web.ip(), *session.ip()));
        let sliced = SlicedPacket::from_ip(&buf).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("not ICMP");
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
        ));
        // The quoted datagram, as the session sent it.
        let quoted = SlicedPacket::from_ip(icmp.payload()).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = quoted.net else {
            panic!("no quoted IPv4 header");
        };
        assert_eq!(ip.header().source_addr(), *session.ip());
        assert_eq!(ip.header().destination_addr(), *web.ip());
        let Some(TransportSlice::Udp(udp)) = quoted.transport else {
            panic!("no quoted UDP header");
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (40000, 53));
    }

    #[test]
    fn udp_packets_parse_and_etherparse_agrees_on_the_checksum() {
        for len in [0usize, 1, 2, 3, 7, 512, 1472, 9000, MAX_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let (src, dst) = (addr("198.18.0.20:53"), addr("10.1.0.100:40000"));
            let mut buf = vec![0; udp_packet_len(len)];
            emit_udp(&mut buf, src, dst, 9, &payload);
            let info = parse_ipv4(&buf).unwrap();
            assert_eq!((info.src_addr, info.dst_addr), (*src.ip(), *dst.ip()));
            assert_eq!(
                info.transport,
                Transport::Udp {
                    src_port: 53,
                    dst_port: 40000
                }
            );
            assert_eq!(info.total_len, buf.len());
            assert_eq!(&buf[28..], &payload[..]);
            let sliced = SlicedPacket::from_ip(&buf).unwrap();
            let Some(TransportSlice::Udp(udp)) = sliced.transport else {
                panic!("not udp")
            };
            let expected = udp
                .to_header()
                .calc_checksum_ipv4_raw(src.ip().octets(), dst.ip().octets(), &payload)
                .unwrap();
            assert_eq!(udp.checksum(), expected, "payload of {len}");
            // Not don't-fragment: the kernel may fragment big replies.
            assert_eq!(buf[6] & 0x40, 0);
        }
    }

    #[test]
    fn echo_replies_parse_with_their_identifier_and_sequence() {
        let payload = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
        let mut buf = vec![0; echo_packet_len(payload.len())];
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 20), Ipv4Addr::new(10, 1, 0, 100));
        emit_echo_reply(&mut buf, src, dst, 1, (0x1234, 7), payload);
        let info = parse_ipv4(&buf).unwrap();
        assert_eq!(
            info.transport,
            Transport::Icmp {
                icmp_type: ICMP_ECHO_REPLY,
                code: 0,
                echo_id: Some(0x1234)
            }
        );
        let sliced = SlicedPacket::from_ip(&buf).unwrap();
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
            panic!("not icmp")
        };
        let Icmpv4Type::EchoReply(echo) = icmp.icmp_type() else {
            panic!("not an echo reply")
        };
        assert_eq!((echo.id, echo.seq), (0x1234, 7));
        assert_eq!(icmp.payload(), payload);
    }

    #[test]
    fn only_unicast_destinations_are_relayed() {
        assert!(relayable(Ipv4Addr::new(198, 18, 0, 20)));
        for bad in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 251),
            Ipv4Addr::new(0, 1, 2, 3),
        ] {
            assert!(!relayable(bad), "{bad}");
        }
    }

    #[test]
    fn the_reply_queue_is_bounded() {
        let mut q = ReplyQueue::default();
        for _ in 0..MAX_QUEUED_REPLIES {
            q.push(100, |_, _| true).unwrap();
        }
        assert_eq!(q.push(100, |_, _| true), Err("reply_queue_full"));
        let mut out = Outbox::new();
        assert_eq!(
            q.drain_into(&mut out),
            (MAX_QUEUED_REPLIES as u64, 100 * MAX_QUEUED_REPLIES as u64)
        );
        assert_eq!(q.len(), 0);
        // Bytes bound too.
        let big = 60_000;
        let fit = MAX_QUEUED_REPLY_BYTES / big;
        for _ in 0..fit {
            q.push(big, |_, _| true).unwrap();
        }
        assert_eq!(q.push(big, |_, _| true), Err("reply_queue_full"));
        // A failed build leaves nothing behind.
        let mut q = ReplyQueue::default();
        assert_eq!(q.push(10, |_, _| false), Err("rewrite_failed"));
        assert_eq!(q.len(), 0);
    }
}
