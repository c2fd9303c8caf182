//! The echo relay's ICMP socket: one for the whole proxy box.
//!
//! An ICMP *datagram* socket (`socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`,
//! "ping socket") is tried first: the kernel picks its identifier, fills
//! the checksum and hands it only the echo replies for that identifier. The
//! kernel allows it only to groups in `net.ipv4.ping_group_range`, which is
//! "1 0" (nobody, root included) in a fresh network namespace; then a *raw*
//! ICMP socket is used (it needs CAP_NET_RAW, which the dataplane has as the
//! owner of a TUN device), with an identifier of our own, and the replies
//! are picked out of every ICMP message the host receives.
//!
//! socket2 makes the socket; tokio drives it as a `UdpSocket` (both kinds
//! take `sendto` and `recvfrom` with an IPv4 address, the port ignored).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::Shared;
use crate::proxybox::icmp::{echo_request_message, parse_echo_reply};
use crate::proxybox::{EchoRequest, ProxyEngine};

/// Messages read per wake-up before the other tasks get a turn.
const READ_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Datagram,
    /// A raw socket, sending with this identifier.
    Raw {
        ident: u16,
    },
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Datagram => "datagram",
            Kind::Raw { .. } => "raw",
        }
    }
}

struct EchoSocket {
    socket: UdpSocket,
    kind: Kind,
}

impl EchoSocket {
    fn open() -> io::Result<EchoSocket> {
        let kind;
        let socket = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(s) => {
                s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
                kind = Kind::Datagram;
                s
            }
            Err(e) => {
                tracing::info!(
                    error = %e,
                    "no ICMP datagram socket (see net.ipv4.ping_group_range); the echo relay uses a raw socket"
                );
                kind = Kind::Raw { ident: raw_ident() };
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
            }
        };
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        Ok(EchoSocket { socket, kind })
    }

    async fn send(&self, request: &EchoRequest) -> io::Result<()> {
        let ident = match self.kind {
            // The kernel puts the socket's own.
            Kind::Datagram => 0,
            Kind::Raw { ident } => ident,
        };
        let message = echo_request_message(ident, request);
        let to = SocketAddr::from((request.remote, 0));
        self.socket.send_to(&message, to).await.map(drop)
    }

    /// Hands the echo replies received to the engine, without awaiting (the
    /// shared receive buffer is borrowed meanwhile).
    fn read_replies(&self, engine: &RefCell<ProxyEngine>, shared: &Shared) {
        let raw_ident = match self.kind {
            Kind::Datagram => None,
            Kind::Raw { ident } => Some(ident),
        };
        let mut got = false;
        for _ in 0..READ_BATCH {
            let mut buf = shared.recv_buf.borrow_mut();
            match self.socket.try_recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) => {
                    if let Some((seq, payload)) = parse_echo_reply(&buf[..n], raw_ident) {
                        engine.borrow_mut().echo_reply(*from.ip(), seq, payload);
                        got = true;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => tracing::debug!(error = %e, "icmp receive failed"),
            }
        }
        if got {
            // The device loop flushes the replies to the TUN device.
            shared.kick.notify_one();
        }
    }
}

/// An identifier for a raw socket's echoes: differs between runs (and
/// between proxy boxes sharing a host's ICMP traffic).
fn raw_ident() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (std::process::id() as u16) ^ (nanos >> 8) as u16
}

/// Runs the echo relay until the dataplane stops: requests from the engine
/// out through the socket, replies back to the engine.
pub(super) async fn relay(engine: Rc<RefCell<ProxyEngine>>, shared: Rc<Shared>) {
    let socket = match EchoSocket::open() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no ICMP socket: echo requests from sessions are dropped");
            engine.borrow_mut().echo_socket_failed();
            return;
        }
    };
    tracing::info!(kind = socket.kind.name(), "echo relay up");
    engine.borrow_mut().echo_socket_opened(socket.kind.name());
    loop {
        tokio::select! {
            ready = socket.socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(error = %e, "icmp socket failed: echo relay stops");
                    engine.borrow_mut().echo_socket_failed();
                    return;
                }
                socket.read_replies(&engine, &shared);
            }
            request = poll_fn(|cx| engine.borrow_mut().echo_poll_request(cx)) => {
                if let Err(e) = socket.send(&request).await {
                    tracing::debug!(remote = %request.remote, error = %e, "echo send failed");
                    engine.borrow_mut().echo_send_failed(request.seq);
                }
            }
        }
    }
}
