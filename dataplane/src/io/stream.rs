//! The L7 relay of one VNIC connection: bytes between the VNIC's socket and
//! the kernel socket to the real destination, without a buffer of its own.
//!
//! Bytes from the session go from the socket's receive ring straight into
//! `write(2)` on the kernel socket; bytes for the session go from `read(2)`
//! straight into the socket's send ring. Each system call moves as much as
//! the ring holds (or has room for) at once, and a connection costs no
//! memory beyond its two rings.
//!
//! Back-pressure is the sockets' own: the relay takes from the receive ring
//! only what the kernel socket accepts (the VNIC's window closes when the
//! ring is full), and reads from the kernel socket only what fits in the
//! send ring.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::task::{Context, Poll};

use smoltcp::socket::tcp::State;
use tokio::net::TcpStream;

use super::Shared;
use crate::proxybox::{ProxyEngine, VnicId};

/// The relay's ends of one VNIC connection.
pub(super) struct Splice {
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    id: VnicId,
    outside: TcpStream,
}

impl Splice {
    pub(super) fn new(
        engine: Rc<RefCell<ProxyEngine>>,
        shared: Rc<Shared>,
        id: VnicId,
        outside: TcpStream,
    ) -> Self {
        Splice {
            engine,
            shared,
            id,
            outside,
        }
    }

    /// Waits until the session's handshake completed; an error if the
    /// connection ended first.
    pub(super) async fn established(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut engine = self.engine.borrow_mut();
            let Some(socket) = engine.socket_mut(self.id) else {
                return Poll::Ready(Err(gone()));
            };
            match socket.state() {
                State::Listen | State::SynReceived | State::SynSent => {
                    socket.register_recv_waker(cx.waker());
                    Poll::Pending
                }
                State::Established | State::CloseWait => Poll::Ready(Ok(())),
                _ => Poll::Ready(Err(gone())),
            }
        })
        .await
    }

    /// Relays both ways until both sides closed (each side's close is passed
    /// on to the other); an error ends both at once.
    pub(super) async fn run(&self) -> io::Result<()> {
        tokio::try_join!(self.to_outside(), self.to_session()).map(drop)
    }

    /// Resets the session's connection (the outside side failed).
    pub(super) fn abort(&self) {
        let mut engine = self.engine.borrow_mut();
        if let Some(socket) = engine.socket_mut(self.id) {
            socket.abort();
        }
        engine.schedule(self.id);
        self.shared.kick();
    }

    /// Session -> outside, until the session closed its half; then the
    /// outside's half is closed too.
    async fn to_outside(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_to_outside(cx)).await?;
        match socket2::SockRef::from(&self.outside).shutdown(Shutdown::Write) {
            // The outside may have closed the connection already.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_to_outside(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut engine = self.engine.borrow_mut();
        let mut moved = false;
        let result = loop {
            let Some(socket) = engine.socket_mut(self.id) else {
                // Reclaimed: everything it received has been read already.
                break Poll::Ready(Ok(()));
            };
            if !socket.can_recv() {
                break match socket.state() {
                    State::Listen
                    | State::SynReceived
                    | State::SynSent
                    | State::Established
                    | State::FinWait1
                    | State::FinWait2 => {
                        socket.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                    // The session closed its half (or the connection ended).
                    _ => Poll::Ready(Ok(())),
                };
            }
            match self.outside.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
            // Straight from the receive ring (its first contiguous part;
            // the loop takes the rest).
            let written = socket.recv(|data| match self.outside.try_write(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match written {
                Ok(Ok(_)) => moved = true,
                // Not writable after all: poll_write_ready waits for it.
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(Err(e)) => break Poll::Ready(Err(e)),
                Err(_) => break Poll::Ready(Err(gone())),
            }
        };
        if moved {
            // The window opened: the VNIC may have to say so.
            engine.schedule(self.id);
            self.shared.kick();
        }
        result
    }

    /// Outside -> session, until the outside closed its half; then the
    /// session's half is closed too.
    async fn to_session(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_to_session(cx)).await
    }

    fn poll_to_session(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut engine = self.engine.borrow_mut();
        let mut moved = false;
        let result = loop {
            let Some(socket) = engine.socket_mut(self.id) else {
                break Poll::Ready(Err(gone()));
            };
            if !socket.may_send() {
                break match socket.state() {
                    State::Listen | State::SynReceived | State::SynSent => {
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
                break Poll::Pending;
            }
            match self.outside.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
            // Straight into the send ring's first contiguous free part.
            let read = socket.send(|room| match self.outside.try_read(room) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match read {
                Ok(Ok(0)) => {
                    // The outside closed its half.
                    socket.close();
                    moved = true;
                    break Poll::Ready(Ok(()));
                }
                Ok(Ok(_)) => moved = true,
                // Not readable after all: poll_read_ready waits for it.
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(Err(e)) => break Poll::Ready(Err(e)),
                Err(_) => break Poll::Ready(Err(gone())),
            }
        };
        if moved {
            // Data (or a FIN) to send: the VNIC sends it at its next poll.
            engine.schedule(self.id);
            self.shared.kick();
        }
        result
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "vnic connection gone")
}
