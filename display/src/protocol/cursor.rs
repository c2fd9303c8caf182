//! CURSOR: the cursor's shape and position, drawn by the client
//! (PROTOCOL.md §7, types 0x19 and 0x1a).

use std::borrow::Cow;

use super::wire::{
    check_range, check_room, expect_end, get_u16, get_u8, put, put_u16, put_u8, rest, Field,
};
use super::{EmitError, Encoding, Error, Payload, MAX_CURSOR_DIMENSION};

mod field {
    use super::Field;

    pub(super) const W: Field = 0..2;
    pub(super) const H: Field = 2..4;
    pub(super) const HOT_X: Field = 4..6;
    pub(super) const HOT_Y: Field = 6..8;
    pub(super) const ENCODING: usize = 8;
    pub(super) const PIXELS: usize = 9;

    pub(super) const X: Field = 0..2;
    pub(super) const Y: Field = 2..4;
}

/// CURSOR_SHAPE (PROTOCOL.md §7.1): a `w × h` premultiplied BGRA image with
/// its hotspot; `w = h = 0` hides the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorShapeRepr<'a> {
    /// Width, 0 ..= 256.
    pub w: u16,
    /// Height, 0 ..= 256.
    pub h: u16,
    /// Hotspot x, `< w`.
    pub hot_x: u16,
    /// Hotspot y, `< h`.
    pub hot_y: u16,
    /// Decoded size `w × h × 4`: B, G, R, A per pixel, premultiplied.
    pub pixels: Payload<'a>,
}

impl<'a> CursorShapeRepr<'a> {
    /// Body length without the pixels.
    pub const HEADER_LEN: usize = field::PIXELS;

    /// A hidden cursor.
    pub fn hidden() -> CursorShapeRepr<'static> {
        CursorShapeRepr {
            w: 0,
            h: 0,
            hot_x: 0,
            hot_y: 0,
            pixels: Payload::plain(Vec::new()),
        }
    }

    /// Whether this hides the cursor.
    pub fn is_hidden(&self) -> bool {
        self.w == 0 && self.h == 0
    }

    /// The decoded size of the pixels.
    pub fn decoded_len(&self) -> usize {
        usize::from(self.w) * usize::from(self.h) * 4
    }

    /// Parses a CURSOR_SHAPE body (pixels are borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let encoding = Encoding::from_u8(get_u8(body, field::ENCODING)?)?;
        let repr = CursorShapeRepr {
            w: get_u16(body, field::W)?,
            h: get_u16(body, field::H)?,
            hot_x: get_u16(body, field::HOT_X)?,
            hot_y: get_u16(body, field::HOT_Y)?,
            pixels: Payload::new(encoding, Cow::Borrowed(rest(body, field::PIXELS)?)),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §7.1.
    pub fn validate(&self) -> Result<(), Error> {
        let max = u64::from(MAX_CURSOR_DIMENSION);
        if self.is_hidden() {
            if self.hot_x != 0 || self.hot_y != 0 || self.pixels != Payload::default() {
                return Err(Error::HiddenCursorData);
            }
            return Ok(());
        }
        check_range("w", u64::from(self.w), 1, max)?;
        check_range("h", u64::from(self.h), 1, max)?;
        if self.hot_x >= self.w || self.hot_y >= self.h {
            return Err(Error::HotspotOutside {
                x: self.hot_x,
                y: self.hot_y,
                w: self.w,
                h: self.h,
            });
        }
        self.pixels.validate("pixels", self.decoded_len())
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.pixels.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u16(buf, field::W, self.w)?;
        put_u16(buf, field::H, self.h)?;
        put_u16(buf, field::HOT_X, self.hot_x)?;
        put_u16(buf, field::HOT_Y, self.hot_y)?;
        put_u8(buf, field::ENCODING, self.pixels.encoding as u8)?;
        put(buf, field::PIXELS, &self.pixels.data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> CursorShapeRepr<'static> {
        CursorShapeRepr {
            pixels: self.pixels.into_owned(),
            ..self
        }
    }
}

/// CURSOR_POSITION (PROTOCOL.md §7.2): where the pointer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CursorPositionRepr {
    /// Framebuffer x (may be outside the framebuffer).
    pub x: u16,
    /// Framebuffer y.
    pub y: u16,
}

impl CursorPositionRepr {
    /// Body length.
    pub const LEN: usize = field::Y.end;

    /// Parses a CURSOR_POSITION body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        Ok(CursorPositionRepr {
            x: get_u16(body, field::X)?,
            y: get_u16(body, field::Y)?,
        })
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..4]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        check_room(buf, Self::LEN)?;
        put_u16(buf, field::X, self.x)?;
        put_u16(buf, field::Y, self.y)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let shape = CursorShapeRepr {
            w: 1,
            h: 1,
            hot_x: 0,
            hot_y: 0,
            pixels: Payload::plain(vec![1, 2, 3, 0xff]),
        };
        let mut buf = vec![0; shape.buffer_len()];
        shape.emit(&mut buf).unwrap();
        assert_eq!(buf, [1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0xff]);
        assert_eq!(CursorShapeRepr::parse(&buf), Ok(shape));
        buf[4] = 1;
        assert!(matches!(
            CursorShapeRepr::parse(&buf),
            Err(Error::HotspotOutside { .. })
        ));
    }

    #[test]
    fn hidden() {
        let hidden = CursorShapeRepr::hidden();
        let mut buf = vec![0; hidden.buffer_len()];
        hidden.emit(&mut buf).unwrap();
        assert_eq!(buf, [0; 9]);
        assert_eq!(CursorShapeRepr::parse(&buf), Ok(hidden));
        assert_eq!(
            CursorShapeRepr::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Err(Error::HiddenCursorData)
        );
        // 0 × 1 is neither hidden nor a cursor.
        assert!(CursorShapeRepr::parse(&[0, 0, 1, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(CursorShapeRepr::parse(&[0x01, 0x01, 1, 0, 0, 0, 0, 0, 1, 0]).is_err());
    }
}
