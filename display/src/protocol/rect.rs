//! Rectangles, the coordinate type of every display command
//! (PROTOCOL.md §1, Conventions).

use core::fmt;

use super::wire::{get_u16, put_u16, Field};
use super::{EmitError, Error, MAX_DIMENSION};

mod field {
    use super::Field;

    pub(super) const X: Field = 0..2;
    pub(super) const Y: Field = 2..4;
    pub(super) const W: Field = 4..6;
    pub(super) const H: Field = 6..8;
}

/// A non-empty rectangle with `x + w` and `y + h` at most `MAX_DIMENSION`
/// (8 bytes on the wire: x, y, w, h as `u16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width, ≥ 1.
    pub w: u16,
    /// Height, ≥ 1.
    pub h: u16,
}

impl Rect {
    /// Bytes on the wire.
    pub const LEN: usize = 8;

    /// A rectangle; not checked (see [`Rect::validate`]).
    pub const fn new(x: u16, y: u16, w: u16, h: u16) -> Self {
        Rect { x, y, w, h }
    }

    /// Parses and validates the 8 bytes at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let rect = Rect {
            x: get_u16(buf, field::X)?,
            y: get_u16(buf, field::Y)?,
            w: get_u16(buf, field::W)?,
            h: get_u16(buf, field::H)?,
        };
        rect.validate()?;
        Ok(rect)
    }

    /// Writes the rectangle into the first 8 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        put_u16(buf, field::X, self.x)?;
        put_u16(buf, field::Y, self.y)?;
        put_u16(buf, field::W, self.w)?;
        put_u16(buf, field::H, self.h)
    }

    /// Checks the limits of PROTOCOL.md §1.
    pub fn validate(&self) -> Result<(), Error> {
        if self.w == 0 || self.h == 0 {
            return Err(Error::EmptyRect(*self));
        }
        if self.right() > usize::from(MAX_DIMENSION) || self.bottom() > usize::from(MAX_DIMENSION) {
            return Err(Error::RectTooLarge(*self));
        }
        Ok(())
    }

    /// One past the rightmost column.
    pub fn right(&self) -> usize {
        usize::from(self.x) + usize::from(self.w)
    }

    /// One past the bottom row.
    pub fn bottom(&self) -> usize {
        usize::from(self.y) + usize::from(self.h)
    }

    /// The number of pixels.
    pub fn area(&self) -> usize {
        usize::from(self.w) * usize::from(self.h)
    }

    /// Whether `self` and `other` share a pixel.
    pub fn overlaps(&self, other: &Rect) -> bool {
        usize::from(self.x) < other.right()
            && usize::from(other.x) < self.right()
            && usize::from(self.y) < other.bottom()
            && usize::from(other.y) < self.bottom()
    }

    /// Whether every pixel of `inner` is in `self`.
    pub fn contains(&self, inner: &Rect) -> bool {
        self.x <= inner.x
            && self.y <= inner.y
            && inner.right() <= self.right()
            && inner.bottom() <= self.bottom()
    }

    /// Whether the rectangle lies inside a `width` × `height` framebuffer.
    pub fn fits(&self, width: u16, height: u16) -> bool {
        self.right() <= usize::from(width) && self.bottom() <= usize::from(height)
    }
}

impl fmt::Display for Rect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}+{}+{}", self.w, self.h, self.x, self.y)
    }
}

/// Parses `count` rectangles laid out back to back from `buf[start..]`.
pub(crate) fn parse_rects(buf: &[u8], start: usize, count: usize) -> Result<Vec<Rect>, Error> {
    let end = start + count * Rect::LEN;
    let bytes = super::wire::get(buf, start..end)?;
    bytes.chunks_exact(Rect::LEN).map(Rect::parse).collect()
}

/// Writes `rects` back to back from `buf[start..]`.
pub(crate) fn emit_rects(buf: &mut [u8], start: usize, rects: &[Rect]) -> Result<(), EmitError> {
    for (i, rect) in rects.iter().enumerate() {
        let at = start + i * Rect::LEN;
        let dst = buf.get_mut(at..).ok_or(EmitError::BufferTooSmall {
            need: at + Rect::LEN,
            have: at,
        })?;
        rect.emit(dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn round_trip() {
        let rect = Rect::new(1, 2, 300, 4);
        let mut buf = [0; 8];
        rect.emit(&mut buf).unwrap();
        assert_eq!(buf, [1, 0, 2, 0, 0x2c, 1, 4, 0]);
        assert_eq!(Rect::parse(&buf), Ok(rect));
    }

    #[test]
    fn limits() {
        assert_eq!(
            Rect::new(0, 0, 0, 1).validate(),
            Err(Error::EmptyRect(Rect::new(0, 0, 0, 1)))
        );
        assert!(Rect::new(8191, 0, 1, 1).validate().is_ok());
        assert!(Rect::new(8191, 0, 2, 1).validate().is_err());
        assert!(Rect::new(0, 65535, 1, 65535).validate().is_err());
        assert!(Rect::parse(&[0; 7]).is_err());
        assert!(Rect::new(0, 0, 4, 4).fits(4, 4));
        assert!(!Rect::new(1, 0, 4, 4).fits(4, 4));
    }
}
