//! VIDEO and VIDEO_END: YUV 4:2:0 frames the client converts and scales
//! (PROTOCOL.md §6, types 0x17 and 0x18).

use std::borrow::Cow;

use super::payload::decoded_size;
use super::wire::{
    as_u32, check_range, check_room, expect_end, get, get_u32, get_u8, put, put_u32, put_u8, rest,
    Field,
};
use super::{EmitError, Encoding, Error, Payload, Rect, MAX_DIMENSION};

mod field {
    use super::Field;

    pub(super) const STREAM_ID: Field = 0..4;
    pub(super) const FRAME: Field = 4..8;
    pub(super) const DST: Field = 8..16;
    pub(super) const SRC_W: Field = 16..18;
    pub(super) const SRC_H: Field = 18..20;
    pub(super) const CODEC: usize = 20;
    pub(super) const ENCODING: usize = 21;
    pub(super) const Y_LEN: Field = 22..26;
    pub(super) const U_LEN: Field = 26..30;
    pub(super) const V_LEN: Field = 30..34;
    pub(super) const PLANES: usize = 34;
    pub(super) const BITSTREAM: usize = 22;
}

/// The `I420` codec id.
pub const CODEC_I420: u8 = 0x00;
/// The first id of the optional (negotiated) codecs.
pub const CODEC_OPTIONAL_FIRST: u8 = 0x80;
/// H.264 Annex B, constrained baseline, one access unit per message
/// (PROTOCOL.md §6.3).
pub const CODEC_H264: u8 = 0x80;
/// `nal_unit_type` of an IDR picture's slice (H.264 Table 7-1).
pub const H264_NAL_IDR: u8 = 5;

/// The `nal_unit_type` (5 bits) of each NAL unit of an H.264 Annex B
/// access unit, in order (PROTOCOL.md §6.3). Refused (malformed): an access
/// unit that does not start with a start code (`00 00 01` or
/// `00 00 00 01`), or a NAL unit with no header byte or with
/// `forbidden_zero_bit` set. The units' contents are not looked at.
pub fn h264_nal_types(au: &[u8]) -> Result<Vec<u8>, Error> {
    let malformed = |value: u64| Error::OutOfRange {
        field: "h264 access unit",
        value,
        min: 0,
        max: 0,
    };
    // Start codes: the byte after each `00 00 01`.
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 2 < au.len() {
        if au.get(i..i + 3) == Some(&[0, 0, 1][..]) {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    // The first start code opens the access unit (after at most one more
    // zero byte: `00 00 00 01`).
    match starts.first() {
        Some(3) | Some(4) if au.first() == Some(&0) => {}
        _ => return Err(malformed(au.len() as u64)),
    }
    let mut types = Vec::with_capacity(starts.len());
    for (k, &at) in starts.iter().enumerate() {
        let header = au.get(at).copied();
        // An empty unit: the next start code (or the end) follows at once.
        let next = starts.get(k + 1).map_or(au.len(), |&n| n - 3);
        match header {
            Some(h) if at < next && h & 0x80 == 0 => types.push(h & 0x1f),
            _ => return Err(malformed(at as u64)),
        }
    }
    Ok(types)
}

/// What a VIDEO message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoData<'a> {
    /// Codec 0: three planes, each with `encoding`.
    I420 {
        /// The encoding of each plane.
        encoding: Encoding,
        /// Y, decoded size `src_w × src_h`.
        y: Cow<'a, [u8]>,
        /// U (Cb), decoded size `ceil(src_w / 2) × ceil(src_h / 2)`.
        u: Cow<'a, [u8]>,
        /// V (Cr), same size as U.
        v: Cow<'a, [u8]>,
    },
    /// An optional codec (0x80 ..= 0xff): one access unit of its bitstream.
    Codec {
        /// The codec id.
        codec: u8,
        /// The access unit.
        data: Cow<'a, [u8]>,
    },
}

/// VIDEO (PROTOCOL.md §6.1): a frame of `src_w × src_h` scaled into `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRepr<'a> {
    /// The stream.
    pub stream_id: u32,
    /// Frame number within the stream.
    pub frame: u32,
    /// Where the frame goes.
    pub dst: Rect,
    /// Frame width, 1 ..= 8192.
    pub src_w: u16,
    /// Frame height, 1 ..= 8192.
    pub src_h: u16,
    /// The frame.
    pub data: VideoData<'a>,
}

impl<'a> VideoRepr<'a> {
    /// Body length of an `I420` frame without its planes.
    pub const I420_HEADER_LEN: usize = field::PLANES;
    /// Body length of an optional codec's frame without its bitstream.
    pub const CODEC_HEADER_LEN: usize = field::BITSTREAM;

    /// Decoded sizes of the Y plane and of each chroma plane.
    pub fn plane_lens(&self) -> Result<(usize, usize), Error> {
        i420_plane_lens(self.src_w, self.src_h)
    }

    /// Parses a VIDEO body (planes are borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let codec = get_u8(body, field::CODEC)?;
        let encoding = get_u8(body, field::ENCODING)?;
        let data = if codec == CODEC_I420 {
            let encoding = Encoding::from_u8(encoding)?;
            let y_len = usize::try_from(get_u32(body, field::Y_LEN)?).unwrap_or(usize::MAX);
            let u_len = usize::try_from(get_u32(body, field::U_LEN)?).unwrap_or(usize::MAX);
            let v_len = usize::try_from(get_u32(body, field::V_LEN)?).unwrap_or(usize::MAX);
            let u_at = field::PLANES.saturating_add(y_len);
            let v_at = u_at.saturating_add(u_len);
            let end = v_at.saturating_add(v_len);
            expect_end(body, end)?;
            VideoData::I420 {
                encoding,
                y: Cow::Borrowed(get(body, field::PLANES..u_at)?),
                u: Cow::Borrowed(get(body, u_at..v_at)?),
                v: Cow::Borrowed(get(body, v_at..end)?),
            }
        } else if codec >= CODEC_OPTIONAL_FIRST {
            check_range("encoding", u64::from(encoding), 0, 0)?;
            VideoData::Codec {
                codec,
                data: Cow::Borrowed(rest(body, field::BITSTREAM)?),
            }
        } else {
            return Err(Error::ReservedCodec(codec));
        };
        let repr = VideoRepr {
            stream_id: get_u32(body, field::STREAM_ID)?,
            frame: get_u32(body, field::FRAME)?,
            dst: Rect::parse(get(body, field::DST)?)?,
            src_w: super::wire::get_u16(body, field::SRC_W)?,
            src_h: super::wire::get_u16(body, field::SRC_H)?,
            data,
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §6.1.
    pub fn validate(&self) -> Result<(), Error> {
        self.dst.validate()?;
        let max = u64::from(MAX_DIMENSION);
        check_range("src_w", u64::from(self.src_w), 1, max)?;
        check_range("src_h", u64::from(self.src_h), 1, max)?;
        let (y_len, c_len) = self.plane_lens()?;
        match &self.data {
            VideoData::I420 { encoding, y, u, v } => {
                Payload::new(*encoding, &y[..]).validate("y", y_len)?;
                Payload::new(*encoding, &u[..]).validate("u", c_len)?;
                Payload::new(*encoding, &v[..]).validate("v", c_len)?;
                for (field, plane) in [("y_len", y), ("u_len", u), ("v_len", v)] {
                    let len = super::wire::as_u64(plane.len());
                    check_range(field, len, 0, u64::from(u32::MAX))?;
                }
                Ok(())
            }
            VideoData::Codec { codec, .. } if *codec >= CODEC_OPTIONAL_FIRST => Ok(()),
            VideoData::Codec { codec, .. } => Err(Error::ReservedCodec(*codec)),
        }
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        match &self.data {
            VideoData::I420 { y, u, v, .. } => Self::I420_HEADER_LEN + y.len() + u.len() + v.len(),
            VideoData::Codec { data, .. } => Self::CODEC_HEADER_LEN + data.len(),
        }
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u32(buf, field::STREAM_ID, self.stream_id)?;
        put_u32(buf, field::FRAME, self.frame)?;
        self.dst.emit(buf.get_mut(field::DST).unwrap_or_default())?;
        super::wire::put_u16(buf, field::SRC_W, self.src_w)?;
        super::wire::put_u16(buf, field::SRC_H, self.src_h)?;
        match &self.data {
            VideoData::I420 { encoding, y, u, v } => {
                put_u8(buf, field::CODEC, CODEC_I420)?;
                put_u8(buf, field::ENCODING, *encoding as u8)?;
                put_u32(buf, field::Y_LEN, as_u32(y.len()))?;
                put_u32(buf, field::U_LEN, as_u32(u.len()))?;
                put_u32(buf, field::V_LEN, as_u32(v.len()))?;
                put(buf, field::PLANES, y)?;
                put(buf, field::PLANES + y.len(), u)?;
                put(buf, field::PLANES + y.len() + u.len(), v)
            }
            VideoData::Codec { codec, data } => {
                put_u8(buf, field::CODEC, *codec)?;
                put_u8(buf, field::ENCODING, 0)?;
                put(buf, field::BITSTREAM, data)
            }
        }
    }

    /// An owned copy.
    pub fn into_owned(self) -> VideoRepr<'static> {
        let data = match self.data {
            VideoData::I420 { encoding, y, u, v } => VideoData::I420 {
                encoding,
                y: Cow::Owned(y.into_owned()),
                u: Cow::Owned(u.into_owned()),
                v: Cow::Owned(v.into_owned()),
            },
            VideoData::Codec { codec, data } => VideoData::Codec {
                codec,
                data: Cow::Owned(data.into_owned()),
            },
        };
        VideoRepr {
            stream_id: self.stream_id,
            frame: self.frame,
            dst: self.dst,
            src_w: self.src_w,
            src_h: self.src_h,
            data,
        }
    }
}

/// Decoded sizes of the Y plane and of each chroma plane of a `w × h` I420
/// frame, refused when the three together exceed `MAX_BODY_LEN`.
pub fn i420_plane_lens(w: u16, h: u16) -> Result<(usize, usize), Error> {
    let (w, h) = (usize::from(w), usize::from(h));
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    // The whole frame, then each plane (each is smaller, so they fit).
    decoded_size("planes", &[w * h + 2 * cw * ch])?;
    Ok((w * h, cw * ch))
}

mod end_field {
    use super::Field;

    pub(super) const STREAM_ID: Field = 0..4;
}

/// VIDEO_END (PROTOCOL.md §6.2): the stream is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoEndRepr {
    /// The stream.
    pub stream_id: u32,
}

impl VideoEndRepr {
    /// Body length.
    pub const LEN: usize = end_field::STREAM_ID.end;

    /// Parses a VIDEO_END body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        expect_end(body, Self::LEN)?;
        Ok(VideoEndRepr {
            stream_id: get_u32(body, end_field::STREAM_ID)?,
        })
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the body into `buf[..4]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        check_room(buf, Self::LEN)?;
        put_u32(buf, end_field::STREAM_ID, self.stream_id)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn frame() -> VideoRepr<'static> {
        VideoRepr {
            stream_id: 7,
            frame: 1,
            dst: Rect::new(0, 0, 4, 2),
            src_w: 3,
            src_h: 1,
            data: VideoData::I420 {
                encoding: Encoding::Plain,
                y: Cow::Owned(vec![1, 2, 3]),
                u: Cow::Owned(vec![4, 5]),
                v: Cow::Owned(vec![6, 7]),
            },
        }
    }

    #[test]
    fn bytes() {
        let video = frame();
        let mut buf = vec![0; video.buffer_len()];
        video.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [
                7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 2, 0, 3, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2, 0,
                0, 0, 2, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7
            ]
        );
        assert_eq!(VideoRepr::parse(&buf), Ok(video));
        // A plane length past the body.
        buf[30] = 3;
        assert!(matches!(
            VideoRepr::parse(&buf),
            Err(Error::Truncated { .. })
        ));
        buf[30] = 0xff;
        buf[33] = 0xff;
        assert!(VideoRepr::parse(&buf).is_err());
        buf[30] = 2;
        buf[33] = 0;
        buf[20] = 1;
        assert_eq!(VideoRepr::parse(&buf), Err(Error::ReservedCodec(1)));
    }

    #[test]
    fn optional_codec() {
        let video = VideoRepr {
            data: VideoData::Codec {
                codec: CODEC_H264,
                data: Cow::Borrowed(&[0, 0, 1]),
            },
            ..frame()
        };
        let mut buf = vec![0; video.buffer_len()];
        video.emit(&mut buf).unwrap();
        assert_eq!(buf.len(), 25);
        assert_eq!(VideoRepr::parse(&buf), Ok(video));
        buf[21] = 1;
        assert!(VideoRepr::parse(&buf).is_err());
    }

    #[test]
    fn h264_nal_units() {
        // SPS, PPS, IDR slice; 3- and 4-byte start codes.
        let au = [
            0, 0, 0, 1, 0x67, 9, 0, 0, 1, 0x68, 8, 0, 0, 0, 1, 0x65, 1, 2,
        ];
        assert_eq!(h264_nal_types(&au), Ok(vec![7, 8, H264_NAL_IDR]));
        assert_eq!(h264_nal_types(&[0, 0, 1, 0x41, 7]), Ok(vec![1]));
        for bad in [
            &[][..],
            &[0, 0, 1],                // no header byte
            &[0x65, 0, 0, 1, 0x65],    // no start code first
            &[0, 0, 0, 0, 1, 0x65],    // too many zeros before it
            &[0, 0, 1, 0xe5],          // forbidden_zero_bit
            &[0, 0, 1, 0, 0, 1, 0x65], // an empty unit
        ] {
            assert!(h264_nal_types(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plane_sizes() {
        assert_eq!(i420_plane_lens(3, 3), Ok((9, 4)));
        assert_eq!(i420_plane_lens(4096, 2730), Ok((4096 * 2730, 2048 * 1365)));
        assert!(i420_plane_lens(8192, 8192).is_err());
    }
}
