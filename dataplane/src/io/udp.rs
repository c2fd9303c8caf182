//! One UDP flow's relay: a kernel UDP socket on the proxy box, connected to
//! the flow's destination (so the kernel only hands it what that
//! destination sends), for as long as the engine keeps the flow open.
//!
//! Back-pressure: datagrams for the socket wait in the engine's bounded
//! per-flow queue; replies go to the engine's bounded reply queue. Neither
//! side can grow a queue here.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::Shared;
use crate::proxybox::{ProxyEngine, UdpFlowId, Unreachable};

/// Datagrams read per wake-up before the other tasks get a turn.
const READ_BATCH: usize = 64;

pub(super) async fn relay(
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    id: UdpFlowId,
    remote: SocketAddrV4,
) {
    let socket = match open(remote).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "udp socket failed");
            engine.borrow_mut().udp_failed(id);
            return;
        }
    };
    loop {
        tokio::select! {
            // Errors too: an ICMP error pending on the socket wakes it
            // with EPOLLERR only (not readable).
            ready = socket.ready(Interest::READABLE | Interest::ERROR) => {
                let ready = match ready {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "udp socket failed");
                        engine.borrow_mut().udp_failed(id);
                        return;
                    }
                };
                if ready.is_error() {
                    // SO_ERROR takes the pending error (and clears it);
                    // then the readiness, which only WouldBlock clears.
                    if let Ok(Some(e)) = socket.take_error() {
                        report(&engine, &shared, id, &e);
                    }
                    let _ = socket.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                if ready.is_readable() || ready.is_read_closed() {
                    read_replies(&socket, &engine, &shared, id);
                }
            }
            next = poll_fn(|cx| engine.borrow_mut().udp_poll_outgoing(id, cx)) => {
                // None: the flow expired.
                let Some(datagram) = next else { return };
                if let Err(e) = socket.send(&datagram).await {
                    tracing::debug!(%remote, error = %e, "udp send failed");
                    engine.borrow_mut().udp_send_failed(id);
                    // A pending ICMP error is reported on send as well.
                    report(&engine, &shared, id, &e);
                }
            }
        }
    }
}

/// What the socket's error says about the destination, for the session.
fn unreachable(e: &io::Error) -> Option<Unreachable> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Some(Unreachable::Port),
        io::ErrorKind::HostUnreachable => Some(Unreachable::Host),
        io::ErrorKind::NetworkUnreachable => Some(Unreachable::Net),
        _ => None,
    }
}

/// Passes an ICMP error the socket reported on to the session, or counts
/// another error.
fn report(engine: &RefCell<ProxyEngine>, shared: &Shared, id: UdpFlowId, e: &io::Error) {
    match unreachable(e) {
        Some(why) => {
            engine.borrow_mut().udp_unreachable(shared.now(), id, why);
            shared.kick.notify_one();
        }
        None => {
            tracing::debug!(error = %e, "udp socket error");
            engine.borrow_mut().udp_receive_failed(id);
        }
    }
}

async fn open(remote: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    socket.connect(remote).await?;
    Ok(socket)
}

/// Hands what the socket has received to the engine, without awaiting (the
/// shared receive buffer is borrowed meanwhile).
fn read_replies(socket: &UdpSocket, engine: &RefCell<ProxyEngine>, shared: &Shared, id: UdpFlowId) {
    let mut got = false;
    for _ in 0..READ_BATCH {
        let mut buf = shared.recv_buf.borrow_mut();
        match socket.try_recv(&mut buf) {
            Ok(n) => {
                engine.borrow_mut().udp_reply(shared.now(), id, &buf[..n]);
                got = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // An ICMP error for an earlier datagram, reported once: passed
            // on to the session; read on.
            Err(e) => report(engine, shared, id, &e),
        }
    }
    if got {
        // The device loop flushes the replies to the TUN device.
        shared.kick.notify_one();
    }
}
