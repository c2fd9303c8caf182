//! Session messages: `Ping`/`Pong`, `Close` and its codes, `Clipboard`
//! (PROTOCOL.md §4, §10). `StateComplete` has an empty body and no Repr.

use std::borrow::Cow;

use super::wire::{check_range, check_room, get_u16, get_u64, put, put_u16, put_u64, rest, Field};
use super::{EmitError, Error, MAX_CLIPBOARD_LEN, MAX_REASON_LEN};

mod field {
    use super::Field;

    pub(super) const TOKEN: Field = 0..8;
    pub(super) const CODE: Field = 0..2;
    pub(super) const REASON: usize = 2;
}

/// `Ping` and `Pong` (PROTOCOL.md §4.1, types 0x03 and 0x04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PingRepr {
    /// Chosen by the sender of the `Ping`, echoed by the `Pong`.
    pub token: u64,
}

impl PingRepr {
    /// Body length.
    pub const LEN: usize = field::TOKEN.end;

    /// Parses a `Ping` or `Pong` body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        super::wire::expect_end(body, Self::LEN)?;
        Ok(PingRepr {
            token: get_u64(body, field::TOKEN)?,
        })
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..8]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        check_room(buf, Self::LEN)?;
        put_u64(buf, field::TOKEN, self.token)
    }
}

/// The close codes (PROTOCOL.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 0: no error.
    Normal,
    /// 1: a body did not match its layout or limits.
    MalformedMessage,
    /// 2: a length above the type's maximum.
    MessageTooLarge,
    /// 3: a type version 1 does not define.
    UnknownMessageType,
    /// 4: a message the peer may not send, or not now.
    UnexpectedMessage,
    /// 5: not this protocol.
    BadMagic,
    /// 6: no common version.
    VersionMismatch,
    /// 7: the token was refused.
    AuthFailed,
    /// 8: a command outside the framebuffer, or a framebuffer larger than
    /// the viewport.
    OutOfBounds,
    /// 9: a video codec that was not negotiated.
    UnsupportedCodec,
    /// 10: a payload that does not decode to its exact size.
    BadPayload,
    /// 11: nothing received for 45 s.
    Timeout,
    /// 12: the peer sent more than the receiver accepts.
    RateLimited,
    /// 13: the server is shutting down or the session ended.
    GoingAway,
    /// 14: a bug or resource failure on the sending side.
    InternalError,
    /// A code version 1 does not assign, kept as a number.
    Other(u16),
}

impl CloseCode {
    /// The code on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::MalformedMessage => 1,
            CloseCode::MessageTooLarge => 2,
            CloseCode::UnknownMessageType => 3,
            CloseCode::UnexpectedMessage => 4,
            CloseCode::BadMagic => 5,
            CloseCode::VersionMismatch => 6,
            CloseCode::AuthFailed => 7,
            CloseCode::OutOfBounds => 8,
            CloseCode::UnsupportedCodec => 9,
            CloseCode::BadPayload => 10,
            CloseCode::Timeout => 11,
            CloseCode::RateLimited => 12,
            CloseCode::GoingAway => 13,
            CloseCode::InternalError => 14,
            CloseCode::Other(code) => code,
        }
    }

    /// The code for a number (unknown numbers become [`CloseCode::Other`]).
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => CloseCode::Normal,
            1 => CloseCode::MalformedMessage,
            2 => CloseCode::MessageTooLarge,
            3 => CloseCode::UnknownMessageType,
            4 => CloseCode::UnexpectedMessage,
            5 => CloseCode::BadMagic,
            6 => CloseCode::VersionMismatch,
            7 => CloseCode::AuthFailed,
            8 => CloseCode::OutOfBounds,
            9 => CloseCode::UnsupportedCodec,
            10 => CloseCode::BadPayload,
            11 => CloseCode::Timeout,
            12 => CloseCode::RateLimited,
            13 => CloseCode::GoingAway,
            14 => CloseCode::InternalError,
            other => CloseCode::Other(other),
        }
    }

    /// The name PROTOCOL.md §10 gives it (`unknown` for unassigned codes).
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::MalformedMessage => "malformed_message",
            CloseCode::MessageTooLarge => "message_too_large",
            CloseCode::UnknownMessageType => "unknown_message_type",
            CloseCode::UnexpectedMessage => "unexpected_message",
            CloseCode::BadMagic => "bad_magic",
            CloseCode::VersionMismatch => "version_mismatch",
            CloseCode::AuthFailed => "auth_failed",
            CloseCode::OutOfBounds => "out_of_bounds",
            CloseCode::UnsupportedCodec => "unsupported_codec",
            CloseCode::BadPayload => "bad_payload",
            CloseCode::Timeout => "timeout",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::GoingAway => "going_away",
            CloseCode::InternalError => "internal_error",
            CloseCode::Other(_) => "unknown",
        }
    }
}

impl PartialEq<u16> for CloseCode {
    fn eq(&self, other: &u16) -> bool {
        self.to_u16() == *other
    }
}

/// `Close` (PROTOCOL.md §4.2, type 0x05).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRepr<'a> {
    /// Why.
    pub code: CloseCode,
    /// For humans and logs, 0 ..= 256 bytes of UTF-8.
    pub reason: Cow<'a, str>,
}

impl<'a> CloseRepr<'a> {
    /// A `Close` with `reason` cut to at most 256 bytes (at a character
    /// boundary), for building one from an error message.
    pub fn new(code: CloseCode, reason: &str) -> CloseRepr<'static> {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        CloseRepr {
            code,
            reason: Cow::Owned(reason[..end].to_owned()),
        }
    }

    /// Parses a `Close` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let code = CloseCode::from_u16(get_u16(body, field::CODE)?);
        let reason = rest(body, field::REASON)?;
        let reason =
            core::str::from_utf8(reason).map_err(|_| Error::InvalidUtf8 { field: "reason" })?;
        let repr = CloseRepr {
            code,
            reason: Cow::Borrowed(reason),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §4.2.
    pub fn validate(&self) -> Result<(), Error> {
        let as_u64 = super::wire::as_u64;
        check_range(
            "reason",
            as_u64(self.reason.len()),
            0,
            as_u64(MAX_REASON_LEN),
        )
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        field::REASON + self.reason.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u16(buf, field::CODE, self.code.to_u16())?;
        put(buf, field::REASON, self.reason.as_bytes())
    }

    /// An owned copy.
    pub fn into_owned(self) -> CloseRepr<'static> {
        CloseRepr {
            code: self.code,
            reason: Cow::Owned(self.reason.into_owned()),
        }
    }
}

/// `Clipboard` (PROTOCOL.md §4.3, type 0x06).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClipboardRepr<'a> {
    /// The clipboard contents, 0 ..= 1 MiB of UTF-8.
    pub text: Cow<'a, str>,
}

impl<'a> ClipboardRepr<'a> {
    /// Parses a `Clipboard` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let text = core::str::from_utf8(body).map_err(|_| Error::InvalidUtf8 { field: "text" })?;
        let repr = ClipboardRepr {
            text: Cow::Borrowed(text),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §4.3.
    pub fn validate(&self) -> Result<(), Error> {
        let as_u64 = super::wire::as_u64;
        check_range(
            "text",
            as_u64(self.text.len()),
            0,
            as_u64(MAX_CLIPBOARD_LEN),
        )
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        self.text.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put(buf, 0, self.text.as_bytes())
    }

    /// An owned copy.
    pub fn into_owned(self) -> ClipboardRepr<'static> {
        ClipboardRepr {
            text: Cow::Owned(self.text.into_owned()),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in 0..=20u16 {
            let close = CloseCode::from_u16(code);
            assert_eq!(close.to_u16(), code);
            assert!(close == code);
            assert_eq!(close.name() == "unknown", code > 14);
        }
    }

    #[test]
    fn close_bytes() {
        let close = CloseRepr {
            code: CloseCode::OutOfBounds,
            reason: Cow::Borrowed("é"),
        };
        let mut buf = vec![0; close.buffer_len()];
        close.emit(&mut buf).unwrap();
        assert_eq!(buf, [8, 0, 0xc3, 0xa9]);
        assert_eq!(CloseRepr::parse(&buf), Ok(close));
        assert!(matches!(
            CloseRepr::parse(&[1, 0, 0xc3]),
            Err(Error::InvalidUtf8 { .. })
        ));
        assert!(CloseRepr::parse(&[1]).is_err());
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(200);
        let close = CloseRepr::new(CloseCode::InternalError, &long);
        assert_eq!(close.reason.len(), 256);
        assert!(close.validate().is_ok());
        let close = CloseRepr::new(CloseCode::InternalError, &format!("x{long}"));
        assert_eq!(close.reason.len(), 255);
    }

    #[test]
    fn ping_bytes() {
        let ping = PingRepr { token: 0x0102 };
        let mut buf = [0; 8];
        ping.emit(&mut buf).unwrap();
        assert_eq!(buf, [2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(PingRepr::parse(&buf), Ok(ping));
        assert!(PingRepr::parse(&buf[..7]).is_err());
        assert!(PingRepr::parse(&[0; 9]).is_err());
    }

    #[test]
    fn clipboard_limits() {
        let big = ClipboardRepr {
            text: Cow::Owned("a".repeat(MAX_CLIPBOARD_LEN + 1)),
        };
        assert!(big.validate().is_err());
        assert!(ClipboardRepr::parse(&[0xff]).is_err());
        assert_eq!(ClipboardRepr::parse(b"").unwrap().text, "");
    }
}
