//! A VNIC's connection as an async byte stream for the L7 relay.
//!
//! Back-pressure is the socket's own: a read takes only what the session
//! sent into the VNIC's receive buffer (the window closes when it is full),
//! a write puts only what fits in the send buffer, else it waits.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use smoltcp::socket::tcp::State;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Shared;
use crate::proxybox::{ProxyEngine, VnicId};

/// The relay's end of one VNIC connection.
pub struct VnicStream {
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    id: VnicId,
}

impl VnicStream {
    pub(crate) fn new(engine: Rc<RefCell<ProxyEngine>>, shared: Rc<Shared>, id: VnicId) -> Self {
        VnicStream { engine, shared, id }
    }

    /// Waits until the session's handshake completed; an error if the
    /// connection ended first.
    pub async fn established(&mut self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut engine = self.engine.borrow_mut();
            let Some(socket) = engine.socket_mut(self.id) else {
                return Poll::Ready(Err(gone()));
            };
            match socket.state() {
                State::Listen | State::SynReceived => {
                    socket.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                State::Established | State::CloseWait => Poll::Ready(Ok(())),
                _ => Poll::Ready(Err(gone())),
            }
        })
        .await
    }

    /// Resets the session's connection (the outside side failed).
    pub fn abort(&mut self) {
        if let Some(socket) = self.engine.borrow_mut().socket_mut(self.id) {
            socket.abort();
        }
        self.shared.touch(self.id);
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "vnic connection gone")
}

impl AsyncRead for VnicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut engine = this.engine.borrow_mut();
        let Some(socket) = engine.socket_mut(this.id) else {
            // Reclaimed: everything it received has been read already.
            return Poll::Ready(Ok(()));
        };
        if socket.can_recv() {
            let n = socket
                .recv_slice(buf.initialize_unfilled())
                .map_err(|_| gone())?;
            buf.advance(n);
            drop(engine);
            // The window opened: the VNIC may have to say so.
            this.shared.touch(this.id);
            return Poll::Ready(Ok(()));
        }
        match socket.state() {
            State::Listen | State::SynReceived | State::Established => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            State::FinWait1 | State::FinWait2 => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            // The session closed its half (or the connection ended).
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for VnicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut engine = this.engine.borrow_mut();
        let Some(socket) = engine.socket_mut(this.id) else {
            return Poll::Ready(Err(gone()));
        };
        if !socket.may_send() {
            return match socket.state() {
                State::Listen | State::SynReceived => {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
                _ => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "session closed the connection",
                ))),
            };
        }
        if !socket.can_send() {
            socket.register_send_waker(cx.waker());
            return Poll::Pending;
        }
        let n = socket.send_slice(data).map_err(|_| gone())?;
        drop(engine);
        this.shared.touch(this.id);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data handed to the socket is on its way; TCP retransmits it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(socket) = this.engine.borrow_mut().socket_mut(this.id) {
            socket.close();
        }
        this.shared.touch(this.id);
        Poll::Ready(Ok(()))
    }
}
