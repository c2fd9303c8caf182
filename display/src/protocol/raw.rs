//! RAW: pixels at a place (PROTOCOL.md §5.1, type 0x12).

use std::borrow::Cow;

use super::payload::decoded_size;
use super::wire::{check_room, get, get_u8, put, put_u8, rest, Field};
use super::{EmitError, Encoding, Error, Payload, Rect};

mod field {
    use super::Field;

    pub(super) const RECT: Field = 0..8;
    pub(super) const ENCODING: usize = 8;
    pub(super) const DATA: usize = 9;
}

/// RAW (PROTOCOL.md §5.1): `rect.w × rect.h` BGRX pixels, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRepr<'a> {
    /// Where the pixels go; at most `MAX_RAW_PIXELS` of them.
    pub rect: Rect,
    /// The pixels, decoded size `w × h × 4`.
    pub data: Payload<'a>,
}

impl<'a> RawRepr<'a> {
    /// Body length without the data.
    pub const HEADER_LEN: usize = field::DATA;

    /// Parses a RAW body (the data is borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let rect = Rect::parse(get(body, field::RECT)?)?;
        let encoding = Encoding::from_u8(get_u8(body, field::ENCODING)?)?;
        let repr = RawRepr {
            rect,
            data: Payload::new(encoding, Cow::Borrowed(rest(body, field::DATA)?)),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// The decoded size of the data, `w × h × 4`.
    pub fn decoded_len(&self) -> Result<usize, Error> {
        decoded_size(
            "data",
            &[usize::from(self.rect.w), usize::from(self.rect.h), 4],
        )
    }

    /// Checks the limits of PROTOCOL.md §5.1.
    pub fn validate(&self) -> Result<(), Error> {
        self.rect.validate()?;
        self.data.validate("data", self.decoded_len()?)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.data.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        self.rect.emit(buf)?;
        put_u8(buf, field::ENCODING, self.data.encoding as u8)?;
        put(buf, field::DATA, &self.data.data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> RawRepr<'static> {
        RawRepr {
            rect: self.rect,
            data: self.data.into_owned(),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let raw = RawRepr {
            rect: Rect::new(1, 2, 1, 1),
            data: Payload::plain(vec![0xaa, 0xbb, 0xcc, 0]),
        };
        let mut buf = vec![0; raw.buffer_len()];
        raw.emit(&mut buf).unwrap();
        assert_eq!(buf, [1, 0, 2, 0, 1, 0, 1, 0, 0, 0xaa, 0xbb, 0xcc, 0]);
        assert_eq!(RawRepr::parse(&buf), Ok(raw));
        // One byte short of a pixel.
        assert!(matches!(
            RawRepr::parse(&buf[..12]),
            Err(Error::PayloadLength { .. })
        ));
        buf[8] = 3;
        assert_eq!(RawRepr::parse(&buf), Err(Error::UnknownEncoding(3)));
    }

    #[test]
    fn size_limit() {
        let raw = RawRepr {
            rect: Rect::new(0, 0, 2048, 2049),
            data: Payload::new(Encoding::Lz4, vec![0]),
        };
        assert!(matches!(raw.validate(), Err(Error::PayloadTooLarge { .. })));
    }
}
