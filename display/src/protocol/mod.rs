//! The display protocol, sans I/O: bytes in, values out (PROTOCOL.md).
//!
//! Two layers, as in `smoltcp::wire`:
//!
//! - [`FrameDecoder`] (PROTOCOL.md §2) is a state machine fed arbitrary
//!   chunks of the byte stream ([`FrameDecoder::handle_bytes`]); it hands out
//!   whole messages ([`FrameDecoder::poll_message`]) as a type and a body. It
//!   checks the type and the length from the 5 header bytes, before it buffers
//!   any body, and never buffers more than one message.
//! - One `*Repr` per message, in one file per command group, with
//!   `parse(body)`, `buffer_len()` and `emit(buf)`, and each file's byte
//!   layout as a private `mod field`. [`Message`] dispatches on the type.
//!
//! Reprs borrow their payloads from the body they were parsed from (`Cow`),
//! so parsing copies no pixels; [`Message::into_owned`] detaches them. A
//! separate zero-copy `Packet<T>` view per message, as smoltcp has, would add
//! nothing here: bodies are small headers plus one payload, and the payload is
//! already borrowed.
//!
//! # Guarantees
//!
//! - No function of this module panics on any input: parsers read fields
//!   through bounds-checked helpers, and `emit` checks the buffer first. The
//!   fuzz target `decode` checks this.
//! - `parse` accepts exactly what `validate` accepts; `emit` refuses what a
//!   receiver would refuse ([`EmitError::Invalid`]), so a sender cannot put a
//!   malformed message on the wire.
//! - For every valid value, `emit` then `parse` gives the value back, and
//!   `buffer_len` is the length `emit` writes.
//!
//! # DoS
//!
//! A receiver's memory per connection is bounded by the largest message the
//! peer may send (1 MiB for a client, 16 MiB for a server), and a decoded
//! payload never exceeds `MAX_BODY_LEN`: its size comes from the command's
//! dimensions, which are checked before anything is decoded.

mod error;
mod frame;
mod payload;
mod rect;
mod wire;

pub mod bitmap;
pub mod compressed;
pub mod copy;
pub mod cursor;
pub mod hello;
pub mod input;
pub mod pfill;
pub mod raw;
pub mod session;
pub mod sfill;
pub mod video;
pub mod viewport;

use core::fmt;
use core::ops::RangeInclusive;

pub use self::bitmap::BitmapRepr;
pub use self::compressed::{
    zstd_payloads, CompressedRepr, DeflateError, Deflater, InflateError, Inflater,
    DEFAULT_ZSTD_LEVEL, MAX_ZSTD_WINDOW,
};
pub use self::copy::CopyRepr;
pub use self::cursor::{CursorPositionRepr, CursorShapeRepr};
pub use self::error::{EmitError, Error};
pub use self::frame::{DecodeError, Frame, FrameDecoder};
pub use self::hello::{Capabilities, ClientHelloRepr, ServerHelloRepr};
pub use self::input::{Buttons, KeyRepr, PointerRepr, WheelRepr};
pub use self::payload::{Encoding, Payload, PayloadError};
pub use self::pfill::PFillRepr;
pub use self::raw::RawRepr;
pub use self::rect::Rect;
pub use self::session::{ClipboardRepr, CloseCode, CloseRepr, PingRepr};
pub use self::sfill::SFillRepr;
pub use self::video::{
    h264_nal_types, VideoData, VideoEndRepr, VideoRepr, CODEC_H264, H264_NAL_IDR,
};
pub use self::viewport::{fit_viewport, FramebufferSizeRepr, ViewportRequestRepr};

/// The protocol version this crate implements.
pub const VERSION_1: u16 = 1;
/// The versions this crate speaks.
pub const SUPPORTED_VERSIONS: &[u16] = &[VERSION_1];
/// The first four bytes of both hellos.
pub const MAGIC: [u8; 4] = *b"MDSK";
/// The message header: type (1) + length (4).
pub const HEADER_LEN: usize = 1 /* type */ + 4 /* length */;
/// The largest body of any message, and the largest decoded payload.
pub const MAX_BODY_LEN: usize = 1 << 24;
/// The largest framebuffer, rectangle edge, tile or video frame dimension.
pub const MAX_DIMENSION: u16 = 8192;
/// The most pixels of a RAW or a PFILL tile (`MAX_BODY_LEN / 4`).
pub const MAX_RAW_PIXELS: usize = MAX_BODY_LEN / 4;
/// The largest cursor width and height.
pub const MAX_CURSOR_DIMENSION: u16 = 256;
/// The largest clipboard text, in bytes.
pub const MAX_CLIPBOARD_LEN: usize = 1 << 20;
/// The largest close reason, in bytes.
pub const MAX_REASON_LEN: usize = 256;
/// The largest hello token, in bytes.
pub const MAX_TOKEN_LEN: usize = 255;
/// The most versions in a `ClientHello`.
pub const MAX_VERSIONS: usize = 16;
/// The most codecs in either hello.
pub const MAX_CODECS: usize = 16;

/// Which side sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Only the client.
    Client,
    /// Only the server.
    Server,
    /// Either side.
    Either,
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sender::Client => "client",
            Sender::Server => "server",
            Sender::Either => "either side",
        })
    }
}

macro_rules! message_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $sender:ident, $min:expr, $max:expr;)*) => {
        /// The message types of PROTOCOL.md §2.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MessageType {
            $($(#[$doc])* $name = $value,)*
        }

        impl MessageType {
            /// Every type, in type order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name,)*];

            /// The type for a type byte, if version 1 defines it.
            pub fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some(MessageType::$name),)*
                    _ => None,
                }
            }

            /// The name PROTOCOL.md gives it.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageType::$name => stringify!($name),)*
                }
            }

            /// Who may send it.
            pub fn sender(self) -> Sender {
                match self {
                    $(MessageType::$name => Sender::$sender,)*
                }
            }

            /// The body lengths its layout allows (checked from the header).
            pub fn body_len_range(self) -> RangeInclusive<usize> {
                match self {
                    $(MessageType::$name => $min..=$max,)*
                }
            }
        }
    };
}

message_types! {
    /// §3.1.
    ClientHello = 0x01, Client, ClientHelloRepr::FIXED_LEN + 2,
        ClientHelloRepr::FIXED_LEN + 2 * MAX_VERSIONS + MAX_CODECS + MAX_TOKEN_LEN;
    /// §3.2.
    ServerHello = 0x02, Server, ServerHelloRepr::FIXED_LEN, ServerHelloRepr::FIXED_LEN + MAX_CODECS;
    /// §4.1.
    Ping = 0x03, Either, PingRepr::LEN, PingRepr::LEN;
    /// §4.1.
    Pong = 0x04, Either, PingRepr::LEN, PingRepr::LEN;
    /// §4.2.
    Close = 0x05, Either, 2, 2 + MAX_REASON_LEN;
    /// §4.3.
    Clipboard = 0x06, Either, 0, MAX_CLIPBOARD_LEN;
    /// §2.1.
    Compressed = 0x07, Server, CompressedRepr::HEADER_LEN + 1, MAX_BODY_LEN;
    /// §9.1.
    FramebufferSize = 0x10, Server, FramebufferSizeRepr::LEN, FramebufferSizeRepr::LEN;
    /// §3.4.
    StateComplete = 0x11, Server, 0, 0;
    /// §5.1.
    Raw = 0x12, Server, RawRepr::HEADER_LEN, MAX_BODY_LEN;
    /// §5.2.
    Copy = 0x13, Server, CopyRepr::LEN, CopyRepr::LEN;
    /// §5.3.
    SFill = 0x14, Server, SFillRepr::HEADER_LEN + Rect::LEN,
        SFillRepr::HEADER_LEN + Rect::LEN * u16::MAX as usize;
    /// §5.4.
    Bitmap = 0x15, Server, BitmapRepr::HEADER_LEN, MAX_BODY_LEN;
    /// §5.5.
    PFill = 0x16, Server, PFillRepr::HEADER_LEN + Rect::LEN, MAX_BODY_LEN;
    /// §6.1.
    Video = 0x17, Server, VideoRepr::CODEC_HEADER_LEN, MAX_BODY_LEN;
    /// §6.2.
    VideoEnd = 0x18, Server, VideoEndRepr::LEN, VideoEndRepr::LEN;
    /// §7.1.
    CursorShape = 0x19, Server, CursorShapeRepr::HEADER_LEN, MAX_BODY_LEN;
    /// §7.2.
    CursorPosition = 0x1a, Server, CursorPositionRepr::LEN, CursorPositionRepr::LEN;
    /// §8.1.
    Key = 0x20, Client, KeyRepr::LEN, KeyRepr::LEN;
    /// §8.2.
    Pointer = 0x21, Client, PointerRepr::LEN, PointerRepr::LEN;
    /// §8.3.
    Wheel = 0x22, Client, WheelRepr::LEN, WheelRepr::LEN;
    /// §9.2.
    ViewportRequest = 0x23, Client, ViewportRequestRepr::LEN, ViewportRequestRepr::LEN;
}

impl MessageType {
    /// Whether `sender` may send it.
    pub fn may_be_sent_by(self, sender: Sender) -> bool {
        match (self.sender(), sender) {
            (Sender::Either, _) | (_, Sender::Either) => true,
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A display command: what changes the client framebuffer (PROTOCOL.md §5,
/// §6.1). [`crate::codec::Framebuffer::apply`] applies one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// §5.1.
    Raw(RawRepr<'a>),
    /// §5.2.
    Copy(CopyRepr),
    /// §5.3.
    SFill(SFillRepr),
    /// §5.4.
    Bitmap(BitmapRepr<'a>),
    /// §5.5.
    PFill(PFillRepr<'a>),
    /// §6.1.
    Video(VideoRepr<'a>),
}

impl Command<'_> {
    /// Its message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Command::Raw(_) => MessageType::Raw,
            Command::Copy(_) => MessageType::Copy,
            Command::SFill(_) => MessageType::SFill,
            Command::Bitmap(_) => MessageType::Bitmap,
            Command::PFill(_) => MessageType::PFill,
            Command::Video(_) => MessageType::Video,
        }
    }

    /// An owned copy.
    pub fn into_owned(self) -> Command<'static> {
        match self {
            Command::Raw(r) => Command::Raw(r.into_owned()),
            Command::Copy(r) => Command::Copy(r),
            Command::SFill(r) => Command::SFill(r),
            Command::Bitmap(r) => Command::Bitmap(r.into_owned()),
            Command::PFill(r) => Command::PFill(r.into_owned()),
            Command::Video(r) => Command::Video(r.into_owned()),
        }
    }
}

/// Any message of PROTOCOL.md, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// §3.1.
    ClientHello(ClientHelloRepr<'a>),
    /// §3.2.
    ServerHello(ServerHelloRepr),
    /// §4.1.
    Ping(PingRepr),
    /// §4.1.
    Pong(PingRepr),
    /// §4.2.
    Close(CloseRepr<'a>),
    /// §4.3.
    Clipboard(ClipboardRepr<'a>),
    /// §2.1.
    Compressed(CompressedRepr<'a>),
    /// §9.1.
    FramebufferSize(FramebufferSizeRepr),
    /// §3.4.
    StateComplete,
    /// §5, §6.1.
    Command(Command<'a>),
    /// §6.2.
    VideoEnd(VideoEndRepr),
    /// §7.1.
    CursorShape(CursorShapeRepr<'a>),
    /// §7.2.
    CursorPosition(CursorPositionRepr),
    /// §8.1.
    Key(KeyRepr),
    /// §8.2.
    Pointer(PointerRepr),
    /// §8.3.
    Wheel(WheelRepr),
    /// §9.2.
    ViewportRequest(ViewportRequestRepr),
}

/// Calls `$body` with `$r` bound to the Repr inside any message but
/// `StateComplete` (whose body is empty), which gets `$empty`.
macro_rules! with_repr {
    ($msg:expr, $r:ident => $body:expr, $empty:expr) => {
        match $msg {
            Message::ClientHello($r) => $body,
            Message::ServerHello($r) => $body,
            Message::Ping($r) | Message::Pong($r) => $body,
            Message::Close($r) => $body,
            Message::Clipboard($r) => $body,
            Message::Compressed($r) => $body,
            Message::FramebufferSize($r) => $body,
            Message::StateComplete => $empty,
            Message::Command(Command::Raw($r)) => $body,
            Message::Command(Command::Copy($r)) => $body,
            Message::Command(Command::SFill($r)) => $body,
            Message::Command(Command::Bitmap($r)) => $body,
            Message::Command(Command::PFill($r)) => $body,
            Message::Command(Command::Video($r)) => $body,
            Message::VideoEnd($r) => $body,
            Message::CursorShape($r) => $body,
            Message::CursorPosition($r) => $body,
            Message::Key($r) => $body,
            Message::Pointer($r) => $body,
            Message::Wheel($r) => $body,
            Message::ViewportRequest($r) => $body,
        }
    };
}

impl<'a> Message<'a> {
    /// Parses the body of a message of type `msg_type`.
    pub fn parse(msg_type: MessageType, body: &'a [u8]) -> Result<Self, Error> {
        Ok(match msg_type {
            MessageType::ClientHello => Message::ClientHello(ClientHelloRepr::parse(body)?),
            MessageType::ServerHello => Message::ServerHello(ServerHelloRepr::parse(body)?),
            MessageType::Ping => Message::Ping(PingRepr::parse(body)?),
            MessageType::Pong => Message::Pong(PingRepr::parse(body)?),
            MessageType::Close => Message::Close(CloseRepr::parse(body)?),
            MessageType::Clipboard => Message::Clipboard(ClipboardRepr::parse(body)?),
            MessageType::Compressed => Message::Compressed(CompressedRepr::parse(body)?),
            MessageType::FramebufferSize => {
                Message::FramebufferSize(FramebufferSizeRepr::parse(body)?)
            }
            MessageType::StateComplete => {
                wire::expect_end(body, 0)?;
                Message::StateComplete
            }
            MessageType::Raw => Message::Command(Command::Raw(RawRepr::parse(body)?)),
            MessageType::Copy => Message::Command(Command::Copy(CopyRepr::parse(body)?)),
            MessageType::SFill => Message::Command(Command::SFill(SFillRepr::parse(body)?)),
            MessageType::Bitmap => Message::Command(Command::Bitmap(BitmapRepr::parse(body)?)),
            MessageType::PFill => Message::Command(Command::PFill(PFillRepr::parse(body)?)),
            MessageType::Video => Message::Command(Command::Video(VideoRepr::parse(body)?)),
            MessageType::VideoEnd => Message::VideoEnd(VideoEndRepr::parse(body)?),
            MessageType::CursorShape => Message::CursorShape(CursorShapeRepr::parse(body)?),
            MessageType::CursorPosition => {
                Message::CursorPosition(CursorPositionRepr::parse(body)?)
            }
            MessageType::Key => Message::Key(KeyRepr::parse(body)?),
            MessageType::Pointer => Message::Pointer(PointerRepr::parse(body)?),
            MessageType::Wheel => Message::Wheel(WheelRepr::parse(body)?),
            MessageType::ViewportRequest => {
                Message::ViewportRequest(ViewportRequestRepr::parse(body)?)
            }
        })
    }

    /// Parses the body of a message whose type byte is `msg_type`.
    pub fn parse_u8(msg_type: u8, body: &'a [u8]) -> Result<Self, Error> {
        let msg_type = MessageType::from_u8(msg_type).ok_or(Error::UnknownType(msg_type))?;
        Message::parse(msg_type, body)
    }

    /// Its message type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::ClientHello(_) => MessageType::ClientHello,
            Message::ServerHello(_) => MessageType::ServerHello,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
            Message::Close(_) => MessageType::Close,
            Message::Clipboard(_) => MessageType::Clipboard,
            Message::Compressed(_) => MessageType::Compressed,
            Message::FramebufferSize(_) => MessageType::FramebufferSize,
            Message::StateComplete => MessageType::StateComplete,
            Message::Command(command) => command.message_type(),
            Message::VideoEnd(_) => MessageType::VideoEnd,
            Message::CursorShape(_) => MessageType::CursorShape,
            Message::CursorPosition(_) => MessageType::CursorPosition,
            Message::Key(_) => MessageType::Key,
            Message::Pointer(_) => MessageType::Pointer,
            Message::Wheel(_) => MessageType::Wheel,
            Message::ViewportRequest(_) => MessageType::ViewportRequest,
        }
    }

    /// Body length.
    pub fn body_len(&self) -> usize {
        with_repr!(self, r => r.buffer_len(), 0)
    }

    /// Header and body length: the bytes [`Message::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Writes header and body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        let body_len = self.body_len();
        let msg_type = self.message_type();
        let range = msg_type.body_len_range();
        if !range.contains(&body_len) {
            return Err(EmitError::Invalid(Error::OutOfRange {
                field: "length",
                value: wire::as_u64(body_len),
                min: wire::as_u64(*range.start()),
                max: wire::as_u64(*range.end()),
            }));
        }
        wire::check_room(buf, HEADER_LEN + body_len)?;
        wire::put_u8(buf, 0, msg_type as u8)?;
        wire::put_u32(buf, 1..5, wire::as_u32(body_len))?;
        let body = buf.get_mut(HEADER_LEN..).unwrap_or_default();
        with_repr!(self, r => r.emit(body), Ok(()))
    }

    /// The message as bytes, header included.
    pub fn to_vec(&self) -> Result<Vec<u8>, EmitError> {
        let mut buf = vec![0; self.buffer_len()];
        self.emit(&mut buf)?;
        Ok(buf)
    }

    /// An owned copy.
    pub fn into_owned(self) -> Message<'static> {
        match self {
            Message::ClientHello(r) => Message::ClientHello(r.into_owned()),
            Message::ServerHello(r) => Message::ServerHello(r),
            Message::Ping(r) => Message::Ping(r),
            Message::Pong(r) => Message::Pong(r),
            Message::Close(r) => Message::Close(r.into_owned()),
            Message::Clipboard(r) => Message::Clipboard(r.into_owned()),
            Message::Compressed(r) => Message::Compressed(r.into_owned()),
            Message::FramebufferSize(r) => Message::FramebufferSize(r),
            Message::StateComplete => Message::StateComplete,
            Message::Command(c) => Message::Command(c.into_owned()),
            Message::VideoEnd(r) => Message::VideoEnd(r),
            Message::CursorShape(r) => Message::CursorShape(r.into_owned()),
            Message::CursorPosition(r) => Message::CursorPosition(r),
            Message::Key(r) => Message::Key(r),
            Message::Pointer(r) => Message::Pointer(r),
            Message::Wheel(r) => Message::Wheel(r),
            Message::ViewportRequest(r) => Message::ViewportRequest(r),
        }
    }
}

impl<'a> From<Command<'a>> for Message<'a> {
    fn from(command: Command<'a>) -> Self {
        Message::Command(command)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn type_bytes_round_trip() {
        for value in 0..=255u8 {
            if let Some(t) = MessageType::from_u8(value) {
                assert_eq!(t as u8, value);
            }
        }
        assert_eq!(MessageType::ALL.len(), 22);
        assert_eq!(MessageType::from_u8(0), None);
    }

    #[test]
    fn state_complete() {
        let bytes = Message::StateComplete.to_vec().unwrap();
        assert_eq!(bytes, [0x11, 0, 0, 0, 0]);
        assert_eq!(
            Message::parse(MessageType::StateComplete, &[0]),
            Err(Error::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn emit_refuses_an_oversized_body() {
        let clip = Message::Clipboard(ClipboardRepr {
            text: "x".repeat(MAX_CLIPBOARD_LEN + 1).into(),
        });
        assert!(matches!(clip.to_vec(), Err(EmitError::Invalid(_))));
    }
}
