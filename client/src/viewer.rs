//! The client side of PROTOCOL.md, sans I/O.

use std::time::{Duration, Instant};

use mobidesk_display::codec::h264::{H264Decoder, H264Error};
use mobidesk_display::codec::{ApplyError, Framebuffer};
use mobidesk_display::protocol::{
    Capabilities, ClientHelloRepr, CloseCode, CloseRepr, Command, CompressedRepr, DecodeError,
    Encoding, Error, Frame, FrameDecoder, InflateError, Inflater, KeyRepr, Message, MessageType,
    PingRepr, Sender, ServerHelloRepr, VideoData, VideoRepr, CODEC_H264, HEADER_LEN,
    MAX_REASON_LEN, SUPPORTED_VERSIONS,
};

/// What a viewer asks for in its hello.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// Capabilities offered (`CURSOR` and `ZSTD` by default: the headless
    /// viewer keeps the cursor's shape and position, it does not draw them,
    /// and takes the server's messages in a zstd stream).
    pub capabilities: Capabilities,
    /// The viewport.
    pub max_width: u16,
    /// The viewport.
    pub max_height: u16,
    /// The hello's token.
    pub token: Vec<u8>,
    /// Optional video codecs offered (PROTOCOL.md §6.3; used only with
    /// `VIDEO`): H.264 by default, none to get `I420` only.
    pub codecs: Vec<u8>,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        ViewerConfig {
            capabilities: Capabilities::CURSOR | Capabilities::ZSTD,
            max_width: mobidesk_display::protocol::MAX_DIMENSION,
            max_height: mobidesk_display::protocol::MAX_DIMENSION,
            token: Vec::new(),
            codecs: vec![CODEC_H264],
        }
    }
}

/// Why the viewer stopped; [`ViewerError::close_code`] is what it sent.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// Framing (PROTOCOL.md §2).
    #[error("framing: {0}")]
    Decode(#[from] DecodeError),
    /// A body that does not parse.
    #[error("malformed: {0}")]
    Parse(#[from] Error),
    /// A command that does not apply.
    #[error("apply: {0}")]
    Apply(#[from] ApplyError),
    /// A VIDEO frame whose H.264 access unit does not decode.
    #[error("video: {0}")]
    Video(#[from] H264Error),
    /// A `Compressed` message that does not decode (PROTOCOL.md §2.1).
    #[error("{0}")]
    Inflate(#[from] InflateError),
    /// A valid message at the wrong time.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// A framebuffer larger than any viewport this viewer asked for
    /// (PROTOCOL.md §9.1).
    #[error("framebuffer {width}x{height} larger than the viewport {}x{}", viewport.0, viewport.1)]
    TooLarge {
        width: u16,
        height: u16,
        viewport: (u16, u16),
    },
    /// The server closed the connection.
    #[error("closed by the server: {} ({code:?}): {reason}", code.name())]
    Closed {
        /// Its code.
        code: CloseCode,
        /// Its reason.
        reason: String,
    },
}

impl ViewerError {
    /// The code this viewer sent (none when the server closed).
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            ViewerError::Decode(e) => Some(e.close_code()),
            ViewerError::Parse(e) => Some(e.close_code()),
            ViewerError::Apply(e) => Some(e.close_code()),
            ViewerError::Video(_) => Some(CloseCode::MalformedMessage),
            ViewerError::Inflate(e) => Some(e.close_code()),
            ViewerError::Unexpected(_) => Some(CloseCode::UnexpectedMessage),
            ViewerError::TooLarge { .. } => Some(CloseCode::OutOfBounds),
            ViewerError::Closed { .. } => None,
        }
    }
}

/// What happened in [`Viewer::handle_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server's hello.
    Hello(ServerHelloRepr),
    /// A new framebuffer size (a full state follows).
    Resized {
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// A full state is complete.
    StateComplete,
    /// A display command was applied.
    Update(MessageType),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Ready,
    Closed,
}

/// The viewer's protocol state, framebuffer and statistics.
#[derive(Debug)]
pub struct Viewer {
    decoder: FrameDecoder,
    /// The zstd stream's decompression context, once `ZSTD` is in force.
    inflater: Option<Inflater>,
    state: State,
    offered: Capabilities,
    offered_codecs: Vec<u8>,
    hello: Option<ServerHelloRepr>,
    /// The H.264 decoder of each stream, least recently used first (at
    /// most [`MAX_DECODERS`]).
    decoders: Vec<(u32, H264Decoder)>,
    framebuffer: Option<Framebuffer>,
    state_complete: bool,
    cursor: Option<(u16, u16, u16, u16)>,
    cursor_position: (u16, u16),
    clipboard: Option<String>,
    stats: super::Stats,
    transmit: Vec<u8>,
    /// When the timed input events not yet followed by an update were sent.
    pending_inputs: Vec<Instant>,
    /// The largest framebuffer the server may send: the largest viewport
    /// asked for on this connection (a `FramebufferSize` for an earlier,
    /// larger viewport may cross a `ViewportRequest` for a smaller one).
    viewport_limit: (u16, u16),
}

impl Viewer {
    /// A viewer whose `ClientHello` is queued for transmission.
    pub fn new(config: &ViewerConfig) -> Self {
        let mut viewer = Viewer {
            decoder: FrameDecoder::new(Sender::Server),
            inflater: None,
            state: State::AwaitHello,
            offered: config.capabilities,
            offered_codecs: config.codecs.clone(),
            hello: None,
            decoders: Vec::new(),
            framebuffer: None,
            state_complete: false,
            cursor: None,
            cursor_position: (0, 0),
            clipboard: None,
            stats: super::Stats::default(),
            transmit: Vec::new(),
            pending_inputs: Vec::new(),
            viewport_limit: (config.max_width, config.max_height),
        };
        let hello = Message::ClientHello(ClientHelloRepr {
            capabilities: config.capabilities,
            max_width: config.max_width,
            max_height: config.max_height,
            versions: SUPPORTED_VERSIONS.to_vec(),
            codecs: config.codecs.clone(),
            token: config.token.clone().into(),
        });
        viewer.queue(&hello);
        viewer
    }

    fn queue(&mut self, message: &Message<'_>) {
        if let Ok(bytes) = message.to_vec() {
            self.transmit.extend_from_slice(&bytes);
        }
    }

    /// Queues a message to the server (input, `ViewportRequest`, `Ping`...).
    /// Messages a viewer may not send are refused.
    pub fn send(&mut self, message: &Message<'_>) -> Result<(), ViewerError> {
        if !message.message_type().may_be_sent_by(Sender::Client) {
            return Err(ViewerError::Unexpected(format!(
                "a viewer does not send {}",
                message.message_type()
            )));
        }
        let bytes = message
            .to_vec()
            .map_err(|e| ViewerError::Unexpected(e.to_string()))?;
        if let Message::ViewportRequest(v) = message {
            let (w, h) = self.viewport_limit;
            self.viewport_limit = (w.max(v.max_width), h.max(v.max_height));
        }
        self.transmit.extend_from_slice(&bytes);
        Ok(())
    }

    /// Like [`Self::send`], and times the input: the first display command
    /// received after `now` answers it (`Stats::input`). Every command
    /// counts, whatever caused it: time inputs on an otherwise idle screen.
    pub fn send_timed(&mut self, message: &Message<'_>, now: Instant) -> Result<(), ViewerError> {
        self.send(message)?;
        self.pending_inputs.push(now);
        Ok(())
    }

    /// Timed inputs still waiting for an update.
    pub fn pending_inputs(&self) -> usize {
        self.pending_inputs.len()
    }

    /// Gives up on timed inputs older than `timeout` (counted unanswered).
    pub fn expire_inputs(&mut self, now: Instant, timeout: Duration) {
        let (old, young): (Vec<Instant>, Vec<Instant>) = self
            .pending_inputs
            .iter()
            .partition(|&&t| now.saturating_duration_since(t) >= timeout);
        for _ in old {
            self.stats.input.record(None);
        }
        self.pending_inputs = young;
    }

    /// Bytes to send to the server, taken out.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    /// The framebuffer, once the server sent its size.
    pub fn framebuffer(&self) -> Option<&Framebuffer> {
        self.framebuffer.as_ref()
    }

    /// The server's hello.
    pub fn server_hello(&self) -> Option<&ServerHelloRepr> {
        self.hello.as_ref()
    }

    /// Whether the last full state is complete.
    pub fn is_state_complete(&self) -> bool {
        self.state_complete
    }

    /// The cursor: width, height and hotspot (none before a `CursorShape`).
    pub fn cursor(&self) -> Option<(u16, u16, u16, u16)> {
        self.cursor
    }

    /// The session's clipboard text as last received (`CLIPBOARD` in force).
    pub fn clipboard(&self) -> Option<&str> {
        self.clipboard.as_deref()
    }

    /// What was received.
    pub fn stats(&self) -> &super::Stats {
        &self.stats
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds bytes from the server, received now. On an error the viewer
    /// queues a `Close` (unless the server closed) and is closed.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<Vec<Event>, ViewerError> {
        self.handle_bytes_at(input, Instant::now())
    }

    /// [`Self::handle_bytes`] for bytes received at `now` (the time that
    /// answers timed inputs).
    pub fn handle_bytes_at(
        &mut self,
        input: &[u8],
        now: Instant,
    ) -> Result<Vec<Event>, ViewerError> {
        let mut events = Vec::new();
        if self.state == State::Closed {
            return Ok(events);
        }
        let result = self.feed(input, &mut events);
        if events.iter().any(|e| matches!(e, Event::Update(_))) {
            for sent in std::mem::take(&mut self.pending_inputs) {
                let ms = now.saturating_duration_since(sent).as_secs_f64() * 1000.0;
                self.stats.input.record(Some(ms));
            }
        }
        if let Err(e) = result {
            if let Some(code) = e.close_code() {
                let mut reason = e.to_string();
                reason.truncate(MAX_REASON_LEN);
                while std::str::from_utf8(reason.as_bytes()).is_err() {
                    reason.pop();
                }
                self.queue(&Message::Close(CloseRepr::new(code, &reason)));
            }
            self.state = State::Closed;
            return Err(e);
        }
        Ok(events)
    }

    fn feed(&mut self, mut input: &[u8], events: &mut Vec<Event>) -> Result<(), ViewerError> {
        while !input.is_empty() {
            let used = self.decoder.handle_bytes(input)?;
            input = input.get(used..).unwrap_or_default();
            while let Some(frame) = self.decoder.poll_message() {
                self.stats
                    .count(frame.msg_type.name(), HEADER_LEN + frame.body.len());
                if frame.msg_type == MessageType::Compressed {
                    for inner in self.inflate(&frame)? {
                        self.stats
                            .count_inner(inner.msg_type.name(), HEADER_LEN + inner.body.len());
                        self.handle_message(inner.parse()?, events)?;
                        if self.state == State::Closed {
                            return Ok(());
                        }
                    }
                    continue;
                }
                self.handle_message(frame.parse()?, events)?;
                if self.state == State::Closed {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The messages inside a `Compressed` (PROTOCOL.md §2.1): only after a
    /// `ServerHello` that put `ZSTD` in force.
    fn inflate(&mut self, frame: &Frame) -> Result<Vec<Frame>, ViewerError> {
        let Some(inflater) = self.inflater.as_mut() else {
            return Err(ViewerError::Unexpected(
                "Compressed without ZSTD in force".into(),
            ));
        };
        Ok(inflater.inflate(&CompressedRepr::parse(&frame.body)?)?)
    }

    fn handle_message(
        &mut self,
        message: Message<'_>,
        events: &mut Vec<Event>,
    ) -> Result<(), ViewerError> {
        if let Message::Close(c) = &message {
            self.state = State::Closed;
            return Err(ViewerError::Closed {
                code: c.code,
                reason: c.reason.to_string(),
            });
        }
        if self.state == State::AwaitHello {
            let Message::ServerHello(hello) = message else {
                return Err(ViewerError::Unexpected(format!(
                    "{} before ServerHello",
                    message.message_type()
                )));
            };
            if !SUPPORTED_VERSIONS.contains(&hello.version)
                || !self.offered.contains(hello.capabilities)
                || !hello.codecs.iter().all(|c| self.offered_codecs.contains(c))
            {
                return Err(ViewerError::Unexpected(format!(
                    "ServerHello with version {}, capabilities {:#x} and codecs {:02x?} not offered",
                    hello.version, hello.capabilities.0, hello.codecs
                )));
            }
            if hello.capabilities.contains(Capabilities::ZSTD) {
                self.inflater = Some(Inflater::new()?);
            }
            self.state = State::Ready;
            self.hello = Some(hello.clone());
            events.push(Event::Hello(hello));
            return Ok(());
        }
        let caps = self
            .hello
            .as_ref()
            .map(|h| h.capabilities)
            .unwrap_or_default();
        match message {
            Message::Ping(PingRepr { token }) => self.queue(&Message::Pong(PingRepr { token })),
            Message::Pong(_) => {}
            Message::Clipboard(c) if caps.contains(Capabilities::CLIPBOARD) => {
                self.clipboard = Some(c.text.into_owned());
            }
            Message::FramebufferSize(size) => {
                let viewport = self.viewport_limit;
                if size.width > viewport.0 || size.height > viewport.1 {
                    return Err(ViewerError::TooLarge {
                        width: size.width,
                        height: size.height,
                        viewport,
                    });
                }
                self.framebuffer = Some(Framebuffer::for_size(&size)?);
                // A full state follows; the server starts every stream
                // again with an IDR picture.
                self.decoders.clear();
                self.state_complete = false;
                events.push(Event::Resized {
                    width: size.width,
                    height: size.height,
                });
            }
            Message::StateComplete => {
                if self.framebuffer.is_none() {
                    return Err(ViewerError::Unexpected(
                        "StateComplete before FramebufferSize".into(),
                    ));
                }
                self.state_complete = true;
                self.stats.full_states += 1;
                events.push(Event::StateComplete);
            }
            Message::Command(command) => {
                let Some(fb) = self.framebuffer.as_mut() else {
                    return Err(ViewerError::Unexpected(
                        "display command before FramebufferSize".into(),
                    ));
                };
                match &command {
                    Command::Video(
                        video @ VideoRepr {
                            data: VideoData::Codec { codec, data },
                            ..
                        },
                    ) if *codec == CODEC_H264
                        && self
                            .hello
                            .as_ref()
                            .is_some_and(|h| h.codecs.contains(codec)) =>
                    {
                        video.validate()?;
                        let decoder = decoder_for(&mut self.decoders, video.stream_id)?;
                        let frame = decoder.decode(data, video.frame, video.src_w, video.src_h)?;
                        fb.apply(&Command::Video(VideoRepr {
                            data: VideoData::I420 {
                                encoding: Encoding::Plain,
                                y: frame.y.into(),
                                u: frame.u.into(),
                                v: frame.v.into(),
                            },
                            ..video.clone()
                        }))?;
                    }
                    _ => fb.apply(&command)?,
                }
                self.stats.updates += 1;
                events.push(Event::Update(command.message_type()));
            }
            Message::CursorShape(shape) if caps.contains(Capabilities::CURSOR) => {
                self.cursor = Some((shape.w, shape.h, shape.hot_x, shape.hot_y));
            }
            Message::CursorPosition(p) if caps.contains(Capabilities::CURSOR) => {
                self.cursor_position = (p.x, p.y);
            }
            Message::VideoEnd(end) if caps.contains(Capabilities::VIDEO) => {
                self.decoders.retain(|(s, _)| *s != end.stream_id);
            }
            other => {
                return Err(ViewerError::Unexpected(format!(
                    "{} is not expected now",
                    other.message_type()
                )))
            }
        }
        Ok(())
    }
}

/// The most H.264 decoders a viewer keeps (one per stream; the least
/// recently used goes first: a server that keeps more streams going gets
/// its frames refused).
const MAX_DECODERS: usize = 16;

/// The decoder of `stream`, made when new, moved to the back (most
/// recently used).
fn decoder_for(
    decoders: &mut Vec<(u32, H264Decoder)>,
    stream: u32,
) -> Result<&mut H264Decoder, ViewerError> {
    let entry = match decoders.iter().position(|(s, _)| *s == stream) {
        Some(i) => decoders.remove(i),
        None => {
            if decoders.len() >= MAX_DECODERS {
                decoders.remove(0);
            }
            (stream, H264Decoder::new()?)
        }
    };
    decoders.push(entry);
    let (_, decoder) = decoders
        .last_mut()
        .ok_or_else(|| ViewerError::Unexpected("no decoder".into()))?;
    Ok(decoder)
}

/// The KEY messages that type `c` on a US layout: press and release of its
/// keysym, wrapped in Shift_L for capitals and shifted symbols (the server
/// maps keysyms to keycodes but does not add modifiers). `\n` is Return,
/// `\t` Tab; other characters outside ASCII use their Unicode keysym.
pub fn keysyms_for(c: char) -> Vec<KeyRepr> {
    const SHIFT_L: u32 = 0xffe1;
    let keysym = match c {
        '\n' => 0xff0d,
        '\t' => 0xff09,
        ' '..='~' => u32::from(c),
        _ => 0x0100_0000 + u32::from(c),
    };
    let shifted = c.is_ascii_uppercase() || "~!@#$%^&*()_+{}|:\"<>?".contains(c);
    let key = |keysym, down| KeyRepr { keysym, down };
    let mut out = Vec::new();
    if shifted {
        out.push(key(SHIFT_L, true));
    }
    out.push(key(keysym, true));
    out.push(key(keysym, false));
    if shifted {
        out.push(key(SHIFT_L, false));
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;
    use mobidesk_display::protocol::{
        Command, Deflater, FramebufferSizeRepr, Rect, SFillRepr, VERSION_1,
    };

    fn bytes(messages: &[Message<'_>]) -> Vec<u8> {
        messages.iter().flat_map(|m| m.to_vec().unwrap()).collect()
    }

    #[test]
    fn hello_state_and_updates() {
        let mut viewer = Viewer::new(&ViewerConfig::default());
        let hello = viewer.take_transmit();
        assert_eq!(hello.first(), Some(&0x01));
        let stream = bytes(&[
            Message::ServerHello(ServerHelloRepr {
                version: VERSION_1,
                capabilities: Capabilities::CURSOR,
                view_only: false,
                codecs: vec![],
            }),
            Message::FramebufferSize(FramebufferSizeRepr {
                width: 4,
                height: 2,
                session_width: 4,
                session_height: 2,
            }),
            Message::Command(Command::SFill(SFillRepr {
                colour: 0x00ab_cdef,
                rects: vec![Rect::new(1, 1, 2, 1)],
            })),
            Message::StateComplete,
            Message::Ping(PingRepr { token: 9 }),
        ]);
        // Byte by byte: framing must not depend on chunk boundaries.
        let mut events = Vec::new();
        for b in &stream {
            events.extend(viewer.handle_bytes(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(events.len(), 4);
        assert!(viewer.is_state_complete());
        let fb = viewer.framebuffer().unwrap();
        assert_eq!(fb.pixel(1, 1), Some(0x00ab_cdef));
        assert_eq!(fb.pixel(0, 0), Some(0));
        assert_eq!(viewer.stats().of("SFill").messages, 1);
        assert_eq!(viewer.stats().of("SFill").bytes, 5 + 14);
        assert_eq!(viewer.stats().updates, 1);
        assert_eq!(viewer.stats().bytes, stream.len() as u64);
        assert_eq!(
            viewer.take_transmit(),
            bytes(&[Message::Pong(PingRepr { token: 9 })])
        );
    }

    #[test]
    fn input_latency_is_the_first_update_after_the_input() {
        let mut viewer = Viewer::new(&ViewerConfig::default());
        viewer.take_transmit();
        let t0 = Instant::now();
        let setup = bytes(&[
            Message::ServerHello(ServerHelloRepr {
                version: VERSION_1,
                capabilities: Capabilities::CURSOR,
                view_only: false,
                codecs: vec![],
            }),
            Message::FramebufferSize(FramebufferSizeRepr {
                width: 4,
                height: 2,
                session_width: 4,
                session_height: 2,
            }),
            Message::StateComplete,
        ]);
        viewer.handle_bytes_at(&setup, t0).unwrap();
        for k in keysyms_for('a') {
            viewer.send_timed(&Message::Key(k), t0).unwrap();
        }
        assert_eq!(viewer.pending_inputs(), 2);
        // A Ping answers nothing; the first command answers both events.
        viewer
            .handle_bytes_at(
                &bytes(&[Message::Ping(PingRepr { token: 1 })]),
                t0 + Duration::from_millis(3),
            )
            .unwrap();
        let fill = bytes(&[Message::Command(Command::SFill(SFillRepr {
            colour: 1,
            rects: vec![Rect::new(0, 0, 1, 1)],
        }))]);
        viewer
            .handle_bytes_at(&fill, t0 + Duration::from_millis(7))
            .unwrap();
        viewer
            .handle_bytes_at(&fill, t0 + Duration::from_millis(9))
            .unwrap();
        let input = &viewer.stats().input;
        assert_eq!(input.events, 2);
        assert_eq!(input.samples_ms, [7.0, 7.0]);
        // One that nothing answers.
        viewer
            .send_timed(
                &Message::Key(KeyRepr {
                    keysym: 0x61,
                    down: true,
                }),
                t0,
            )
            .unwrap();
        viewer.expire_inputs(t0 + Duration::from_secs(3), Duration::from_secs(2));
        assert_eq!(viewer.stats().input.unanswered, 1);
        assert_eq!(viewer.pending_inputs(), 0);
    }

    #[test]
    fn keysyms_for_capitals_use_shift() {
        assert_eq!(keysyms_for('a').len(), 2);
        let k = keysyms_for('A');
        assert_eq!(k.len(), 4);
        assert_eq!((k[0].keysym, k[0].down), (0xffe1, true));
        assert_eq!(k[1].keysym, 0x41);
        assert_eq!(keysyms_for('\n')[0].keysym, 0xff0d);
        assert_eq!(keysyms_for('é')[0].keysym, 0x0100_00e9);
    }

    #[test]
    fn out_of_bounds_closes_with_its_code() {
        let mut viewer = Viewer::new(&ViewerConfig::default());
        viewer.take_transmit();
        let stream = bytes(&[
            Message::ServerHello(ServerHelloRepr {
                version: VERSION_1,
                capabilities: Capabilities::NONE,
                view_only: true,
                codecs: vec![],
            }),
            Message::FramebufferSize(FramebufferSizeRepr {
                width: 4,
                height: 2,
                session_width: 4,
                session_height: 2,
            }),
            Message::Command(Command::SFill(SFillRepr {
                colour: 1,
                rects: vec![Rect::new(3, 1, 2, 1)],
            })),
        ]);
        let err = viewer.handle_bytes(&stream).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::OutOfBounds));
        assert!(viewer.is_closed());
        assert_eq!(viewer.take_transmit().first(), Some(&0x05));
    }

    #[test]
    fn a_framebuffer_larger_than_the_viewport_is_out_of_bounds() {
        let size = |width, height| {
            Message::FramebufferSize(FramebufferSizeRepr {
                width,
                height,
                session_width: 1024,
                session_height: 768,
            })
        };
        let hello = Message::ServerHello(ServerHelloRepr {
            version: VERSION_1,
            capabilities: Capabilities::NONE,
            view_only: true,
            codecs: vec![],
        });
        let config = ViewerConfig {
            max_width: 640,
            max_height: 480,
            ..ViewerConfig::default()
        };
        // Within the viewport: fine.
        let mut viewer = Viewer::new(&config);
        viewer.take_transmit();
        viewer
            .handle_bytes(&bytes(&[hello.clone(), size(640, 480)]))
            .unwrap();
        // A smaller viewport asked for: a size for the larger one that
        // crossed the request is still taken.
        viewer
            .send(&Message::ViewportRequest(
                mobidesk_display::protocol::ViewportRequestRepr {
                    max_width: 320,
                    max_height: 240,
                },
            ))
            .unwrap();
        viewer.handle_bytes(&bytes(&[size(640, 480)])).unwrap();
        // Larger than any viewport asked for: closed.
        let err = viewer.handle_bytes(&bytes(&[size(641, 480)])).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::OutOfBounds), "{err}");
        assert!(viewer.is_closed());
    }

    fn zstd_hello() -> Message<'static> {
        Message::ServerHello(ServerHelloRepr {
            version: VERSION_1,
            capabilities: Capabilities::CURSOR | Capabilities::ZSTD,
            view_only: false,
            codecs: vec![],
        })
    }

    #[test]
    fn messages_in_the_zstd_stream_are_handled_in_their_place() {
        let mut viewer = Viewer::new(&ViewerConfig::default());
        let hello = viewer.take_transmit();
        // The default offers ZSTD (bit 3 of the capabilities at body offset 4).
        assert_eq!(hello[HEADER_LEN + 4] & 0b1000, 0b1000);
        let fill = |colour, x| {
            Message::Command(Command::SFill(SFillRepr {
                colour,
                rects: vec![Rect::new(x, 0, 1, 1)],
            }))
        };
        let mut deflater = Deflater::new(1).unwrap();
        let mut stream = bytes(&[zstd_hello()]);
        let first = bytes(&[
            Message::FramebufferSize(FramebufferSizeRepr {
                width: 4,
                height: 2,
                session_width: 4,
                session_height: 2,
            }),
            fill(7, 0),
        ]);
        deflater.deflate(&first, &mut stream).unwrap();
        // A message on its own between two pieces of the stream.
        stream.extend(bytes(&[fill(8, 1)]));
        let second = bytes(&[fill(9, 2), Message::StateComplete, fill(10, 3)]);
        deflater.deflate(&second, &mut stream).unwrap();
        let mut events = Vec::new();
        for b in &stream {
            events.extend(viewer.handle_bytes(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(events.len(), 7, "{events:?}");
        assert_eq!(events[5], Event::StateComplete);
        let fb = viewer.framebuffer().unwrap();
        for (x, colour) in [(0, 7), (1, 8), (2, 9), (3, 10)] {
            assert_eq!(fb.pixel(x, 0), Some(colour));
        }
        let stats = viewer.stats();
        assert_eq!(stats.bytes, stream.len() as u64);
        assert_eq!(stats.of("Compressed").messages, 2);
        assert_eq!(stats.of("SFill").messages, 4);
        assert_eq!(stats.of("SFill").bytes, 4 * (5 + 14));
        assert_eq!(stats.updates, 4);
    }

    #[test]
    fn compressed_without_zstd_or_corrupt_closes() {
        let mut piece = Vec::new();
        Deflater::new(1)
            .unwrap()
            .deflate(&bytes(&[Message::StateComplete]), &mut piece)
            .unwrap();
        // Not in force: the hello did not grant ZSTD.
        let mut viewer = Viewer::new(&ViewerConfig::default());
        viewer.take_transmit();
        let mut stream = bytes(&[Message::ServerHello(ServerHelloRepr {
            version: VERSION_1,
            capabilities: Capabilities::CURSOR,
            view_only: false,
            codecs: vec![],
        })]);
        stream.extend(&piece);
        let err = viewer.handle_bytes(&stream).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::UnexpectedMessage));
        // Corrupt: bad_payload, and the Close goes out.
        let mut viewer = Viewer::new(&ViewerConfig::default());
        viewer.take_transmit();
        let mut stream = bytes(&[zstd_hello()]);
        // The zstd magic number, first of the data (after 5 + 4 bytes).
        piece[HEADER_LEN + 4] ^= 0x55;
        stream.extend(&piece);
        let err = viewer.handle_bytes(&stream).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::BadPayload), "{err}");
        assert!(viewer.is_closed());
        assert_eq!(viewer.take_transmit().first(), Some(&0x05));
    }

    #[test]
    fn command_before_hello_is_unexpected() {
        let mut viewer = Viewer::new(&ViewerConfig::default());
        let err = viewer
            .handle_bytes(&bytes(&[Message::StateComplete]))
            .unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::UnexpectedMessage));
    }

    /// A viewer with VIDEO and H.264 in force, a 64 × 48 framebuffer.
    fn h264_viewer(server_codecs: Vec<u8>) -> Viewer {
        let mut viewer = Viewer::new(&ViewerConfig {
            capabilities: Capabilities(Capabilities::CURSOR.0 | Capabilities::VIDEO.0),
            ..ViewerConfig::default()
        });
        viewer.take_transmit();
        let setup = bytes(&[
            Message::ServerHello(ServerHelloRepr {
                version: VERSION_1,
                capabilities: Capabilities(Capabilities::CURSOR.0 | Capabilities::VIDEO.0),
                view_only: false,
                codecs: server_codecs,
            }),
            Message::FramebufferSize(FramebufferSizeRepr {
                width: 64,
                height: 48,
                session_width: 64,
                session_height: 48,
            }),
            Message::StateComplete,
        ]);
        viewer.handle_bytes(&setup).unwrap();
        viewer
    }

    fn h264_frames(n: u32) -> Vec<Message<'static>> {
        use mobidesk_display::codec::h264::H264Encoder;
        use mobidesk_display::codec::yuv::bgrx_to_i420;
        let mut encoder = H264Encoder::new(32, 16).unwrap();
        (0..n)
            .map(|frame| {
                let pixels: Vec<u32> = (0..32 * 16u32)
                    .map(|i| 0x0040_8020 + (i + 3 * frame) % 64)
                    .collect();
                let (au, _) = encoder
                    .encode(&bgrx_to_i420(&pixels, 32, 16).as_ref())
                    .unwrap();
                Message::Command(Command::Video(VideoRepr {
                    stream_id: 3,
                    frame,
                    dst: Rect::new(8, 8, 32, 16),
                    src_w: 32,
                    src_h: 16,
                    data: VideoData::Codec {
                        codec: CODEC_H264,
                        data: au.into(),
                    },
                }))
            })
            .collect()
    }

    #[test]
    fn h264_frames_decode_into_the_framebuffer() {
        assert_eq!(ViewerConfig::default().codecs, [CODEC_H264]);
        let mut viewer = h264_viewer(vec![CODEC_H264]);
        let frames = h264_frames(3);
        viewer.handle_bytes(&bytes(&frames)).unwrap();
        assert_eq!(viewer.stats().of("Video").messages, 3);
        let fb = viewer.framebuffer().unwrap();
        // The area is painted (the picture is greyish green, never black),
        // the rest stays black.
        assert_ne!(fb.pixel(8, 8), Some(0));
        assert_ne!(fb.pixel(39, 23), Some(0));
        assert_eq!(fb.pixel(40, 8), Some(0));
        assert_eq!(fb.pixel(7, 8), Some(0));
        // VideoEnd drops the decoder: the stream cannot go on without a
        // new IDR picture.
        let end = Message::VideoEnd(mobidesk_display::protocol::VideoEndRepr { stream_id: 3 });
        viewer.handle_bytes(&bytes(&[end])).unwrap();
        let more = h264_frames(4);
        let err = viewer.handle_bytes(&bytes(&more[3..])).unwrap_err();
        assert!(
            matches!(err, ViewerError::Video(H264Error::NoKeyframe { frame: 3 })),
            "{err}"
        );
        assert_eq!(err.close_code(), Some(CloseCode::MalformedMessage));
    }

    #[test]
    fn h264_needs_a_keyframe_and_negotiation() {
        let frames = h264_frames(3);
        // A gap (frame 1 missing): refused, not decoded into garbage.
        let mut viewer = h264_viewer(vec![CODEC_H264]);
        viewer.handle_bytes(&bytes(&frames[..1])).unwrap();
        let err = viewer.handle_bytes(&bytes(&frames[2..])).unwrap_err();
        assert!(
            matches!(err, ViewerError::Video(H264Error::NoKeyframe { frame: 2 })),
            "{err}"
        );
        // A hostile access unit: an error, a Close queued.
        let mut viewer = h264_viewer(vec![CODEC_H264]);
        let bad = Message::Command(Command::Video(VideoRepr {
            stream_id: 1,
            frame: 0,
            dst: Rect::new(0, 0, 16, 16),
            src_w: 16,
            src_h: 16,
            data: VideoData::Codec {
                codec: CODEC_H264,
                data: vec![0, 0, 1, 0x65, 0xff, 0x00, 0x13, 0x77].into(),
            },
        }));
        assert!(viewer.handle_bytes(&bytes(&[bad])).is_err());
        assert!(viewer.is_closed());
        assert_eq!(viewer.take_transmit().first(), Some(&0x05));
        // Not negotiated: unsupported_codec.
        let mut viewer = h264_viewer(vec![]);
        let err = viewer.handle_bytes(&bytes(&frames[..1])).unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::UnsupportedCodec));
        // A server that picks a codec the viewer did not offer is refused.
        let mut viewer = Viewer::new(&ViewerConfig {
            codecs: vec![],
            ..ViewerConfig::default()
        });
        let hello = Message::ServerHello(ServerHelloRepr {
            version: VERSION_1,
            capabilities: Capabilities::CURSOR,
            view_only: false,
            codecs: vec![CODEC_H264],
        });
        assert!(viewer.handle_bytes(&bytes(&[hello])).is_err());
    }
}
