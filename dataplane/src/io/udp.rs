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

use tokio::net::UdpSocket;

use super::Shared;
use crate::proxybox::{ProxyEngine, UdpFlowId};

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
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(%remote, error = %e, "udp socket failed");
                    engine.borrow_mut().udp_failed(id);
                    return;
                }
                read_replies(&socket, &engine, &shared, id);
            }
            next = poll_fn(|cx| engine.borrow_mut().udp_poll_outgoing(id, cx)) => {
                // None: the flow expired.
                let Some(datagram) = next else { return };
                if let Err(e) = socket.send(&datagram).await {
                    tracing::debug!(%remote, error = %e, "udp send failed");
                    engine.borrow_mut().udp_send_failed(id);
                }
            }
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
            // ICMP port unreachable for an earlier datagram.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                engine.borrow_mut().udp_refused(id);
            }
            // Another error the kernel reported for the socket (host
            // unreachable, say): reported once, read on.
            Err(e) => {
                tracing::debug!(error = %e, "udp receive failed");
                engine.borrow_mut().udp_receive_failed(id);
            }
        }
    }
    if got {
        // The device loop flushes the replies to the TUN device.
        shared.kick.notify_one();
    }
}
