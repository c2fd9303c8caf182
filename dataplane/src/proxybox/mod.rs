//! The proxy box's packet engine (paper §5, DESIGN.md §3.3), sans-I/O.
//!
//! Every IPv4 packet a session sends towards the outside arrives here (the
//! I/O layer reads it from the TUN device). TCP connections are terminated,
//! each in a VNIC of its own; the I/O layer relays each VNIC's byte stream
//! to the real destination over a kernel socket.
//!
//! Finding the VNIC of a packet:
//! - a packet **without** a label is looked up by its address tuple among
//!   connections of sessions that never migrated;
//! - a **SYN** with a label carries the server's label *offer* for a new
//!   connection; the VNIC answers with its own label in the SYN-ACK;
//! - any other packet **with** a label carries the proxy's own label: the
//!   session migrated, the label names the VNIC, and the packet's source must
//!   be the session's current physical address (a forged or stale label is
//!   dropped, never delivered to another connection).
//!
//! What a VNIC sends to a migrated session is rewritten virtual -> physical
//! and carries the server's label.
//!
//! UDP and ICMP echo are relayed without VNICs: see [`udp`] and [`icmp`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::rewrite::{rewrite, Endpoint};
use crate::vnic::{Egress, FourTuple, Outbox, Vnic, VnicConfig};
use crate::wire::label::strip_label;
use crate::wire::reassembly::{Reassembler, ReassemblyConfig};
use crate::wire::{parse_ipv4, parse_ipv4_partial, Label, PacketInfo, TcpFlags, Transport};

mod datagram;
pub mod icmp;
pub mod udp;

pub use datagram::{Unreachable, MAX_QUEUED_REPLIES, MAX_QUEUED_REPLY_BYTES};
pub use icmp::{EchoConfig, EchoRequest};
pub use udp::{UdpConfig, UdpFlowId};

/// A VNIC's index in the engine; stale ids (of reclaimed VNICs) are detected
/// by their generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VnicId {
    index: usize,
    generation: u64,
}

/// Ports the proxy box opens connections to sessions from (Linux's default
/// ephemeral range).
pub const EPHEMERAL_PORTS: std::ops::Range<u16> = 32768..61000;

/// Why [`ProxyEngine::open`] could not open a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no VNIC left (max_vnics reached)")]
    VnicLimit,
    #[error("no free source port towards this service")]
    NoFreePort,
    #[error("the VNICs' memory budget is spent")]
    MemoryLimit,
    #[error("not a session service address")]
    BadAddress,
}

/// Limits and tuning of the proxy box engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub vnic: VnicConfig,
    /// At most this many VNICs at once; SYNs beyond are dropped and counted.
    pub max_vnics: usize,
    /// At most this many VNICs still in handshake per session address (SYN
    /// flood bound).
    pub max_handshakes_per_session: usize,
    pub udp: UdpConfig,
    pub echo: EchoConfig,
    /// Reassembly of fragmented UDP and ICMP datagrams from sessions.
    pub reassembly: ReassemblyConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            vnic: VnicConfig::default(),
            max_vnics: 16_384,
            max_handshakes_per_session: 256,
            udp: UdpConfig::default(),
            echo: EchoConfig::default(),
            reassembly: ReassemblyConfig::default(),
        }
    }
}

/// What the I/O layer must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session opened a connection to `tuple.remote`: connect there, then
    /// [`ProxyEngine::accept`] (or [`ProxyEngine::refuse`]) and relay.
    Connect { id: VnicId, tuple: FourTuple },
    /// The VNIC is gone (closed, reset or reclaimed): stop relaying.
    Closed { id: VnicId },
    /// A session opened a UDP flow to `remote`: open a socket connected
    /// there and relay (see [`udp`]).
    UdpFlow { id: UdpFlowId, remote: SocketAddrV4 },
}

/// Packet and connection counters, exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Dropped packets by reason (`WireError::reason` and engine reasons).
    pub dropped: BTreeMap<&'static str, u64>,
    pub vnics_created: u64,
    pub vnics_reclaimed: u64,
    /// Packets whose addresses were rewritten (either direction).
    pub rewrites: u64,
    /// Packets that carried a label (either direction).
    pub labelled_packets: u64,
    /// Polls that sent nothing though the VNIC asked for one at once.
    pub idle_polls: u64,
    /// VNICs made with `min_buffer` buffers: the memory budget was short.
    pub vnics_reduced: u64,
    /// Datagrams reassembled from a session's fragments.
    pub reassembled: u64,
    /// ICMP destination-unreachable messages built for sessions (their
    /// UDP flows' destinations could not be reached).
    pub icmp_errors_to_session: u64,
    /// UDP flows opened, and closed after their idle timeout.
    pub udp_flows_created: u64,
    pub udp_flows_expired: u64,
    /// UDP datagrams handed to the flows' sockets, and built for sessions
    /// from what came back.
    pub udp_datagrams_to_outside: u64,
    pub udp_datagrams_to_session: u64,
    /// ICMP echo requests sent for sessions, replies built for them, and
    /// requests forgotten unanswered.
    pub echo_requests: u64,
    pub echo_replies: u64,
    pub echo_timeouts: u64,
}

impl Counters {
    fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

struct Entry {
    vnic: Vnic,
    generation: u64,
    /// The proxy's label for this connection (offered in the SYN-ACK).
    proxy_label: Label,
    /// The server's label, if its dataplane offered one in the SYN.
    server_label: Option<Label>,
    /// Where the session is now, once it migrated (its physical address).
    physical: Option<Ipv4Addr>,
    /// Still in handshake (counted against the session's SYN budget).
    handshaking: bool,
    /// The relay reached the real destination (or gave up): the handshake
    /// may go on. Until then the VNIC has nothing to do on its own.
    accepted: bool,
    /// The deadline this VNIC is filed under in the timer set.
    deadline: Option<Instant>,
    /// Took packets since its last poll: [`ProxyEngine::flush`] polls it.
    pending: bool,
    /// The proxy box opened this connection (to a session's service), see
    /// [`ProxyEngine::open`]: its SYN carries the proxy's offer, the
    /// session's SYN-ACK the server's.
    initiated: bool,
    /// Its socket buffers' bytes, counted in the memory budget.
    buffers: usize,
}

impl Entry {
    fn egress(&self) -> Egress {
        Egress {
            rewrite_dst: self.physical.map(|p| (*self.vnic.tuple().session.ip(), p)),
            label: self.physical.and(self.server_label),
            // The proxy's label goes back in the handshake to a server that
            // offered one, and out first on a connection the proxy opens
            // (on SYNs only: see `apply_egress`).
            offer: (self.handshaking && (self.initiated || self.server_label.is_some()))
                .then_some(self.proxy_label),
        }
    }
}

/// The proxy box's engine: VNICs, their lookup tables and timers.
pub struct ProxyEngine {
    config: ProxyConfig,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    next_generation: u64,
    by_tuple: HashMap<FourTuple, VnicId>,
    by_label: HashMap<Label, VnicId>,
    handshakes: HashMap<Ipv4Addr, usize>,
    /// Sessions that migrated across subnets: physical -> virtual address.
    migrated: HashMap<Ipv4Addr, Ipv4Addr>,
    timers: BTreeSet<(Instant, VnicId)>,
    /// VNICs that took packets since their last poll (each once; at most
    /// one per VNIC).
    pending: Vec<VnicId>,
    events: Vec<Event>,
    rng: u64,
    udp: udp::UdpRelay,
    echo: icmp::EchoRelay,
    /// UDP and ICMP replies waiting for [`ProxyEngine::flush_replies`].
    replies: datagram::ReplyQueue,
    /// Packets waiting for the TUN device.
    pub outbox: Outbox,
    pub counters: Counters,
    /// The TUN device takes virtio-net headers (see [`ProxyEngine::set_offload`]).
    offload: bool,
    /// Socket buffer bytes of every live VNIC (see `VnicConfig::memory_budget`).
    buffer_bytes: usize,
    /// Fragmented UDP and ICMP datagrams from sessions, being reassembled.
    reassembly: Reassembler,
}

impl ProxyEngine {
    pub fn new(config: ProxyConfig, seed: u64) -> Self {
        ProxyEngine {
            udp: udp::UdpRelay::new(config.udp.clone()),
            echo: icmp::EchoRelay::new(config.echo.clone()),
            replies: datagram::ReplyQueue::default(),
            reassembly: Reassembler::new(config.reassembly),
            config,
            slots: Vec::new(),
            free: Vec::new(),
            next_generation: 1,
            by_tuple: HashMap::new(),
            by_label: HashMap::new(),
            handshakes: HashMap::new(),
            migrated: HashMap::new(),
            timers: BTreeSet::new(),
            pending: Vec::new(),
            events: Vec::new(),
            rng: seed | 1,
            outbox: Outbox::new(),
            counters: Counters::default(),
            offload: false,
            buffer_bytes: 0,
        }
    }

    /// Socket buffer bytes of every live VNIC (at most the memory budget).
    pub fn vnic_buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// The VNIC configuration for the next VNIC: full buffers while they
    /// fit the first half of the memory budget, then the minimum while it
    /// fits the budget, then none (None). With the
    /// offloads off the buffers are capped (see `NO_OFFLOAD_BUFFER`), and
    /// counted as capped.
    fn vnic_config_within_budget(&mut self) -> Option<VnicConfig> {
        let c = &self.config.vnic;
        let cap = if self.offload {
            usize::MAX
        } else {
            crate::vnic::NO_OFFLOAD_BUFFER
        };
        let full = c.rx_buffer.min(cap) + c.tx_buffer.min(cap);
        // Full size only in the first half of the budget: the second half
        // keeps room for many small VNICs (a busy box degrades to smaller
        // windows before it refuses connections).
        if self.buffer_bytes + full <= c.memory_budget / 2 {
            return Some(c.clone());
        }
        let room = c.memory_budget.saturating_sub(self.buffer_bytes);
        let min = c.min_buffer.min(c.rx_buffer).min(c.tx_buffer).min(cap);
        if 2 * min <= room {
            self.counters.vnics_reduced += 1;
            return Some(VnicConfig {
                rx_buffer: min,
                tx_buffer: min,
                ..c.clone()
            });
        }
        None
    }

    /// Whether the TUN device takes virtio-net headers (its offloads are
    /// on). VNICs made from now on then emit TCP segments of up to 64 KiB
    /// for the kernel to cut, with a virtio-net header in each packet's
    /// headroom, and leave TCP checksums to the kernel. Off by default: every
    /// packet complete, the headroom zero.
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on;
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// VNICs alive now.
    pub fn vnics(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Labels in use: connections whose session migrated.
    pub fn labels_in_use(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|e| e.physical.is_some())
            .count()
    }

    /// Takes the events raised since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// One packet from the TUN device (a session's packet, as routed to the
    /// proxy box), run at once: what it calls for is in the outbox on
    /// return. `packet` may be changed in place (label stripped, addresses
    /// rewritten).
    pub fn handle_packet(&mut self, now: Instant, packet: &mut [u8]) {
        self.ingest(now, packet);
        self.flush(now);
    }

    /// Like [`ProxyEngine::handle_packet`], but a VNIC that takes the packet
    /// answers only at the next [`ProxyEngine::flush`]: after a batch of
    /// packets, each VNIC sends one ACK (and one window update) for all of
    /// its packets in the batch instead of one per packet or two.
    pub fn ingest(&mut self, now: Instant, packet: &mut [u8]) {
        self.ingest_with(now, packet, false);
    }

    /// [`ProxyEngine::ingest`] for a packet whose TCP or UDP checksum is
    /// partial, for the kernel to finish (virtio-net `NEEDS_CSUM`): a GSO
    /// super-packet of up to 64 KiB of a session's stream, which its VNIC
    /// takes as one segment, or anything else the session's kernel sent
    /// with checksum offload. The checksum is not verified (see
    /// [`parse_ipv4_partial`]); smoltcp does not look at it either.
    pub fn ingest_partial(&mut self, now: Instant, packet: &mut [u8]) {
        self.ingest_with(now, packet, true);
    }

    fn ingest_with(&mut self, now: Instant, packet: &mut [u8], partial: bool) {
        // A fragment of a datagram the relays take whole (UDP, ICMP): held
        // until the datagram is complete. TCP is never fragmented by a
        // session (the VNIC's MSS fits the path) and is refused below.
        if let Ok(view) = crate::wire::Ipv4Packet::new_checked(&*packet) {
            if view.is_fragment() && view.protocol() != crate::wire::protocol::TCP {
                self.counters.packets_in += 1;
                self.counters.bytes_in += packet.len() as u64;
                return match self.reassembly.push(now, packet) {
                    Ok(Some(mut whole)) => {
                        self.counters.reassembled += 1;
                        self.handle_reassembled(now, &mut whole);
                    }
                    Ok(None) => {}
                    Err(e) => self.counters.drop(e.reason()),
                };
            }
        }
        self.counters.packets_in += 1;
        self.counters.bytes_in += packet.len() as u64;
        let parsed = if partial {
            parse_ipv4_partial(packet)
        } else {
            parse_ipv4(packet)
        };
        let info = match parsed {
            Ok(info) => info,
            Err(e) => return self.counters.drop(e.reason()),
        };
        let (src_port, dst_port, flags) = match info.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            } => (src_port, dst_port, flags),
            Transport::Udp { .. } => return self.handle_udp(now, packet, &info),
            Transport::Icmp { .. } => return self.handle_icmp(now, packet, &info),
        };
        if src_port == 0 || dst_port == 0 {
            return self.counters.drop("port_zero");
        }
        let syn = flags.contains(TcpFlags::SYN);
        let tuple = FourTuple {
            session: SocketAddrV4::new(info.src_addr, src_port),
            remote: SocketAddrV4::new(info.dst_addr, dst_port),
        };
        match info.label {
            Some(label) if !syn => {
                self.handle_labelled(now, packet, &info, (label, dst_port), partial)
            }
            offer => self.handle_unlabelled(now, packet, tuple, (flags, offer), partial),
        }
    }

    /// A datagram whose fragments all arrived: handled like an
    /// unfragmented one (it is not counted again).
    fn handle_reassembled(&mut self, now: Instant, packet: &mut [u8]) {
        let info = match parse_ipv4(packet) {
            Ok(info) => info,
            Err(e) => return self.counters.drop(e.reason()),
        };
        match info.transport {
            Transport::Udp { .. } => self.handle_udp(now, packet, &info),
            Transport::Icmp { .. } => self.handle_icmp(now, packet, &info),
            Transport::Tcp { .. } => self.counters.drop("fragment"),
        }
    }

    fn handle_labelled(
        &mut self,
        now: Instant,
        packet: &mut [u8],
        info: &PacketInfo,
        (label, dst_port): (Label, u16),
        partial: bool,
    ) {
        self.counters.labelled_packets += 1;
        let Some(&id) = self.by_label.get(&label) else {
            return self.counters.drop("unknown_label");
        };
        let Some(entry) = self.entry(id) else {
            return self.counters.drop("unknown_label");
        };
        // The label must come from where the session is now, for the
        // connection it names: a label alone proves nothing.
        let tuple = entry.vnic.tuple();
        if entry.physical != Some(info.src_addr) || tuple.remote.port() != dst_port {
            return self.counters.drop("forged_label");
        }
        let start = match strip_label(packet, 0) {
            Ok(Some((_, start))) => start,
            _ => return self.counters.drop("bad_label"),
        };
        let packet = &mut packet[start..];
        if rewrite(packet, Endpoint::Source, *tuple.session.ip(), partial).is_err() {
            return self.counters.drop("rewrite_failed");
        }
        self.counters.rewrites += 1;
        self.deliver(now, id, packet);
    }

    fn handle_unlabelled(
        &mut self,
        now: Instant,
        packet: &mut [u8],
        tuple: FourTuple,
        (flags, offer): (TcpFlags, Option<Label>),
        partial: bool,
    ) {
        if let Some(&id) = self.by_tuple.get(&tuple) {
            return self.deliver_offered(now, id, packet, offer, None, partial);
        }
        let synack = flags.contains(TcpFlags::SYN) && flags.contains(TcpFlags::ACK);
        if synack {
            // A session that migrated answers a connection the proxy opened
            // from its physical address.
            if let Some(&virtual_addr) = self.migrated.get(tuple.session.ip()) {
                let opened = FourTuple {
                    session: SocketAddrV4::new(virtual_addr, tuple.session.port()),
                    remote: tuple.remote,
                };
                if let Some(&id) = self.by_tuple.get(&opened) {
                    let from_physical = self
                        .entry(id)
                        .is_some_and(|e| e.initiated && e.physical == Some(*tuple.session.ip()));
                    if from_physical {
                        return self.deliver_offered(
                            now,
                            id,
                            packet,
                            offer,
                            Some(virtual_addr),
                            partial,
                        );
                    }
                }
            }
        }
        if !flags.contains(TcpFlags::SYN) || flags.contains(TcpFlags::ACK) {
            return self.counters.drop("no_connection");
        }
        if flags.contains(TcpFlags::RST) || flags.contains(TcpFlags::FIN) {
            return self.counters.drop("bad_syn");
        }
        if self.vnics() >= self.config.max_vnics {
            return self.counters.drop("vnic_limit");
        }
        // A session that migrated opens connections from its physical
        // address: the VNIC sees its virtual one, and labels from the start.
        let physical = *tuple.session.ip();
        let moved_from = self.migrated.get(&physical).copied();
        let tuple = match moved_from {
            Some(virtual_addr) => FourTuple {
                session: SocketAddrV4::new(virtual_addr, tuple.session.port()),
                remote: tuple.remote,
            },
            None => tuple,
        };
        if self
            .handshakes
            .get(tuple.session.ip())
            .is_some_and(|n| *n >= self.config.max_handshakes_per_session)
        {
            return self.counters.drop("handshake_limit");
        }
        let Some(config) = self.vnic_config_within_budget() else {
            return self.counters.drop("memory_limit");
        };
        *self.handshakes.entry(*tuple.session.ip()).or_default() += 1;
        // A SYN offer is stripped: the VNIC's socket is not to see it.
        let start = match offer {
            Some(_) => match strip_label(packet, 0) {
                Ok(Some((_, start))) => start,
                _ => return self.counters.drop("bad_label"),
            },
            None => 0,
        };
        let packet = &mut packet[start..];
        if moved_from.is_some() {
            if rewrite(packet, Endpoint::Source, *tuple.session.ip(), partial).is_err() {
                return self.counters.drop("rewrite_failed");
            }
            self.counters.rewrites += 1;
        }
        let id = self.create(now, tuple, offer, moved_from.map(|_| physical), &config);
        self.events.push(Event::Connect { id, tuple });
        self.deliver(now, id, packet);
    }

    /// Delivers a packet of a connection found by its tuple. A label on it
    /// can only be an offer (SYN set): the server's, answering a connection
    /// the proxy opened — taken; a retransmitted one — checked. The source
    /// is rewritten to `virtual_addr` if given (a migrated session).
    fn deliver_offered(
        &mut self,
        now: Instant,
        id: VnicId,
        packet: &mut [u8],
        offer: Option<Label>,
        virtual_addr: Option<Ipv4Addr>,
        partial: bool,
    ) {
        let mut start = 0;
        if let Some(offer) = offer {
            start = match strip_label(packet, 0) {
                Ok(Some((_, start))) => start,
                _ => return self.counters.drop("bad_label"),
            };
            let Some(entry) = self.entry_mut(id) else {
                return self.counters.drop("no_connection");
            };
            match entry.server_label {
                None if entry.initiated => {
                    entry.server_label = Some(offer);
                    self.counters.labelled_packets += 1;
                }
                Some(l) if l == offer => {}
                None if !entry.initiated => {}
                _ => return self.counters.drop("offer_mismatch"),
            }
        }
        let packet = &mut packet[start..];
        if let Some(v) = virtual_addr {
            if rewrite(packet, Endpoint::Source, v, partial).is_err() {
                return self.counters.drop("rewrite_failed");
            }
            self.counters.rewrites += 1;
        }
        self.deliver(now, id, packet);
    }

    /// Opens a connection from the proxy box to a session's service at
    /// `session` (its virtual address and port), from `source` (an address
    /// of the proxy box's service range, which the session routes back
    /// through its server) and a free port. Its SYN goes out at the next
    /// [`ProxyEngine::flush`]; relay it once the socket is established.
    /// A session that migrated is reached at its physical address, with
    /// labels, like every connection of it.
    pub fn open(
        &mut self,
        now: Instant,
        session: SocketAddrV4,
        source: Ipv4Addr,
    ) -> Result<VnicId, OpenError> {
        if session.port() == 0 || session.ip().is_unspecified() {
            return Err(OpenError::BadAddress);
        }
        if self.vnics() >= self.config.max_vnics {
            self.counters.drop("vnic_limit");
            return Err(OpenError::VnicLimit);
        }
        let virtual_addr = *session.ip();
        let physical = self
            .migrated
            .iter()
            .find(|(_, v)| **v == virtual_addr)
            .map(|(p, _)| *p);
        let mut tuple = None;
        for _ in 0..64 {
            let port = EPHEMERAL_PORTS.start
                + (self.next_random() >> 48) as u16 % (EPHEMERAL_PORTS.end - EPHEMERAL_PORTS.start);
            let t = FourTuple {
                session,
                remote: SocketAddrV4::new(source, port),
            };
            if !self.by_tuple.contains_key(&t) {
                tuple = Some(t);
                break;
            }
        }
        let tuple = tuple.ok_or(OpenError::NoFreePort)?;
        let Some(config) = self.vnic_config_within_budget() else {
            self.counters.drop("memory_limit");
            return Err(OpenError::MemoryLimit);
        };
        let seed = self.next_random();
        let vnic = Vnic::connect_on(tuple, &config, self.offload, seed, now)
            .map_err(|_| OpenError::BadAddress)?;
        let id = self.insert_entry(vnic, None, physical, true);
        // Found by its tuple during the handshake even if the session
        // migrated (its SYN-ACK comes with an offer, not a label); by label
        // only once the handshake is over.
        self.by_tuple.insert(tuple, id);
        self.schedule(id);
        Ok(id)
    }

    fn create(
        &mut self,
        now: Instant,
        tuple: FourTuple,
        server_label: Option<Label>,
        physical: Option<Ipv4Addr>,
        config: &VnicConfig,
    ) -> VnicId {
        let seed = self.next_random();
        let vnic = Vnic::listen_on(tuple, config, self.offload, seed, now);
        self.insert_entry(vnic, server_label, physical, false)
    }

    fn insert_entry(
        &mut self,
        vnic: Vnic,
        server_label: Option<Label>,
        physical: Option<Ipv4Addr>,
        initiated: bool,
    ) -> VnicId {
        let tuple = vnic.tuple();
        let buffers = vnic.buffer_bytes();
        self.buffer_bytes += buffers;
        let proxy_label = self.fresh_label();
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = Entry {
            vnic,
            generation,
            proxy_label,
            server_label,
            physical,
            handshaking: true,
            // Nothing to wait for on a connection the proxy opens.
            accepted: initiated,
            deadline: None,
            pending: false,
            initiated,
            buffers,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        let id = VnicId { index, generation };
        if physical.is_none() {
            self.by_tuple.insert(tuple, id);
        }
        self.by_label.insert(proxy_label, id);
        self.counters.vnics_created += 1;
        tracing::debug!(
            session = %tuple.session, remote = %tuple.remote, label = %proxy_label,
            server_label = ?server_label.map(|l| l.to_string()), initiated, "vnic created"
        );
        id
    }

    fn fresh_label(&mut self) -> Label {
        loop {
            let v = (self.next_random() >> 32) as u32;
            if let Some(l) = Label::new(v) {
                if !self.by_label.contains_key(&l) {
                    return l;
                }
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: labels need to be unpredictable to a session only in
        // the sense of not colliding; forged labels are refused by address.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn entry(&self, id: VnicId) -> Option<&Entry> {
        self.slots
            .get(id.index)?
            .as_ref()
            .filter(|e| e.generation == id.generation)
    }

    fn entry_mut(&mut self, id: VnicId) -> Option<&mut Entry> {
        self.slots
            .get_mut(id.index)?
            .as_mut()
            .filter(|e| e.generation == id.generation)
    }

    fn deliver(&mut self, now: Instant, id: VnicId, packet: &[u8]) {
        let Some(entry) = self
            .slots
            .get_mut(id.index)
            .and_then(Option::as_mut)
            .filter(|e| e.generation == id.generation)
        else {
            return self.counters.drop("no_connection");
        };
        let egress = entry.egress();
        let before = self.outbox.len();
        entry.vnic.ingest(now, packet, &mut self.outbox, egress);
        let physical = entry.physical.is_some();
        self.count_sent(before, physical);
        self.schedule(id);
    }

    /// Has the VNIC polled at the next [`ProxyEngine::flush`] (its relay
    /// moved data: it has segments or a window update to send).
    pub fn schedule(&mut self, id: VnicId) {
        if let Some(e) = self.entry_mut(id) {
            if !e.pending {
                e.pending = true;
                self.pending.push(id);
            }
        }
    }

    /// Polls every VNIC that took packets or was scheduled since its last
    /// poll: they send what that called for.
    pub fn flush(&mut self, now: Instant) {
        let mut pending = std::mem::take(&mut self.pending);
        for id in pending.drain(..) {
            // Polled meanwhile (e.g. after its relay wrote): nothing to do.
            if self.entry(id).is_some_and(|e| e.pending) {
                self.poll_vnic(now, id);
            }
        }
        // Keep the allocation (it holds at most one id per VNIC).
        if self.pending.is_empty() {
            self.pending = pending;
        }
    }

    /// Counts what a VNIC put in the outbox since it held `before` packets.
    fn count_sent(&mut self, before: usize, physical: bool) -> u64 {
        let (mut sent, mut bytes) = (0u64, 0u64);
        for p in self.outbox.packets().skip(before) {
            sent += 1;
            bytes += p.len() as u64;
        }
        self.counters.packets_out += sent;
        self.counters.bytes_out += bytes;
        if physical {
            self.counters.rewrites += sent;
            self.counters.labelled_packets += sent;
        }
        sent
    }

    /// Runs a VNIC after its relay read or wrote (or its timer is due).
    pub fn poll_vnic(&mut self, now: Instant, id: VnicId) {
        let Some(entry) = self
            .slots
            .get_mut(id.index)
            .and_then(Option::as_mut)
            .filter(|e| e.generation == id.generation)
        else {
            return;
        };
        entry.pending = false;
        let egress = entry.egress();
        let before = self.outbox.len();
        entry.vnic.poll(now, &mut self.outbox, egress);
        self.after_poll(now, id, before);
    }

    /// Runs every VNIC whose timer is due, closes idle UDP flows and
    /// forgets unanswered echoes.
    pub fn poll_timers(&mut self, now: Instant) {
        for _ in 0..self.reassembly.expire(now) {
            self.counters.drop("fragment_timeout");
        }
        self.udp.expire(now, &mut self.counters);
        self.echo.expire(now, &mut self.counters);
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(e) = self.entry_mut(id) {
                e.deadline = None;
            }
            self.poll_vnic(now, id);
        }
    }

    /// The earliest timer (of a VNIC, a UDP flow or an echo).
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.timers.first().map(|(at, _)| *at),
            self.udp.next_deadline(),
            self.echo.next_deadline(),
            self.reassembly.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn after_poll(&mut self, now: Instant, id: VnicId, outbox_before: usize) {
        let physical = self.entry(id).is_some_and(|e| e.physical.is_some());
        let sent = self.count_sent(outbox_before, physical);
        let Some(entry) = self
            .slots
            .get_mut(id.index)
            .and_then(Option::as_mut)
            .filter(|e| e.generation == id.generation)
        else {
            return;
        };
        let handshake_over = entry.handshaking
            && !matches!(
                entry.vnic.state(),
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent
            );
        if handshake_over {
            entry.handshaking = false;
        }
        // Counted against the session's SYN budget: connections it opened.
        let release = handshake_over && !entry.initiated;
        // A connection the proxy opened to a migrated session is found by
        // label from now on.
        let unlist = handshake_over && entry.initiated && entry.physical.is_some();
        // Finished, and the relay has read everything the session sent.
        let finished = entry.vnic.is_finished() && !entry.vnic.socket().can_recv();
        // A held handshake would ask to be polled at once, forever.
        let mut next = if entry.accepted && !finished {
            entry.vnic.poll_at(now)
        } else {
            None
        };
        // Wanting a poll now right after a poll that sent nothing would spin:
        // look again a little later instead.
        let idle = sent == 0 && next.is_some_and(|at| at <= now);
        if idle {
            next = Some(now + smoltcp::time::Duration::from_millis(1));
        }
        let old = std::mem::replace(&mut entry.deadline, next);
        let session = *entry.vnic.tuple().session.ip();
        if old != next {
            if let Some(old) = old {
                self.timers.remove(&(old, id));
            }
            if let Some(next) = next {
                self.timers.insert((next, id));
            }
        }
        if idle {
            self.counters.idle_polls += 1;
        }
        if release {
            self.release_handshake(session);
        }
        if unlist {
            if let Some(tuple) = self.entry(id).map(|e| e.vnic.tuple()) {
                if self.by_tuple.get(&tuple) == Some(&id) {
                    self.by_tuple.remove(&tuple);
                }
            }
        }
        if finished {
            self.reclaim(id);
        }
    }

    fn release_handshake(&mut self, session: Ipv4Addr) {
        if let Some(n) = self.handshakes.get_mut(&session) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.handshakes.remove(&session);
            }
        }
    }

    /// Removes a VNIC and everything that points to it.
    fn reclaim(&mut self, id: VnicId) {
        let Some(entry) = self.slots.get_mut(id.index).and_then(Option::take) else {
            return;
        };
        self.free.push(id.index);
        self.buffer_bytes = self.buffer_bytes.saturating_sub(entry.buffers);
        let tuple = entry.vnic.tuple();
        if self.by_tuple.get(&tuple) == Some(&id) {
            self.by_tuple.remove(&tuple);
        }
        self.by_label.remove(&entry.proxy_label);
        if let Some(at) = entry.deadline {
            self.timers.remove(&(at, id));
        }
        if entry.handshaking && !entry.initiated {
            self.release_handshake(*tuple.session.ip());
        }
        self.counters.vnics_reclaimed += 1;
        self.events.push(Event::Closed { id });
        tracing::debug!(session = %tuple.session, remote = %tuple.remote, "vnic reclaimed");
    }

    /// The real destination accepted: let the session's handshake complete
    /// (sent at the next [`ProxyEngine::flush`]).
    pub fn accept(&mut self, id: VnicId) {
        if let Some(e) = self.entry_mut(id) {
            e.accepted = true;
            e.vnic.accept();
        }
        self.schedule(id);
    }

    /// The real destination refused or did not answer: reset the session's
    /// connection (the reset goes out, and the VNIC is reclaimed, at the
    /// next [`ProxyEngine::flush`]).
    pub fn refuse(&mut self, id: VnicId) {
        if let Some(e) = self.entry_mut(id) {
            e.accepted = true;
            e.vnic.accept();
            e.vnic.socket_mut().abort();
        }
        self.schedule(id);
    }

    /// The VNIC's socket, for the relay's byte stream.
    pub fn socket_mut(&mut self, id: VnicId) -> Option<&mut smoltcp::socket::tcp::Socket<'static>> {
        self.entry_mut(id).map(|e| e.vnic.socket_mut())
    }

    /// A session moved: its connections (those from `virtual_addr` still at
    /// `from_physical`) now reach it at `to_physical` and carry labels; its
    /// UDP flows and echoes in flight follow it. Returns how many
    /// connections were re-pointed.
    pub fn session_moved(
        &mut self,
        virtual_addr: Ipv4Addr,
        from_physical: Ipv4Addr,
        to_physical: Ipv4Addr,
    ) -> usize {
        let mut moved = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(entry) = slot else { continue };
            let tuple = entry.vnic.tuple();
            if *tuple.session.ip() != virtual_addr {
                continue;
            }
            let current = entry.physical.unwrap_or(virtual_addr);
            if current != from_physical {
                continue;
            }
            if entry.physical.is_none() {
                // From now on found by label only: the tuple may be reused
                // by a new session at the old address.
                let id = VnicId {
                    index,
                    generation: entry.generation,
                };
                if self.by_tuple.get(&tuple) == Some(&id) {
                    self.by_tuple.remove(&tuple);
                }
            }
            entry.physical = Some(to_physical);
            moved += 1;
        }
        self.udp
            .session_moved(virtual_addr, from_physical, to_physical);
        self.echo
            .session_moved(virtual_addr, from_physical, to_physical);
        if self.migrated.get(&from_physical) == Some(&virtual_addr) {
            self.migrated.remove(&from_physical);
        }
        self.migrated.insert(to_physical, virtual_addr);
        tracing::info!(%virtual_addr, %from_physical, %to_physical, connections = moved, "session moved");
        moved
    }
}

#[cfg(test)]
mod tests;
