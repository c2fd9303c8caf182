//! COPY: move a framebuffer area (PROTOCOL.md §5.2, type 0x13).

use super::wire::{check_room, expect_end, get_u16, put_u16, Field};
use super::{EmitError, Error, Rect};

mod field {
    use super::Field;

    pub(super) const SRC_X: Field = 0..2;
    pub(super) const SRC_Y: Field = 2..4;
    pub(super) const DST_X: Field = 4..6;
    pub(super) const DST_Y: Field = 6..8;
    pub(super) const W: Field = 8..10;
    pub(super) const H: Field = 10..12;
}

/// COPY (PROTOCOL.md §5.2): the area `w` × `h` at `(src_x, src_y)` moves to
/// `(dst_x, dst_y)`, overlapping or not (like `memmove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyRepr {
    /// Source left.
    pub src_x: u16,
    /// Source top.
    pub src_y: u16,
    /// Destination left.
    pub dst_x: u16,
    /// Destination top.
    pub dst_y: u16,
    /// Width, ≥ 1.
    pub w: u16,
    /// Height, ≥ 1.
    pub h: u16,
}

impl CopyRepr {
    /// Body length.
    pub const LEN: usize = field::H.end;

    /// The source area.
    pub fn src(&self) -> Rect {
        Rect::new(self.src_x, self.src_y, self.w, self.h)
    }

    /// The destination area.
    pub fn dst(&self) -> Rect {
        Rect::new(self.dst_x, self.dst_y, self.w, self.h)
    }

    /// Parses a COPY body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        let repr = CopyRepr {
            src_x: get_u16(body, field::SRC_X)?,
            src_y: get_u16(body, field::SRC_Y)?,
            dst_x: get_u16(body, field::DST_X)?,
            dst_y: get_u16(body, field::DST_Y)?,
            w: get_u16(body, field::W)?,
            h: get_u16(body, field::H)?,
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §5.2 (both areas are rectangles).
    pub fn validate(&self) -> Result<(), Error> {
        self.src().validate()?;
        self.dst().validate()
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..12]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, Self::LEN)?;
        put_u16(buf, field::SRC_X, self.src_x)?;
        put_u16(buf, field::SRC_Y, self.src_y)?;
        put_u16(buf, field::DST_X, self.dst_x)?;
        put_u16(buf, field::DST_Y, self.dst_y)?;
        put_u16(buf, field::W, self.w)?;
        put_u16(buf, field::H, self.h)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let copy = CopyRepr {
            src_x: 1,
            src_y: 2,
            dst_x: 3,
            dst_y: 4,
            w: 5,
            h: 6,
        };
        let mut buf = [0; 12];
        copy.emit(&mut buf).unwrap();
        assert_eq!(buf, [1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0]);
        assert_eq!(CopyRepr::parse(&buf), Ok(copy));
        buf[8] = 0;
        assert!(matches!(CopyRepr::parse(&buf), Err(Error::EmptyRect(_))));
        assert!(CopyRepr::parse(&buf[..11]).is_err());
    }
}
