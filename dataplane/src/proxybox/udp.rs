//! The proxy box's UDP relay (DESIGN.md §3.3), sans-I/O.
//!
//! A *flow* is what a session sends from one of its ports to one
//! destination address and port. The first datagram of a flow raises
//! [`Event::UdpFlow`]: the I/O layer opens a kernel UDP socket on the proxy
//! box, connected to the destination, sends what
//! [`ProxyEngine::udp_poll_outgoing`] hands it, and gives every datagram
//! that comes back to [`ProxyEngine::udp_reply`], which builds the IPv4/UDP
//! packet for the session. The outside host sees the proxy box's address,
//! and the same port for the flow's whole life, across the session's
//! migrations too.
//!
//! Bounds: at most `max_flows` flows; at most `queue` datagrams per flow,
//! and [`MAX_QUEUED_BYTES`] in all, waiting for sockets (a slow or stuck
//! socket loses datagrams, counted, as UDP may); a flow silent both ways
//! for `idle_timeout` is closed.
//!
//! Migration: a session that migrated across subnets sends from its
//! physical address; the engine's `migrated` map gives its virtual one, the
//! flow stays the same, and replies are rewritten virtual -> physical.
//! Flows are found by the address the session sends from *now* (as TCP
//! connections of unmigrated sessions are found by tuple), so a new session
//! that reuses a migrated session's old address never meets its flows.
//! Datagrams carry no labels.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::task::{Context, Poll, Waker};

use smoltcp::time::{Duration, Instant};

use super::datagram::{
    emit_udp, emit_udp_unreachable, relayable, udp_packet_len, Unreachable, MAX_PAYLOAD,
    UNREACHABLE_PACKET_LEN,
};
use super::{Counters, Event, ProxyEngine};
use crate::wire::PacketInfo;

/// Bytes of datagrams waiting for their flows' sockets, in all flows
/// together, at most; more are dropped (`udp_queue_full`). A kernel UDP
/// socket takes a datagram at once unless its send buffer is full, so the
/// queues are normally empty.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

/// Limits of the UDP relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// At most this many flows at once; datagrams of new flows beyond are
    /// dropped (`udp_flow_limit`).
    pub max_flows: usize,
    /// A flow silent both ways this long is closed.
    pub idle_timeout: std::time::Duration,
    /// Datagrams per flow waiting for its socket; more are dropped
    /// (`udp_queue_full`).
    pub queue: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            max_flows: 4096,
            idle_timeout: std::time::Duration::from_secs(30),
            queue: 64,
        }
    }
}

/// A UDP flow's id; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdpFlowId(u64);

/// A UDP flow as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpFlow {
    /// The session's end: its virtual address and port.
    pub session: SocketAddrV4,
    /// The destination.
    pub remote: SocketAddrV4,
}

/// (where the session sends from now, the destination).
type Key = (SocketAddrV4, SocketAddrV4);

struct Flow {
    flow: UdpFlow,
    /// The address the session is reached at now: its physical address
    /// (the virtual one unless it migrated across subnets).
    at: Ipv4Addr,
    last_active: Instant,
    /// The deadline this flow is filed under in the timer set.
    filed: Instant,
    /// Datagrams for the socket.
    queue: VecDeque<Vec<u8>>,
    /// The I/O task waiting for a datagram (or for the flow to close).
    waker: Option<Waker>,
}

impl Flow {
    fn key(&self) -> Key {
        (
            SocketAddrV4::new(self.at, self.flow.session.port()),
            self.flow.remote,
        )
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// The UDP flows and their timers.
pub(super) struct UdpRelay {
    config: UdpConfig,
    flows: HashMap<UdpFlowId, Flow>,
    by_key: HashMap<Key, UdpFlowId>,
    timers: BTreeSet<(Instant, UdpFlowId)>,
    next_id: u64,
    /// Bytes in all flows' queues.
    queued_bytes: usize,
}

impl UdpRelay {
    pub(super) fn new(config: UdpConfig) -> Self {
        UdpRelay {
            config,
            flows: HashMap::new(),
            by_key: HashMap::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            queued_bytes: 0,
        }
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from(self.config.idle_timeout)
    }

    /// The earliest flow timer.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn open(
        &mut self,
        now: Instant,
        src: SocketAddrV4,
        virtual_addr: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> UdpFlowId {
        let id = UdpFlowId(self.next_id);
        self.next_id += 1;
        let filed = now + self.idle_timeout();
        let flow = Flow {
            flow: UdpFlow {
                session: SocketAddrV4::new(virtual_addr, src.port()),
                remote,
            },
            at: *src.ip(),
            last_active: now,
            filed,
            queue: VecDeque::new(),
            waker: None,
        };
        self.by_key.insert(flow.key(), id);
        self.flows.insert(id, flow);
        self.timers.insert((filed, id));
        id
    }

    /// Removes a flow; its I/O task sees it gone. Returns the datagrams it
    /// still had queued.
    fn close(&mut self, id: UdpFlowId) -> usize {
        let Some(mut flow) = self.flows.remove(&id) else {
            return 0;
        };
        let key = flow.key();
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        self.timers.remove(&(flow.filed, id));
        flow.wake();
        let bytes: usize = flow.queue.iter().map(Vec::len).sum();
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        flow.queue.len()
    }

    /// Closes flows silent for the idle timeout (a flow whose deadline came
    /// but which was active since is filed again).
    pub(super) fn expire(&mut self, now: Instant, counters: &mut Counters) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let timeout = self.idle_timeout();
            let Some(flow) = self.flows.get_mut(&id) else {
                continue;
            };
            let due = flow.last_active + timeout;
            if due > now {
                flow.filed = due;
                self.timers.insert((due, id));
                continue;
            }
            let lost = self.close(id);
            counters.udp_flows_expired += 1;
            for _ in 0..lost {
                counters.drop("udp_queue_expired");
            }
            tracing::debug!(?id, "udp flow expired");
        }
    }

    /// The session at `virtual_addr` is reached at `to` now instead of
    /// `from`: its flows follow it.
    pub(super) fn session_moved(&mut self, virtual_addr: Ipv4Addr, from: Ipv4Addr, to: Ipv4Addr) {
        let moving: Vec<UdpFlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| *f.flow.session.ip() == virtual_addr && f.at == from)
            .map(|(id, _)| *id)
            .collect();
        for id in moving {
            let Some(flow) = self.flows.get_mut(&id) else {
                continue;
            };
            let old = flow.key();
            flow.at = to;
            let new = flow.key();
            if self.by_key.get(&old) == Some(&id) {
                self.by_key.remove(&old);
            }
            // A stale flow of whoever had `to` before loses its key.
            if let Some(stale) = self.by_key.insert(new, id) {
                if stale != id {
                    self.close(stale);
                }
            }
        }
    }
}

impl ProxyEngine {
    /// UDP flows open now.
    pub fn udp_flows(&self) -> usize {
        self.udp.flows.len()
    }

    /// A UDP datagram from a session (already classified).
    pub(super) fn handle_udp(&mut self, now: Instant, packet: &[u8], info: &PacketInfo) {
        let Some((src_port, dst_port)) = info.ports() else {
            return self.counters.drop("unsupported_protocol");
        };
        if src_port == 0 || dst_port == 0 {
            return self.counters.drop("port_zero");
        }
        if info.label.is_some() {
            // Servers label TCP only; a label here is not from a dataplane.
            return self.counters.drop("unexpected_label");
        }
        if !relayable(info.dst_addr) {
            return self.counters.drop("bad_destination");
        }
        let Some(payload) = packet.get(info.ip_header_len + info.transport_header_len..) else {
            return self.counters.drop("truncated_transport");
        };
        let src = SocketAddrV4::new(info.src_addr, src_port);
        let remote = SocketAddrV4::new(info.dst_addr, dst_port);
        let id = match self.udp.by_key.get(&(src, remote)) {
            Some(&id) => id,
            None => {
                if self.udp.flows.len() >= self.udp.config.max_flows {
                    return self.counters.drop("udp_flow_limit");
                }
                // A session that migrated sends from its physical address.
                let virtual_addr = self
                    .migrated
                    .get(&info.src_addr)
                    .copied()
                    .unwrap_or(info.src_addr);
                let id = self.udp.open(now, src, virtual_addr, remote);
                self.counters.udp_flows_created += 1;
                self.events.push(Event::UdpFlow { id, remote });
                tracing::debug!(?id, %src, %virtual_addr, %remote, "udp flow opened");
                id
            }
        };
        let queue_limit = self.udp.config.queue;
        let room = MAX_QUEUED_BYTES.saturating_sub(self.udp.queued_bytes);
        let Some(flow) = self.udp.flows.get_mut(&id) else {
            return self.counters.drop("udp_no_flow");
        };
        flow.last_active = now;
        if flow.queue.len() >= queue_limit || payload.len() > room {
            return self.counters.drop("udp_queue_full");
        }
        flow.queue.push_back(payload.to_vec());
        flow.wake();
        self.udp.queued_bytes += payload.len();
    }

    /// The next datagram of flow `id` for its socket; `Ready(None)` once
    /// the flow is closed (the I/O task then ends).
    pub fn udp_poll_outgoing(
        &mut self,
        id: UdpFlowId,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Vec<u8>>> {
        let Some(flow) = self.udp.flows.get_mut(&id) else {
            return Poll::Ready(None);
        };
        match flow.queue.pop_front() {
            Some(datagram) => {
                self.udp.queued_bytes = self.udp.queued_bytes.saturating_sub(datagram.len());
                self.counters.udp_datagrams_to_outside += 1;
                Poll::Ready(Some(datagram))
            }
            None => {
                if !flow.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    flow.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// A datagram came back on flow `id`'s socket: it goes to the session
    /// (see [`ProxyEngine::flush_replies`]).
    pub fn udp_reply(&mut self, now: Instant, id: UdpFlowId, payload: &[u8]) {
        let Some(flow) = self.udp.flows.get_mut(&id) else {
            return self.counters.drop("udp_no_flow");
        };
        if payload.len() > MAX_PAYLOAD {
            return self.counters.drop("reply_too_big");
        }
        flow.last_active = now;
        let (session, remote, at) = (flow.flow.session, flow.flow.remote, flow.at);
        let queued = self.queue_reply(
            *session.ip(),
            at,
            udp_packet_len(payload.len()),
            |buf, ident| emit_udp(buf, remote, session, ident, payload),
        );
        if queued {
            self.counters.udp_datagrams_to_session += 1;
        }
    }

    /// Sending on flow `id`'s socket failed: the datagram is lost.
    pub fn udp_send_failed(&mut self, _id: UdpFlowId) {
        self.counters.drop("udp_send_failed");
    }

    /// Flow `id`'s destination cannot be reached (the connected socket
    /// reported the ICMP error the kernel got for an earlier datagram):
    /// the session gets the same error, from the destination's address, so
    /// its socket reports it too (a DNS client tries its next server at
    /// once instead of timing out).
    pub fn udp_unreachable(&mut self, now: Instant, id: UdpFlowId, why: Unreachable) {
        let Some(flow) = self.udp.flows.get_mut(&id) else {
            return self.counters.drop("udp_no_flow");
        };
        flow.last_active = now;
        let (session, remote, at) = (flow.flow.session, flow.flow.remote, flow.at);
        let queued = self.queue_reply(*session.ip(), at, UNREACHABLE_PACKET_LEN, |buf, ident| {
            emit_udp_unreachable(buf, remote, session, why, ident)
        });
        if queued {
            self.counters.icmp_errors_to_session += 1;
        }
    }

    /// Flow `id`'s socket reported another error.
    pub fn udp_receive_failed(&mut self, _id: UdpFlowId) {
        self.counters.drop("udp_receive_error");
    }

    /// Flow `id`'s socket could not be opened: the flow is closed and what
    /// it had queued is lost (the next datagram opens a new flow).
    pub fn udp_failed(&mut self, id: UdpFlowId) {
        let lost = self.udp.close(id);
        for _ in 0..lost.max(1) {
            self.counters.drop("udp_socket_failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use etherparse::PacketBuilder;

    use super::*;
    use crate::proxybox::ProxyConfig;
    use crate::vnic::HEADROOM;
    use crate::wire::{parse_ipv4, Transport};

    const SESSION: [u8; 4] = [10, 1, 0, 100];
    const PHYSICAL: [u8; 4] = [10, 2, 0, 100];
    const WEB: [u8; 4] = [198, 18, 0, 20];

    fn datagram(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut p, payload)
            .unwrap();
        p
    }

    fn engine(udp: UdpConfig) -> ProxyEngine {
        ProxyEngine::new(
            ProxyConfig {
                udp,
                ..ProxyConfig::default()
            },
            7,
        )
    }

    fn at(secs: f64) -> Instant {
        Instant::from_micros((secs * 1e6) as i64)
    }

    /// A waker that counts its wake-ups.
    struct Counting(AtomicUsize);
    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(e: &mut ProxyEngine, id: UdpFlowId, waker: &Arc<Counting>) -> Poll<Option<Vec<u8>>> {
        let waker = Waker::from(waker.clone());
        e.udp_poll_outgoing(id, &mut Context::from_waker(&waker))
    }

    fn only_flow(e: &mut ProxyEngine) -> (UdpFlowId, SocketAddrV4) {
        match e.take_events().as_slice() {
            [Event::UdpFlow { id, remote }] => (*id, *remote),
            other => panic!("{other:?}"),
        }
    }

    fn replies(e: &mut ProxyEngine) -> Vec<Vec<u8>> {
        e.flush_replies();
        let out: Vec<Vec<u8>> = e
            .outbox
            .packets_mut()
            .iter()
            .map(|b| b[HEADROOM..].to_vec())
            .collect();
        e.outbox.clear();
        out
    }

    #[test]
    fn a_flow_relays_both_ways_and_replies_parse() {
        let mut e = engine(UdpConfig::default());
        let waker = Arc::new(Counting(AtomicUsize::new(0)));
        e.handle_packet(at(0.0), &mut datagram(SESSION, 40000, WEB, 53, b"query-1"));
        let (id, remote) = only_flow(&mut e);
        assert_eq!(remote, "198.18.0.20:53".parse().unwrap());
        assert_eq!(e.udp_flows(), 1);
        assert_eq!(
            poll(&mut e, id, &waker),
            Poll::Ready(Some(b"query-1".to_vec()))
        );
        assert_eq!(poll(&mut e, id, &waker), Poll::Pending);
        // The same flow: no new event, and the waiting task is woken.
        e.handle_packet(at(0.1), &mut datagram(SESSION, 40000, WEB, 53, b"query-2"));
        assert!(e.take_events().is_empty());
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            poll(&mut e, id, &waker),
            Poll::Ready(Some(b"query-2".to_vec()))
        );
        // Another source port is another flow.
        e.handle_packet(at(0.1), &mut datagram(SESSION, 40001, WEB, 53, b"x"));
        assert_ne!(only_flow(&mut e).0, id);

        e.udp_reply(at(0.2), id, b"answer");
        e.udp_reply(at(0.2), id, b"");
        let out = replies(&mut e);
        assert_eq!(out.len(), 2);
        let info = parse_ipv4(&out[0]).unwrap();
        assert_eq!(info.src_addr, Ipv4Addr::from(WEB));
        assert_eq!(info.dst_addr, Ipv4Addr::from(SESSION));
        assert_eq!(
            info.transport,
            Transport::Udp {
                src_port: 53,
                dst_port: 40000
            }
        );
        assert_eq!(&out[0][28..], b"answer");
        assert_eq!(parse_ipv4(&out[1]).unwrap().total_len, 28);
        let c = &e.counters;
        assert_eq!(
            (
                c.udp_flows_created,
                c.udp_datagrams_to_outside,
                c.udp_datagrams_to_session
            ),
            (2, 2, 2)
        );
        assert_eq!(c.packets_out, 2);
        assert_eq!(c.rewrites, 0);
    }

    #[test]
    fn flows_expire_after_silence_both_ways() {
        let mut e = engine(UdpConfig::default());
        let waker = Arc::new(Counting(AtomicUsize::new(0)));
        e.handle_packet(at(0.0), &mut datagram(SESSION, 40000, WEB, 53, b"q"));
        let (id, _) = only_flow(&mut e);
        assert_eq!(poll(&mut e, id, &waker), Poll::Ready(Some(b"q".to_vec())));
        assert_eq!(e.next_deadline(), Some(at(30.0)));
        // A reply at 20 s keeps it open past 30 s.
        e.udp_reply(at(20.0), id, b"a");
        e.poll_timers(at(30.0));
        assert_eq!(e.udp_flows(), 1);
        assert_eq!(e.next_deadline(), Some(at(50.0)));
        // So does a datagram from the session.
        e.handle_packet(at(45.0), &mut datagram(SESSION, 40000, WEB, 53, b"q"));
        e.poll_timers(at(50.0));
        assert_eq!(e.udp_flows(), 1);
        assert_eq!(poll(&mut e, id, &waker), Poll::Ready(Some(b"q".to_vec())));
        assert_eq!(poll(&mut e, id, &waker), Poll::Pending);
        e.poll_timers(at(74.9));
        assert_eq!(e.udp_flows(), 1);
        e.poll_timers(at(75.0));
        assert_eq!(e.udp_flows(), 0);
        assert_eq!(e.counters.udp_flows_expired, 1);
        assert_eq!(e.next_deadline(), None);
        // The task was woken and sees the flow gone; a late reply is dropped.
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut e, id, &waker), Poll::Ready(None));
        e.udp_reply(at(76.0), id, b"late");
        assert_eq!(e.counters.dropped.get("udp_no_flow"), Some(&1));
        // The next datagram opens a new flow.
        e.handle_packet(at(80.0), &mut datagram(SESSION, 40000, WEB, 53, b"q"));
        assert_ne!(only_flow(&mut e).0, id);
    }

    #[test]
    fn the_timeout_is_configurable() {
        let mut e = engine(UdpConfig {
            idle_timeout: std::time::Duration::from_secs(2),
            ..UdpConfig::default()
        });
        e.handle_packet(at(0.0), &mut datagram(SESSION, 40000, WEB, 53, b"q"));
        e.poll_timers(at(2.0));
        assert_eq!(e.udp_flows(), 0);
    }

    #[test]
    fn flows_and_queues_are_bounded() {
        let mut e = engine(UdpConfig {
            max_flows: 3,
            queue: 2,
            ..UdpConfig::default()
        });
        for port in 1..=5 {
            e.handle_packet(at(0.0), &mut datagram(SESSION, port, WEB, 53, b"q"));
        }
        assert_eq!(e.udp_flows(), 3);
        assert_eq!(e.take_events().len(), 3);
        assert_eq!(e.counters.dropped.get("udp_flow_limit"), Some(&2));
        // Flow 1 has one queued; two more fit no more.
        for _ in 0..3 {
            e.handle_packet(at(0.0), &mut datagram(SESSION, 1, WEB, 53, b"q"));
        }
        assert_eq!(e.counters.dropped.get("udp_queue_full"), Some(&2));
        // A flow whose socket fails loses what it queued, counted.
        let id = UdpFlowId(1);
        e.udp_failed(id);
        assert_eq!(e.counters.dropped.get("udp_socket_failed"), Some(&2));
        assert_eq!(e.udp_flows(), 2);
        // Room again for a new flow.
        e.handle_packet(at(0.0), &mut datagram(SESSION, 9, WEB, 53, b"q"));
        assert_eq!(e.udp_flows(), 3);
    }

    #[test]
    fn queued_bytes_are_bounded_across_flows() {
        let mut e = engine(UdpConfig {
            queue: 1000,
            ..UdpConfig::default()
        });
        let big = vec![7u8; 60_000];
        let fit = MAX_QUEUED_BYTES / big.len();
        for i in 0..fit + 3 {
            // Spread over flows: the bound is for all of them together.
            let port = 1 + (i % 7) as u16;
            e.handle_packet(at(0.0), &mut datagram(SESSION, port, WEB, 53, &big));
        }
        assert_eq!(e.counters.dropped.get("udp_queue_full"), Some(&3));
        assert_eq!(e.udp.queued_bytes, fit * big.len());
        // Sending frees room; closing a flow frees its share.
        let waker = Arc::new(Counting(AtomicUsize::new(0)));
        assert!(matches!(
            poll(&mut e, UdpFlowId(1), &waker),
            Poll::Ready(Some(_))
        ));
        e.handle_packet(at(0.0), &mut datagram(SESSION, 1, WEB, 53, &big));
        assert_eq!(e.counters.dropped.get("udp_queue_full"), Some(&3));
        e.udp_failed(UdpFlowId(2));
        e.poll_timers(at(100.0));
        assert_eq!((e.udp_flows(), e.udp.queued_bytes), (0, 0));
    }

    #[test]
    fn replies_beyond_the_queue_are_dropped_until_flushed() {
        let mut e = engine(UdpConfig::default());
        e.handle_packet(at(0.0), &mut datagram(SESSION, 40000, WEB, 53, b"q"));
        let (id, _) = only_flow(&mut e);
        let n = crate::proxybox::datagram::MAX_QUEUED_REPLIES;
        for _ in 0..n + 5 {
            e.udp_reply(at(0.1), id, b"a");
        }
        assert_eq!(e.queued_replies(), n);
        assert_eq!(e.counters.dropped.get("reply_queue_full"), Some(&5));
        assert_eq!(replies(&mut e).len(), n);
        e.udp_reply(at(0.2), id, b"a");
        assert_eq!(e.queued_replies(), 1);
    }

    #[test]
    fn a_migrated_session_keeps_its_flow_and_gets_replies_at_its_physical_address() {
        let mut e = engine(UdpConfig::default());
        e.handle_packet(at(0.0), &mut datagram(SESSION, 40000, WEB, 53, b"before"));
        let (id, _) = only_flow(&mut e);
        let (v, p) = (Ipv4Addr::from(SESSION), Ipv4Addr::from(PHYSICAL));
        e.session_moved(v, v, p);
        // From the physical address now: the same flow.
        e.handle_packet(at(1.0), &mut datagram(PHYSICAL, 40000, WEB, 53, b"after"));
        assert!(e.take_events().is_empty());
        assert_eq!(e.udp_flows(), 1);
        e.udp_reply(at(1.1), id, b"answer");
        let out = replies(&mut e);
        let info = parse_ipv4(&out[0]).unwrap();
        assert_eq!((info.src_addr, info.dst_addr), (Ipv4Addr::from(WEB), p));
        assert_eq!(&out[0][28..], b"answer");
        assert_eq!(e.counters.rewrites, 1);
        // A new session at the old address is another flow.
        e.handle_packet(at(2.0), &mut datagram(SESSION, 40000, WEB, 53, b"new"));
        let (other, _) = only_flow(&mut e);
        assert_ne!(other, id);
        e.udp_reply(at(2.1), other, b"to-new");
        let info = parse_ipv4(&replies(&mut e)[0]).unwrap();
        assert_eq!(info.dst_addr, v);

        // A session first seen after it migrated: its flow has the virtual
        // address, its replies the physical one.
        let mut e = engine(UdpConfig::default());
        e.session_moved(v, v, p);
        e.handle_packet(at(0.0), &mut datagram(PHYSICAL, 5353, WEB, 53, b"q"));
        let (id, _) = only_flow(&mut e);
        assert_eq!(e.udp.flows[&id].flow.session, SocketAddrV4::new(v, 5353));
        e.udp_reply(at(0.1), id, b"a");
        let info = parse_ipv4(&replies(&mut e)[0]).unwrap();
        assert_eq!(info.dst_addr, p);
        // And back to a physical address equal to the virtual one.
        e.session_moved(v, p, v);
        e.handle_packet(at(1.0), &mut datagram(SESSION, 5353, WEB, 53, b"q"));
        assert!(e.take_events().is_empty());
        e.udp_reply(at(1.1), id, b"a");
        let info = parse_ipv4(&replies(&mut e)[0]).unwrap();
        assert_eq!(info.dst_addr, v);
    }

    #[test]
    fn odd_datagrams_are_refused_with_a_reason() {
        let mut e = engine(UdpConfig::default());
        e.handle_packet(at(0.0), &mut datagram(SESSION, 0, WEB, 53, b"q"));
        e.handle_packet(at(0.0), &mut datagram(SESSION, 1, WEB, 0, b"q"));
        e.handle_packet(at(0.0), &mut datagram(SESSION, 1, [255; 4], 53, b"q"));
        e.handle_packet(
            at(0.0),
            &mut datagram(SESSION, 1, [224, 0, 0, 251], 5353, b"q"),
        );
        let mut labelled = datagram(SESSION, 1, WEB, 53, b"q");
        crate::wire::label::push_label(&mut labelled, crate::wire::Label::new(5).unwrap()).unwrap();
        e.handle_packet(at(0.0), &mut labelled);
        assert_eq!(e.udp_flows(), 0);
        let d = &e.counters.dropped;
        assert_eq!(d.get("port_zero"), Some(&2));
        assert_eq!(d.get("bad_destination"), Some(&2));
        assert_eq!(d.get("unexpected_label"), Some(&1));
    }
}
