//! Per-connection virtual NICs (paper §5): each TCP connection of a session
//! that the proxy box terminates gets a smoltcp interface of its own, with
//! one socket, so two connections with the identical address tuple (an
//! address reused after a migration) never meet in one socket table.
//!
//! Sans-I/O: a [`Vnic`] takes packets as byte slices and the time as an
//! argument, and emits packets into an [`Outbox`]; the caller owns the TUN
//! device, the clock and the timers ([`Vnic::poll_at`]).

mod device;

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SmolDuration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

pub use device::{Egress, Outbox, HEADROOM, MAX_OFFLOAD_PACKET};
use device::{Link, VnicDevice};

/// Tuning of every VNIC; see `configs/` for the defaults' reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VnicConfig {
    /// Receive buffer of the terminated connection (bytes from the session).
    pub rx_buffer: usize,
    /// Send buffer (bytes towards the session).
    pub tx_buffer: usize,
    /// IP MTU towards the session; the MSS the VNIC announces follows from it.
    pub mtu: usize,
    /// Packets one poll may emit, so one busy VNIC cannot starve the others.
    pub max_burst: usize,
    /// Keep-alive towards the session (None: off).
    pub keep_alive: Option<std::time::Duration>,
    /// A connection whose session stops answering (keep-alives,
    /// retransmissions) for this long is aborted and its VNIC reclaimed; a
    /// connection that is merely quiet is left alone.
    pub idle_timeout: std::time::Duration,
    /// All VNICs' socket buffers together (bytes, both directions): a new
    /// VNIC gets `rx_buffer` + `tx_buffer` while those fit in the first
    /// half of it, then `min_buffer` each way while that fits, then none is
    /// made. Bounds the worst case (every buffer full) whatever `max_vnics`
    /// allows.
    pub memory_budget: usize,
    /// Each way, for VNICs made once full-size buffers no longer fit.
    pub min_buffer: usize,
}

impl Default for VnicConfig {
    fn default() -> Self {
        VnicConfig {
            rx_buffer: 512 * 1024,
            tx_buffer: 512 * 1024,
            // Room for the 8-byte label option in a 1500-byte path.
            mtu: 1500 - crate::wire::label::LABEL_OPTION_SPACE,
            max_burst: 64,
            keep_alive: Some(std::time::Duration::from_secs(60)),
            idle_timeout: std::time::Duration::from_secs(300),
            // 1 GiB: 512 connections at full size (half of it), then
            // 16 384 more at 16 KiB each way.
            memory_budget: 1 << 30,
            min_buffer: 16 * 1024,
        }
    }
}

/// The address tuple of a terminated connection, as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    /// The session's end: its virtual address and port.
    pub session: SocketAddrV4,
    /// The far end the session connected to (the VNIC takes its place).
    pub remote: SocketAddrV4,
}

/// One terminated TCP connection.
pub struct Vnic {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    tuple: FourTuple,
    link: Link,
}

impl std::fmt::Debug for Vnic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vnic")
            .field("tuple", &self.tuple)
            .field("state", &self.state())
            .finish()
    }
}

/// The largest socket buffer a VNIC has when the TUN offloads are off.
/// Packets then cross the TUN device one MSS at a time, and a session given
/// a larger window loses packets in bursts on the way (SACK recoveries at
/// the session; where they are lost is not found yet): one iperf3 stream
/// session -> web moved 2.3-2.7 Gbit/s with 128 KiB, 1.1 with 256 KiB and
/// 0.9 with 512 KiB on the lab VM.
pub const NO_OFFLOAD_BUFFER: usize = 128 * 1024;

/// Converts a std instant offset into smoltcp's clock.
pub fn smol_now(since_start: std::time::Duration) -> Instant {
    Instant::from_micros(i64::try_from(since_start.as_micros()).unwrap_or(i64::MAX))
}

impl Vnic {
    /// A VNIC that will accept the connection `tuple` once its SYN is handed
    /// to [`Vnic::receive`]. The handshake is held (no SYN-ACK) until
    /// [`Vnic::accept`]: the proxy first connects to the real destination.
    pub fn listen(tuple: FourTuple, config: &VnicConfig, seed: u64, now: Instant) -> Vnic {
        Vnic::listen_on(tuple, config, false, seed, now)
    }

    /// Like [`Vnic::listen`], for a TUN device that takes virtio-net headers
    /// when `offload` is set: every packet the VNIC emits then carries one in
    /// its [`HEADROOM`], and TCP segments may be up to
    /// [`MAX_OFFLOAD_PACKET`] long (segmentation and checksums are left to
    /// the kernel). Without, its buffers are at most [`NO_OFFLOAD_BUFFER`].
    pub fn listen_on(
        tuple: FourTuple,
        config: &VnicConfig,
        offload: bool,
        seed: u64,
        now: Instant,
    ) -> Vnic {
        let mut vnic = Vnic::new(tuple, config, offload, seed, now);
        let endpoint = IpEndpoint::new(
            IpAddress::Ipv4(ipv4(*tuple.remote.ip())),
            tuple.remote.port(),
        );
        let socket = vnic.socket_mut();
        socket.pause_synack(true);
        // INVARIANT: a fresh socket in state Closed with a non-zero port
        // always accepts listen(); port 0 never reaches here (the classifier
        // refuses it).
        let _ = socket.listen(endpoint);
        vnic
    }

    /// A VNIC that opens the connection `tuple` itself: from `tuple.remote`
    /// (an address and port of the proxy box's choosing) to the session's
    /// service at `tuple.session`. Its SYN goes out at the first poll.
    pub fn connect_on(
        tuple: FourTuple,
        config: &VnicConfig,
        offload: bool,
        seed: u64,
        now: Instant,
    ) -> Result<Vnic, tcp::ConnectError> {
        let mut vnic = Vnic::new(tuple, config, offload, seed, now);
        let local = IpEndpoint::new(
            IpAddress::Ipv4(ipv4(*tuple.remote.ip())),
            tuple.remote.port(),
        );
        let remote = IpEndpoint::new(
            IpAddress::Ipv4(ipv4(*tuple.session.ip())),
            tuple.session.port(),
        );
        let Vnic {
            iface,
            sockets,
            handle,
            ..
        } = &mut vnic;
        sockets
            .get_mut::<tcp::Socket>(*handle)
            .connect(iface.context(), remote, local)?;
        Ok(vnic)
    }

    /// The interface and its one socket, not yet listening or connecting.
    fn new(tuple: FourTuple, config: &VnicConfig, offload: bool, seed: u64, now: Instant) -> Vnic {
        let link = Link {
            mtu: config.mtu,
            max_burst: config.max_burst,
            offload,
        };
        let mut probe = VnicDevice::probe(link);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut probe, now);
        let remote_ip = tuple.remote.ip().octets();
        iface.update_ip_addrs(|addrs| {
            // A /0 prefix puts every address on-link: the VNIC answers the
            // session directly, whatever the session's address is.
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(Ipv4Address::from(remote_ip)),
                0,
            ));
        });
        // Without offloads, at most NO_OFFLOAD_BUFFER each way (see there).
        let cap = if offload {
            usize::MAX
        } else {
            NO_OFFLOAD_BUFFER
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; config.rx_buffer.min(cap)]),
            tcp::SocketBuffer::new(vec![0; config.tx_buffer.min(cap)]),
        );
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(Some(SmolDuration::from_millis(1)));
        socket.set_keep_alive(config.keep_alive.map(to_smol));
        socket.set_timeout(Some(to_smol(config.idle_timeout)));
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Vnic {
            iface,
            sockets,
            handle,
            tuple,
            link,
        }
    }

    pub fn tuple(&self) -> FourTuple {
        self.tuple
    }

    /// Bytes of its socket buffers, both directions.
    pub fn buffer_bytes(&self) -> usize {
        let s = self.socket();
        s.recv_capacity() + s.send_capacity()
    }

    /// Lets the held handshake complete (the real destination answered).
    pub fn accept(&mut self) {
        self.socket_mut().pause_synack(false);
    }

    /// Hands one packet from the session (already in the session's own
    /// addresses: virtual, unlabelled) to the VNIC and runs it; what the VNIC
    /// sends goes to `outbox` through `egress`.
    pub fn receive(&mut self, now: Instant, packet: &[u8], outbox: &mut Outbox, egress: Egress) {
        let mut dev = VnicDevice::new(Some(packet), outbox, egress, self.link);
        self.iface.poll(now, &mut dev, &mut self.sockets);
    }

    /// Hands one packet from the session to the VNIC's socket without
    /// sending what that calls for (ACKs, window updates, data): a
    /// [`Vnic::poll`] after a batch of packets sends it once for the whole
    /// batch. Only immediate replies (a reset, a duplicate ACK for an
    /// out-of-order segment) go to `outbox` at once.
    pub fn ingest(&mut self, now: Instant, packet: &[u8], outbox: &mut Outbox, egress: Egress) {
        let mut dev = VnicDevice::new(Some(packet), outbox, egress, self.link);
        self.iface
            .poll_ingress_single(now, &mut dev, &mut self.sockets);
    }

    /// Runs timers and sends what the socket has queued (after the relay
    /// wrote or read, or when [`Vnic::poll_at`] is due).
    pub fn poll(&mut self, now: Instant, outbox: &mut Outbox, egress: Egress) {
        let mut dev = VnicDevice::new(None, outbox, egress, self.link);
        self.iface.poll(now, &mut dev, &mut self.sockets);
    }

    /// When this VNIC next needs [`Vnic::poll`] (retransmission, delayed
    /// ACK, keep-alive), if ever.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    pub fn socket(&self) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket>(self.handle)
    }

    pub fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    pub fn state(&self) -> tcp::State {
        self.socket().state()
    }

    /// Nothing more will happen on this connection: it can be reclaimed.
    pub fn is_finished(&self) -> bool {
        matches!(self.state(), tcp::State::Closed | tcp::State::TimeWait)
    }
}

fn to_smol(d: std::time::Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The session address of a tuple, for smoltcp.
pub fn ipv4(a: Ipv4Addr) -> Ipv4Address {
    Ipv4Address::from(a.octets())
}
