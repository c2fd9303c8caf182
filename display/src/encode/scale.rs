//! Viewport scaling on the server (PROTOCOL.md §9): the framebuffer size a
//! viewport gets, and a deterministic box-filter downscale of the screen
//! that a scaled viewer's encoder works on.
//!
//! The downscale is defined so that anyone can recompute it pixel for pixel
//! (the tests compare a scaled viewer against it exactly): for a screen of
//! `S` columns shown in `D ≤ S` columns, destination column `d` covers the
//! source columns `⌊d·S/D⌋ .. ⌊(d+1)·S/D⌋` (at least one), rows likewise,
//! and its B, G, R are each the mean of that box rounded half up,
//! `(sum + n/2) / n` in integers (X is 0).

use super::PixelView;
use crate::protocol::Rect;

/// The framebuffer a viewport of `viewport` gets for a screen of `screen`:
/// the screen when it fits, else the largest size with the screen's aspect
/// ratio (rounded down, at least 1 × 1) that fits. Never larger than the
/// screen.
pub fn fit(screen: (u16, u16), viewport: (u16, u16)) -> (u16, u16) {
    let (sw, sh) = (u64::from(screen.0.max(1)), u64::from(screen.1.max(1)));
    let (vw, vh) = (u64::from(viewport.0.max(1)), u64::from(viewport.1.max(1)));
    if sw <= vw && sh <= vh {
        return screen;
    }
    let (w, h) = if vw * sh <= vh * sw {
        (vw, (sh * vw / sw).max(1))
    } else {
        ((sw * vh / sh).max(1), vh)
    };
    (
        u16::try_from(w.min(sw)).unwrap_or(u16::MAX),
        u16::try_from(h.min(sh)).unwrap_or(u16::MAX),
    )
}

/// The source range `[start, end)` of destination index `d` (`dst ≤ src`).
fn span(d: u16, src: u16, dst: u16) -> (u16, u16) {
    let at = |i: u64| -> u16 {
        u16::try_from(i * u64::from(src) / u64::from(dst.max(1))).unwrap_or(src)
    };
    let start = at(u64::from(d));
    let end = at(u64::from(d) + 1).max(start + 1).min(src);
    (start, end)
}

/// The screen point under framebuffer point `(x, y)` of a `dst`
/// framebuffer showing a `src` screen: the centre of its box (points past
/// the framebuffer map to the last box).
pub fn src_point(src: (u16, u16), dst: (u16, u16), x: u16, y: u16) -> (u16, u16) {
    let centre = |v: u16, s: u16, d: u16| {
        if s <= d {
            return v;
        }
        let (start, end) = span(v.min(d.saturating_sub(1)), s, d);
        start + (end - start - 1) / 2
    };
    (centre(x, src.0, dst.0), centre(y, src.1, dst.1))
}

/// One scaled viewer's copy of the screen, downscaled, kept up to date for
/// the damaged areas only.
#[derive(Debug)]
pub struct Downscaler {
    src: (u16, u16),
    dst: (u16, u16),
    /// `dst.0` spans of source columns, then `dst.1` spans of rows.
    cols: Vec<(u16, u16)>,
    rows: Vec<(u16, u16)>,
    /// The downscaled screen, BGRX, `dst.0 × 4` bytes a row.
    data: Vec<u8>,
}

impl Downscaler {
    /// A downscaler from a `src` screen to a `dst` framebuffer (each side of
    /// `dst` at most `src`'s, at least 1); all black until updated.
    pub fn new(src: (u16, u16), dst: (u16, u16)) -> Self {
        let dst = (dst.0.clamp(1, src.0.max(1)), dst.1.clamp(1, src.1.max(1)));
        Downscaler {
            src,
            dst,
            cols: (0..dst.0).map(|d| span(d, src.0, dst.0)).collect(),
            rows: (0..dst.1).map(|d| span(d, src.1, dst.1)).collect(),
            data: vec![0; usize::from(dst.0) * usize::from(dst.1) * 4],
        }
    }

    /// The framebuffer size.
    pub fn size(&self) -> (u16, u16) {
        self.dst
    }

    /// The destination pixels whose box meets the screen rectangle `r`
    /// (none when `r` is empty or outside the screen).
    pub fn dst_rect(&self, r: Rect) -> Option<Rect> {
        let x = self.cols.partition_point(|&(_, end)| end <= r.x);
        let x_end = self.cols.partition_point(|&(start, _)| start < r.x + r.w);
        let y = self.rows.partition_point(|&(_, end)| end <= r.y);
        let y_end = self.rows.partition_point(|&(start, _)| start < r.y + r.h);
        let (x, x_end, y, y_end) = (
            u16::try_from(x).ok()?,
            u16::try_from(x_end).ok()?,
            u16::try_from(y).ok()?,
            u16::try_from(y_end).ok()?,
        );
        (x < x_end && y < y_end).then(|| Rect::new(x, y, x_end - x, y_end - y))
    }

    /// The screen pixels that the destination rectangle `r` is made of.
    pub fn src_rect(&self, r: Rect) -> Option<Rect> {
        let (x, _) = *self.cols.get(usize::from(r.x))?;
        let (_, x_end) = *self.cols.get(usize::from(r.x + r.w).checked_sub(1)?)?;
        let (y, _) = *self.rows.get(usize::from(r.y))?;
        let (_, y_end) = *self.rows.get(usize::from(r.y + r.h).checked_sub(1)?)?;
        Some(Rect::new(x, y, x_end - x, y_end - y))
    }

    /// The screen point under framebuffer point `(x, y)` (the centre of its
    /// box; input coordinates, PROTOCOL.md §8).
    pub fn src_point(&self, x: u16, y: u16) -> (u16, u16) {
        src_point(self.src, self.dst, x, y)
    }

    /// Recomputes the destination rectangle `r` from `screen` (which must be
    /// the `src` size; otherwise nothing changes).
    pub fn update(&mut self, screen: &PixelView<'_>, r: Rect) {
        if (screen.width(), screen.height()) != self.src || !r.fits(self.dst.0, self.dst.1) {
            return;
        }
        let stride = usize::from(self.dst.0) * 4;
        for dy in r.y..r.y + r.h {
            let Some(&(y0, y1)) = self.rows.get(usize::from(dy)) else {
                return;
            };
            for dx in r.x..r.x + r.w {
                let Some(&(x0, x1)) = self.cols.get(usize::from(dx)) else {
                    return;
                };
                let mut sum = [0u32; 3];
                for sy in y0..y1 {
                    let row = screen.row(sy);
                    let seg = row
                        .get(usize::from(x0) * 4..usize::from(x1) * 4)
                        .unwrap_or_default();
                    for p in seg.chunks_exact(4) {
                        sum[0] += u32::from(p[0]);
                        sum[1] += u32::from(p[1]);
                        sum[2] += u32::from(p[2]);
                    }
                }
                let n = u32::from(x1 - x0) * u32::from(y1 - y0);
                let at = usize::from(dy) * stride + usize::from(dx) * 4;
                if let Some(out) = self.data.get_mut(at..at + 4) {
                    for (o, s) in out.iter_mut().zip(sum) {
                        *o = u8::try_from((s + n / 2) / n).unwrap_or(u8::MAX);
                    }
                    out[3] = 0;
                }
            }
        }
    }

    /// The downscaled screen.
    pub fn view(&self) -> PixelView<'_> {
        PixelView::new(
            &self.data,
            usize::from(self.dst.0) * 4,
            self.dst.0,
            self.dst.1,
        )
        .unwrap_or_else(|_| unreachable_view())
    }
}

/// A 1 × 1 black view (never used: `data` always matches `dst`).
fn unreachable_view() -> PixelView<'static> {
    static BLACK: [u8; 4] = [0; 4];
    PixelView::new(&BLACK, 4, 1, 1).unwrap_or_else(|_| unreachable!("a 1x1 view is valid"))
}

/// The whole screen downscaled to `dst` as `0x00RRGGBB` pixels, row by row:
/// the reference a scaled viewer's framebuffer must equal.
pub fn downscale(screen: &PixelView<'_>, dst: (u16, u16)) -> Vec<u32> {
    let mut d = Downscaler::new((screen.width(), screen.height()), dst);
    let (w, h) = d.size();
    d.update(screen, Rect::new(0, 0, w, h));
    d.data
        .chunks_exact(4)
        .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
        .collect()
}

#[cfg(test)]
mod test {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_and_never_scales_up() {
        assert_eq!(fit((640, 480), (8192, 8192)), (640, 480));
        assert_eq!(fit((640, 480), (640, 480)), (640, 480));
        assert_eq!(fit((640, 480), (320, 240)), (320, 240));
        assert_eq!(fit((640, 480), (320, 1000)), (320, 240));
        assert_eq!(fit((640, 480), (1000, 240)), (320, 240));
        assert_eq!(fit((1024, 768), (500, 500)), (500, 375));
        assert_eq!(fit((8192, 1), (100, 100)), (100, 1));
        assert_eq!(fit((3, 5), (1, 1)), (1, 1));
    }

    #[test]
    fn spans_tile_the_source() {
        for (src, dst) in [(640u16, 320u16), (640, 333), (7, 7), (1024, 500), (5, 1)] {
            let spans: Vec<_> = (0..dst).map(|d| span(d, src, dst)).collect();
            assert_eq!(spans[0].0, 0);
            assert_eq!(spans.last().unwrap().1, src);
            for w in spans.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            assert!(spans.iter().all(|(s, e)| e > s));
        }
    }

    #[test]
    fn box_mean_and_rect_mapping() {
        // 4x2 -> 2x1: each destination pixel is the mean of a 2x2 box.
        let px: [[u8; 4]; 8] = [
            [0, 0, 0, 9],
            [2, 4, 6, 9],
            [10, 10, 10, 0],
            [10, 10, 11, 0],
            [0, 0, 0, 0],
            [2, 4, 6, 0],
            [10, 10, 10, 0],
            [10, 10, 10, 0],
        ];
        let data: Vec<u8> = px.iter().flatten().copied().collect();
        let view = PixelView::new(&data, 16, 4, 2).unwrap();
        assert_eq!(downscale(&view, (2, 1)), [0x0003_0201, 0x000a_0a0a]);
        let d = Downscaler::new((640, 480), (320, 240));
        assert_eq!(
            d.dst_rect(Rect::new(3, 3, 2, 2)),
            Some(Rect::new(1, 1, 2, 2))
        );
        assert_eq!(
            d.dst_rect(Rect::new(0, 0, 640, 480)),
            Some(Rect::new(0, 0, 320, 240))
        );
        assert_eq!(
            d.src_rect(Rect::new(1, 1, 2, 2)),
            Some(Rect::new(2, 2, 4, 4))
        );
        assert_eq!(d.src_point(10, 20), (20, 40));
        let d = Downscaler::new((640, 480), (333, 250));
        for r in [
            Rect::new(0, 0, 1, 1),
            Rect::new(639, 479, 1, 1),
            Rect::new(100, 7, 50, 3),
        ] {
            let dst = d.dst_rect(r).unwrap();
            let back = d.src_rect(dst).unwrap();
            assert!(
                back.x <= r.x && back.x + back.w >= r.x + r.w,
                "{r:?} {dst:?} {back:?}"
            );
            assert!(
                back.y <= r.y && back.y + back.h >= r.y + r.h,
                "{r:?} {dst:?} {back:?}"
            );
        }
    }
}
