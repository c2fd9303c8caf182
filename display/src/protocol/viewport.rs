//! Framebuffer size and viewport: `FramebufferSize` and `ViewportRequest`
//! (PROTOCOL.md §9).

use super::wire::{check_range, check_room, expect_end, get_u16, put_u16, Field};
use super::{EmitError, Error, MAX_DIMENSION};

mod field {
    use super::Field;

    pub(super) const WIDTH: Field = 0..2;
    pub(super) const HEIGHT: Field = 2..4;
    pub(super) const SESSION_WIDTH: Field = 4..6;
    pub(super) const SESSION_HEIGHT: Field = 6..8;
}

fn check_dimension(field: &'static str, value: u16) -> Result<(), Error> {
    check_range(field, u64::from(value), 1, u64::from(MAX_DIMENSION))
}

/// `FramebufferSize` (PROTOCOL.md §9.1, type 0x10): starts a full state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FramebufferSizeRepr {
    /// The client framebuffer's width, 1 ..= 8192.
    pub width: u16,
    /// Its height, 1 ..= 8192.
    pub height: u16,
    /// The session screen's width, 1 ..= 8192.
    pub session_width: u16,
    /// The session screen's height, 1 ..= 8192.
    pub session_height: u16,
}

impl FramebufferSizeRepr {
    /// Body length.
    pub const LEN: usize = field::SESSION_HEIGHT.end;

    /// Parses a `FramebufferSize` body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        let repr = FramebufferSizeRepr {
            width: get_u16(body, field::WIDTH)?,
            height: get_u16(body, field::HEIGHT)?,
            session_width: get_u16(body, field::SESSION_WIDTH)?,
            session_height: get_u16(body, field::SESSION_HEIGHT)?,
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §9.1.
    pub fn validate(&self) -> Result<(), Error> {
        check_dimension("width", self.width)?;
        check_dimension("height", self.height)?;
        check_dimension("session_width", self.session_width)?;
        check_dimension("session_height", self.session_height)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..8]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, Self::LEN)?;
        put_u16(buf, field::WIDTH, self.width)?;
        put_u16(buf, field::HEIGHT, self.height)?;
        put_u16(buf, field::SESSION_WIDTH, self.session_width)?;
        put_u16(buf, field::SESSION_HEIGHT, self.session_height)
    }
}

/// `ViewportRequest` (PROTOCOL.md §9.2, type 0x23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewportRequestRepr {
    /// The new viewport width, 1 ..= 8192.
    pub max_width: u16,
    /// The new viewport height, 1 ..= 8192.
    pub max_height: u16,
}

impl ViewportRequestRepr {
    /// Body length.
    pub const LEN: usize = field::HEIGHT.end;

    /// Parses a `ViewportRequest` body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        let repr = ViewportRequestRepr {
            max_width: get_u16(body, field::WIDTH)?,
            max_height: get_u16(body, field::HEIGHT)?,
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §9.2.
    pub fn validate(&self) -> Result<(), Error> {
        check_dimension("max_width", self.max_width)?;
        check_dimension("max_height", self.max_height)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..4]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, Self::LEN)?;
        put_u16(buf, field::WIDTH, self.max_width)?;
        put_u16(buf, field::HEIGHT, self.max_height)
    }
}

/// The framebuffer size a server gives a client whose viewport is
/// `max_width` × `max_height` for a session of `session_width` ×
/// `session_height` (PROTOCOL.md §9): the session's size when it fits,
/// otherwise the largest size with the same aspect ratio that does (never
/// scaled up, never 0).
pub fn fit_viewport(
    session_width: u16,
    session_height: u16,
    max_width: u16,
    max_height: u16,
) -> (u16, u16) {
    let (sw, sh) = (
        u64::from(session_width.max(1)),
        u64::from(session_height.max(1)),
    );
    let (mw, mh) = (u64::from(max_width.max(1)), u64::from(max_height.max(1)));
    if sw <= mw && sh <= mh {
        return (session_width.max(1), session_height.max(1));
    }
    // Scale by min(mw / sw, mh / sh), compared without division.
    let (w, h) = if mw * sh <= mh * sw {
        (mw, (sh * mw / sw).max(1))
    } else {
        ((sw * mh / sh).max(1), mh)
    };
    (
        u16::try_from(w).unwrap_or(max_width),
        u16::try_from(h).unwrap_or(max_height),
    )
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn framebuffer_size_bytes() {
        let size = FramebufferSizeRepr {
            width: 640,
            height: 480,
            session_width: 1280,
            session_height: 960,
        };
        let mut buf = [0; 8];
        size.emit(&mut buf).unwrap();
        assert_eq!(buf, [0x80, 2, 0xe0, 1, 0, 5, 0xc0, 3]);
        assert_eq!(FramebufferSizeRepr::parse(&buf), Ok(size));
        assert!(FramebufferSizeRepr::parse(&[0; 8]).is_err());
        assert!(ViewportRequestRepr::parse(&[0, 0x21, 1, 0]).is_err());
    }

    #[test]
    fn fitting() {
        assert_eq!(fit_viewport(1024, 768, 8192, 8192), (1024, 768));
        assert_eq!(fit_viewport(1024, 768, 512, 512), (512, 384));
        assert_eq!(fit_viewport(1024, 768, 2000, 384), (512, 384));
        assert_eq!(fit_viewport(8192, 1, 100, 100), (100, 1));
        assert_eq!(fit_viewport(1, 8192, 100, 100), (1, 100));
    }
}
