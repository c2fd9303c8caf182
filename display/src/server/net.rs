//! The viewer side: TLS 1.3 over TCP (or plain TCP when asked for), the
//! hellos, the full state, server push (PROTOCOL.md §2, §3, §11).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::x11::XSession;
use super::{lock, ClientShared, Config, Hub, Inject, Security, ServerError};
use crate::codec::h264::H264Encoder;
use crate::encode::scale::{fit, src_point, Downscaler};
use crate::encode::video::subtract;
use crate::encode::{Encoder, Packing, PixelView, TILE};
use crate::protocol::{
    zstd_payloads, Buttons, Capabilities, ClientHelloRepr, ClipboardRepr, CloseCode, CloseRepr,
    CursorPositionRepr, Deflater, Frame, FrameDecoder, FramebufferSizeRepr, Message, MessageType,
    PingRepr, Rect, Sender, ServerHelloRepr, VideoEndRepr, CODEC_H264, SUPPORTED_VERSIONS,
};
use crate::schedule::Scheduler;
use crate::server::link::LinkProbe;

/// The read half of a viewer's transport (TLS or plain TCP).
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a viewer's transport.
type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// The first byte of a TLS handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a viewer has for the TLS handshake, and, separately, its hello.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a viewer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The capabilities this server offers (and `ZSTD` when it has a level).
const SERVER_CAPABILITIES: Capabilities =
    Capabilities(Capabilities::CURSOR.0 | Capabilities::CLIPBOARD.0 | Capabilities::VIDEO.0);
/// The largest message that goes through the zstd stream: larger ones (none
/// that the encoder makes today but a huge cursor or clipboard) go as they
/// are, so a `Compressed` stays far below `MAX_BODY_LEN`.
const MAX_DEFLATED_MESSAGE: usize = 1 << 20;

/// How long a viewer with video streams waits at most before it checks
/// whether they ended (it wakes when the first would end, `Hub::video_end`).
const VIDEO_TICK: Duration = Duration::from_millis(100);
/// Bytes of messages written to the socket at once: the most a newly queued
/// small update waits behind, besides what the kernel already holds.
const WRITE_CHUNK: usize = 16 * 1024;

/// A running display server: connected to X, listening for viewers.
pub struct DisplayServer {
    hub: Arc<Hub>,
    listener: TcpListener,
    x_failed: oneshot::Receiver<ServerError>,
    queue_bytes: usize,
    /// The zstd level of viewers that offer `ZSTD` (`Config::zstd_level`).
    zstd_level: Option<i32>,
    /// TCP_NOTSENT_LOWAT of each viewer's socket (see `Config::send_buffer`).
    unsent_limit: Option<u32>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for DisplayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisplayServer")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl DisplayServer {
    /// Connects to the X display, starts the X threads and binds.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let x = XSession::connect(&config.display)?;
        let pixels = x.pixels(config.fbdir.as_deref())?;
        let injector = x.injector()?;
        let (input_tx, input_rx) = std::sync::mpsc::channel::<Inject>();
        let hub = Arc::new(Hub::new(
            pixels,
            x.size(),
            (config.max_region_rects, config.video),
            input_tx,
        ));
        let listener = listen(&config).map_err(|source| ServerError::Io {
            what: "bind",
            source,
        })?;
        let (failed_tx, x_failed) = oneshot::channel();
        let event_hub = hub.clone();
        std::thread::Builder::new()
            .name("x11-events".into())
            .spawn(move || {
                let error = x.run_events(&event_hub);
                let _ = failed_tx.send(error);
            })
            .map_err(|source| ServerError::Io {
                what: "spawn x11 thread",
                source,
            })?;
        std::thread::Builder::new()
            .name("x11-input".into())
            .spawn(move || injector.run(input_rx))
            .map_err(|source| ServerError::Io {
                what: "spawn input thread",
                source,
            })?;
        info!(display = %config.display, listen = ?listener.local_addr().ok(),
              size = ?hub.size(),
              fbdir = config.fbdir.is_some(),
              tls = matches!(config.security, Security::Tls(_)), "display server started");
        let tls = match &config.security {
            Security::Tls(c) => Some(TlsAcceptor::from(c.clone())),
            Security::InsecurePlaintext => None,
        };
        Ok(DisplayServer {
            hub,
            listener,
            x_failed,
            queue_bytes: config.queue_bytes.max(64 * 1024),
            zstd_level: config.zstd_level,
            unsent_limit: config.send_buffer,
            tls,
        })
    }

    /// The address viewers connect to.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|source| ServerError::Io {
                what: "local_addr",
                source,
            })
    }

    /// Accepts viewers until the X connection fails (the session is gone).
    pub async fn run(mut self) -> Result<(), ServerError> {
        loop {
            tokio::select! {
                error = &mut self.x_failed => {
                    return Err(error.unwrap_or_else(|_| ServerError::X11("x11 thread ended".into())));
                }
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "accept");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    if let Some(limit) = self.unsent_limit {
                        // Few bytes wait unsent in the kernel (they could
                        // no longer be overtaken), while the send buffer
                        // autotunes so in-flight bytes fill a long link.
                        let sock = socket2::SockRef::from(&stream);
                        if let Err(e) = sock.set_tcp_notsent_lowat(limit) {
                            warn!(%peer, error = %e, "TCP_NOTSENT_LOWAT");
                        }
                    }
                    let hub = self.hub.clone();
                    let limits = (self.queue_bytes, self.zstd_level);
                    let tls = self.tls.clone();
                    let link = LinkProbe::of(&stream);
                    tokio::spawn(async move {
                        if let Some((rd, wr)) = secure(stream, peer, tls).await {
                            serve(hub, (rd, wr, link), peer, limits).await;
                        }
                    });
                }
            }
        }
    }
}

/// The listening socket.
fn listen(config: &Config) -> std::io::Result<TcpListener> {
    let socket = if config.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(config.listen)?;
    socket.listen(128)
}

/// The viewer's transport: the TLS 1.3 handshake when TLS is on (a viewer
/// that speaks the protocol in plain TCP instead gets a plain `Close`, so it
/// sees why; one that fails the handshake is dropped), else the socket.
async fn secure(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
) -> Option<(ReadHalf, WriteHalf)> {
    let Some(acceptor) = tls else {
        let (rd, wr) = stream.into_split();
        return Some((Box::new(rd), Box::new(wr)));
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(TLS_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            warn!(%peer, "plain-text viewer on a TLS port: refused");
            refuse_plaintext(stream).await;
            return None;
        }
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "read");
            return None;
        }
        Err(_) => {
            warn!(%peer, "no TLS handshake in time");
            return None;
        }
    }
    match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let (rd, wr) = tokio::io::split(stream);
            Some((Box::new(rd), Box::new(wr)))
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            warn!(%peer, "TLS handshake not done in time");
            None
        }
    }
}

/// PROTOCOL.md §2: a plain-text hello on a TLS port gets a plain-text
/// `Close` (`unexpected_message`). What the viewer sent is read first and
/// the stream drained after, so the kernel does not reset the connection
/// (which could discard the `Close`) for unread bytes.
async fn refuse_plaintext(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
    let close = Message::Close(CloseRepr::new(
        CloseCode::UnexpectedMessage,
        "this server speaks TLS 1.3 only",
    ));
    if let Ok(bytes) = close.to_vec() {
        let _ = stream.write_all(&bytes).await;
    }
    let _ = stream.shutdown().await;
    let drain = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// What the reader tells the writer.
#[derive(Debug)]
enum Ctrl {
    Pong(u64),
    /// A `ViewportRequest`: resize for it and send the full state.
    Viewport(u16, u16),
    Close(CloseCode, String),
    /// The viewer closed or the transport ended: stop without a Close.
    Stop,
}

/// Bytes read but not yet consumed, and the decoder.
struct Incoming {
    rd: ReadHalf,
    decoder: FrameDecoder,
    pending: Vec<u8>,
    buf: Box<[u8]>,
}

enum ReadError {
    Protocol(CloseCode, String),
    Io(std::io::Error),
}

impl Incoming {
    /// The next whole message, or `None` at the end of the stream.
    async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.decoder.poll_message() {
                return Ok(Some(frame));
            }
            if self.pending.is_empty() {
                let n = self.rd.read(&mut self.buf).await.map_err(ReadError::Io)?;
                if n == 0 {
                    return Ok(None);
                }
                self.pending
                    .extend_from_slice(self.buf.get(..n).unwrap_or_default());
            }
            let used = self
                .decoder
                .handle_bytes(&self.pending)
                .map_err(|e| ReadError::Protocol(e.close_code(), e.to_string()))?;
            self.pending.drain(..used.min(self.pending.len()));
        }
    }
}

/// Encoded messages waiting for the socket, flushed at `limit` bytes.
///
/// With `ZSTD` in force, messages are sent in the connection's zstd stream
/// (PROTOCOL.md §2.1) in the order the scheduler picked them: they are
/// staged as they are appended and go out as one `Compressed` message when
/// a message that skips the stream (VIDEO, `Close`) comes or the buffer is
/// flushed, so the scheduler's choices and byte bounds are those of the
/// messages themselves.
struct Out {
    wr: WriteHalf,
    buf: Vec<u8>,
    limit: usize,
    /// The zstd stream, once `ZSTD` is in force.
    deflater: Option<Deflater>,
    /// Whole messages for the next `Compressed`.
    staged: Vec<u8>,
    /// RAW goes outside the zstd stream, as the encoder packed it (a still
    /// video frame on a fast link, see `View::still_plain`).
    raw_plain: bool,
}

impl Out {
    /// Adds a message to the buffer without writing.
    /// Whether messages of `kind` go in the zstd stream (when there is one):
    /// not VIDEO (noise-like planes), not `Close` (readable after the stream
    /// broke), not RAW while `raw_plain`.
    fn streams(&self, kind: MessageType) -> bool {
        match kind {
            MessageType::Video | MessageType::Close => false,
            MessageType::Raw => !self.raw_plain,
            _ => true,
        }
    }

    fn append(&mut self, msg: &Message<'_>) -> std::io::Result<()> {
        let deflate = self.deflater.is_some()
            && self.streams(msg.message_type())
            && msg.buffer_len() <= MAX_DEFLATED_MESSAGE;
        if !deflate {
            self.seal()?;
        }
        let buf = if deflate {
            &mut self.staged
        } else {
            &mut self.buf
        };
        let start = buf.len();
        buf.resize(start + msg.buffer_len(), 0);
        if let Err(e) = msg.emit(buf.get_mut(start..).unwrap_or_default()) {
            buf.truncate(start);
            return Err(std::io::Error::other(e.to_string()));
        }
        Ok(())
    }

    /// Adds a display command without writing; in the zstd stream its
    /// payloads go `plain` or `delta` ([`zstd_payloads`]).
    fn append_command(&mut self, command: crate::protocol::Command<'_>) -> std::io::Result<()> {
        let command = if self.deflater.is_some() && self.streams(command.message_type()) {
            zstd_payloads(command)
        } else {
            command
        };
        self.append(&Message::Command(command))
    }

    /// Bytes appended and not yet written (staged ones before compression).
    fn pending(&self) -> usize {
        self.buf.len() + self.staged.len()
    }

    /// The staged messages into the buffer, as one `Compressed`.
    fn seal(&mut self) -> std::io::Result<()> {
        if let Some(deflater) = &mut self.deflater {
            if !self.staged.is_empty() {
                deflater
                    .deflate(&self.staged, &mut self.buf)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.staged.clear();
            }
        }
        Ok(())
    }

    /// Adds a message; writes the buffer once it reaches its limit.
    async fn push(&mut self, msg: &Message<'_>) -> std::io::Result<()> {
        self.append(msg)?;
        if self.pending() >= self.limit {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.seal()?;
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
            // TLS: the records go to the socket now, not with the next write.
            self.wr.flush().await?;
        }
        Ok(())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let reason: String = truncate(reason, crate::protocol::MAX_REASON_LEN);
        let _ = self
            .push(&Message::Close(CloseRepr::new(code, &reason)))
            .await;
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

async fn serve(
    hub: Arc<Hub>,
    (rd, wr, link): (ReadHalf, WriteHalf, Option<LinkProbe>),
    peer: SocketAddr,
    (queue_bytes, zstd_level): (usize, Option<i32>),
) {
    let mut incoming = Incoming {
        rd,
        decoder: FrameDecoder::new(Sender::Client),
        pending: Vec::new(),
        buf: vec![0; 64 * 1024].into_boxed_slice(),
    };
    let mut out = Out {
        wr,
        buf: Vec::new(),
        limit: WRITE_CHUNK,
        deflater: None,
        staged: Vec::new(),
        raw_plain: false,
    };
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.next()).await {
        Err(_) => {
            warn!(%peer, "no hello in time");
            return out
                .close(CloseCode::Timeout, "no ClientHello in time")
                .await;
        }
        Ok(Err(ReadError::Io(e))) => return debug!(%peer, error = %e, "read"),
        Ok(Ok(None)) => return debug!(%peer, "closed before the hello"),
        Ok(Err(ReadError::Protocol(code, reason))) => {
            warn!(%peer, code = code.name(), %reason, "closing viewer");
            return out.close(code, &reason).await;
        }
        Ok(Ok(Some(frame))) => frame,
    };
    let (capabilities, viewport, codecs) = match hello.parse() {
        Ok(Message::ClientHello(h)) => match negotiate(&h, zstd_level.is_some()) {
            Ok(v) => v,
            Err((code, reason)) => {
                warn!(%peer, code = code.name(), %reason, "refusing viewer");
                return out.close(code, &reason).await;
            }
        },
        Ok(other) => {
            let reason = format!("{} before ClientHello", other.message_type());
            warn!(%peer, %reason, "closing viewer");
            return out.close(CloseCode::UnexpectedMessage, &reason).await;
        }
        Err(e) => {
            warn!(%peer, code = e.close_code().name(), reason = %e, "closing viewer");
            return out.close(e.close_code(), &e.to_string()).await;
        }
    };
    let (id, shared, owner) = hub.join();
    info!(%peer, id, owner, viewers = hub.client_count(), "viewer connected");
    let server_hello = Message::ServerHello(ServerHelloRepr {
        version: crate::protocol::VERSION_1,
        capabilities,
        view_only: !owner,
        codecs: codecs.clone(),
    });
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_loop(
        hub.clone(),
        id,
        peer,
        incoming,
        ctrl_tx,
        (capabilities, viewport),
    ));
    let result = async {
        out.push(&server_hello).await?;
        if let (true, Some(level)) = (capabilities.contains(Capabilities::ZSTD), zstd_level) {
            // Everything after the ServerHello may go in the stream.
            out.deflater =
                Some(Deflater::new(level).map_err(|e| std::io::Error::other(e.to_string()))?);
        }
        write_loop(
            &hub,
            &shared,
            &mut out,
            ctrl_rx,
            (capabilities, viewport),
            (peer, link.as_ref()),
            (queue_bytes, codecs.contains(&CODEC_H264)),
        )
        .await
    }
    .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "write");
    }
    reader.abort();
    hub.leave(id);
    info!(%peer, id, "viewer disconnected");
}

/// The optional video codecs this server encodes (PROTOCOL.md §6.3).
const SERVER_CODECS: &[u8] = &[CODEC_H264];

/// What a hello settles: the capabilities in force, the viewport and the
/// optional video codecs in force.
type Negotiated = (Capabilities, (u16, u16), Vec<u8>);

/// What the viewer gets (`ZSTD` when the server has a level, H.264 when it
/// lists it and `VIDEO` is in force), or why it is refused.
fn negotiate(hello: &ClientHelloRepr<'_>, zstd: bool) -> Result<Negotiated, (CloseCode, String)> {
    if hello.choose_version(SUPPORTED_VERSIONS).is_none() {
        return Err((CloseCode::VersionMismatch, "server speaks 1".into()));
    }
    let offered = if zstd {
        SERVER_CAPABILITIES | Capabilities::ZSTD
    } else {
        SERVER_CAPABILITIES
    };
    let capabilities = hello.capabilities.intersection(offered);
    let codecs = if capabilities.contains(Capabilities::VIDEO) {
        SERVER_CODECS
            .iter()
            .copied()
            .filter(|c| hello.codecs.contains(c))
            .collect()
    } else {
        Vec::new()
    };
    Ok((capabilities, (hello.max_width, hello.max_height), codecs))
}

/// Maps a framebuffer point of a viewer with this viewport to the screen
/// (PROTOCOL.md §8, §9), clamped to the screen.
fn to_screen(hub: &Hub, viewport: (u16, u16), x: u16, y: u16) -> (u16, u16) {
    let screen = hub.size();
    let (x, y) = src_point(screen, fit(screen, viewport), x, y);
    (
        x.min(screen.0.saturating_sub(1)),
        y.min(screen.1.saturating_sub(1)),
    )
}

async fn read_loop(
    hub: Arc<Hub>,
    id: u64,
    peer: SocketAddr,
    mut incoming: Incoming,
    ctrl: mpsc::Sender<Ctrl>,
    (capabilities, mut viewport): (Capabilities, (u16, u16)),
) {
    let mut input = InputState::default();
    let end = loop {
        let frame = match incoming.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ctrl::Stop,
            Err(ReadError::Io(e)) => {
                debug!(%peer, error = %e, "read");
                break Ctrl::Stop;
            }
            Err(ReadError::Protocol(code, reason)) => break Ctrl::Close(code, reason),
        };
        let message = match frame.parse() {
            Ok(m) => m,
            Err(e) => break Ctrl::Close(e.close_code(), e.to_string()),
        };
        let injected = match message {
            Message::Ping(PingRepr { token }) => {
                if ctrl.send(Ctrl::Pong(token)).await.is_err() {
                    break Ctrl::Stop;
                }
                Vec::new()
            }
            Message::Pong(_) => Vec::new(),
            Message::Close(c) => {
                debug!(%peer, code = c.code.name(), reason = %c.reason, "viewer closed");
                break Ctrl::Stop;
            }
            Message::Key(k) => vec![Inject::Key {
                keysym: k.keysym,
                down: k.down,
            }],
            Message::Pointer(p) => {
                let (x, y) = to_screen(&hub, viewport, p.x, p.y);
                input.pointer(x, y, p.buttons)
            }
            Message::Wheel(w) => input.wheel(w.dx, w.dy),
            Message::Clipboard(c) if capabilities.contains(Capabilities::CLIPBOARD) => {
                // PROTOCOL.md §4.3: a view-only viewer's clipboard is ignored.
                if hub.is_owner(id) {
                    let text: Arc<str> = Arc::from(c.text.as_ref());
                    hub.set_clipboard(text.clone(), Some(id));
                    vec![Inject::Clipboard(text)]
                } else {
                    Vec::new()
                }
            }
            Message::ViewportRequest(v) => {
                viewport = (v.max_width, v.max_height);
                if ctrl
                    .send(Ctrl::Viewport(v.max_width, v.max_height))
                    .await
                    .is_err()
                {
                    break Ctrl::Stop;
                }
                Vec::new()
            }
            other => {
                let reason = format!("{} is not expected now", other.message_type());
                break Ctrl::Close(crate::protocol::CloseCode::UnexpectedMessage, reason);
            }
        };
        if !injected.is_empty() && hub.is_owner(id) {
            for event in injected {
                let _ = hub.input.send(event);
            }
        }
    };
    if let Ctrl::Close(code, reason) = &end {
        warn!(%peer, id, code = code.name(), %reason, "closing viewer");
    }
    // Release what this viewer held, so a departed owner leaves no button down.
    if hub.is_owner(id) {
        for event in input.release_all() {
            let _ = hub.input.send(event);
        }
    }
    let _ = ctrl.send(end).await;
}

/// Pointer buttons held and wheel remainders of one viewer (PROTOCOL.md §8).
#[derive(Debug, Default)]
pub(crate) struct InputState {
    buttons: u16,
    wheel_x: i32,
    wheel_y: i32,
}

/// X button numbers of the `Buttons` bits, in bit order.
const X_BUTTONS: [u8; 5] = [1, 2, 3, 8, 9];

impl InputState {
    pub(crate) fn pointer(&mut self, x: u16, y: u16, buttons: Buttons) -> Vec<Inject> {
        let mut out = vec![Inject::Motion { x, y }];
        let changed = self.buttons ^ buttons.0;
        for (bit, button) in X_BUTTONS.iter().enumerate() {
            if changed & (1 << bit) != 0 {
                out.push(Inject::Button {
                    button: *button,
                    down: buttons.0 & (1 << bit) != 0,
                });
            }
        }
        self.buttons = buttons.0;
        out
    }

    pub(crate) fn wheel(&mut self, dx: i16, dy: i16) -> Vec<Inject> {
        let mut out = Vec::new();
        self.wheel_x += i32::from(dx);
        self.wheel_y += i32::from(dy);
        for (acc, neg, pos) in [(&mut self.wheel_y, 4u8, 5u8), (&mut self.wheel_x, 6, 7)] {
            while acc.abs() >= 120 {
                let button = if *acc > 0 { pos } else { neg };
                *acc -= 120 * acc.signum();
                out.push(Inject::Button { button, down: true });
                out.push(Inject::Button {
                    button,
                    down: false,
                });
            }
        }
        out
    }

    pub(crate) fn release_all(&mut self) -> Vec<Inject> {
        let mut out = Vec::new();
        for (bit, button) in X_BUTTONS.iter().enumerate() {
            if self.buttons & (1 << bit) != 0 {
                out.push(Inject::Button {
                    button: *button,
                    down: false,
                });
            }
        }
        self.buttons = 0;
        out
    }
}

/// What one viewer has: its encoder (an image of its framebuffer) and, when
/// its viewport is smaller than the screen, the downscaled screen that the
/// encoder works on (PROTOCOL.md §9; COPY, SFILL... all in scaled space).
struct View {
    viewport: (u16, u16),
    screen: (u16, u16),
    encoder: Encoder,
    scaler: Option<Downscaler>,
    /// Whether `VIDEO` is in force.
    video: bool,
    /// The video streams this viewer is being sent.
    streams: Vec<ViewStream>,
    /// Areas of streams whose last frame stands still, to be painted
    /// exactly once no damage is pending (screen coordinates).
    still: Vec<Rect>,
    /// Whether the still frames being sent go outside the zstd stream,
    /// decided when the first of them is painted (`None`: none is being
    /// sent) and kept until the queue is empty. They do when the link is
    /// faster than zstd compresses: a still frame is what the user looks at
    /// the moment a video stops, so it goes as it is (its pixels plain,
    /// about twice the bytes of the stream's).
    still_plain: Option<bool>,
    /// When a frame that was still being drawn will have settled (its
    /// damage waits in the region until then).
    frame_wake: Option<std::time::Instant>,
    /// The rows [`paint_rect`] left for later last time, whose scrolls it
    /// already looked for (screen coordinates).
    scrolls_seen: Option<Rect>,
    /// Streams that ended, to be told (`VideoEnd`) once the queue is empty,
    /// so that the end follows the stream's last frame.
    ended: Vec<u32>,
    /// Whether VIDEO frames go as H.264 (negotiated, PROTOCOL.md §6.3).
    h264: bool,
    /// How the encoder packs payloads (plain when the zstd stream is on).
    packing: Packing,
    /// The H.264 encoder of each stream (made at its first frame, so its
    /// first access unit is an IDR picture; dropped when the stream ends,
    /// on a full state and when an encode fails, so the next frame of the
    /// stream starts again with an IDR picture).
    encoders: Vec<(u32, H264Stream)>,
}

/// A video stream as one viewer is sent it.
struct ViewStream {
    id: u32,
    area: Rect,
    next_frame: u32,
    /// The stream's update count when its frame was last painted exactly
    /// because it stood still (a new count: a new frame since).
    exact_at: Option<u64>,
}

/// A stream's H.264 encoder and what it did (logged when the stream ends).
struct H264Stream {
    encoder: H264Encoder,
    frames: u32,
    bytes: usize,
    /// Time spent making its frames (screen read, I420, encode).
    busy: Duration,
}

impl View {
    fn new(hub: &Hub, viewport: (u16, u16), (video, h264, packing): (bool, bool, Packing)) -> Self {
        let screen = hub.size();
        let size = fit(screen, viewport);
        View {
            viewport,
            screen,
            encoder: Encoder::new(size.0, size.1).with_packing(packing),
            scaler: (size != screen).then(|| Downscaler::new(screen, size)),
            video,
            streams: Vec::new(),
            still: Vec::new(),
            scrolls_seen: None,
            still_plain: None,
            frame_wake: None,
            ended: Vec::new(),
            h264,
            packing,
            encoders: Vec::new(),
        }
    }

    /// The screen's video streams now, id and area (none without `VIDEO`).
    /// Streams that ended are queued for `VideoEnd`, and their area goes
    /// back into the damage: the encoder marked it unknown, so it is
    /// repainted exactly. A stream whose last frame stands still has its
    /// area queued in `still` once per frame, to be painted exactly.
    fn sync_streams(&mut self, hub: &Hub, shared: &ClientShared) -> Vec<(u32, Rect)> {
        if !self.video {
            return Vec::new();
        }
        let active = hub.video_streams();
        let mut gone = Vec::new();
        self.streams.retain(|s| {
            let on = active.iter().any(|a| a.id == s.id);
            if !on {
                gone.push((s.id, s.area));
            }
            on
        });
        for (id, area) in gone {
            debug!(id, ?area, "video stream ends");
            if let Some(i) = self.encoders.iter().position(|(s, _)| *s == id) {
                let (_, h) = self.encoders.swap_remove(i);
                let per_frame = h.busy / h.frames.max(1);
                debug!(
                    id,
                    frames = h.frames,
                    bytes = h.bytes,
                    ?per_frame,
                    "h264 stream ends"
                );
            }
            self.ended.push(id);
            // The damage repaints it; no separate still paint.
            self.still.retain(|r| !area.contains(r));
            lock(&shared.dirty).region.add(area);
        }
        for a in &active {
            let s = match self.streams.iter_mut().position(|s| s.id == a.id) {
                Some(i) => &mut self.streams[i],
                None => {
                    debug!(id = a.id, area = ?a.rect, "video stream starts");
                    self.streams.push(ViewStream {
                        id: a.id,
                        area: a.rect,
                        next_frame: 0,
                        exact_at: None,
                    });
                    let Some(s) = self.streams.last_mut() else {
                        continue;
                    };
                    s
                }
            };
            if !a.still {
                // A new frame is coming or came: it replaces the still one
                // (and what of it is left to paint).
                self.still.retain(|r| !a.rect.contains(r));
            } else if s.exact_at != Some(a.updates) {
                s.exact_at = Some(a.updates);
                if !self.still.contains(&a.rect) {
                    self.still.push(a.rect);
                }
            }
        }
        active.iter().map(|a| (a.id, a.rect)).collect()
    }

    /// The next frame number of stream `id`.
    fn next_frame(&mut self, id: u32) -> u32 {
        match self.streams.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                let f = s.next_frame;
                s.next_frame = s.next_frame.wrapping_add(1);
                f
            }
            None => 0,
        }
    }

    /// The framebuffer size.
    fn size(&self) -> (u16, u16) {
        match &self.scaler {
            Some(s) => s.size(),
            None => self.screen,
        }
    }

    /// Runs `f` with the encoder, the pixels it encodes from and a screen
    /// rectangle mapped to them (the downscale brought up to date there
    /// first). `None` when the rectangle maps to nothing.
    fn with_pixels<R>(
        &mut self,
        screen: &PixelView<'_>,
        rect: Rect,
        f: impl FnOnce(&mut Encoder, &PixelView<'_>, Rect) -> R,
    ) -> Option<R> {
        if (screen.width(), screen.height()) != self.screen {
            // The screen was resized: a full state at the new size follows.
            return None;
        }
        match &mut self.scaler {
            None => Some(f(&mut self.encoder, screen, rect)),
            Some(scaler) => {
                let r = scaler.dst_rect(rect)?;
                scaler.update(screen, r);
                Some(f(&mut self.encoder, &scaler.view(), r))
            }
        }
    }

    /// A rectangle of the encoder's pixels back in screen coordinates.
    fn to_screen_rect(&self, r: Rect) -> Option<Rect> {
        match &self.scaler {
            None => Some(r),
            Some(s) => s.src_rect(r),
        }
    }
}

async fn write_loop(
    hub: &Hub,
    shared: &ClientShared,
    out: &mut Out,
    mut ctrl: mpsc::Receiver<Ctrl>,
    (capabilities, viewport): (Capabilities, (u16, u16)),
    (peer, link): (SocketAddr, Option<&LinkProbe>),
    (queue_bytes, h264): (usize, bool),
) -> std::io::Result<()> {
    let cursor = capabilities.contains(Capabilities::CURSOR);
    let _video_viewer = capabilities
        .contains(Capabilities::VIDEO)
        .then(|| hub.video_viewer());
    // With the zstd stream, payloads go plain into it (LZ4 would only be
    // undone by `zstd_payloads`).
    let packing = if out.deflater.is_some() {
        Packing::Plain
    } else {
        Packing::Lz4
    };
    let video = (capabilities.contains(Capabilities::VIDEO), h264, packing);
    let mut view = View::new(hub, viewport, video);
    let mut queue = Scheduler::new(queue_bytes);
    send_full_state(hub, shared, &mut view, &mut queue, out, cursor).await?;
    loop {
        // Control first: a Pong or a Close never waits behind updates.
        let msg = match ctrl.try_recv() {
            Ok(msg) => Some(msg),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Ctrl::Stop),
        };
        if let Some(msg) = msg {
            let mut state = (&mut view, &mut queue, &mut *out);
            if handle_ctrl(msg, hub, shared, &mut state, cursor, peer).await? {
                return Ok(());
            }
            continue;
        }
        if shared.resized.swap(false, Ordering::AcqRel) {
            view = View::new(hub, view.viewport, video);
            send_full_state(hub, shared, &mut view, &mut queue, out, cursor).await?;
            continue;
        }
        if capabilities.contains(Capabilities::CLIPBOARD)
            && shared.clipboard_dirty.swap(false, Ordering::AcqRel)
        {
            if let Some(text) = hub.clipboard() {
                let clip = ClipboardRepr {
                    text: std::borrow::Cow::Borrowed(&text),
                };
                out.push(&Message::Clipboard(clip)).await?;
            }
        }
        if cursor && shared.cursor_dirty.swap(false, Ordering::AcqRel) {
            out.push(&Message::CursorShape(hub.cursor().shape)).await?;
        }
        refill(hub, shared, &mut view, &mut queue, link);
        out.raw_plain = view.still_plain == Some(true);
        if !queue.is_empty() {
            // One chunk to the socket, then look for control messages and
            // new (possibly smaller) updates again: preemption between
            // commands.
            while out.pending() < WRITE_CHUNK {
                match queue.poll_command() {
                    Some(command) => out.append_command(command)?,
                    None => break,
                }
            }
            out.flush().await?;
            continue;
        }
        // The still frames are out: RAW goes in the zstd stream again.
        view.still_plain = None;
        out.raw_plain = false;
        for stream_id in std::mem::take(&mut view.ended) {
            out.push(&Message::VideoEnd(VideoEndRepr { stream_id }))
                .await?;
        }
        out.flush().await?;
        let streaming = !view.streams.is_empty();
        // Wake when the first stream would stand still or end, to paint it
        // exactly promptly.
        let stream_end = tokio::time::Instant::now() + VIDEO_TICK;
        let stream_end = hub
            .video_next_change()
            .into_iter()
            .chain(view.frame_wake)
            .fold(stream_end, |end, t| end.min(t.into()));
        tokio::select! {
            biased;
            msg = ctrl.recv() => {
                let mut state = (&mut view, &mut queue, &mut *out);
                let msg = msg.unwrap_or(Ctrl::Stop);
                if handle_ctrl(msg, hub, shared, &mut state, cursor, peer).await? {
                    return Ok(());
                }
            }
            () = shared.notify.notified() => {}
            () = tokio::time::sleep_until(stream_end), if streaming => {}
        }
    }
}

/// Handles a message from the reader; returns whether the writer stops.
async fn handle_ctrl(
    msg: Ctrl,
    hub: &Hub,
    shared: &ClientShared,
    (view, queue, out): &mut (&mut View, &mut Scheduler, &mut Out),
    cursor: bool,
    peer: SocketAddr,
) -> std::io::Result<bool> {
    match msg {
        Ctrl::Pong(token) => {
            out.push(&Message::Pong(PingRepr { token })).await?;
            out.flush().await?;
        }
        Ctrl::Viewport(w, h) => {
            **view = View::new(hub, (w, h), (view.video, view.h264, view.packing));
            send_full_state(hub, shared, view, queue, out, cursor).await?;
        }
        Ctrl::Close(code, reason) => {
            out.close(code, &reason).await;
            return Ok(true);
        }
        Ctrl::Stop => {
            let stats = queue.stats();
            debug!(%peer, sent = stats.sent, overtaken = stats.overtaken,
                   dropped = stats.dropped, dropped_bytes = stats.dropped_bytes,
                   "reader ended");
            return Ok(true);
        }
    }
    Ok(false)
}

/// Encodes pending damage into the queue while it has room: first the
/// window moves that came with it (each verified once, before any of the
/// damage is painted: painting first would spoil the COPY; not for a scaled
/// viewer, whose moves are rarely whole pixels), then the smallest damaged
/// rectangle first: damage in a video stream's area is one VIDEO frame of
/// that area (at most one per stream and call), the rest goes to
/// [`paint_rect`].
fn refill(
    hub: &Hub,
    shared: &ClientShared,
    view: &mut View,
    queue: &mut Scheduler,
    link: Option<&LinkProbe>,
) {
    let moves = std::mem::take(&mut lock(&shared.dirty).moves);
    if !moves.is_empty() && view.scaler.is_none() {
        let copies = hub
            .with_view(|screen| view.encoder.moves(screen, &moves))
            .unwrap_or_default();
        if !copies.is_empty() {
            queue.push_update(copies);
        }
    }
    let streams = view.sync_streams(hub, shared);
    // Streams that got a frame in this call (one frame per stream and call).
    let mut framed: Vec<u32> = Vec::new();
    // Damage over a frame still being drawn, for when it is done.
    let mut deferred: Vec<Rect> = Vec::new();
    view.frame_wake = None;
    while queue.has_room() {
        let rect = {
            let mut dirty = lock(&shared.dirty);
            let Some(rect) = dirty.region.take_smallest() else {
                break;
            };
            rect
        };
        // A frame still being drawn is not read yet (it would tear): the
        // damage waits until the drawing settled.
        let settling = streams
            .iter()
            .filter(|&&(id, area)| !framed.contains(&id) && rect.overlaps(&area))
            .find_map(|&(_, area)| hub.video_drawing(area));
        if let Some(at) = settling {
            deferred.push(rect);
            view.frame_wake = Some(view.frame_wake.map_or(at, |t| t.min(at)));
            continue;
        }
        // Damage in a video area is one VIDEO frame of the whole area; the
        // rest of the rectangle is encoded as usual.
        let mut parts = vec![rect];
        for &(id, area) in &streams {
            let whole = parts.clone();
            parts = parts.into_iter().flat_map(|p| subtract(p, area)).collect();
            if parts != whole && !framed.contains(&id) {
                framed.push(id);
                let frame = view.next_frame(id);
                let command = if view.h264 {
                    h264_frame(hub, view, id, area, frame)
                } else {
                    hub.with_view(|screen| {
                        view.with_pixels(screen, area, |encoder, pixels, r| {
                            encoder.video(pixels, r, id, frame)
                        })
                    })
                    .flatten()
                    .flatten()
                };
                if let Some(command) = command {
                    queue.push_update(vec![command]);
                }
            }
        }
        for part in parts {
            if let Some(rest) = paint_rect(hub, view, queue, part, true) {
                lock(&shared.dirty).region.add(rest);
            }
        }
    }
    if !deferred.is_empty() {
        let mut dirty = lock(&shared.dirty);
        for rect in deferred {
            dirty.region.add(rect);
        }
        // Not painted yet: no still frame goes before it.
        return;
    }
    paint_still(hub, shared, view, queue, link);
}

/// Still frames, exactly, once no damage waits (a frame still in the damage
/// goes first, as VIDEO, and the exact paint after it); outside the zstd
/// stream when the link is fast (see `View::still_plain`).
fn paint_still(
    hub: &Hub,
    shared: &ClientShared,
    view: &mut View,
    queue: &mut Scheduler,
    link: Option<&LinkProbe>,
) {
    while queue.has_room() && lock(&shared.dirty).region.is_empty() {
        let Some(area) = view.still.pop() else {
            break;
        };
        if view.still_plain.is_none() {
            let info = link.and_then(LinkProbe::info);
            let plain = view.packing == Packing::Plain && info.is_some_and(|i| i.fast());
            debug!(?area, ?info, plain, "still video frame, exactly");
            view.still_plain = Some(plain);
        }
        if let Some(rest) = paint_rect(hub, view, queue, area, false) {
            view.still.push(rest);
        }
    }
}

/// Frame `frame` of stream `id` (screen area `area`) as H.264, with the
/// stream's encoder (a new one, hence an IDR picture, at the stream's first
/// frame and after a full state). An encoder that fails is dropped and the
/// frame goes as I420: the stream's next H.264 frame is an IDR picture
/// again, so the viewer never decodes across a missing frame.
fn h264_frame(
    hub: &Hub,
    view: &mut View,
    id: u32,
    area: Rect,
    frame: u32,
) -> Option<crate::protocol::Command<'static>> {
    let at = view.encoders.iter().position(|(s, _)| *s == id);
    let mut slot = at.map(|i| view.encoders.swap_remove(i).1);
    let started = std::time::Instant::now();
    let command = hub
        .with_view(|screen| {
            view.with_pixels(screen, area, |encoder, pixels, r| {
                let fits = slot
                    .as_ref()
                    .is_some_and(|h| h.encoder.size() == (usize::from(r.w), usize::from(r.h)));
                if !fits {
                    slot = H264Encoder::new(r.w, r.h)
                        .inspect_err(|e| warn!(error = %e, "h264 encoder"))
                        .ok()
                        .map(|encoder| H264Stream {
                            encoder,
                            frames: 0,
                            bytes: 0,
                            busy: Duration::ZERO,
                        });
                }
                let h264 = slot
                    .as_mut()
                    .and_then(|h| encoder.video_h264(pixels, r, (id, frame), &mut h.encoder));
                if h264.is_none() {
                    slot = None;
                    return encoder.video(pixels, r, id, frame);
                }
                h264
            })
        })
        .flatten()
        .flatten();
    // No frame (the screen changed size): this frame number is skipped, so
    // the encoder goes and the next frame is an IDR picture.
    if let (Some(mut h), Some(c)) = (slot, &command) {
        h.frames += 1;
        h.bytes += Message::Command(c.clone()).buffer_len();
        h.busy += started.elapsed();
        view.encoders.push((id, h));
    }
    command
}

/// Encodes one damaged rectangle: COPY for scrolls in it (unless it is the
/// rest of the last call, already looked at, or a still video frame), then
/// one update per band of [`TILE`] rows; when the queue fills up, returns
/// the rows not encoded (screen coordinates).
fn paint_rect(
    hub: &Hub,
    view: &mut View,
    queue: &mut Scheduler,
    rect: Rect,
    scrolls: bool,
) -> Option<Rect> {
    let scrolls = scrolls && view.scrolls_seen != Some(rect);
    let rest = hub.with_view(|screen| {
        view.with_pixels(screen, rect, |encoder, pixels, rect| {
            if !queue.has_room() {
                return Some(rect);
            }
            let bottom = rect.y + rect.h;
            let mut commands = if scrolls {
                encoder.copies(pixels, rect, &[])
            } else {
                Vec::new()
            };
            let mut y = rect.y;
            while y < bottom {
                if !queue.has_room() {
                    return Some(Rect::new(rect.x, y, rect.w, bottom - y));
                }
                let band = Rect::new(rect.x, y, rect.w, TILE.min(bottom - y));
                commands.extend(encoder.paint(pixels, band));
                if !commands.is_empty() {
                    queue.push_update(std::mem::take(&mut commands));
                }
                y += band.h;
            }
            None
        })
    });
    let rest = match rest {
        Some(Some(Some(rest))) => view.to_screen_rect(rest),
        _ => None,
    };
    view.scrolls_seen = rest;
    rest
}

/// PROTOCOL.md §3.4: size, cursor, every pixel, StateComplete. Straight to
/// the socket in bands (the queue is cleared: the full state replaces it).
async fn send_full_state(
    hub: &Hub,
    shared: &ClientShared,
    view: &mut View,
    queue: &mut Scheduler,
    out: &mut Out,
    cursor: bool,
) -> std::io::Result<()> {
    view.encoder.reset();
    view.encoders.clear();
    view.still.clear();
    queue.clear();
    let (width, height) = view.size();
    out.push(&Message::FramebufferSize(FramebufferSizeRepr {
        width,
        height,
        session_width: view.screen.0,
        session_height: view.screen.1,
    }))
    .await?;
    if cursor {
        shared.cursor_dirty.store(false, Ordering::Release);
        let c = hub.cursor();
        out.push(&Message::CursorShape(c.shape)).await?;
        let (x, y) = match &view.scaler {
            Some(s) => s
                .dst_rect(Rect::new(c.x, c.y, 1, 1))
                .map_or((0, 0), |r| (r.x, r.y)),
            None => (c.x, c.y),
        };
        out.push(&Message::CursorPosition(CursorPositionRepr { x, y }))
            .await?;
    }
    let mut y = 0;
    while y < view.screen.1 {
        let band = Rect::new(0, y, view.screen.0, TILE.min(view.screen.1 - y));
        let commands = hub
            .with_view(|screen| {
                view.with_pixels(screen, band, |encoder, pixels, rect| {
                    encoder.paint(pixels, rect)
                })
            })
            .flatten()
            .unwrap_or_default();
        for command in commands {
            out.append_command(command)?;
            if out.pending() >= out.limit {
                out.flush().await?;
            }
        }
        y += band.h;
    }
    out.push(&Message::StateComplete).await?;
    out.flush().await
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pointer_buttons_and_wheel() {
        let mut s = InputState::default();
        assert_eq!(
            s.pointer(3, 4, Buttons(0b1)),
            [
                Inject::Motion { x: 3, y: 4 },
                Inject::Button {
                    button: 1,
                    down: true
                }
            ]
        );
        assert_eq!(
            s.pointer(3, 4, Buttons(0b100)),
            [
                Inject::Motion { x: 3, y: 4 },
                Inject::Button {
                    button: 1,
                    down: false
                },
                Inject::Button {
                    button: 3,
                    down: true
                }
            ]
        );
        assert_eq!(
            s.release_all(),
            [Inject::Button {
                button: 3,
                down: false
            }]
        );
        assert!(s.wheel(0, 60).is_empty());
        assert_eq!(
            s.wheel(0, 60),
            [
                Inject::Button {
                    button: 5,
                    down: true
                },
                Inject::Button {
                    button: 5,
                    down: false
                }
            ]
        );
        assert_eq!(s.wheel(-120, 0).len(), 2);
    }
}
