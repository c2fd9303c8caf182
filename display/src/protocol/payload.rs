//! Payloads: pixel data, bitmaps, tiles, cursor images and video planes,
//! `plain`, one LZ4 block or `delta` (PROTOCOL.md §1, Payloads).

use std::borrow::Cow;

use super::wire::as_u64;
use super::{Error, MAX_BODY_LEN};

/// How a payload's bytes are encoded (the `encoding` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Encoding {
    /// The decoded bytes themselves.
    #[default]
    Plain = 0,
    /// One LZ4 block (no frame, no size prefix, no checksum).
    Lz4 = 1,
    /// Each byte minus the byte 4 before it (mod 256): for pixels, the same
    /// channel of the pixel before. Only with `ZSTD` in force.
    Delta = 2,
}

impl Encoding {
    /// Parses the `encoding` byte.
    pub fn from_u8(value: u8) -> Result<Self, Error> {
        match value {
            0 => Ok(Encoding::Plain),
            1 => Ok(Encoding::Lz4),
            2 => Ok(Encoding::Delta),
            other => Err(Error::UnknownEncoding(other)),
        }
    }
}

/// A payload as it is on the wire: borrowed from a received body, or owned by
/// a sender.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload<'a> {
    /// The encoding of `data`.
    pub encoding: Encoding,
    /// The bytes on the wire.
    pub data: Cow<'a, [u8]>,
}

/// Why a payload did not decode (PROTOCOL.md §10, `bad_payload`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The LZ4 block is corrupt or decodes to more than the decoded size.
    #[error("{field}: lz4 block does not decode: {reason}")]
    Lz4 {
        /// The payload, as PROTOCOL.md names it.
        field: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The payload decodes to fewer bytes than its command needs.
    #[error("{field}: decodes to {len} bytes, expected {expected}")]
    Length {
        /// The payload, as PROTOCOL.md names it.
        field: &'static str,
        /// Bytes decoded.
        len: usize,
        /// The decoded size its command fixes.
        expected: usize,
    },
}

impl<'a> Payload<'a> {
    /// An uncompressed payload.
    pub fn plain(data: impl Into<Cow<'a, [u8]>>) -> Self {
        Payload {
            encoding: Encoding::Plain,
            data: data.into(),
        }
    }

    /// A payload of the encoding given.
    pub fn new(encoding: Encoding, data: impl Into<Cow<'a, [u8]>>) -> Self {
        Payload {
            encoding,
            data: data.into(),
        }
    }

    /// Compresses `decoded` into one LZ4 block, even when that is larger (for
    /// the three planes of a VIDEO frame, which share one encoding).
    pub fn lz4(decoded: &[u8]) -> Payload<'static> {
        Payload::new(Encoding::Lz4, lz4_flex::block::compress(decoded))
    }

    /// Compresses `decoded` with LZ4, or keeps it plain when that is not
    /// smaller (what senders do, PROTOCOL.md §1).
    pub fn compress(decoded: &[u8]) -> Payload<'static> {
        let block = lz4_flex::block::compress(decoded);
        if block.len() < decoded.len() {
            Payload::new(Encoding::Lz4, block)
        } else {
            Payload::plain(decoded.to_vec())
        }
    }

    /// `decoded` as a `delta` payload: every byte from the fifth on minus
    /// the byte 4 before it (mod 256), the first 4 as they are.
    pub fn delta(decoded: &[u8]) -> Payload<'static> {
        let mut data = decoded.to_vec();
        for (i, d) in data.iter_mut().enumerate().skip(DELTA_STRIDE) {
            *d = d.wrapping_sub(decoded.get(i - DELTA_STRIDE).copied().unwrap_or(0));
        }
        Payload::new(Encoding::Delta, data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> Payload<'static> {
        Payload {
            encoding: self.encoding,
            data: Cow::Owned(self.data.into_owned()),
        }
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are no bytes on the wire.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Checks what can be checked without decoding: a plain payload is
    /// exactly `decoded_len` bytes.
    pub(crate) fn validate(&self, field: &'static str, decoded_len: usize) -> Result<(), Error> {
        if self.encoding != Encoding::Lz4 && self.data.len() != decoded_len {
            return Err(Error::PayloadLength {
                field,
                len: self.data.len(),
                expected: decoded_len,
            });
        }
        Ok(())
    }

    /// The decoded bytes, exactly `decoded_len` of them: the data itself when
    /// plain, else decoded into `scratch` (which is resized to `decoded_len`
    /// and never grows past it).
    pub fn decode<'s>(
        &'s self,
        field: &'static str,
        decoded_len: usize,
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], PayloadError> {
        match self.encoding {
            Encoding::Plain if self.data.len() == decoded_len => Ok(&self.data),
            Encoding::Plain => Err(PayloadError::Length {
                field,
                len: self.data.len(),
                expected: decoded_len,
            }),
            Encoding::Delta if self.data.len() == decoded_len => {
                scratch.clear();
                scratch.extend_from_slice(&self.data);
                for i in DELTA_STRIDE..scratch.len() {
                    let before = scratch.get(i - DELTA_STRIDE).copied().unwrap_or(0);
                    if let Some(b) = scratch.get_mut(i) {
                        *b = b.wrapping_add(before);
                    }
                }
                Ok(scratch)
            }
            Encoding::Delta => Err(PayloadError::Length {
                field,
                len: self.data.len(),
                expected: decoded_len,
            }),
            Encoding::Lz4 => {
                scratch.clear();
                scratch.resize(decoded_len, 0);
                let len = lz4_flex::block::decompress_into(&self.data, scratch).map_err(|e| {
                    PayloadError::Lz4 {
                        field,
                        reason: e.to_string(),
                    }
                })?;
                if len != decoded_len {
                    return Err(PayloadError::Length {
                        field,
                        len,
                        expected: decoded_len,
                    });
                }
                Ok(scratch)
            }
        }
    }
}

/// The distance a `delta` payload's bytes are predicted from: one pixel.
const DELTA_STRIDE: usize = 4;

/// `a × b × c` as the decoded size of a payload, refused above `MAX_BODY_LEN`.
pub(crate) fn decoded_size(field: &'static str, dims: &[usize]) -> Result<usize, Error> {
    let size = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(as_u64(d)))
        .unwrap_or(u64::MAX);
    let max = as_u64(MAX_BODY_LEN);
    if size > max {
        return Err(Error::PayloadTooLarge { field, size, max });
    }
    usize::try_from(size).map_err(|_| Error::PayloadTooLarge { field, size, max })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn compress_picks_the_smaller() {
        let flat = vec![7u8; 4096];
        let payload = Payload::compress(&flat);
        assert_eq!(payload.encoding, Encoding::Lz4);
        assert!(payload.len() < 100);
        let mut scratch = Vec::new();
        assert_eq!(
            payload.decode("data", 4096, &mut scratch).unwrap(),
            &flat[..]
        );

        let noise: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(Payload::compress(&noise).encoding, Encoding::Plain);
    }

    #[test]
    fn delta_round_trips_and_is_exact() {
        let pixels: Vec<u8> = (0..4000u32).map(|i| (i * 37 % 251) as u8).collect();
        let payload = Payload::delta(&pixels);
        assert_eq!(payload.encoding, Encoding::Delta);
        assert_eq!(payload.len(), pixels.len());
        assert_eq!(&payload.data[..4], &pixels[..4]);
        // A pixel equal to the one before is four zeros.
        let flat = Payload::delta(&[9, 8, 7, 0, 9, 8, 7, 0, 10, 8, 6, 0]);
        assert_eq!(&flat.data[..], [9, 8, 7, 0, 0, 0, 0, 0, 1, 0, 255, 0]);
        let mut scratch = Vec::new();
        assert_eq!(
            payload.decode("data", 4000, &mut scratch).unwrap(),
            &pixels[..]
        );
        assert!(matches!(
            payload.decode("data", 4001, &mut scratch),
            Err(PayloadError::Length { .. })
        ));
        assert!(payload.validate("data", 3999).is_err());
        // Shorter than the stride.
        let short = Payload::delta(&[1, 2]);
        assert_eq!(short.decode("data", 2, &mut scratch).unwrap(), [1, 2]);
    }

    #[test]
    fn decode_is_exact() {
        let block = lz4_flex::block::compress(&[1u8; 100]);
        let payload = Payload::new(Encoding::Lz4, block);
        let mut scratch = Vec::new();
        // Too small an output: an error, not a larger allocation.
        assert!(matches!(
            payload.decode("data", 99, &mut scratch),
            Err(PayloadError::Lz4 { .. })
        ));
        assert_eq!(scratch.len(), 99);
        // Too large an output: the block ends short.
        assert!(payload.decode("data", 101, &mut scratch).is_err());
        assert!(payload.decode("data", 100, &mut scratch).is_ok());
        // Garbage.
        let junk = Payload::new(Encoding::Lz4, vec![0xff; 10]);
        assert!(junk.decode("data", 100, &mut scratch).is_err());
        let plain = Payload::plain(vec![0; 3]);
        assert!(plain.decode("data", 4, &mut scratch).is_err());
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(decoded_size("data", &[2048, 2048, 4]), Ok(1 << 24));
        assert!(decoded_size("data", &[2048, 2049, 4]).is_err());
        assert!(decoded_size("data", &[usize::MAX, 2]).is_err());
        assert_eq!(Encoding::from_u8(3), Err(Error::UnknownEncoding(3)));
    }
}
