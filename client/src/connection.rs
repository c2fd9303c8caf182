//! A blocking transport around a [`Viewer`]: TLS 1.3 over TCP, or plain TCP
//! when asked for.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mobidesk_display::codec::Framebuffer;
use mobidesk_display::protocol::{CloseCode, Message};

use super::tls::Security;
use super::viewer::{keysyms_for, Viewer, ViewerConfig, ViewerError};

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The protocol failed (or the server closed).
    #[error(transparent)]
    Viewer(#[from] ViewerError),
    /// The TLS handshake failed (an untrusted certificate, a wrong name, a
    /// server that does not speak TLS 1.3).
    #[error("tls handshake: {0}")]
    Handshake(#[source] std::io::Error),
    /// The server ended the transport without a `Close`.
    #[error("the server closed the connection without a Close")]
    Eof,
    /// Nothing settled in time.
    #[error("not idle after {0:?}")]
    Timeout(Duration),
}

impl ConnectionError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| ConnectionError::Io { what, source }
    }
}

/// The Shift_L keysym.
const SHIFT_L: u32 = 0xffe1;

/// How long the TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The byte stream: TLS or plain TCP.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A viewer connected to a display server.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    viewer: Viewer,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects (with TLS: completes the handshake, so an untrusted server
    /// fails here with [`ConnectionError::Handshake`]) and sends the hello.
    pub fn connect(
        addr: SocketAddr,
        config: &ViewerConfig,
        security: &Security,
    ) -> Result<Self, ConnectionError> {
        let mut tcp = TcpStream::connect(addr).map_err(ConnectionError::io("connect"))?;
        tcp.set_nodelay(true)
            .map_err(ConnectionError::io("nodelay"))?;
        let stream = match security {
            Security::InsecurePlaintext => Stream::Plain(tcp),
            Security::Tls(tls) => {
                let mut session =
                    rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                        .map_err(|e| ConnectionError::Handshake(std::io::Error::other(e)))?;
                tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                    .map_err(ConnectionError::io("set_read_timeout"))?;
                while session.is_handshaking() {
                    session
                        .complete_io(&mut tcp)
                        .map_err(ConnectionError::Handshake)?;
                }
                Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        };
        let mut connection = Connection {
            stream,
            viewer: Viewer::new(config),
            buf: vec![0; 256 * 1024],
        };
        connection.flush()?;
        Ok(connection)
    }

    /// The protocol state, framebuffer and statistics.
    pub fn viewer(&self) -> &Viewer {
        &self.viewer
    }

    /// The framebuffer, once sized.
    pub fn framebuffer(&self) -> Option<&Framebuffer> {
        self.viewer.framebuffer()
    }

    /// Reads at most `len` bytes per [`Self::poll`] (256 KiB by default);
    /// tests that watch the order of updates read in small steps.
    pub fn set_read_size(&mut self, len: usize) {
        self.buf = vec![0; len.max(1)];
    }

    /// Sends a message (input, `ViewportRequest`, `Ping`).
    pub fn send(&mut self, message: &Message<'_>) -> Result<(), ConnectionError> {
        self.viewer.send(message)?;
        self.flush()
    }

    /// Types `text`, one character at a time (KEY messages, PROTOCOL.md
    /// §8.1): sends the character's key events, times its key press until
    /// the first display command received after it (at most `timeout`,
    /// else it counts as unanswered), then reads until the stream has been
    /// quiet for `idle`, so each character is timed on an idle screen.
    pub fn type_text(
        &mut self,
        text: &str,
        idle: Duration,
        timeout: Duration,
    ) -> Result<(), ConnectionError> {
        for c in text.chars() {
            for key in keysyms_for(c) {
                let message = Message::Key(key);
                // The character's own key press (not Shift's) is timed.
                if key.down && key.keysym != SHIFT_L {
                    self.viewer.send_timed(&message, Instant::now())?;
                } else {
                    self.viewer.send(&message)?;
                }
            }
            self.flush()?;
            let start = Instant::now();
            while self.viewer.pending_inputs() > 0 && start.elapsed() < timeout {
                self.poll(Duration::from_millis(5))?;
            }
            self.viewer.expire_inputs(Instant::now(), timeout);
            self.run_until_idle(idle, timeout.max(Duration::from_secs(10)))?;
        }
        Ok(())
    }

    /// Sends bytes as they are (tests of the server's error handling).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ConnectionError> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(ConnectionError::io("write"))
    }

    fn flush(&mut self) -> Result<(), ConnectionError> {
        let out = self.viewer.take_transmit();
        if !out.is_empty() {
            self.stream
                .write_all(&out)
                .and_then(|()| self.stream.flush())
                .map_err(ConnectionError::io("write"))?;
        }
        Ok(())
    }

    /// Reads for at most `timeout`; returns whether anything arrived.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, ConnectionError> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout))
            .map_err(ConnectionError::io("set_read_timeout"))?;
        match self.stream.read(&mut self.buf) {
            Ok(0) => Err(ConnectionError::Eof),
            Ok(n) => {
                let result = self
                    .viewer
                    .handle_bytes(self.buf.get(..n).unwrap_or_default());
                // Pongs, or the Close of an error.
                let flushed = self.flush();
                result?;
                flushed?;
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) => Err(ConnectionError::Io {
                what: "read",
                source: e,
            }),
        }
    }

    /// Reads until a full state is complete and nothing arrived for `idle`;
    /// fails after `max`.
    pub fn run_until_idle(&mut self, idle: Duration, max: Duration) -> Result<(), ConnectionError> {
        let start = Instant::now();
        let mut last = Instant::now();
        loop {
            if self.viewer.is_state_complete() && last.elapsed() >= idle {
                return Ok(());
            }
            if start.elapsed() >= max {
                return Err(ConnectionError::Timeout(max));
            }
            let wait = idle
                .saturating_sub(last.elapsed())
                .max(Duration::from_millis(10));
            if self.poll(wait)? {
                last = Instant::now();
            }
        }
    }

    /// Reads for `duration` (or until the server closes).
    pub fn run_for(&mut self, duration: Duration) -> Result<(), ConnectionError> {
        let start = Instant::now();
        while let Some(left) = duration.checked_sub(start.elapsed()) {
            self.poll(left)?;
        }
        Ok(())
    }

    /// Reads until the server closes; returns its `Close` (or `None` for a
    /// transport closed without one). Fails after `max`.
    pub fn wait_for_close(
        &mut self,
        max: Duration,
    ) -> Result<Option<(CloseCode, String)>, ConnectionError> {
        let start = Instant::now();
        while start.elapsed() < max {
            match self.poll(Duration::from_millis(100)) {
                Ok(_) => {}
                Err(ConnectionError::Viewer(ViewerError::Closed { code, reason })) => {
                    return Ok(Some((code, reason)))
                }
                Err(ConnectionError::Eof) => return Ok(None),
                Err(ConnectionError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        Err(ConnectionError::Timeout(max))
    }
}
