//! The proxy box's ICMP echo relay (DESIGN.md §3.3), sans-I/O.
//!
//! An echo request a session sends to an outside host is sent again from
//! the proxy box (one kernel ICMP socket for all sessions, see
//! `io::icmp`), under a *proxy sequence number* unique among the echoes in
//! flight; the reply that comes back with it goes to the session as an echo
//! reply with the session's own identifier, sequence number and payload.
//! The identifier on the wire is the socket's (a datagram ICMP socket's is
//! chosen by the kernel, a raw socket's by the I/O layer), so sessions
//! pinging the same host with the same identifier never mix up.
//!
//! Bounds: at most `max_outstanding` echoes in flight (and as many waiting
//! for the socket); an echo unanswered for `timeout` is forgotten.
//! Other ICMP messages from sessions are dropped (`icmp_not_echo_request`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::task::{Context, Poll, Waker};

use smoltcp::time::{Duration, Instant};

use super::datagram::{
    echo_packet_len, emit_echo_reply, relayable, write_echo, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
    L4_HEADER_LEN, MAX_PAYLOAD,
};
use super::{Counters, ProxyEngine};
use crate::wire::{checksum, PacketInfo, Transport};

/// Limits of the echo relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoConfig {
    /// Echo requests in flight at most; more are dropped (`echo_limit`).
    /// At most 32768 (half the sequence number space).
    pub max_outstanding: usize,
    /// An echo request unanswered this long is forgotten.
    pub timeout: std::time::Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            max_outstanding: 1024,
            timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// The most echoes in flight a configuration may allow.
pub const MAX_OUTSTANDING_LIMIT: usize = 32_768;

/// An echo request for the proxy box's ICMP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRequest {
    pub remote: Ipv4Addr,
    /// The proxy sequence number (the reply must carry it).
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// The ICMP socket's state, as the I/O layer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketState {
    /// Not opened yet: requests wait in the queue.
    Opening,
    /// Open; the name says which kind ("datagram" or "raw").
    Open(&'static str),
    /// Could not be opened: requests are dropped (`echo_unavailable`).
    Unavailable,
}

struct Outstanding {
    /// The session's virtual address, and where it is reached now.
    virtual_addr: Ipv4Addr,
    at: Ipv4Addr,
    remote: Ipv4Addr,
    /// The session's identifier and sequence number.
    ident: u16,
    seq: u16,
    deadline: Instant,
}

/// Echoes in flight, by proxy sequence number.
pub(super) struct EchoRelay {
    config: EchoConfig,
    outstanding: HashMap<u16, Outstanding>,
    timers: BTreeSet<(Instant, u16)>,
    queue: VecDeque<EchoRequest>,
    waker: Option<Waker>,
    next_seq: u16,
    socket: SocketState,
}

impl EchoRelay {
    pub(super) fn new(config: EchoConfig) -> Self {
        let config = EchoConfig {
            max_outstanding: config.max_outstanding.clamp(1, MAX_OUTSTANDING_LIMIT),
            ..config
        };
        EchoRelay {
            config,
            outstanding: HashMap::new(),
            timers: BTreeSet::new(),
            queue: VecDeque::new(),
            waker: None,
            next_seq: 1,
            socket: SocketState::Opening,
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn remove(&mut self, seq: u16) -> Option<Outstanding> {
        let o = self.outstanding.remove(&seq)?;
        self.timers.remove(&(o.deadline, seq));
        Some(o)
    }

    /// Forgets echoes unanswered for the timeout.
    pub(super) fn expire(&mut self, now: Instant, counters: &mut Counters) {
        while let Some(&(at, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            if self.remove(seq).is_some() {
                counters.echo_timeouts += 1;
            } else {
                self.timers.pop_first();
            }
        }
    }

    /// Echoes in flight of the session at `virtual_addr` are answered at
    /// `to` now instead of `from`.
    pub(super) fn session_moved(&mut self, virtual_addr: Ipv4Addr, from: Ipv4Addr, to: Ipv4Addr) {
        for o in self.outstanding.values_mut() {
            if o.virtual_addr == virtual_addr && o.at == from {
                o.at = to;
            }
        }
    }

    /// A proxy sequence number not in flight (there is one: at most half
    /// the space is in use).
    fn fresh_seq(&mut self) -> u16 {
        loop {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            if !self.outstanding.contains_key(&seq) {
                return seq;
            }
        }
    }
}

impl ProxyEngine {
    /// Echo requests in flight now.
    pub fn echoes_outstanding(&self) -> usize {
        self.echo.outstanding.len()
    }

    /// Which ICMP socket the echo relay uses ("datagram", "raw"), or
    /// "unavailable", or "opening".
    pub fn echo_socket(&self) -> &'static str {
        match self.echo.socket {
            SocketState::Opening => "opening",
            SocketState::Open(kind) => kind,
            SocketState::Unavailable => "unavailable",
        }
    }

    /// An ICMP message from a session (already classified).
    pub(super) fn handle_icmp(&mut self, now: Instant, packet: &[u8], info: &PacketInfo) {
        let Transport::Icmp {
            icmp_type,
            code,
            echo_id,
        } = info.transport
        else {
            return self.counters.drop("unsupported_protocol");
        };
        let (ICMP_ECHO_REQUEST, 0, Some(ident)) = (icmp_type, code, echo_id) else {
            return self.counters.drop("icmp_not_echo_request");
        };
        if info.label.is_some() {
            return self.counters.drop("unexpected_label");
        }
        if !relayable(info.dst_addr) {
            return self.counters.drop("bad_destination");
        }
        let Some(icmp) = packet.get(info.ip_header_len..) else {
            return self.counters.drop("truncated_transport");
        };
        let (Some(&[s0, s1]), Some(payload)) = (icmp.get(6..8), icmp.get(L4_HEADER_LEN..)) else {
            return self.counters.drop("truncated_transport");
        };
        match self.echo.socket {
            SocketState::Unavailable => return self.counters.drop("echo_unavailable"),
            SocketState::Opening | SocketState::Open(_) => {}
        }
        let max = self.echo.config.max_outstanding;
        if self.echo.outstanding.len() >= max || self.echo.queue.len() >= max {
            return self.counters.drop("echo_limit");
        }
        let virtual_addr = self
            .migrated
            .get(&info.src_addr)
            .copied()
            .unwrap_or(info.src_addr);
        let proxy_seq = self.echo.fresh_seq();
        let deadline = now + Duration::from(self.echo.config.timeout);
        self.echo.outstanding.insert(
            proxy_seq,
            Outstanding {
                virtual_addr,
                at: info.src_addr,
                remote: info.dst_addr,
                ident,
                seq: u16::from_be_bytes([s0, s1]),
                deadline,
            },
        );
        self.echo.timers.insert((deadline, proxy_seq));
        self.echo.queue.push_back(EchoRequest {
            remote: info.dst_addr,
            seq: proxy_seq,
            payload: payload.to_vec(),
        });
        if let Some(w) = self.echo.waker.take() {
            w.wake();
        }
    }

    /// The next echo request for the ICMP socket.
    pub fn echo_poll_request(&mut self, cx: &mut Context<'_>) -> Poll<EchoRequest> {
        while let Some(request) = self.echo.queue.pop_front() {
            // Still in flight (not timed out while it waited)?
            if self
                .echo
                .outstanding
                .get(&request.seq)
                .is_some_and(|o| o.remote == request.remote)
            {
                self.counters.echo_requests += 1;
                return Poll::Ready(request);
            }
        }
        if !self
            .echo
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.echo.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// An echo reply came from `from` with proxy sequence number `seq`: it
    /// goes to the session that asked (see [`ProxyEngine::flush_replies`]).
    pub fn echo_reply(&mut self, from: Ipv4Addr, seq: u16, payload: &[u8]) {
        match self.echo.outstanding.get(&seq) {
            Some(o) if o.remote == from => {}
            _ => return self.counters.drop("echo_unmatched"),
        }
        if payload.len() > MAX_PAYLOAD {
            return self.counters.drop("reply_too_big");
        }
        let Some(o) = self.echo.remove(seq) else {
            return;
        };
        let queued = self.queue_reply(
            o.virtual_addr,
            o.at,
            echo_packet_len(payload.len()),
            |buf, ip_ident| {
                emit_echo_reply(
                    buf,
                    o.remote,
                    o.virtual_addr,
                    ip_ident,
                    (o.ident, o.seq),
                    payload,
                )
            },
        );
        if queued {
            self.counters.echo_replies += 1;
        }
    }

    /// Sending echo `seq` failed (no route, say): it is forgotten.
    pub fn echo_send_failed(&mut self, seq: u16) {
        self.echo.remove(seq);
        self.counters.drop("echo_send_failed");
    }

    /// The ICMP socket is open; `kind` names it for the stats.
    pub fn echo_socket_opened(&mut self, kind: &'static str) {
        self.echo.socket = SocketState::Open(kind);
    }

    /// No ICMP socket could be opened: echoes are dropped from now on.
    pub fn echo_socket_failed(&mut self) {
        self.echo.socket = SocketState::Unavailable;
        for request in std::mem::take(&mut self.echo.queue) {
            self.echo.remove(request.seq);
            self.counters.drop("echo_unavailable");
        }
    }
}

/// The ICMP message of an echo request as the I/O layer sends it: the
/// socket's identifier `ident` (a datagram socket puts its own), the proxy
/// sequence number, the session's payload; checksum filled.
pub fn echo_request_message(ident: u16, request: &EchoRequest) -> Vec<u8> {
    let mut message = vec![0; L4_HEADER_LEN + request.payload.len()];
    write_echo(
        &mut message,
        ICMP_ECHO_REQUEST,
        ident,
        request.seq,
        &request.payload,
    );
    message
}

/// Reads an echo reply the ICMP socket received: `data` is the ICMP message
/// itself (datagram socket) or the whole IPv4 packet (raw socket, with
/// `raw_ident` the identifier it sends with). Returns the sequence number
/// and payload, or None for anything else (other ICMP messages, other
/// identifiers, bad checksums).
pub fn parse_echo_reply(data: &[u8], raw_ident: Option<u16>) -> Option<(u16, &[u8])> {
    let icmp = match raw_ident {
        Some(_) => {
            let ihl = usize::from(data.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?]));
            data.get(ihl..total.min(data.len()))?
        }
        None => data,
    };
    let &[kind, code, _, _, i0, i1, s0, s1] = icmp.first_chunk::<8>()?;
    let payload = icmp.get(8..)?;
    if kind != ICMP_ECHO_REPLY || code != 0 {
        return None;
    }
    if let Some(ident) = raw_ident {
        // The kernel checked a datagram socket's; a raw socket gets every
        // echo reply to this host as it came.
        if u16::from_be_bytes([i0, i1]) != ident || !checksum::verify(icmp) {
            return None;
        }
    }
    Some((u16::from_be_bytes([s0, s1]), payload))
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;
    use crate::proxybox::ProxyConfig;
    use crate::vnic::HEADROOM;
    use crate::wire::parse_ipv4;

    const SESSION: [u8; 4] = [10, 1, 0, 100];
    const PHYSICAL: [u8; 4] = [10, 2, 0, 100];
    const WEB: [u8; 4] = [198, 18, 0, 20];

    fn ping(src: [u8; 4], dst: [u8; 4], ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .icmpv4_echo_request(ident, seq)
            .write(&mut p, payload)
            .unwrap();
        p
    }

    fn engine(echo: EchoConfig) -> ProxyEngine {
        let mut e = ProxyEngine::new(
            ProxyConfig {
                echo,
                ..ProxyConfig::default()
            },
            3,
        );
        e.echo_socket_opened("raw");
        e
    }

    fn at(secs: f64) -> Instant {
        Instant::from_micros((secs * 1e6) as i64)
    }

    fn next_request(e: &mut ProxyEngine) -> Option<EchoRequest> {
        match e.echo_poll_request(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn replies(e: &mut ProxyEngine) -> Vec<Vec<u8>> {
        e.flush_replies();
        let out = e
            .outbox
            .packets_mut()
            .iter()
            .map(|b| b[HEADROOM..].to_vec())
            .collect();
        e.outbox.clear();
        out
    }

    /// (identifier, sequence, payload) of an echo reply packet.
    fn echo_of(packet: &[u8]) -> (u16, u16, Vec<u8>) {
        let info = parse_ipv4(packet).unwrap();
        let Transport::Icmp {
            icmp_type: 0,
            code: 0,
            echo_id: Some(id),
        } = info.transport
        else {
            panic!("{info:?}")
        };
        let icmp = &packet[info.ip_header_len..];
        (
            id,
            u16::from_be_bytes([icmp[6], icmp[7]]),
            icmp[8..].to_vec(),
        )
    }

    #[test]
    fn an_echo_goes_out_and_its_reply_comes_back_as_the_session_sent_it() {
        let mut e = engine(EchoConfig::default());
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 0x4242, 7, b"payload-1"));
        // Another session (or the same) with the same identifier and seq.
        e.handle_packet(
            at(0.0),
            &mut ping([10, 1, 0, 101], WEB, 0x4242, 7, b"payload-2"),
        );
        let r1 = next_request(&mut e).unwrap();
        let r2 = next_request(&mut e).unwrap();
        assert_eq!(next_request(&mut e), None);
        assert_eq!(
            (r1.remote, &r1.payload[..]),
            (WEB.into(), &b"payload-1"[..])
        );
        assert_ne!(r1.seq, r2.seq, "proxy sequence numbers are unique");
        assert_eq!(e.echoes_outstanding(), 2);

        // The wire form round-trips through the parser.
        let message = echo_request_message(0x9999, &r1);
        assert!(checksum::verify(&message));
        let mut reply = message.clone();
        reply[0] = ICMP_ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&reply);
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            parse_echo_reply(&reply, None),
            Some((r1.seq, &b"payload-1"[..]))
        );

        // Replies in the other order; one from a stranger is not matched.
        e.echo_reply(Ipv4Addr::new(198, 18, 0, 66), r2.seq, b"payload-2");
        e.echo_reply(WEB.into(), r2.seq, b"payload-2");
        e.echo_reply(WEB.into(), r1.seq, b"payload-1");
        e.echo_reply(WEB.into(), r1.seq, b"payload-1");
        let out = replies(&mut e);
        assert_eq!(out.len(), 2);
        let info = parse_ipv4(&out[0]).unwrap();
        assert_eq!(
            (info.src_addr, info.dst_addr),
            (WEB.into(), Ipv4Addr::new(10, 1, 0, 101))
        );
        assert_eq!(echo_of(&out[0]), (0x4242, 7, b"payload-2".to_vec()));
        assert_eq!(
            parse_ipv4(&out[1]).unwrap().dst_addr,
            Ipv4Addr::from(SESSION)
        );
        assert_eq!(echo_of(&out[1]), (0x4242, 7, b"payload-1".to_vec()));
        let c = &e.counters;
        assert_eq!((c.echo_requests, c.echo_replies), (2, 2));
        assert_eq!(c.dropped.get("echo_unmatched"), Some(&2));
        assert_eq!(e.echoes_outstanding(), 0);
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn unanswered_echoes_time_out() {
        let mut e = engine(EchoConfig {
            timeout: std::time::Duration::from_secs(5),
            ..EchoConfig::default()
        });
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, 1, b""));
        e.handle_packet(at(1.0), &mut ping(SESSION, WEB, 1, 2, b""));
        let r1 = next_request(&mut e).unwrap();
        assert_eq!(e.next_deadline(), Some(at(5.0)));
        e.poll_timers(at(4.9));
        assert_eq!(e.echoes_outstanding(), 2);
        e.poll_timers(at(5.0));
        assert_eq!(e.echoes_outstanding(), 1);
        assert_eq!(e.counters.echo_timeouts, 1);
        // Too late.
        e.echo_reply(WEB.into(), r1.seq, b"");
        assert_eq!(e.counters.dropped.get("echo_unmatched"), Some(&1));
        // The second one timed out while waiting for the socket: not sent.
        e.poll_timers(at(6.0));
        assert_eq!(next_request(&mut e), None);
        assert_eq!(e.counters.echo_timeouts, 2);
        assert_eq!(e.next_deadline(), None);
    }

    #[test]
    fn echoes_in_flight_are_bounded() {
        let mut e = engine(EchoConfig {
            max_outstanding: 4,
            ..EchoConfig::default()
        });
        for seq in 0..6 {
            e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, seq, b""));
        }
        assert_eq!(e.echoes_outstanding(), 4);
        assert_eq!(e.counters.dropped.get("echo_limit"), Some(&2));
        let r = next_request(&mut e).unwrap();
        e.echo_reply(WEB.into(), r.seq, b"");
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, 9, b""));
        assert_eq!(e.echoes_outstanding(), 4);
        // Sequence numbers wrap around and skip those in flight.
        let mut e = engine(EchoConfig {
            max_outstanding: 2,
            ..EchoConfig::default()
        });
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, 0, b""));
        let first = next_request(&mut e).unwrap().seq;
        for i in 0..70_000u32 {
            e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, i as u16, b""));
            let r = next_request(&mut e).unwrap();
            assert_ne!(r.seq, first);
            e.echo_reply(WEB.into(), r.seq, b"");
        }
        assert_eq!(e.echoes_outstanding(), 1);
    }

    #[test]
    fn a_migrated_session_is_answered_at_its_physical_address() {
        let mut e = engine(EchoConfig::default());
        let (v, p) = (Ipv4Addr::from(SESSION), Ipv4Addr::from(PHYSICAL));
        // In flight across the move.
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 5, 1, b"x"));
        let r1 = next_request(&mut e).unwrap();
        e.session_moved(v, v, p);
        // Sent from the physical address after it.
        e.handle_packet(at(1.0), &mut ping(PHYSICAL, WEB, 5, 2, b"y"));
        let r2 = next_request(&mut e).unwrap();
        e.echo_reply(WEB.into(), r1.seq, b"x");
        e.echo_reply(WEB.into(), r2.seq, b"y");
        for (packet, seq) in replies(&mut e).iter().zip([1, 2]) {
            assert_eq!(parse_ipv4(packet).unwrap().dst_addr, p);
            assert_eq!(echo_of(packet).1, seq);
        }
        assert_eq!(e.counters.rewrites, 2);
    }

    #[test]
    fn other_icmp_and_a_missing_socket_are_dropped_with_a_reason() {
        let mut e = engine(EchoConfig::default());
        let mut reply = Vec::new();
        PacketBuilder::ipv4(SESSION, WEB, 64)
            .icmpv4_echo_reply(1, 1)
            .write(&mut reply, b"")
            .unwrap();
        e.handle_packet(at(0.0), &mut reply);
        e.handle_packet(at(0.0), &mut ping(SESSION, [127, 0, 0, 1], 1, 1, b""));
        assert_eq!(e.counters.dropped.get("icmp_not_echo_request"), Some(&1));
        assert_eq!(e.counters.dropped.get("bad_destination"), Some(&1));

        // Queued while the socket opens; dropped when it cannot.
        let mut e = ProxyEngine::new(ProxyConfig::default(), 1);
        assert_eq!(e.echo_socket(), "opening");
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, 1, b""));
        e.echo_socket_failed();
        e.handle_packet(at(0.0), &mut ping(SESSION, WEB, 1, 2, b""));
        assert_eq!(e.counters.dropped.get("echo_unavailable"), Some(&2));
        assert_eq!(e.echoes_outstanding(), 0);
        assert_eq!(e.echo_socket(), "unavailable");
    }

    #[test]
    fn raw_socket_input_is_filtered() {
        let req = EchoRequest {
            remote: WEB.into(),
            seq: 77,
            payload: b"abc".to_vec(),
        };
        let mut packet = vec![0; echo_packet_len(3)];
        emit_echo_reply(
            &mut packet,
            WEB.into(),
            Ipv4Addr::new(198, 18, 0, 1),
            0,
            (0x1111, 77),
            b"abc",
        );
        assert_eq!(
            parse_echo_reply(&packet, Some(0x1111)),
            Some((77, &b"abc"[..]))
        );
        // Another identifier (some other pinger on the proxy box).
        assert_eq!(parse_echo_reply(&packet, Some(0x2222)), None);
        // A corrupted message.
        let last = packet.len() - 1;
        packet[last] ^= 1;
        assert_eq!(parse_echo_reply(&packet, Some(0x1111)), None);
        // A request is not a reply; short input is nothing.
        let request = echo_request_message(1, &req);
        assert_eq!(parse_echo_reply(&request, None), None);
        assert_eq!(parse_echo_reply(&[0, 0, 0], None), None);
        assert_eq!(parse_echo_reply(&[0x45], Some(1)), None);
    }
}
