//! What a client does with display commands: a framebuffer in memory that
//! applies RAW, COPY, SFILL, BITMAP, PFILL and VIDEO (PROTOCOL.md §5, §6).
//!
//! This is the reference decoder: the headless viewer and the tests use it
//! as it is; the browser and native viewers follow it. It is pure (no I/O,
//! no clock) and never panics or writes outside the framebuffer on any
//! command: a command that does not fit is an [`ApplyError`] and changes no
//! pixel.

#[cfg(feature = "h264")]
pub mod h264;
pub mod scale;
pub mod yuv;

use core::fmt;

pub use self::scale::Filter;

use crate::protocol::{
    BitmapRepr, CloseCode, Command, CopyRepr, Error, FramebufferSizeRepr, PFillRepr, Payload,
    PayloadError, RawRepr, Rect, SFillRepr, VideoData, VideoRepr, MAX_DIMENSION,
};

/// Why a command was not applied (PROTOCOL.md §5.0, §10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A rectangle of the command lies outside the framebuffer.
    #[error("{what} {rect} outside the {width}x{height} framebuffer")]
    OutOfBounds {
        /// Which rectangle (`dst`, `src`, `rect`).
        what: &'static str,
        /// The rectangle.
        rect: Rect,
        /// Framebuffer width.
        width: u16,
        /// Framebuffer height.
        height: u16,
    },
    /// A payload that does not decode to its exact size.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A video codec this decoder does not implement.
    #[error("video codec {0:#04x} is not supported")]
    UnsupportedCodec(u8),
    /// The command breaks a limit of PROTOCOL.md (only possible for a command
    /// built by hand: parsed commands are valid).
    #[error("invalid command: {0}")]
    Invalid(#[from] Error),
    /// A framebuffer size of 0 or above `MAX_DIMENSION`, or pixels that do
    /// not match the size given.
    #[error("bad framebuffer size {width}x{height} ({pixels} pixels)")]
    BadSize {
        /// Width asked for.
        width: usize,
        /// Height asked for.
        height: usize,
        /// Pixels given.
        pixels: usize,
    },
}

impl ApplyError {
    /// The close code a client sends for this error (PROTOCOL.md §10).
    pub fn close_code(&self) -> CloseCode {
        match self {
            ApplyError::OutOfBounds { .. } | ApplyError::BadSize { .. } => CloseCode::OutOfBounds,
            ApplyError::Payload(_) => CloseCode::BadPayload,
            ApplyError::UnsupportedCodec(_) => CloseCode::UnsupportedCodec,
            ApplyError::Invalid(_) => CloseCode::MalformedMessage,
        }
    }
}

/// A client framebuffer: `width × height` BGRX pixels, rows top to bottom.
///
/// INVARIANT: `pixels.len() == width × height`, and both are in
/// `1 ..= MAX_DIMENSION`.
#[derive(Clone)]
pub struct Framebuffer {
    width: u16,
    height: u16,
    pixels: Vec<u32>,
    /// Decoded payloads (reused between commands).
    scratch: [Vec<u8>; 3],
    tile: Vec<u32>,
    video_filter: Filter,
}

impl fmt::Debug for Framebuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framebuffer")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// Two framebuffers are equal when their sizes and pixels are.
impl PartialEq for Framebuffer {
    fn eq(&self, other: &Self) -> bool {
        self.width == other.width && self.height == other.height && self.pixels == other.pixels
    }
}

impl Eq for Framebuffer {}

impl Framebuffer {
    /// A black framebuffer (every pixel 0), as after `FramebufferSize`.
    pub fn new(width: u16, height: u16) -> Result<Self, ApplyError> {
        let len = usize::from(width) * usize::from(height);
        Self::from_pixels(width, height, vec![0; len])
    }

    /// A framebuffer holding `pixels` (rows of `width`).
    pub fn from_pixels(width: u16, height: u16, pixels: Vec<u32>) -> Result<Self, ApplyError> {
        let ok_dim = |d: u16| (1..=MAX_DIMENSION).contains(&d);
        if !ok_dim(width)
            || !ok_dim(height)
            || pixels.len() != usize::from(width) * usize::from(height)
        {
            return Err(ApplyError::BadSize {
                width: usize::from(width),
                height: usize::from(height),
                pixels: pixels.len(),
            });
        }
        Ok(Framebuffer {
            width,
            height,
            pixels,
            scratch: Default::default(),
            tile: Vec::new(),
            video_filter: Filter::default(),
        })
    }

    /// A black framebuffer of the size a `FramebufferSize` gives.
    pub fn for_size(size: &FramebufferSizeRepr) -> Result<Self, ApplyError> {
        Self::new(size.width, size.height)
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// The pixels, rows top to bottom.
    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// The pixel at `(x, y)`, if inside.
    pub fn pixel(&self, x: u16, y: u16) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.pixels
            .get(usize::from(y) * usize::from(self.width) + usize::from(x))
            .copied()
    }

    /// The pixels of `rect` (row by row), if it fits.
    pub fn region(&self, rect: Rect) -> Option<Vec<u32>> {
        if !rect.fits(self.width, self.height) {
            return None;
        }
        let mut out = Vec::with_capacity(rect.area());
        for y in usize::from(rect.y)..rect.bottom() {
            let start = y * usize::from(self.width) + usize::from(rect.x);
            out.extend_from_slice(self.pixels.get(start..start + usize::from(rect.w))?);
        }
        Some(out)
    }

    /// The filter VIDEO frames are scaled with (bilinear by default).
    pub fn set_video_filter(&mut self, filter: Filter) {
        self.video_filter = filter;
    }

    /// Applies one command (PROTOCOL.md §5.0): all of it, or, on error,
    /// nothing.
    pub fn apply(&mut self, command: &Command<'_>) -> Result<(), ApplyError> {
        match command {
            Command::Raw(raw) => self.raw(raw),
            Command::Copy(copy) => self.copy(copy),
            Command::SFill(fill) => self.sfill(fill),
            Command::Bitmap(bitmap) => self.bitmap(bitmap),
            Command::PFill(fill) => self.pfill(fill),
            Command::Video(video) => self.video(video),
        }
    }

    fn check(&self, what: &'static str, rect: Rect) -> Result<(), ApplyError> {
        rect.validate()?;
        if !rect.fits(self.width, self.height) {
            return Err(ApplyError::OutOfBounds {
                what,
                rect,
                width: self.width,
                height: self.height,
            });
        }
        Ok(())
    }

    /// Row `row` of `rect` (checked by [`Self::check`]), as a mutable slice.
    fn row_mut(&mut self, rect: Rect, row: usize) -> Result<&mut [u32], ApplyError> {
        row_of(&mut self.pixels, self.width, self.height, rect, row)
    }

    fn raw(&mut self, raw: &RawRepr<'_>) -> Result<(), ApplyError> {
        raw.validate()?;
        self.check("rect", raw.rect)?;
        let len = raw.decoded_len()?;
        let [scratch, ..] = &mut self.scratch;
        let data = raw.data.decode("data", len, scratch)?;
        let stride = usize::from(raw.rect.w) * 4;
        // Split borrows: `data` may live in `self.scratch`.
        let (width, height, pixels) = (self.width, self.height, &mut self.pixels);
        for (row, src) in data.chunks_exact(stride).enumerate() {
            let dst = row_of(pixels, width, height, raw.rect, row)?;
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Ok(())
    }

    fn copy(&mut self, copy: &CopyRepr) -> Result<(), ApplyError> {
        copy.validate()?;
        self.check("src", copy.src())?;
        self.check("dst", copy.dst())?;
        let width = usize::from(self.width);
        let w = usize::from(copy.w);
        let offset = |x: u16, y: u16, row: usize| (usize::from(y) + row) * width + usize::from(x);
        let rows = usize::from(copy.h);
        // Like memmove: when the destination is below the source, copy the
        // bottom row first so no source row is overwritten before it is read.
        // Within a row, copy_within handles overlap in either direction.
        let bottom_up = copy.dst_y > copy.src_y;
        let len = self.pixels.len();
        for i in 0..rows {
            let row = if bottom_up { rows - 1 - i } else { i };
            let src = offset(copy.src_x, copy.src_y, row);
            let dst = offset(copy.dst_x, copy.dst_y, row);
            // INVARIANT: check() put both rectangles inside the framebuffer.
            if src + w > len || dst + w > len {
                return Err(ApplyError::OutOfBounds {
                    what: "src",
                    rect: copy.src(),
                    width: self.width,
                    height: self.height,
                });
            }
            self.pixels.copy_within(src..src + w, dst);
        }
        Ok(())
    }

    fn sfill(&mut self, fill: &SFillRepr) -> Result<(), ApplyError> {
        fill.validate()?;
        for &rect in &fill.rects {
            self.check("rect", rect)?;
        }
        for &rect in &fill.rects {
            for row in 0..usize::from(rect.h) {
                self.row_mut(rect, row)?.fill(fill.colour);
            }
        }
        Ok(())
    }

    fn bitmap(&mut self, bitmap: &BitmapRepr<'_>) -> Result<(), ApplyError> {
        bitmap.validate()?;
        self.check("rect", bitmap.rect)?;
        let len = bitmap.decoded_len()?;
        let stride = bitmap.stride();
        let [scratch, ..] = &mut self.scratch;
        let bits = bitmap.bits.decode("bits", len, scratch)?;
        let rect = bitmap.rect;
        let (width, height, pixels) = (self.width, self.height, &mut self.pixels);
        for (row, mask) in bits.chunks_exact(stride).enumerate() {
            let dst = row_of(pixels, width, height, rect, row)?;
            for (col, px) in dst.iter_mut().enumerate() {
                let byte = mask.get(col / 8).copied().unwrap_or(0);
                if byte & (0x80 >> (col % 8)) != 0 {
                    *px = bitmap.fg;
                } else if let Some(bg) = bitmap.bg {
                    *px = bg;
                }
            }
        }
        Ok(())
    }

    fn pfill(&mut self, fill: &PFillRepr<'_>) -> Result<(), ApplyError> {
        fill.validate()?;
        for &rect in &fill.rects {
            self.check("rect", rect)?;
        }
        let len = fill.decoded_len()?;
        let [scratch, ..] = &mut self.scratch;
        let bytes = fill.tile.decode("tile", len, scratch)?;
        self.tile.clear();
        self.tile.extend(
            bytes
                .chunks_exact(4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])),
        );
        let (tw, th) = (usize::from(fill.tile_w), usize::from(fill.tile_h));
        let (ox, oy) = (usize::from(fill.origin_x), usize::from(fill.origin_y));
        let (width, height, pixels, tile) = (self.width, self.height, &mut self.pixels, &self.tile);
        for &rect in &fill.rects {
            for row in 0..usize::from(rect.h) {
                let y = usize::from(rect.y) + row;
                // INVARIANT: origin < tile size (validated), so no underflow.
                let ty = (y + th - oy) % th;
                let tile_row = tile.get(ty * tw..(ty + 1) * tw).unwrap_or_default();
                let dst = row_of(pixels, width, height, rect, row)?;
                let mut tx = (usize::from(rect.x) + tw - ox) % tw;
                for px in dst {
                    *px = tile_row.get(tx).copied().unwrap_or(0);
                    tx += 1;
                    if tx == tw {
                        tx = 0;
                    }
                }
            }
        }
        Ok(())
    }

    fn video(&mut self, video: &VideoRepr<'_>) -> Result<(), ApplyError> {
        video.validate()?;
        self.check("dst", video.dst)?;
        let (encoding, y, u, v) = match &video.data {
            VideoData::I420 { encoding, y, u, v } => (*encoding, y, u, v),
            VideoData::Codec { codec, .. } => return Err(ApplyError::UnsupportedCodec(*codec)),
        };
        let (y_len, c_len) = video.plane_lens()?;
        let [sy, su, sv] = &mut self.scratch;
        let y_plane = Payload::new(encoding, &y[..]);
        let u_plane = Payload::new(encoding, &u[..]);
        let v_plane = Payload::new(encoding, &v[..]);
        let frame = yuv::I420 {
            width: usize::from(video.src_w),
            height: usize::from(video.src_h),
            y: y_plane.decode("y", y_len, sy)?,
            u: u_plane.decode("u", c_len, su)?,
            v: v_plane.decode("v", c_len, sv)?,
        };
        let dst = video.dst;
        let width = usize::from(self.width);
        let start = usize::from(dst.y) * width + usize::from(dst.x);
        let out = self.pixels.get_mut(start..).unwrap_or_default();
        yuv::i420_to_bgrx(
            &frame,
            out,
            width,
            usize::from(dst.w),
            usize::from(dst.h),
            self.video_filter,
        );
        Ok(())
    }
}

/// Row `row` of `rect` in the `width`x`height` framebuffer `pixels`, as a
/// mutable slice (`OutOfBounds` when it is not inside).
fn row_of(
    pixels: &mut [u32],
    width: u16,
    height: u16,
    rect: Rect,
    row: usize,
) -> Result<&mut [u32], ApplyError> {
    let start = (usize::from(rect.y) + row) * usize::from(width) + usize::from(rect.x);
    pixels
        .get_mut(start..start + usize::from(rect.w))
        .ok_or(ApplyError::OutOfBounds {
            what: "rect",
            rect,
            width,
            height,
        })
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::protocol::Encoding;

    fn fb(width: u16, height: u16) -> Framebuffer {
        let pixels = (0..u32::from(width) * u32::from(height)).collect();
        Framebuffer::from_pixels(width, height, pixels).unwrap()
    }

    /// COPY through a temporary buffer: the definition in PROTOCOL.md §5.2.
    fn naive_copy(fb: &Framebuffer, c: &CopyRepr) -> Vec<u32> {
        let src = fb.region(c.src()).unwrap();
        let mut out = fb.pixels().to_vec();
        let w = usize::from(fb.width());
        for row in 0..usize::from(c.h) {
            for col in 0..usize::from(c.w) {
                let d = (usize::from(c.dst_y) + row) * w + usize::from(c.dst_x) + col;
                out[d] = src[row * usize::from(c.w) + col];
            }
        }
        out
    }

    #[test]
    fn copy_overlap_every_direction() {
        // Every source/destination pair of a 3 × 3 area inside 8 × 8.
        for (sx, sy) in [(2, 2), (0, 0), (5, 5), (0, 5), (5, 0)] {
            for dx in 0..=5 {
                for dy in 0..=5 {
                    let c = CopyRepr {
                        src_x: sx,
                        src_y: sy,
                        dst_x: dx,
                        dst_y: dy,
                        w: 3,
                        h: 3,
                    };
                    let mut f = fb(8, 8);
                    let expect = naive_copy(&f, &c);
                    f.apply(&Command::Copy(c)).unwrap();
                    assert_eq!(f.pixels(), &expect[..], "{c:?}");
                }
            }
        }
    }

    #[test]
    fn copy_out_of_bounds_changes_nothing() {
        let mut f = fb(4, 4);
        let before = f.clone();
        let c = CopyRepr {
            src_x: 0,
            src_y: 0,
            dst_x: 2,
            dst_y: 2,
            w: 3,
            h: 1,
        };
        assert!(matches!(
            f.apply(&Command::Copy(c)),
            Err(ApplyError::OutOfBounds { what: "dst", .. })
        ));
        assert_eq!(f, before);
    }

    #[test]
    fn raw_lz4() {
        let pixels: Vec<u8> = [0x11u8, 0x22, 0x33, 0].repeat(6);
        let raw = RawRepr {
            rect: Rect::new(1, 1, 3, 2),
            data: Payload::compress(&pixels),
        };
        assert_eq!(raw.data.encoding, Encoding::Lz4);
        let mut f = Framebuffer::new(4, 4).unwrap();
        f.apply(&Command::Raw(raw)).unwrap();
        assert_eq!(f.pixel(0, 0), Some(0));
        assert_eq!(f.pixel(1, 1), Some(0x332211));
        assert_eq!(f.pixel(3, 2), Some(0x332211));
        assert_eq!(f.pixel(3, 3), Some(0));
    }

    #[test]
    fn bad_payload_changes_nothing() {
        let raw = RawRepr {
            rect: Rect::new(0, 0, 2, 2),
            data: Payload::new(Encoding::Lz4, vec![0x40, 1, 2]),
        };
        let mut f = fb(4, 4);
        let before = f.clone();
        let err = f.apply(&Command::Raw(raw)).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::BadPayload);
        assert_eq!(f, before);
    }

    #[test]
    fn sfill_checks_every_rect_first() {
        let fill = SFillRepr {
            colour: 7,
            rects: vec![Rect::new(0, 0, 1, 1), Rect::new(3, 3, 2, 1)],
        };
        let mut f = fb(4, 4);
        let before = f.clone();
        assert!(f.apply(&Command::SFill(fill)).is_err());
        assert_eq!(f, before);
    }

    #[test]
    fn bad_sizes() {
        assert!(Framebuffer::new(0, 1).is_err());
        assert!(Framebuffer::new(8193, 1).is_err());
        assert!(Framebuffer::from_pixels(2, 2, vec![0; 3]).is_err());
    }

    #[test]
    fn optional_codec_is_unsupported() {
        let video = VideoRepr {
            stream_id: 1,
            frame: 0,
            dst: Rect::new(0, 0, 1, 1),
            src_w: 2,
            src_h: 2,
            data: VideoData::Codec {
                codec: 0x80,
                data: vec![0].into(),
            },
        };
        let mut f = fb(2, 2);
        assert_eq!(
            f.apply(&Command::Video(video)),
            Err(ApplyError::UnsupportedCodec(0x80))
        );
    }
}
