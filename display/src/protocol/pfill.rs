//! PFILL: tile a pixmap over rectangles (PROTOCOL.md §5.5, type 0x16).

use std::borrow::Cow;

use super::payload::decoded_size;
use super::rect::{emit_rects, parse_rects};
use super::wire::{check_range, check_room, get_u16, get_u8, put, put_u16, put_u8, rest, Field};
use super::{EmitError, Encoding, Error, Payload, Rect, MAX_DIMENSION};

mod field {
    use super::Field;

    pub(super) const TILE_W: Field = 0..2;
    pub(super) const TILE_H: Field = 2..4;
    pub(super) const ORIGIN_X: Field = 4..6;
    pub(super) const ORIGIN_Y: Field = 6..8;
    pub(super) const COUNT: Field = 8..10;
    pub(super) const ENCODING: usize = 10;
    pub(super) const RECTS: usize = 11;
}

/// PFILL (PROTOCOL.md §5.5): pixel `(x, y)` of each rectangle gets tile
/// pixel `((x − origin_x) mod tile_w, (y − origin_y) mod tile_h)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PFillRepr<'a> {
    /// Tile width, 1 ..= 8192.
    pub tile_w: u16,
    /// Tile height, 1 ..= 8192.
    pub tile_h: u16,
    /// Tile origin x, `< tile_w`.
    pub origin_x: u16,
    /// Tile origin y, `< tile_h`.
    pub origin_y: u16,
    /// 1 ..= 65 535 rectangles.
    pub rects: Vec<Rect>,
    /// The tile, decoded size `tile_w × tile_h × 4`, BGRX rows.
    pub tile: Payload<'a>,
}

impl<'a> PFillRepr<'a> {
    /// Body length without rectangles and tile.
    pub const HEADER_LEN: usize = field::RECTS;

    /// The decoded size of the tile.
    pub fn decoded_len(&self) -> Result<usize, Error> {
        decoded_size(
            "tile",
            &[usize::from(self.tile_w), usize::from(self.tile_h), 4],
        )
    }

    /// Parses a PFILL body (the tile is borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let count = get_u16(body, field::COUNT)?;
        check_range("count", u64::from(count), 1, u64::from(u16::MAX))?;
        let count = usize::from(count);
        let encoding = Encoding::from_u8(get_u8(body, field::ENCODING)?)?;
        let tile_at = field::RECTS + count * Rect::LEN;
        let repr = PFillRepr {
            tile_w: get_u16(body, field::TILE_W)?,
            tile_h: get_u16(body, field::TILE_H)?,
            origin_x: get_u16(body, field::ORIGIN_X)?,
            origin_y: get_u16(body, field::ORIGIN_Y)?,
            rects: parse_rects(body, field::RECTS, count)?,
            tile: Payload::new(encoding, Cow::Borrowed(rest(body, tile_at)?)),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §5.5.
    pub fn validate(&self) -> Result<(), Error> {
        let max = u64::from(MAX_DIMENSION);
        check_range("tile_w", u64::from(self.tile_w), 1, max)?;
        check_range("tile_h", u64::from(self.tile_h), 1, max)?;
        check_range(
            "origin_x",
            u64::from(self.origin_x),
            0,
            u64::from(self.tile_w) - 1,
        )?;
        check_range(
            "origin_y",
            u64::from(self.origin_y),
            0,
            u64::from(self.tile_h) - 1,
        )?;
        let count = super::wire::as_u64(self.rects.len());
        check_range("count", count, 1, u64::from(u16::MAX))?;
        self.rects.iter().try_for_each(Rect::validate)?;
        self.tile.validate("tile", self.decoded_len()?)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.rects.len() * Rect::LEN + self.tile.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u16(buf, field::TILE_W, self.tile_w)?;
        put_u16(buf, field::TILE_H, self.tile_h)?;
        put_u16(buf, field::ORIGIN_X, self.origin_x)?;
        put_u16(buf, field::ORIGIN_Y, self.origin_y)?;
        let count = u16::try_from(self.rects.len()).unwrap_or(u16::MAX);
        put_u16(buf, field::COUNT, count)?;
        put_u8(buf, field::ENCODING, self.tile.encoding as u8)?;
        emit_rects(buf, field::RECTS, &self.rects)?;
        put(
            buf,
            field::RECTS + self.rects.len() * Rect::LEN,
            &self.tile.data,
        )
    }

    /// An owned copy.
    pub fn into_owned(self) -> PFillRepr<'static> {
        PFillRepr {
            tile: self.tile.into_owned(),
            ..self
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let fill = PFillRepr {
            tile_w: 1,
            tile_h: 2,
            origin_x: 0,
            origin_y: 1,
            rects: vec![Rect::new(4, 5, 6, 7)],
            tile: Payload::plain(vec![1, 2, 3, 0, 4, 5, 6, 0]),
        };
        let mut buf = vec![0; fill.buffer_len()];
        fill.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [1, 0, 2, 0, 0, 0, 1, 0, 1, 0, 0, 4, 0, 5, 0, 6, 0, 7, 0, 1, 2, 3, 0, 4, 5, 6, 0]
        );
        assert_eq!(PFillRepr::parse(&buf), Ok(fill));
        buf[6] = 2;
        assert!(matches!(
            PFillRepr::parse(&buf),
            Err(Error::OutOfRange {
                field: "origin_y",
                ..
            })
        ));
        buf[6] = 1;
        buf[8] = 2;
        assert!(PFillRepr::parse(&buf).is_err());
    }
}
