//! Little-endian field access for parsers and emitters.
//!
//! Readers take untrusted bytes and never panic: a field past the end of the
//! body is [`Error::Truncated`]. Writers check the buffer too
//! ([`EmitError::BufferTooSmall`]), so a wrong `buffer_len` is an error, not
//! a panic.

use core::ops::Range;

use super::{EmitError, Error};

/// A byte range inside a message body (`mod field` in each message file).
pub(crate) type Field = Range<usize>;

pub(crate) fn get(buf: &[u8], field: Field) -> Result<&[u8], Error> {
    let need = field.end;
    buf.get(field).ok_or(Error::Truncated {
        need,
        len: buf.len(),
    })
}

fn get_array<const N: usize>(buf: &[u8], field: Field) -> Result<[u8; N], Error> {
    let bytes = get(buf, field.start..field.start.saturating_add(N))?;
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

pub(crate) fn get_u8(buf: &[u8], at: usize) -> Result<u8, Error> {
    get_array::<1>(buf, at..at + 1).map(|[b]| b)
}

pub(crate) fn get_u16(buf: &[u8], field: Field) -> Result<u16, Error> {
    get_array(buf, field).map(u16::from_le_bytes)
}

pub(crate) fn get_i16(buf: &[u8], field: Field) -> Result<i16, Error> {
    get_array(buf, field).map(i16::from_le_bytes)
}

pub(crate) fn get_u32(buf: &[u8], field: Field) -> Result<u32, Error> {
    get_array(buf, field).map(u32::from_le_bytes)
}

pub(crate) fn get_u64(buf: &[u8], field: Field) -> Result<u64, Error> {
    get_array(buf, field).map(u64::from_le_bytes)
}

/// Everything from `start` to the end of the body (empty when `start` is the
/// end; [`Error::Truncated`] when it is past it).
pub(crate) fn rest(buf: &[u8], start: usize) -> Result<&[u8], Error> {
    buf.get(start..).ok_or(Error::Truncated {
        need: start,
        len: buf.len(),
    })
}

/// The body must end at `end`.
pub(crate) fn expect_end(buf: &[u8], end: usize) -> Result<(), Error> {
    match buf.len().checked_sub(end) {
        Some(0) => Ok(()),
        Some(extra) => Err(Error::TrailingBytes { extra }),
        None => Err(Error::Truncated {
            need: end,
            len: buf.len(),
        }),
    }
}

/// Fails unless `buf` holds at least `need` bytes (called first by every
/// `emit`).
pub(crate) fn check_room(buf: &[u8], need: usize) -> Result<(), EmitError> {
    if buf.len() < need {
        return Err(EmitError::BufferTooSmall {
            need,
            have: buf.len(),
        });
    }
    Ok(())
}

pub(crate) fn put(buf: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), EmitError> {
    let have = buf.len();
    let end = at.saturating_add(bytes.len());
    let dst = buf
        .get_mut(at..end)
        .ok_or(EmitError::BufferTooSmall { need: end, have })?;
    dst.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn put_u8(buf: &mut [u8], at: usize, value: u8) -> Result<(), EmitError> {
    put(buf, at, &[value])
}

pub(crate) fn put_u16(buf: &mut [u8], field: Field, value: u16) -> Result<(), EmitError> {
    put(buf, field.start, &value.to_le_bytes())
}

pub(crate) fn put_i16(buf: &mut [u8], field: Field, value: i16) -> Result<(), EmitError> {
    put(buf, field.start, &value.to_le_bytes())
}

pub(crate) fn put_u32(buf: &mut [u8], field: Field, value: u32) -> Result<(), EmitError> {
    put(buf, field.start, &value.to_le_bytes())
}

pub(crate) fn put_u64(buf: &mut [u8], field: Field, value: u64) -> Result<(), EmitError> {
    put(buf, field.start, &value.to_le_bytes())
}

/// `value` must lie in `min..=max`.
pub(crate) fn check_range(
    field: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), Error> {
    if value < min || value > max {
        return Err(Error::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// `value` may only use the bits in `allowed`.
pub(crate) fn check_reserved(field: &'static str, value: u32, allowed: u32) -> Result<(), Error> {
    if value & !allowed != 0 {
        return Err(Error::ReservedBits { field, value });
    }
    Ok(())
}

pub(crate) fn as_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

pub(crate) fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn reads_past_the_end_are_errors() {
        let buf = [1, 2, 3];
        assert_eq!(get_u16(&buf, 0..2), Ok(0x0201));
        assert_eq!(
            get_u16(&buf, 2..4),
            Err(Error::Truncated { need: 4, len: 3 })
        );
        assert!(get_u64(&buf, usize::MAX - 1..usize::MAX).is_err());
        assert_eq!(rest(&buf, 3), Ok(&[][..]));
        assert!(rest(&buf, 4).is_err());
        assert_eq!(expect_end(&buf, 2), Err(Error::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn writes_past_the_end_are_errors() {
        let mut buf = [0; 3];
        assert!(put_u16(&mut buf, 0..2, 0xabcd).is_ok());
        assert_eq!(buf, [0xcd, 0xab, 0]);
        assert_eq!(
            put_u32(&mut buf, 0..4, 1),
            Err(EmitError::BufferTooSmall { need: 4, have: 3 })
        );
        assert!(put(&mut buf, usize::MAX, &[1]).is_err());
    }
}
