//! H.264, VIDEO codec 0x80 (PROTOCOL.md §6.3), through Cisco's OpenH264:
//! the server's encoder ([`H264Encoder`], one per stream and viewer) and a
//! viewer's decoder ([`H264Decoder`], one per stream). Sans I/O: I420
//! frames in, Annex B access units out, and back.
//!
//! Frames of odd width or height are encoded one column or row larger (the
//! last one repeated); the decoder crops the picture back to the VIDEO
//! message's `src_w × src_h`.
//!
//! **Keyframes.** A decoder decodes nothing before an access unit with an
//! IDR picture, and nothing after a gap in the frame numbers unless that
//! access unit has an IDR picture: a stream whose reference chain broke
//! is refused ([`H264Error::NoKeyframe`]), never decoded into garbage.

use openh264::decoder::{Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile, QpRange,
    RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;

use super::yuv::{I420Buf, I420};
use crate::protocol::{h264_nal_types, Error, H264_NAL_IDR};

/// Bits per pixel and frame the encoder aims at (about 7.5 Mbit/s for
/// 1024 × 768 at 24 frames/s).
const BITS_PER_PIXEL: f64 = 0.4;
/// The frame rate the rate control assumes.
const FRAME_RATE: f32 = 24.0;
/// The coarsest quantizer allowed: the picture stays close (PSNR ≥ 30 dB,
/// PROTOCOL.md §6.1) even when that overshoots the bit rate.
const MAX_QP: u8 = 32;
/// The finest quantizer used (finer buys little for video).
const MIN_QP: u8 = 16;
/// The largest frame side OpenH264 encodes (level 5.2).
const MAX_SIDE: usize = 3840;

/// Why a frame could not be encoded or an access unit decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum H264Error {
    /// OpenH264 refused (a corrupt bitstream, or parameters it rejects).
    #[error("openh264: {0}")]
    Codec(String),
    /// The access unit is not Annex B.
    #[error("h264 access unit: {0}")]
    Malformed(#[from] Error),
    /// A frame this encoder cannot take.
    #[error("frame {width}x{height} cannot be encoded as h264")]
    FrameSize {
        /// Its width.
        width: usize,
        /// Its height.
        height: usize,
    },
    /// The first access unit of a stream, or the first after a gap in the
    /// frame numbers, has no IDR picture.
    #[error("h264 frame {frame} of stream without an IDR picture before it")]
    NoKeyframe {
        /// The frame number.
        frame: u32,
    },
    /// The access unit gave no picture.
    #[error("h264 access unit gave no picture")]
    NoPicture,
    /// The picture is smaller than the VIDEO frame.
    #[error("h264 picture {width}x{height} is smaller than the frame {src_w}x{src_h}")]
    PictureSize {
        /// Decoded width.
        width: usize,
        /// Decoded height.
        height: usize,
        /// The frame's width.
        src_w: u16,
        /// The frame's height.
        src_h: u16,
    },
}

fn codec_error(e: openh264::Error) -> H264Error {
    H264Error::Codec(e.to_string())
}

/// One stream's encoder: constrained baseline, one slice, no B frames, an
/// IDR picture first and then only when asked for.
pub struct H264Encoder {
    encoder: Encoder,
    width: usize,
    height: usize,
    /// `width`, `height` rounded up to even.
    padded: (usize, usize),
    /// The padded frame, Y then U then V.
    buf: Vec<u8>,
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl H264Encoder {
    /// An encoder for frames of `width × height`.
    pub fn new(width: u16, height: u16) -> Result<Self, H264Error> {
        let (width, height) = (usize::from(width), usize::from(height));
        let padded = (width.div_ceil(2) * 2, height.div_ceil(2) * 2);
        if width == 0 || height == 0 || padded.0.max(padded.1) > MAX_SIDE {
            return Err(H264Error::FrameSize { width, height });
        }
        let bps = (padded.0 * padded.1) as f64 * BITS_PER_PIXEL * f64::from(FRAME_RATE);
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Baseline)
            // Buffer-based: the bit rate steers the quantizer (within
            // MIN_QP..=MAX_QP) through the encoder's buffer. The bit-rate
            // modes insist on skipping frames and print a warning to
            // stderr at every encoder start when told not to (here ~10 %
            // fewer bytes, the same PSNR; measured 2026-11-26).
            .rate_control_mode(RateControlMode::Bufferbased)
            .bitrate(BitRate::from_bps(bps as u32))
            .max_frame_rate(FrameRate::from_hz(FRAME_RATE))
            .qp(QpRange::new(MIN_QP, MAX_QP))
            // Every frame handed in is sent: a skipped frame would leave
            // the client's picture behind the server's.
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .num_threads(1);
        let encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(codec_error)?;
        let (pw, ph) = padded;
        Ok(H264Encoder {
            encoder,
            width,
            height,
            padded,
            buf: vec![0; pw * ph + 2 * (pw / 2) * (ph / 2)],
        })
    }

    /// The frame size.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The next frame is an IDR picture.
    pub fn force_keyframe(&mut self) {
        self.encoder.force_intra_frame();
    }

    /// Encodes `frame` (of this encoder's size): one access unit, and
    /// whether it is an IDR picture.
    pub fn encode(&mut self, frame: &I420<'_>) -> Result<(Vec<u8>, bool), H264Error> {
        if (frame.width, frame.height) != (self.width, self.height) {
            return Err(H264Error::FrameSize {
                width: frame.width,
                height: frame.height,
            });
        }
        let (pw, ph) = self.padded;
        let (cw, ch) = (pw / 2, ph / 2);
        let (y, uv) = self.buf.split_at_mut(pw * ph);
        let (u, v) = uv.split_at_mut(cw * ch);
        pad_plane(frame.y, self.width, self.height, y, pw, ph);
        let (fcw, fch) = (self.width.div_ceil(2), self.height.div_ceil(2));
        pad_plane(frame.u, fcw, fch, u, cw, ch);
        pad_plane(frame.v, fcw, fch, v, cw, ch);
        let source = YUVSlices::new((&*y, &*u, &*v), (pw, ph), (pw, cw, cw));
        let stream = self.encoder.encode(&source).map_err(codec_error)?;
        let idr = stream.frame_type() == FrameType::IDR;
        let au = stream.to_vec();
        if au.is_empty() {
            return Err(H264Error::NoPicture);
        }
        Ok((au, idr))
    }
}

/// Copies a `w × h` plane into a `pw × ph` one (`pw ≥ w`, `ph ≥ h`),
/// repeating the last column and row.
fn pad_plane(src: &[u8], w: usize, h: usize, dst: &mut [u8], pw: usize, ph: usize) {
    for (row, out) in dst.chunks_exact_mut(pw).take(ph).enumerate() {
        let from = src
            .get(row.min(h.saturating_sub(1)) * w..)
            .and_then(|r| r.get(..w))
            .unwrap_or_default();
        let (head, tail) = out.split_at_mut(from.len().min(pw));
        head.copy_from_slice(from.get(..head.len()).unwrap_or_default());
        tail.fill(from.last().copied().unwrap_or(0));
    }
}

/// One stream's decoder on a viewer.
pub struct H264Decoder {
    decoder: Decoder,
    /// The frame number the next access unit may have without an IDR
    /// picture (none before the first IDR picture).
    next: Option<u32>,
}

impl std::fmt::Debug for H264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Decoder")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl H264Decoder {
    /// A decoder that waits for an IDR picture.
    pub fn new() -> Result<Self, H264Error> {
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(codec_error)?;
        Ok(H264Decoder {
            decoder,
            next: None,
        })
    }

    /// Decodes access unit `au`, frame number `frame`, into a frame of
    /// `src_w × src_h` (the picture cropped). Refused: an access unit
    /// without an IDR picture when the previous one decoded was not frame
    /// `frame - 1` (see the module's doc), a corrupt bitstream, or a
    /// picture smaller than the frame. After an error the decoder waits for
    /// an IDR picture again.
    pub fn decode(
        &mut self,
        au: &[u8],
        frame: u32,
        src_w: u16,
        src_h: u16,
    ) -> Result<I420Buf, H264Error> {
        let idr = h264_nal_types(au)?.contains(&H264_NAL_IDR);
        if !idr && self.next != Some(frame) {
            self.next = None;
            return Err(H264Error::NoKeyframe { frame });
        }
        self.next = None;
        let out = self.decode_picture(au, src_w, src_h)?;
        self.next = Some(frame.wrapping_add(1));
        Ok(out)
    }

    fn decode_picture(&mut self, au: &[u8], src_w: u16, src_h: u16) -> Result<I420Buf, H264Error> {
        let picture = self
            .decoder
            .decode(au)
            .map_err(codec_error)?
            .ok_or(H264Error::NoPicture)?;
        let (width, height) = picture.dimensions();
        let (w, h) = (usize::from(src_w), usize::from(src_h));
        if width < w || height < h {
            return Err(H264Error::PictureSize {
                width,
                height,
                src_w,
                src_h,
            });
        }
        let (ys, us, vs) = picture.strides();
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let crop = |plane: &[u8], stride: usize, w: usize, h: usize| -> Option<Vec<u8>> {
            let mut out = Vec::with_capacity(w * h);
            for row in 0..h {
                out.extend_from_slice(plane.get(row * stride..)?.get(..w)?);
            }
            Some(out)
        };
        let planes = (
            crop(picture.y(), ys, w, h),
            crop(picture.u(), us, cw, ch),
            crop(picture.v(), vs, cw, ch),
        );
        let (Some(y), Some(u), Some(v)) = planes else {
            return Err(H264Error::PictureSize {
                width,
                height,
                src_w,
                src_h,
            });
        };
        Ok(I420Buf {
            width: w,
            height: h,
            y,
            u,
            v,
        })
    }
}

#[cfg(test)]
mod test {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::scale::Filter;
    use crate::codec::yuv::{bgrx_to_i420, i420_to_bgrx, psnr, CLOSE_PSNR_DB};

    /// A photo-like frame: smooth colour fields and a little noise, panned
    /// by `t`.
    fn photo(w: usize, h: usize, t: usize) -> Vec<u32> {
        let mut seed = 0x1234_5678u32;
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (seed >> 29) as i32 - 3;
                let (px, py) = ((x + 5 * t) as f64, (y + 3 * t) as f64);
                let r = 128.0 + 90.0 * (px / 37.0).sin() * (py / 53.0).cos();
                let g = 128.0 + 80.0 * ((px + py) / 61.0).sin();
                let b = 128.0 + 70.0 * (py / 29.0).cos();
                let c = |v: f64| (v as i32 + noise).clamp(0, 255) as u32;
                out.push(c(r) << 16 | c(g) << 8 | c(b));
            }
        }
        out
    }

    fn to_rgb(frame: &I420Buf) -> Vec<u32> {
        let (w, h) = (frame.width, frame.height);
        let mut out = vec![0; w * h];
        i420_to_bgrx(&frame.as_ref(), &mut out, w, w, h, Filter::Bilinear);
        out
    }

    #[test]
    fn frames_round_trip_close_and_small() {
        // Odd sizes are padded and cropped back.
        for (w, h) in [(320, 240), (161, 97)] {
            let mut enc = H264Encoder::new(w as u16, h as u16).unwrap();
            let mut dec = H264Decoder::new().unwrap();
            let mut total = 0;
            for t in 0..12 {
                let src = photo(w, h, t);
                let i420 = bgrx_to_i420(&src, w, h);
                let (au, idr) = enc.encode(&i420.as_ref()).unwrap();
                assert_eq!(idr, t == 0, "frame {t}");
                total += au.len();
                let out = dec.decode(&au, t as u32, w as u16, h as u16).unwrap();
                assert_eq!((out.width, out.height), (w, h));
                let db = psnr(&to_rgb(&out), &src);
                assert!(db >= CLOSE_PSNR_DB, "{w}x{h} frame {t}: {db:.1} dB");
            }
            // Far smaller than I420 (1.5 bytes a pixel).
            let i420_bytes = 12 * w * h * 3 / 2;
            assert!(
                total * 5 < i420_bytes,
                "{total} bytes for {i420_bytes} of I420"
            );
        }
    }

    #[test]
    fn a_decoder_refuses_frames_without_a_keyframe_before_them() {
        let (w, h) = (64, 48);
        let mut enc = H264Encoder::new(w as u16, h as u16).unwrap();
        let aus: Vec<(Vec<u8>, bool)> = (0..4)
            .map(|t| {
                enc.encode(&bgrx_to_i420(&photo(w, h, t), w, h).as_ref())
                    .unwrap()
            })
            .collect();
        assert!(aus[0].1 && !aus[1].1);
        // A P frame first: refused.
        let mut dec = H264Decoder::new().unwrap();
        assert_eq!(
            dec.decode(&aus[1].0, 1, 64, 48),
            Err(H264Error::NoKeyframe { frame: 1 })
        );
        // IDR, then a gap (frame 1 lost): refused, and so is what follows.
        dec.decode(&aus[0].0, 0, 64, 48).unwrap();
        assert!(dec.decode(&aus[2].0, 2, 64, 48).is_err());
        assert!(dec.decode(&aus[3].0, 3, 64, 48).is_err());
        // A forced keyframe starts the stream again.
        enc.force_keyframe();
        let (au, idr) = enc
            .encode(&bgrx_to_i420(&photo(w, h, 4), w, h).as_ref())
            .unwrap();
        assert!(idr);
        dec.decode(&au, 9, 64, 48).unwrap();
        // A picture smaller than the frame is refused.
        enc.force_keyframe();
        let (au, _) = enc
            .encode(&bgrx_to_i420(&photo(w, h, 5), w, h).as_ref())
            .unwrap();
        assert!(matches!(
            dec.decode(&au, 10, 65, 48),
            Err(H264Error::PictureSize { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let mut dec = H264Decoder::new().unwrap();
        let mut seed = 7u32;
        for len in [0usize, 1, 5, 64, 1000] {
            let mut au = vec![0, 0, 0, 1, 0x65];
            for _ in 0..len {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                au.push((seed >> 24) as u8);
            }
            assert!(dec.decode(&au, 0, 16, 16).is_err());
        }
        assert!(dec.decode(&[1, 2, 3], 0, 16, 16).is_err());
    }
}
