//! The server's encoder, sans I/O: pixels in, display commands out
//! (PROTOCOL.md §5). It builds without any feature, so its tests run
//! everywhere and a client-side tool can use it too.
//!
//! - [`PixelView`]: a borrowed BGRX image with a stride — a damaged rectangle
//!   of the Xvfb framebuffer mapping, or a `GetImage` reply — never copied.
//! - [`encode`]: one rectangle of a view into commands. The area is cut into
//!   [`TILE`]-pixel tiles; a tile of one colour becomes part of an SFILL (all
//!   tiles of one colour share one message, runs of tiles merge into one
//!   rectangle), the others are sent as RAW bands (runs of mixed tiles in a
//!   tile row, LZ4 when smaller). BITMAP, PFILL, COPY and VIDEO detection come
//!   later.
//! - [`Region`]: the damaged rectangles not yet sent to one client, coalesced
//!   and bounded in count.
//!
//! The commands of one [`encode`] call never overlap, so a scheduler may send
//! them in any order.

mod region;

pub use self::region::Region;

use std::collections::BTreeMap;

use crate::protocol::{Command, Payload, RawRepr, Rect, SFillRepr};

/// The edge of the square tiles [`encode`] classifies.
pub const TILE: u16 = 64;

/// The X byte of a BGRX pixel (PROTOCOL.md §1): senders write it as 0.
const RGB_MASK: u32 = 0x00ff_ffff;

/// Why a view could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The size is 0 or above `MAX_DIMENSION`.
    #[error("bad view size {width}x{height}")]
    BadSize {
        /// Width asked for.
        width: u16,
        /// Height asked for.
        height: u16,
    },
    /// The stride is shorter than a row, or the bytes end before the last row.
    #[error("{len} bytes with stride {stride} do not hold {width}x{height} BGRX pixels")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Bytes per row.
        stride: usize,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
}

/// A borrowed BGRX image: `height` rows of `width` pixels, row `y` starting
/// at byte `y × stride`.
///
/// INVARIANT: `width`, `height` ≥ 1, `stride ≥ width × 4`, and `data` holds
/// `(height − 1) × stride + width × 4` bytes at least.
#[derive(Debug, Clone, Copy)]
pub struct PixelView<'a> {
    data: &'a [u8],
    stride: usize,
    width: u16,
    height: u16,
}

impl<'a> PixelView<'a> {
    /// A view of `data`; checks the invariant.
    pub fn new(data: &'a [u8], stride: usize, width: u16, height: u16) -> Result<Self, ViewError> {
        if width == 0
            || height == 0
            || width > crate::protocol::MAX_DIMENSION
            || height > crate::protocol::MAX_DIMENSION
        {
            return Err(ViewError::BadSize { width, height });
        }
        let row = usize::from(width) * 4;
        let need = (usize::from(height) - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(row));
        match need {
            Some(need) if stride >= row && data.len() >= need => Ok(PixelView {
                data,
                stride,
                width,
                height,
            }),
            _ => Err(ViewError::TooShort {
                len: data.len(),
                stride,
                width,
                height,
            }),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }

    /// The part of the view under `rect` (same stride, no copy), or `None`
    /// when `rect` is empty or not inside the view.
    pub fn sub(&self, rect: Rect) -> Option<PixelView<'a>> {
        if rect.w == 0 || rect.h == 0 || !rect.fits(self.width, self.height) {
            return None;
        }
        let start = usize::from(rect.y) * self.stride + usize::from(rect.x) * 4;
        let data = self.data.get(start..)?;
        PixelView::new(data, self.stride, rect.w, rect.h).ok()
    }

    /// Row `y`'s `width × 4` bytes (empty past the last row).
    pub fn row(&self, y: u16) -> &'a [u8] {
        let start = usize::from(y) * self.stride;
        self.data
            .get(start..start + usize::from(self.width) * 4)
            .unwrap_or_default()
    }

    /// The pixel at `(x, y)` with its X byte cleared, `0` outside the view.
    pub fn pixel(&self, x: u16, y: u16) -> u32 {
        let at = usize::from(x) * 4;
        match self.row(y).get(at..at + 4) {
            Some(&[b, g, r, x]) => u32::from_le_bytes([b, g, r, x]) & RGB_MASK,
            _ => 0,
        }
    }

    /// The colour of the whole view when it has only one (X bytes ignored).
    pub fn solid_colour(&self) -> Option<u32> {
        let first = self.pixel(0, 0);
        let all = (0..self.height).all(|y| {
            self.row(y)
                .chunks_exact(4)
                .all(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & RGB_MASK == first)
        });
        all.then_some(first)
    }

    /// The pixels as tightly packed BGRX rows with X bytes cleared.
    pub fn to_packed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::from(self.width) * usize::from(self.height) * 4);
        for y in 0..self.height {
            for p in self.row(y).chunks_exact(4) {
                out.extend_from_slice(&[p[0], p[1], p[2], 0]);
            }
        }
        out
    }
}

/// Encodes all of `view` as commands that paint it at `(dst_x, dst_y)` of
/// the client framebuffer: SFILL for one-colour tiles, RAW for the rest.
///
/// `dst_x + view.width()` and `dst_y + view.height()` must be at most
/// `MAX_DIMENSION` (they are when the view is part of a screen of that size);
/// rectangles past it are left out.
pub fn encode(view: &PixelView<'_>, dst_x: u16, dst_y: u16) -> Vec<Command<'static>> {
    // Solid rectangles per colour. `open` holds, per (x, w, colour), the
    // index of a rectangle that ends at the current tile row, so that equal
    // runs in consecutive tile rows merge vertically.
    let mut fills: BTreeMap<u32, Vec<Rect>> = BTreeMap::new();
    let mut open: BTreeMap<(u16, u16, u32), usize> = BTreeMap::new();
    let mut raws = Vec::new();
    let mut ty = 0u16;
    while ty < view.height {
        let th = TILE.min(view.height - ty);
        let mut next_open = BTreeMap::new();
        // Classify the tiles of this row into runs: (x, w, Some(colour)) for
        // solid runs of one colour, (x, w, None) for mixed runs.
        let mut runs: Vec<(u16, u16, Option<u32>)> = Vec::new();
        let mut tx = 0u16;
        while tx < view.width {
            let tw = TILE.min(view.width - tx);
            let colour = view
                .sub(Rect::new(tx, ty, tw, th))
                .and_then(|tile| tile.solid_colour());
            match runs.last_mut() {
                Some((_, w, c)) if *c == colour => *w += tw,
                _ => runs.push((tx, tw, colour)),
            }
            tx += tw;
        }
        for (x, w, colour) in runs {
            let Some(abs) = translate(Rect::new(x, ty, w, th), dst_x, dst_y) else {
                continue;
            };
            match colour {
                Some(colour) => {
                    let rects = fills.entry(colour).or_default();
                    let index = match open.get(&(x, w, colour)) {
                        Some(&i) => match rects.get_mut(i) {
                            Some(r) => {
                                r.h += th;
                                i
                            }
                            None => push(rects, abs),
                        },
                        None => push(rects, abs),
                    };
                    next_open.insert((x, w, colour), index);
                }
                None => {
                    if let Some(part) = view.sub(Rect::new(x, ty, w, th)) {
                        raws.push(Command::Raw(RawRepr {
                            rect: abs,
                            data: Payload::compress(&part.to_packed()),
                        }));
                    }
                }
            }
        }
        open = next_open;
        ty += th;
    }
    let mut commands = Vec::new();
    for (colour, rects) in fills {
        for chunk in rects.chunks(usize::from(u16::MAX)) {
            commands.push(Command::SFill(SFillRepr {
                colour,
                rects: chunk.to_vec(),
            }));
        }
    }
    commands.extend(raws);
    commands
}

fn push(rects: &mut Vec<Rect>, rect: Rect) -> usize {
    rects.push(rect);
    rects.len() - 1
}

fn translate(rect: Rect, dx: u16, dy: u16) -> Option<Rect> {
    let x = rect.x.checked_add(dx)?;
    let y = rect.y.checked_add(dy)?;
    let r = Rect::new(x, y, rect.w, rect.h);
    r.validate().is_ok().then_some(r)
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec::Framebuffer;

    /// A `w × h` image, X bytes set to garbage to check they are ignored.
    fn image(w: u16, h: u16, f: impl Fn(u16, u16) -> u32) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&(f(x, y) | 0xab00_0000).to_le_bytes());
            }
        }
        out
    }

    fn decode(width: u16, height: u16, commands: &[Command<'_>]) -> Framebuffer {
        let mut fb = Framebuffer::new(width, height).unwrap();
        for c in commands {
            fb.apply(c).unwrap();
        }
        fb
    }

    fn expected(view: &PixelView<'_>) -> Vec<u32> {
        let mut out = Vec::new();
        for y in 0..view.height() {
            for x in 0..view.width() {
                out.push(view.pixel(x, y));
            }
        }
        out
    }

    #[test]
    fn view_checks_its_bounds() {
        let data = vec![0; 4 * 10];
        assert!(PixelView::new(&data, 20, 5, 2).is_ok());
        assert!(PixelView::new(&data, 20, 5, 3).is_err());
        assert!(PixelView::new(&data, 16, 5, 2).is_err());
        assert!(PixelView::new(&data, 20, 0, 2).is_err());
        let view = PixelView::new(&data, 20, 5, 2).unwrap();
        assert!(view.sub(Rect::new(4, 1, 1, 1)).is_some());
        assert!(view.sub(Rect::new(4, 1, 2, 1)).is_none());
    }

    #[test]
    fn solid_screen_is_one_sfill_rect() {
        let data = image(300, 200, |_, _| 0x0012_3456);
        let view = PixelView::new(&data, 300 * 4, 300, 200).unwrap();
        let commands = encode(&view, 0, 0);
        assert_eq!(
            commands,
            [Command::SFill(SFillRepr {
                colour: 0x0012_3456,
                rects: vec![Rect::new(0, 0, 300, 200)],
            })]
        );
    }

    #[test]
    fn mixed_image_round_trips_through_the_framebuffer() {
        // Left half: stripes of two colours per tile row (solid tiles);
        // right half: noise (RAW).
        let (w, h) = (200u16, 150u16);
        let data = image(w, h, |x, y| {
            if x < 128 {
                if (y / 64) % 2 == 0 {
                    0x00ff_0000
                } else {
                    0x0000_ff00
                }
            } else {
                u32::from(x).wrapping_mul(2_654_435_761) ^ u32::from(y).wrapping_mul(40_503)
            }
        });
        let view = PixelView::new(&data, usize::from(w) * 4, w, h).unwrap();
        let commands = encode(&view, 0, 0);
        let sfills = commands
            .iter()
            .filter(|c| matches!(c, Command::SFill(_)))
            .count();
        let raws = commands
            .iter()
            .filter(|c| matches!(c, Command::Raw(_)))
            .count();
        assert_eq!(sfills, 2);
        // One RAW per tile row, the run of mixed tiles on the right.
        assert_eq!(raws, 3);
        let fb = decode(w, h, &commands);
        assert_eq!(fb.pixels(), expected(&view).as_slice());
    }

    #[test]
    fn sub_view_lands_at_its_destination() {
        let (w, h) = (100u16, 90u16);
        let data = image(w, h, |x, y| u32::from(x) * 7 + u32::from(y) * 1000);
        let view = PixelView::new(&data, usize::from(w) * 4, w, h).unwrap();
        let rect = Rect::new(13, 7, 70, 66);
        let part = view.sub(rect).unwrap();
        let commands = encode(&part, rect.x, rect.y);
        let fb = decode(w, h, &commands);
        for y in 0..h {
            for x in 0..w {
                let inside = (13..83).contains(&x) && (7..73).contains(&y);
                let want = if inside { view.pixel(x, y) } else { 0 };
                assert_eq!(fb.pixel(x, y), Some(want), "({x}, {y})");
            }
        }
    }

    #[test]
    fn vertical_runs_merge() {
        // Two columns of colour, each spanning several tile rows.
        let data = image(128, 256, |x, _| if x < 64 { 1 } else { 2 });
        let view = PixelView::new(&data, 128 * 4, 128, 256).unwrap();
        let commands = encode(&view, 10, 20);
        assert_eq!(
            commands,
            [
                Command::SFill(SFillRepr {
                    colour: 1,
                    rects: vec![Rect::new(10, 20, 64, 256)]
                }),
                Command::SFill(SFillRepr {
                    colour: 2,
                    rects: vec![Rect::new(74, 20, 64, 256)]
                }),
            ]
        );
    }
}
