//! BITMAP: fill through a 1-bit mask (PROTOCOL.md §5.4, type 0x15).

use std::borrow::Cow;

use super::payload::decoded_size;
use super::wire::{
    check_reserved, check_room, get, get_u32, get_u8, put, put_u32, put_u8, rest, Field,
};
use super::{EmitError, Encoding, Error, Payload, Rect};

mod field {
    use super::Field;

    pub(super) const RECT: Field = 0..8;
    pub(super) const FG: Field = 8..12;
    pub(super) const BG: Field = 12..16;
    pub(super) const FLAGS: usize = 16;
    pub(super) const ENCODING: usize = 17;
    pub(super) const BITS: usize = 18;
}

const OPAQUE: u8 = 1 << 0;

/// BITMAP (PROTOCOL.md §5.4): 1 bits paint `fg`, 0 bits paint `bg` or, when
/// it is `None`, leave the pixel as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapRepr<'a> {
    /// The area the mask covers.
    pub rect: Rect,
    /// BGRX colour of the 1 bits.
    pub fg: u32,
    /// BGRX colour of the 0 bits, or `None` for transparent.
    pub bg: Option<u32>,
    /// The mask, decoded size `ceil(w / 8) × h`, most significant bit leftmost.
    pub bits: Payload<'a>,
}

impl<'a> BitmapRepr<'a> {
    /// Body length without the mask.
    pub const HEADER_LEN: usize = field::BITS;

    /// Bytes per row of the mask.
    pub fn stride(&self) -> usize {
        usize::from(self.rect.w).div_ceil(8)
    }

    /// The decoded size of the mask.
    pub fn decoded_len(&self) -> Result<usize, Error> {
        decoded_size("bits", &[self.stride(), usize::from(self.rect.h)])
    }

    /// Parses a BITMAP body (the mask is borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let rect = Rect::parse(get(body, field::RECT)?)?;
        let flags = get_u8(body, field::FLAGS)?;
        check_reserved("flags", u32::from(flags), u32::from(OPAQUE))?;
        let encoding = Encoding::from_u8(get_u8(body, field::ENCODING)?)?;
        let bg = get_u32(body, field::BG)?;
        let repr = BitmapRepr {
            rect,
            fg: get_u32(body, field::FG)?,
            bg: (flags & OPAQUE != 0).then_some(bg),
            bits: Payload::new(encoding, Cow::Borrowed(rest(body, field::BITS)?)),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §5.4.
    pub fn validate(&self) -> Result<(), Error> {
        self.rect.validate()?;
        self.bits.validate("bits", self.decoded_len()?)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.bits.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        self.rect.emit(buf)?;
        put_u32(buf, field::FG, self.fg)?;
        put_u32(buf, field::BG, self.bg.unwrap_or(0))?;
        put_u8(
            buf,
            field::FLAGS,
            if self.bg.is_some() { OPAQUE } else { 0 },
        )?;
        put_u8(buf, field::ENCODING, self.bits.encoding as u8)?;
        put(buf, field::BITS, &self.bits.data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> BitmapRepr<'static> {
        BitmapRepr {
            bits: self.bits.into_owned(),
            ..self
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn bytes() {
        let bitmap = BitmapRepr {
            rect: Rect::new(0, 0, 9, 2),
            fg: 0x00ff_ffff,
            bg: None,
            bits: Payload::plain(vec![0x80, 0x80, 0xff, 0x00]),
        };
        let mut buf = vec![0; bitmap.buffer_len()];
        bitmap.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [0, 0, 0, 0, 9, 0, 2, 0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x80, 0xff, 0]
        );
        assert_eq!(BitmapRepr::parse(&buf), Ok(bitmap.clone()));
        // A transparent bitmap's bg is ignored.
        buf[12] = 1;
        assert_eq!(BitmapRepr::parse(&buf), Ok(bitmap));
        buf[16] = 1;
        assert_eq!(BitmapRepr::parse(&buf).unwrap().bg, Some(1));
        buf[16] = 2;
        assert!(matches!(
            BitmapRepr::parse(&buf),
            Err(Error::ReservedBits { .. })
        ));
        buf[16] = 0;
        assert!(matches!(
            BitmapRepr::parse(&buf[..21]),
            Err(Error::PayloadLength { .. })
        ));
    }
}
