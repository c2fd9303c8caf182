//! Why a message body was refused ([`Error`]) or could not be emitted
//! ([`EmitError`]), and the close code each maps to (PROTOCOL.md §10).

use super::session::CloseCode;
use super::Rect;

/// A message body that does not match its layout or limits (PROTOCOL.md §2,
/// "malformed"), or a value that cannot be sent because a receiver would
/// refuse it. One variant per reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The body ends before a field the layout needs.
    #[error("body too short: {len} bytes, the layout needs {need}")]
    Truncated {
        /// Bytes the layout needs.
        need: usize,
        /// Bytes the body has.
        len: usize,
    },
    /// The body is longer than its layout.
    #[error("{extra} bytes left over after the layout")]
    TrailingBytes {
        /// Bytes past the end of the layout.
        extra: usize,
    },
    /// A hello that does not start with `MDSK`.
    #[error("bad magic {found:02x?}, expected \"MDSK\"")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A field outside its limits.
    #[error("{field} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// The field, as PROTOCOL.md names it.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A reserved bit set.
    #[error("reserved bits set in {field}: {value:#x}")]
    ReservedBits {
        /// The field, as PROTOCOL.md names it.
        field: &'static str,
        /// Its value.
        value: u32,
    },
    /// A rectangle of width or height 0.
    #[error("empty rectangle {0}")]
    EmptyRect(Rect),
    /// A rectangle reaching past `MAX_DIMENSION`.
    #[error("rectangle {0} reaches past {max}", max = super::MAX_DIMENSION)]
    RectTooLarge(Rect),
    /// A string field that is not UTF-8.
    #[error("invalid utf-8 in {field}")]
    InvalidUtf8 {
        /// The field, as PROTOCOL.md names it.
        field: &'static str,
    },
    /// A payload encoding other than `plain`, `lz4` and `delta`.
    #[error("unknown payload encoding {0}")]
    UnknownEncoding(u8),
    /// A video codec in the reserved range 0x01–0x7f.
    #[error("reserved video codec {0:#04x}")]
    ReservedCodec(u8),
    /// A `plain` or `delta` payload whose length is not its decoded size.
    #[error("{field}: {len} bytes of plain or delta payload, expected {expected}")]
    PayloadLength {
        /// The payload, as PROTOCOL.md names it.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The decoded size its command fixes.
        expected: usize,
    },
    /// Dimensions whose decoded payload would exceed `MAX_BODY_LEN`.
    #[error("{field} decodes to {size} bytes, more than {max}")]
    PayloadTooLarge {
        /// The payload, as PROTOCOL.md names it.
        field: &'static str,
        /// The decoded size the dimensions give.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A value listed twice (versions, codecs).
    #[error("duplicate {field} {value}")]
    Duplicate {
        /// The list, as PROTOCOL.md names it.
        field: &'static str,
        /// The value listed twice.
        value: u16,
    },
    /// A cursor hotspot outside the cursor image.
    #[error("hotspot {x},{y} outside the {w}x{h} cursor")]
    HotspotOutside {
        /// Hotspot x.
        x: u16,
        /// Hotspot y.
        y: u16,
        /// Cursor width.
        w: u16,
        /// Cursor height.
        h: u16,
    },
    /// A hidden cursor (0×0) with a hotspot, an encoding or pixels.
    #[error("hidden cursor with a hotspot or pixels")]
    HiddenCursorData,
    /// A body for a message type that version 1 does not define.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
}

impl Error {
    /// The close code a receiver sends for this error (PROTOCOL.md §10).
    pub fn close_code(&self) -> CloseCode {
        match self {
            Error::BadMagic { .. } => CloseCode::BadMagic,
            Error::UnknownType(_) => CloseCode::UnknownMessageType,
            _ => CloseCode::MalformedMessage,
        }
    }
}

/// A message that could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The buffer is shorter than `buffer_len()`.
    #[error("buffer too small: {have} bytes, the message needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes in the buffer.
        have: usize,
    },
    /// The value breaks a limit of PROTOCOL.md: a receiver would refuse it.
    #[error("invalid message: {0}")]
    Invalid(#[from] Error),
}
