//! [`Image`]: pixels as `u32`s, the encoder's copy of what a client has and
//! its snapshots of the screen.

use crate::protocol::{CopyRepr, Rect};

use super::{PixelView, RGB_MASK};

/// `width × height` pixels as `0x00RRGGBB` (the X byte cleared), rows top to
/// bottom.
///
/// INVARIANT: `px.len() == width × height`.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    width: u16,
    height: u16,
    px: Vec<u32>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// A black image.
    pub fn new(width: u16, height: u16) -> Self {
        Image {
            width,
            height,
            px: vec![0; usize::from(width) * usize::from(height)],
        }
    }

    /// A copy of `rect` of `view`, X bytes cleared (`None` when `rect` is not
    /// inside the view).
    pub fn snapshot(view: &PixelView<'_>, rect: Rect) -> Option<Self> {
        let part = view.sub(rect)?;
        let mut px = Vec::with_capacity(rect.area());
        for y in 0..rect.h {
            px.extend(
                part.row(y)
                    .chunks_exact(4)
                    .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])),
            );
        }
        Some(Image {
            width: rect.w,
            height: rect.h,
            px,
        })
    }

    /// Width.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// The pixels, rows top to bottom.
    pub fn pixels(&self) -> &[u32] {
        &self.px
    }

    /// The whole image as a rectangle at `(0, 0)`.
    pub fn rect(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// `w` pixels of row `y` from `x` (empty when not inside).
    pub fn seg(&self, x: u16, y: u16, w: u16) -> &[u32] {
        if y >= self.height || usize::from(x) + usize::from(w) > usize::from(self.width) {
            return &[];
        }
        let start = usize::from(y) * usize::from(self.width) + usize::from(x);
        self.px
            .get(start..start + usize::from(w))
            .unwrap_or_default()
    }

    /// Writes `src` (rows of `rect.w` pixels) at `rect`, clipped to the image.
    pub fn blit(&mut self, rect: Rect, src: &[u32]) {
        let w = usize::from(rect.w);
        if w == 0 || rect.x >= self.width {
            return;
        }
        let n = w.min(usize::from(self.width - rect.x));
        for (row, line) in src.chunks_exact(w).enumerate() {
            let y = usize::from(rect.y) + row;
            if y >= usize::from(self.height) || row >= usize::from(rect.h) {
                break;
            }
            let start = y * usize::from(self.width) + usize::from(rect.x);
            if let (Some(dst), Some(line)) = (self.px.get_mut(start..start + n), line.get(..n)) {
                dst.copy_from_slice(line);
            }
        }
    }

    /// Writes `rect` of `src` (an image of the same size as `rect`'s
    /// placement allows) at `(x, y)`.
    pub(crate) fn blit_from(&mut self, src: &Image, part: Rect, x: u16, y: u16) {
        for row in 0..part.h {
            let line = src.seg(part.x, part.y + row, part.w);
            let dy = usize::from(y) + usize::from(row);
            if dy >= usize::from(self.height)
                || usize::from(x) + line.len() > usize::from(self.width)
            {
                return;
            }
            let start = dy * usize::from(self.width) + usize::from(x);
            if let Some(dst) = self.px.get_mut(start..start + line.len()) {
                dst.copy_from_slice(line);
            }
        }
    }

    /// Applies a COPY (like `memmove`); does nothing when it does not fit.
    pub fn copy(&mut self, c: &CopyRepr) {
        if !c.src().fits(self.width, self.height) || !c.dst().fits(self.width, self.height) {
            return;
        }
        let width = usize::from(self.width);
        let w = usize::from(c.w);
        let rows = usize::from(c.h);
        let bottom_up = c.dst_y > c.src_y;
        for i in 0..rows {
            let row = if bottom_up { rows - 1 - i } else { i };
            let src = (usize::from(c.src_y) + row) * width + usize::from(c.src_x);
            let dst = (usize::from(c.dst_y) + row) * width + usize::from(c.dst_x);
            self.px.copy_within(src..src + w, dst);
        }
    }

    /// Whether `w` pixels of row `y` of `view` from `x` equal `seg`.
    pub(crate) fn row_equals(view: &PixelView<'_>, x: u16, y: u16, seg: &[u32]) -> bool {
        let start = usize::from(x) * 4;
        let Some(bytes) = view.row(y).get(start..start + seg.len() * 4) else {
            return false;
        };
        bytes
            .chunks_exact(4)
            .zip(seg)
            .all(|(p, &m)| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & RGB_MASK == m)
    }
}

/// A fast 64-bit hash of pixels (FxHash-like). Collisions only cost time:
/// every match it suggests is verified pixel by pixel.
pub(crate) fn hash_pixels(px: impl Iterator<Item = u32>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    px.fold(0x243f_6a88_85a3_08d3, |h, p| {
        (h.rotate_left(5) ^ u64::from(p)).wrapping_mul(K)
    })
}

/// The pixels of `w` pixels of row `y` of `view` from `x`, X cleared.
pub(crate) fn view_seg<'v>(
    view: &'v PixelView<'_>,
    x: u16,
    y: u16,
    w: u16,
) -> impl Iterator<Item = u32> + Clone + 'v {
    let start = usize::from(x) * 4;
    view.row(y)
        .get(start..start + usize::from(w) * 4)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & RGB_MASK)
}
