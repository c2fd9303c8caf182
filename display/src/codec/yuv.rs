//! YUV 4:2:0 (I420) ↔ BGRX, BT.601 full range, in 16.16 fixed point
//! (PROTOCOL.md §6.1, "Colour"), and the PSNR that decides whether a video
//! area is "close".

use super::scale::{mix, taps, Filter};

/// An I420 frame: Y is `width × height`, U and V are
/// `ceil(width / 2) × ceil(height / 2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct I420<'a> {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Luma.
    pub y: &'a [u8],
    /// Cb.
    pub u: &'a [u8],
    /// Cr.
    pub v: &'a [u8],
}

/// An owned I420 frame, as [`bgrx_to_i420`] makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420Buf {
    /// Frame width.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Luma.
    pub y: Vec<u8>,
    /// Cb.
    pub u: Vec<u8>,
    /// Cr.
    pub v: Vec<u8>,
}

impl I420Buf {
    /// A borrowed view.
    pub fn as_ref(&self) -> I420<'_> {
        I420 {
            width: self.width,
            height: self.height,
            y: &self.y,
            u: &self.u,
            v: &self.v,
        }
    }
}

fn clamp_u8(value: i32) -> u32 {
    u32::try_from(value.clamp(0, 255)).unwrap_or(0)
}

fn channel(pixel: u32, shift: u32) -> i32 {
    i32::try_from((pixel >> shift) & 0xff).unwrap_or(0)
}

/// One pixel: BT.601 full range YCbCr to BGRX (X = 0).
pub fn yuv_to_bgrx(y: u8, u: u8, v: u8) -> u32 {
    let y = (i32::from(y) << 16) + 32768;
    let (u, v) = (i32::from(u) - 128, i32::from(v) - 128);
    let r = clamp_u8((y + 91_881 * v) >> 16);
    let g = clamp_u8((y - 22_554 * u - 46_802 * v) >> 16);
    let b = clamp_u8((y + 116_130 * u) >> 16);
    (r << 16) | (g << 8) | b
}

/// One pixel: BGRX to BT.601 full range (Y, Cb, Cr).
pub fn bgrx_to_yuv(pixel: u32) -> (u8, u8, u8) {
    let (r, g, b) = (channel(pixel, 16), channel(pixel, 8), channel(pixel, 0));
    yuv_of(r, g, b)
}

fn yuv_of(r: i32, g: i32, b: i32) -> (u8, u8, u8) {
    let to_u8 = |value: i32| u8::try_from(value.clamp(0, 255)).unwrap_or(0);
    let y = (19_595 * r + 38_470 * g + 7_471 * b + 32_768) >> 16;
    let u = (-11_059 * r - 21_709 * g + 32_768 * b + (128 << 16) + 32_768) >> 16;
    let v = (32_768 * r - 27_439 * g - 5_329 * b + (128 << 16) + 32_768) >> 16;
    (to_u8(y), to_u8(u), to_u8(v))
}

/// Converts a `width × height` BGRX image (rows of `width`) to I420; each
/// chroma sample is the mean of its (up to) 2 × 2 pixels. Missing pixels of a
/// short `pixels` count as black.
pub fn bgrx_to_i420(pixels: &[u32], width: usize, height: usize) -> I420Buf {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let at = |x: usize, y: usize| pixels.get(y * width + x).copied().unwrap_or(0);
    let mut y_plane = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            y_plane.push(bgrx_to_yuv(at(x, y)).0);
        }
    }
    let mut u_plane = Vec::with_capacity(cw * ch);
    let mut v_plane = Vec::with_capacity(cw * ch);
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut r, mut g, mut b, mut n) = (0, 0, 0, 0);
            for y in (2 * cy)..(2 * cy + 2).min(height) {
                for x in (2 * cx)..(2 * cx + 2).min(width) {
                    let p = at(x, y);
                    r += channel(p, 16);
                    g += channel(p, 8);
                    b += channel(p, 0);
                    n += 1;
                }
            }
            let n = n.max(1);
            let (_, u, v) = yuv_of((r + n / 2) / n, (g + n / 2) / n, (b + n / 2) / n);
            u_plane.push(u);
            v_plane.push(v);
        }
    }
    I420Buf {
        width,
        height,
        y: y_plane,
        u: u_plane,
        v: v_plane,
    }
}

/// Converts `src` to BGRX scaled to `dst_w × dst_h`, writing row `r` of the
/// result to `dst[r × stride ..][.. dst_w]`. Samples missing from short
/// planes read as 0; rows that do not fit in `dst` are skipped (callers check
/// bounds first; this only keeps a wrong call from panicking).
pub fn i420_to_bgrx(
    src: &I420<'_>,
    dst: &mut [u32],
    stride: usize,
    dst_w: usize,
    dst_h: usize,
    filter: Filter,
) {
    let (cw, width) = (src.width.div_ceil(2), src.width);
    let xs = taps(dst_w, src.width, false, filter);
    let ys = taps(dst_h, src.height, false, filter);
    let cxs = taps(dst_w, src.width, true, filter);
    let cys = taps(dst_h, src.height, true, filter);
    let sample = |plane: &[u8], w: usize, x: usize, y: usize| {
        u32::from(plane.get(y * w + x).copied().unwrap_or(0))
    };
    for (row, (ty, cy)) in ys.iter().zip(&cys).enumerate() {
        let Some(out) = dst
            .get_mut(row * stride..)
            .and_then(|rest| rest.get_mut(..dst_w))
        else {
            return;
        };
        for ((px, tx), cx) in out.iter_mut().zip(&xs).zip(&cxs) {
            let luma = mix(
                sample(src.y, width, tx.i0, ty.i0),
                sample(src.y, width, tx.i1, ty.i0),
                sample(src.y, width, tx.i0, ty.i1),
                sample(src.y, width, tx.i1, ty.i1),
                tx.frac,
                ty.frac,
            );
            let chroma = |plane: &[u8]| {
                mix(
                    sample(plane, cw, cx.i0, cy.i0),
                    sample(plane, cw, cx.i1, cy.i0),
                    sample(plane, cw, cx.i0, cy.i1),
                    sample(plane, cw, cx.i1, cy.i1),
                    cx.frac,
                    cy.frac,
                )
            };
            let to_u8 = |v: u32| u8::try_from(v.min(255)).unwrap_or(255);
            *px = yuv_to_bgrx(to_u8(luma), to_u8(chroma(src.u)), to_u8(chroma(src.v)));
        }
    }
}

/// PSNR in dB over the R, G and B channels of two BGRX images of the same
/// size (8 bits, peak 255); infinite when they are equal, 0 when their sizes
/// differ or they are empty. An area is "close" at ≥ 30 dB (PROTOCOL.md
/// §6.1).
pub fn psnr(a: &[u32], b: &[u32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let mut sum = 0u64;
    for (&p, &q) in a.iter().zip(b) {
        for shift in [0, 8, 16] {
            let d = channel(p, shift) - channel(q, shift);
            sum += u64::from(d.unsigned_abs() * d.unsigned_abs());
        }
    }
    if sum == 0 {
        return f64::INFINITY;
    }
    // Precision: a mean of at most 3 × 2^26 squares of ≤ 255² is exact in f64.
    let samples = a.len() as f64 * 3.0;
    let mse = sum as f64 / samples;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// The PSNR that counts as "close" (PROTOCOL.md §6.1).
pub const CLOSE_PSNR_DB: f64 = 30.0;

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn primaries_round_trip() {
        for pixel in [
            0x000000, 0xffffff, 0xff0000, 0x00ff00, 0x0000ff, 0x808080, 0x123456,
        ] {
            let (y, u, v) = bgrx_to_yuv(pixel);
            let back = yuv_to_bgrx(y, u, v);
            for shift in [0, 8, 16] {
                let d = channel(pixel, shift) - channel(back, shift);
                assert!(d.abs() <= 2, "{pixel:06x} -> {back:06x}");
            }
        }
        assert_eq!(bgrx_to_yuv(0xffffff), (255, 128, 128));
        assert_eq!(bgrx_to_yuv(0), (0, 128, 128));
    }

    #[test]
    fn flat_frame_is_exact() {
        let frame = bgrx_to_i420(&[0x336699; 15], 5, 3);
        assert_eq!((frame.y.len(), frame.u.len()), (15, 6));
        let mut out = vec![0; 15];
        i420_to_bgrx(&frame.as_ref(), &mut out, 5, 5, 3, Filter::Bilinear);
        let expect = {
            let (y, u, v) = bgrx_to_yuv(0x336699);
            yuv_to_bgrx(y, u, v)
        };
        assert!(out.iter().all(|&p| p == expect));
    }

    #[test]
    fn psnr_values() {
        assert_eq!(psnr(&[1, 2], &[1, 2]), f64::INFINITY);
        assert_eq!(psnr(&[1], &[1, 2]), 0.0);
        // Every channel off by 1: MSE 1, PSNR 48.13 dB.
        let p = psnr(&[0x010101], &[0x020202]);
        assert!((p - 48.13).abs() < 0.01, "{p}");
    }

    #[test]
    fn short_planes_do_not_panic() {
        let src = I420 {
            width: 4,
            height: 4,
            y: &[1],
            u: &[],
            v: &[2, 3],
        };
        let mut out = vec![0; 3];
        i420_to_bgrx(&src, &mut out, 2, 2, 2, Filter::Bilinear);
        i420_to_bgrx(&src, &mut out, 100, 8, 8, Filter::Nearest);
    }
}
