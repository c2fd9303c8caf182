//! SFILL: solid fill of rectangles (PROTOCOL.md §5.3, type 0x14).

use super::rect::{emit_rects, parse_rects};
use super::wire::{check_range, check_room, expect_end, get_u16, get_u32, put_u16, put_u32, Field};
use super::{EmitError, Error, Rect};

mod field {
    use super::Field;

    pub(super) const COLOUR: Field = 0..4;
    pub(super) const COUNT: Field = 4..6;
    pub(super) const RECTS: usize = 6;
}

/// SFILL (PROTOCOL.md §5.3): `rects` filled with `colour`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SFillRepr {
    /// BGRX.
    pub colour: u32,
    /// 1 ..= 65 535 rectangles.
    pub rects: Vec<Rect>,
}

impl SFillRepr {
    /// Body length without the rectangles.
    pub const HEADER_LEN: usize = field::RECTS;

    /// Parses an SFILL body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let count = get_u16(body, field::COUNT)?;
        check_range("count", u64::from(count), 1, u64::from(u16::MAX))?;
        let count = usize::from(count);
        expect_end(body, field::RECTS + count * Rect::LEN)?;
        Ok(SFillRepr {
            colour: get_u32(body, field::COLOUR)?,
            rects: parse_rects(body, field::RECTS, count)?,
        })
    }

    /// Checks the limits of PROTOCOL.md §5.3.
    pub fn validate(&self) -> Result<(), Error> {
        let count = super::wire::as_u64(self.rects.len());
        check_range("count", count, 1, u64::from(u16::MAX))?;
        self.rects.iter().try_for_each(Rect::validate)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.rects.len() * Rect::LEN
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u32(buf, field::COLOUR, self.colour)?;
        let count = u16::try_from(self.rects.len()).unwrap_or(u16::MAX);
        put_u16(buf, field::COUNT, count)?;
        emit_rects(buf, field::RECTS, &self.rects)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let fill = SFillRepr {
            colour: 0x00ff_8000,
            rects: vec![Rect::new(0, 0, 1, 1), Rect::new(2, 3, 4, 5)],
        };
        let mut buf = vec![0; fill.buffer_len()];
        fill.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [0, 0x80, 0xff, 0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0]
        );
        assert_eq!(SFillRepr::parse(&buf), Ok(fill));
        assert!(matches!(
            SFillRepr::parse(&buf[..21]),
            Err(Error::Truncated { .. })
        ));
        buf[4] = 0;
        assert!(matches!(
            SFillRepr::parse(&buf),
            Err(Error::OutOfRange { .. })
        ));
        let empty = SFillRepr {
            colour: 0,
            rects: vec![],
        };
        assert!(empty.emit(&mut buf).is_err());
    }
}
