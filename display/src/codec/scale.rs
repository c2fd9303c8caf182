//! Centre-aligned scaling, nearest or bilinear (PROTOCOL.md §6.1,
//! "Scaling"): destination pixel `d` samples source position
//! `(d + 0.5) × src / dst − 0.5`. Used for VIDEO planes on the client and for
//! fitting updates into a smaller viewport on the server.

/// The scaling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Filter {
    /// The source pixel under the destination pixel's centre.
    Nearest,
    /// A weighted mean of the four source pixels around it.
    #[default]
    Bilinear,
}

/// Where one destination coordinate samples a source line: the two source
/// indices and the weight of the second, in 1/65536.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tap {
    pub(crate) i0: usize,
    pub(crate) i1: usize,
    pub(crate) frac: u32,
}

/// The taps of `dst_len` destination coordinates over a source of `src_len`
/// (luma) samples. With `subsampled`, the taps index a chroma line of
/// `ceil(src_len / 2)` samples whose sample `i` sits at luma `2i + 0.5`.
pub(crate) fn taps(dst_len: usize, src_len: usize, subsampled: bool, filter: Filter) -> Vec<Tap> {
    let plane_len = if subsampled {
        src_len.div_ceil(2)
    } else {
        src_len
    };
    let last = plane_len.saturating_sub(1);
    let (dst, src) = (as_i64(dst_len.max(1)), as_i64(src_len));
    (0..dst_len)
        .map(|d| {
            let d = as_i64(d);
            match filter {
                Filter::Nearest => {
                    let luma = usize::try_from((2 * d + 1) * src / (2 * dst)).unwrap_or(0);
                    let luma = luma.min(src_len.saturating_sub(1));
                    let i = if subsampled { luma / 2 } else { luma };
                    let i = i.min(last);
                    Tap {
                        i0: i,
                        i1: i,
                        frac: 0,
                    }
                }
                Filter::Bilinear => {
                    let k = if subsampled { 2 } else { 1 };
                    let pos = ((2 * d + 1) * src * 65536) / (2 * dst * k) - 32768;
                    let pos = pos.clamp(0, as_i64(last) * 65536);
                    let i0 = usize::try_from(pos >> 16).unwrap_or(0);
                    Tap {
                        i0,
                        i1: (i0 + 1).min(last),
                        frac: u32::try_from(pos & 0xffff).unwrap_or(0),
                    }
                }
            }
        })
        .collect()
}

fn as_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `a + (b − a) × frac / 65536`, rounded.
pub(crate) fn lerp(a: u32, b: u32, frac: u32) -> u32 {
    (a * (65536 - frac) + b * frac + 32768) >> 16
}

/// Bilinear mix of four samples.
pub(crate) fn mix(p00: u32, p01: u32, p10: u32, p11: u32, fx: u32, fy: u32) -> u32 {
    lerp(lerp(p00, p01, fx), lerp(p10, p11, fx), fy)
}

/// Scales a `src_w × src_h` BGRX image to `dst_w × dst_h` (the X byte of the
/// result is 0). A `src` shorter than `src_w × src_h` gives black pixels
/// where it is missing.
pub fn scale_bgrx(
    src: &[u32],
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
    filter: Filter,
) -> Vec<u32> {
    let xs = taps(dst_w, src_w, false, filter);
    let ys = taps(dst_h, src_h, false, filter);
    let at = |x: usize, y: usize| src.get(y * src_w + x).copied().unwrap_or(0);
    let mut out = Vec::with_capacity(dst_w * dst_h);
    for ty in &ys {
        for tx in &xs {
            let (p00, p01) = (at(tx.i0, ty.i0), at(tx.i1, ty.i0));
            let (p10, p11) = (at(tx.i0, ty.i1), at(tx.i1, ty.i1));
            let channel = |shift: u32| {
                let c = |p: u32| (p >> shift) & 0xff;
                mix(c(p00), c(p01), c(p10), c(p11), tx.frac, ty.frac) << shift
            };
            out.push(channel(16) | channel(8) | channel(0));
        }
    }
    out
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn identity_taps() {
        for filter in [Filter::Nearest, Filter::Bilinear] {
            let t = taps(5, 5, false, filter);
            for (d, tap) in t.iter().enumerate() {
                assert_eq!((tap.i0, tap.frac), (d, 0), "{filter:?}");
            }
        }
    }

    #[test]
    fn chroma_taps() {
        // Nearest: the chroma sample of the luma pixel.
        let t = taps(5, 5, true, Filter::Nearest);
        let idx: Vec<usize> = t.iter().map(|t| t.i0).collect();
        assert_eq!(idx, [0, 0, 1, 1, 2]);
        // Bilinear at 1:1: luma 1 sits between chroma 0 (0.5) and 1 (2.5),
        // a quarter of the way.
        let t = taps(4, 4, true, Filter::Bilinear);
        assert_eq!((t[0].i0, t[0].frac), (0, 0));
        assert_eq!((t[1].i0, t[1].i1, t[1].frac), (0, 1, 16384));
        assert_eq!((t[2].i0, t[2].frac), (0, 49152));
        assert_eq!((t[3].i0, t[3].i1, t[3].frac), (1, 1, 0));
    }

    #[test]
    fn upscale_by_two() {
        let src = [0x00_00_00_00, 0x00_ff_ff_ff];
        let nearest = scale_bgrx(&src, 2, 1, 4, 1, Filter::Nearest);
        assert_eq!(nearest, [0, 0, 0xffffff, 0xffffff]);
        let bilinear = scale_bgrx(&src, 2, 1, 4, 1, Filter::Bilinear);
        assert_eq!(bilinear, [0, 0x404040, 0xbfbfbf, 0xffffff]);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        assert!(scale_bgrx(&[], 0, 0, 3, 3, Filter::Bilinear)
            .iter()
            .all(|&p| p == 0));
        assert!(scale_bgrx(&[1], 1, 1, 0, 0, Filter::Nearest).is_empty());
        assert_eq!(taps(3, 0, true, Filter::Bilinear).len(), 3);
    }
}
