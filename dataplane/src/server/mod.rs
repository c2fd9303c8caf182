//! The session server's packet engine (paper §5, DESIGN.md §3.3), sans-I/O.
//!
//! It sees two kinds of packets, each from its own TUN device:
//! - from the **sessions** (their veths): every SYN and SYN-ACK, to attach
//!   the server's label offer; and every packet of a *labelled* session (one
//!   that migrated across subnets), to rewrite its source virtual ->
//!   physical and attach the proxy's label;
//! - from the **uplink** (the server's subnet): every SYN and SYN-ACK, to
//!   take the proxy's label offer off; and every packet to a labelled
//!   session's physical address, to check and strip the server's label and
//!   rewrite the destination physical -> virtual.
//!
//! The connection table (labels per connection) of a session moves with the
//! session: [`ServerEngine::export_session`] on the source server,
//! [`ServerEngine::import_session`] on the destination.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::rewrite::{rewrite, rewrite_address, Endpoint};
use crate::vnic::{FourTuple, Outbox};
use crate::wire::label::{insert_label, strip_label, LABEL_OPTION_SPACE};
use crate::wire::{
    parse_ipv4, parse_ipv4_partial, protocol, Ipv4Packet, Label, TcpFlags, Transport,
};

/// Which TUN device a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From a session's veth.
    Session,
    /// From the server's subnet.
    Uplink,
}

/// One connection's labels, as exported with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionLabels {
    /// The session's end (virtual address and port).
    pub session: SocketAddrV4,
    /// The far end as the session sees it.
    pub remote: SocketAddrV4,
    pub server_label: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_label: Option<u32>,
}

/// Everything the dataplane knows about a session, moved with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    #[serde(rename = "virtual")]
    pub virtual_addr: Ipv4Addr,
    /// Where it is (or will be) reachable on the subnet.
    pub physical: Ipv4Addr,
    /// It once migrated across subnets: its packets carry labels from then on.
    pub labelled: bool,
    pub connections: Vec<ConnectionLabels>,
}

/// Counters, exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCounters {
    pub packets: u64,
    pub bytes: u64,
    pub offers_sent: u64,
    pub offers_received: u64,
    pub labelled_out: u64,
    pub labelled_in: u64,
    pub rewrites: u64,
    pub evicted: u64,
    pub dropped: BTreeMap<String, u64>,
}

impl ServerCounters {
    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    server_label: Label,
    proxy_label: Option<Label>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    physical: Ipv4Addr,
    labelled: bool,
}

/// What the I/O layer must change in the kernel's steering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerChange {
    /// Send every packet from `virtual_addr` and to `physical` through the dataplane.
    Add {
        virtual_addr: Ipv4Addr,
        physical: Ipv4Addr,
    },
    Remove {
        virtual_addr: Ipv4Addr,
        physical: Ipv4Addr,
    },
}

/// What the kernel fast path (`io::fastpath`, server with eBPF) must learn:
/// the established connections of labelled sessions whose labels are both
/// known. The engine stays the authority; the fast path only mirrors it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPathChange {
    /// Label and rewrite this connection's segments in the kernel.
    Connection {
        tuple: FourTuple,
        /// The session's address on this subnet now.
        physical: Ipv4Addr,
        server_label: u32,
        proxy_label: u32,
    },
    /// The connection left the engine's table (moved away, evicted).
    Forget { tuple: FourTuple, server_label: u32 },
}

/// The server-side engine.
pub struct ServerEngine {
    max_connections: usize,
    conns: HashMap<FourTuple, Conn>,
    by_label: HashMap<Label, FourTuple>,
    /// Insertion order, for evicting the oldest when the table is full.
    order: VecDeque<FourTuple>,
    /// Sessions that moved here (or are labelled): by virtual address.
    placed: HashMap<Ipv4Addr, Placement>,
    by_physical: HashMap<Ipv4Addr, Ipv4Addr>,
    steer: Vec<SteerChange>,
    /// Some when a kernel fast path mirrors the table.
    fast_path: Option<Vec<FastPathChange>>,
    rng: u64,
    pub outbox: Outbox,
    pub counters: ServerCounters,
}

impl ServerEngine {
    pub fn new(max_connections: usize, seed: u64) -> Self {
        ServerEngine {
            max_connections: max_connections.max(1),
            conns: HashMap::new(),
            by_label: HashMap::new(),
            order: VecDeque::new(),
            placed: HashMap::new(),
            by_physical: HashMap::new(),
            steer: Vec::new(),
            fast_path: None,
            rng: seed | 1,
            outbox: Outbox::new(),
            counters: ServerCounters::default(),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Labelled sessions placed here.
    pub fn labelled_sessions(&self) -> usize {
        self.placed.values().filter(|p| p.labelled).count()
    }

    pub fn take_steer_changes(&mut self) -> Vec<SteerChange> {
        std::mem::take(&mut self.steer)
    }

    /// From now on, record what a kernel fast path must mirror
    /// ([`ServerEngine::take_fast_path_changes`]).
    pub fn enable_fast_path(&mut self) {
        self.fast_path.get_or_insert_with(Vec::new);
    }

    pub fn take_fast_path_changes(&mut self) -> Vec<FastPathChange> {
        self.fast_path
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Tells the fast path about `tuple` if its session is labelled here
    /// and both labels are known.
    fn mirror(&mut self, tuple: FourTuple) {
        let Some(changes) = self.fast_path.as_mut() else {
            return;
        };
        let Some(p) = self.placed.get(tuple.session.ip()).filter(|p| p.labelled) else {
            return;
        };
        if let Some(Conn {
            server_label,
            proxy_label: Some(proxy_label),
        }) = self.conns.get(&tuple).copied()
        {
            changes.push(FastPathChange::Connection {
                tuple,
                physical: p.physical,
                server_label: server_label.get(),
                proxy_label: proxy_label.get(),
            });
        }
    }

    /// Handles the packet at `buf[start..]`, with at least
    /// [`LABEL_OPTION_SPACE`] bytes of room before `start`. What passes goes
    /// to the outbox.
    pub fn handle_packet(&mut self, buf: &mut [u8], start: usize, side: Side) {
        if let Some(start) = self.forward(buf, start, side, false) {
            self.outbox.push_packet(&buf[start..]);
        }
    }

    /// Handles the packet at `buf[start..]` (with at least
    /// [`LABEL_OPTION_SPACE`] bytes of room before `start`) in place:
    /// returns where it starts now if it passes (a label inserted or
    /// stripped moves its start), None if it is dropped (and counted).
    ///
    /// `partial`: its TCP or UDP checksum is partial, for the kernel to
    /// finish (virtio-net `NEEDS_CSUM`): it is not verified, and a rewrite
    /// updates it as a partial sum. This is how GSO super-packets of up to
    /// 64 KiB come and go whole: nothing here depends on the payload.
    pub fn forward(
        &mut self,
        buf: &mut [u8],
        start: usize,
        side: Side,
        partial: bool,
    ) -> Option<usize> {
        self.counters.packets += 1;
        self.counters.bytes += buf.len().saturating_sub(start) as u64;
        let Some(packet) = buf.get(start..) else {
            self.counters.drop("truncated");
            return None;
        };
        // A fragment of a UDP or ICMP datagram of a migrated session: its
        // address rewritten, nothing else (only the first fragment has the
        // transport header; datagrams carry no labels).
        if let Ok(view) = Ipv4Packet::new_checked(packet) {
            if view.is_fragment() && view.protocol() != protocol::TCP {
                return match self.forward_fragment(&mut buf[start..], side) {
                    Ok(()) => Some(start),
                    Err(reason) => {
                        self.counters.drop(reason);
                        None
                    }
                };
            }
        }
        let parsed = if partial {
            parse_ipv4_partial(packet)
        } else {
            parse_ipv4(packet)
        };
        let info = match parsed {
            Ok(i) => i,
            Err(e) => {
                self.counters.drop(e.reason());
                return None;
            }
        };
        let result = match side {
            Side::Session => self.handle_from_session(buf, start, &info, partial),
            Side::Uplink => self.handle_from_uplink(buf, start, &info, partial),
        };
        match result {
            Ok(start) => Some(start),
            Err(reason) => {
                self.counters.drop(reason);
                None
            }
        }
    }

    fn forward_fragment(&mut self, packet: &mut [u8], side: Side) -> Result<(), &'static str> {
        let view = Ipv4Packet::new_checked(&*packet).map_err(|e| e.reason())?;
        if !view.verify_checksum() {
            return Err("bad_header_checksum");
        }
        // Fragments with options (a label, say) are not ours to pass.
        if view.header_len() != 20 {
            return Err("fragment");
        }
        let (endpoint, to) = match side {
            Side::Session => {
                let virtual_addr = view.src_addr();
                match self.placed.get(&virtual_addr) {
                    Some(p) if p.physical != virtual_addr => (Endpoint::Source, p.physical),
                    _ => return Ok(()),
                }
            }
            Side::Uplink => {
                let dst = view.dst_addr();
                match self.by_physical.get(&dst) {
                    Some(&v) if v != dst => (Endpoint::Destination, v),
                    _ => return Ok(()),
                }
            }
        };
        rewrite_address(packet, endpoint, to).map_err(|_| "rewrite_failed")?;
        self.counters.rewrites += 1;
        Ok(())
    }

    fn handle_from_session(
        &mut self,
        buf: &mut [u8],
        mut start: usize,
        info: &crate::wire::PacketInfo,
        partial: bool,
    ) -> Result<usize, &'static str> {
        if info.label.is_some() {
            // Only dataplanes speak labels; a session must not forge one.
            return Err("label_from_session");
        }
        let virtual_addr = info.src_addr;
        let placement = self.placed.get(&virtual_addr).copied();
        let mut label = None;
        if let Transport::Tcp {
            src_port,
            dst_port,
            flags,
        } = info.transport
        {
            let tuple = FourTuple {
                session: SocketAddrV4::new(virtual_addr, src_port),
                remote: SocketAddrV4::new(info.dst_addr, dst_port),
            };
            if flags.contains(TcpFlags::SYN) {
                // A new connection (SYN) or the session accepting one
                // (SYN-ACK): offer the server's label.
                label = Some(self.conn_for(tuple).server_label);
                self.counters.offers_sent += 1;
            } else if placement.is_some_and(|p| p.labelled) {
                label = self.conns.get(&tuple).and_then(|c| c.proxy_label);
                if label.is_none() {
                    self.counters.drop("migrated_without_label");
                }
            }
        }
        if let Some(p) = placement.filter(|p| p.physical != virtual_addr) {
            rewrite(&mut buf[start..], Endpoint::Source, p.physical, partial)
                .map_err(|_| "rewrite_failed")?;
            self.counters.rewrites += 1;
        }
        if let Some(label) = label {
            start = insert_label(buf, start, label).map_err(|_| "label_insert_failed")?;
            self.counters.labelled_out += 1;
        }
        Ok(start)
    }

    fn handle_from_uplink(
        &mut self,
        buf: &mut [u8],
        mut start: usize,
        info: &crate::wire::PacketInfo,
        partial: bool,
    ) -> Result<usize, &'static str> {
        let virtual_addr = self
            .by_physical
            .get(&info.dst_addr)
            .copied()
            .unwrap_or(info.dst_addr);
        let placement = self.placed.get(&virtual_addr).copied();
        if let (
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
            },
            Some(label),
        ) = (info.transport, info.label)
        {
            let tuple = FourTuple {
                session: SocketAddrV4::new(virtual_addr, dst_port),
                remote: SocketAddrV4::new(info.src_addr, src_port),
            };
            if flags.contains(TcpFlags::SYN) {
                // The proxy's offer, on its SYN (it connects to the session)
                // or on its SYN-ACK (it accepted the session's connection).
                let known = self.conns.contains_key(&tuple);
                if !known && flags.contains(TcpFlags::ACK) {
                    return Err("offer_for_unknown_connection");
                }
                self.conn_for(tuple);
                if let Some(c) = self.conns.get_mut(&tuple) {
                    c.proxy_label = Some(label);
                }
                self.mirror(tuple);
                self.counters.offers_received += 1;
            } else {
                // Our own label: it must name this very connection, at the
                // session's current address.
                let named = self.by_label.get(&label).copied();
                let current = placement.map_or(virtual_addr, |p| p.physical);
                if named != Some(tuple) || info.dst_addr != current {
                    return Err("forged_label");
                }
                self.counters.labelled_in += 1;
            }
            start = match strip_label(buf, start) {
                Ok(Some((_, s))) => s,
                _ => return Err("bad_label"),
            };
        }
        if placement.is_some_and(|p| p.physical != virtual_addr) && info.dst_addr != virtual_addr {
            rewrite(
                &mut buf[start..],
                Endpoint::Destination,
                virtual_addr,
                partial,
            )
            .map_err(|_| "rewrite_failed")?;
            self.counters.rewrites += 1;
        }
        Ok(start)
    }

    /// The connection's entry, made (with a fresh server label) if new.
    fn conn_for(&mut self, tuple: FourTuple) -> Conn {
        if let Some(c) = self.conns.get(&tuple) {
            return *c;
        }
        if self.conns.len() >= self.max_connections {
            self.evict_oldest();
        }
        let label = self.fresh_label();
        let conn = Conn {
            server_label: label,
            proxy_label: None,
        };
        self.insert(tuple, conn);
        conn
    }

    fn insert(&mut self, tuple: FourTuple, conn: Conn) {
        self.by_label.insert(conn.server_label, tuple);
        self.conns.insert(tuple, conn);
        self.order.push_back(tuple);
    }

    fn remove(&mut self, tuple: &FourTuple) {
        if let Some(c) = self.conns.remove(tuple) {
            self.by_label.remove(&c.server_label);
            if let Some(changes) = self.fast_path.as_mut() {
                changes.push(FastPathChange::Forget {
                    tuple: *tuple,
                    server_label: c.server_label.get(),
                });
            }
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(t) = self.order.pop_front() {
            if self.conns.contains_key(&t) {
                self.remove(&t);
                self.counters.evicted += 1;
                return;
            }
        }
    }

    fn fresh_label(&mut self) -> Label {
        loop {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
            if let Some(l) = Label::new(v) {
                if !self.by_label.contains_key(&l) {
                    return l;
                }
            }
        }
    }

    /// Takes a session's state out of this server (it is moving away).
    pub fn export_session(&mut self, virtual_addr: Ipv4Addr) -> SessionState {
        let placement = self.placed.remove(&virtual_addr);
        if let Some(p) = placement {
            self.by_physical.remove(&p.physical);
            if p.labelled {
                self.steer.push(SteerChange::Remove {
                    virtual_addr,
                    physical: p.physical,
                });
            }
        }
        let tuples: Vec<FourTuple> = self
            .conns
            .keys()
            .filter(|t| *t.session.ip() == virtual_addr)
            .copied()
            .collect();
        let mut connections = Vec::with_capacity(tuples.len());
        for t in tuples {
            if let Some(c) = self.conns.get(&t).copied() {
                connections.push(ConnectionLabels {
                    session: t.session,
                    remote: t.remote,
                    server_label: c.server_label.get(),
                    proxy_label: c.proxy_label.map(Label::get),
                });
                self.remove(&t);
            }
        }
        connections.sort_by_key(|c| (c.session, c.remote));
        SessionState {
            virtual_addr,
            physical: placement.map_or(virtual_addr, |p| p.physical),
            labelled: placement.is_some_and(|p| p.labelled),
            connections,
        }
    }

    /// Places a session here with its connections' labels. Returns how many
    /// connections were taken (a label already in use here is refused).
    pub fn import_session(&mut self, state: &SessionState) -> usize {
        let mut taken = 0;
        for c in &state.connections {
            let Some(server_label) = Label::new(c.server_label) else {
                self.counters.drop("import_bad_label");
                continue;
            };
            if *c.session.ip() != state.virtual_addr || self.by_label.contains_key(&server_label) {
                self.counters.drop("import_label_collision");
                continue;
            }
            let tuple = FourTuple {
                session: c.session,
                remote: c.remote,
            };
            self.remove(&tuple);
            self.insert(
                tuple,
                Conn {
                    server_label,
                    proxy_label: c.proxy_label.and_then(Label::new),
                },
            );
            taken += 1;
        }
        let placement = Placement {
            physical: state.physical,
            labelled: state.labelled,
        };
        if let Some(old) = self.placed.insert(state.virtual_addr, placement) {
            self.by_physical.remove(&old.physical);
        }
        self.by_physical.insert(state.physical, state.virtual_addr);
        if state.labelled {
            self.steer.push(SteerChange::Add {
                virtual_addr: state.virtual_addr,
                physical: state.physical,
            });
            for c in &state.connections {
                self.mirror(FourTuple {
                    session: c.session,
                    remote: c.remote,
                });
            }
        }
        tracing::info!(
            virtual_addr = %state.virtual_addr, physical = %state.physical,
            labelled = state.labelled, connections = taken, "session placed"
        );
        taken
    }

    /// The room a packet needs in front of it for [`ServerEngine::handle_packet`].
    pub const HEADROOM: usize = LABEL_OPTION_SPACE;
}

#[cfg(test)]
mod tests;
