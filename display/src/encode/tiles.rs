//! Painting: the pixels of a snapshot that differ from the client's image,
//! as SFILL, BITMAP, PFILL and RAW (PROTOCOL.md §5).
//!
//! The snapshot is cut into bands of [`TILE`] rows; in each band only the
//! bounding box of the pixels that differ from the client's image is kept,
//! and that box is cut into tiles of [`TILE`] columns. A tile equal to the
//! client's image is skipped; the others are classified:
//!
//! 1. one colour: a rectangle of the SFILL of that colour (one SFILL per
//!    colour per call, neighbouring tiles merged);
//! 2. two colours (text, glyphs, lines): an opaque BITMAP, neighbouring
//!    tiles of the same colour pair merged up to [`BITMAP_RUN`] tiles;
//! 3. three or four colours (coloured text, a text cursor, selections):
//!    layered BITMAPs — an opaque one for the two most frequent colours,
//!    then a transparent one per other colour — when their bytes are fewer
//!    than the tile's RAW; neighbouring tiles of the same colours merged up
//!    to [`BITMAP_RUN`] tiles;
//! 4. a full tile whose content repeats — the same pixels at the same
//!    position modulo [`TILE`] elsewhere in the call, or a pattern whose
//!    period is a power of two below [`TILE`] — PFILL, when its bytes are
//!    fewer than the RAWs of those tiles would be (each estimated as the
//!    LZ4 block of the tile alone);
//! 5. everything else: RAW (LZ4 when smaller), neighbouring tiles merged up
//!    to [`RAW_RUN`] tiles, so that one RAW is at most 64 KiB of pixels and
//!    the scheduler can put small updates between the pieces of a big one.
//!
//! With [`Packing::Plain`] the payloads stay plain (for a connection whose
//! zstd stream compresses them); the choices above still weigh LZ4 sizes.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{BitmapRepr, Command, PFillRepr, Payload, RawRepr, Rect, SFillRepr};

use super::image::{hash_pixels, Image};
use super::{Packing, TILE};

/// The most tiles in one RAW (64 KiB of pixels).
pub const RAW_RUN: u16 = 4;
/// The most tiles in one BITMAP.
pub const BITMAP_RUN: u16 = 8;
/// The most colours a tile may have to be sent as layered BITMAPs.
pub const MAX_LAYERS: usize = 4;

/// The colours of a tile of 3 ..= [`MAX_LAYERS`] colours, ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Palette {
    colours: [u32; MAX_LAYERS],
    n: usize,
}

impl Palette {
    fn colours(&self) -> &[u32] {
        self.colours.get(..self.n).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Solid(u32),
    Two {
        bg: u32,
        fg: u32,
    },
    Few(Palette),
    Mixed,
    /// A member of PFILL group `n`.
    Pattern(usize),
}

/// A changed tile: its place in the snapshot and its class.
#[derive(Debug, Clone, Copy)]
struct Tile {
    rect: Rect,
    class: Class,
}

/// Full tiles of equal content at equal positions modulo [`TILE`].
struct Group {
    /// Where the first one is in the snapshot.
    first: Rect,
    /// Its pixels (the representative every member is compared with).
    pixels: Vec<u32>,
    count: usize,
    /// Whether it goes as PFILL (decided after all tiles are seen).
    pfill: bool,
}

/// Encodes the pixels of `snap` (placed at `(at_x, at_y)` of the client
/// framebuffer) that differ from `model`, and writes them into `model`.
pub(super) fn paint(
    model: &mut Image,
    snap: &Image,
    (at_x, at_y): (u16, u16),
    packing: Packing,
) -> Vec<Command<'static>> {
    let pack = |bytes: Vec<u8>| match packing {
        Packing::Lz4 => Payload::compress(&bytes),
        Packing::Plain => Payload::plain(bytes),
    };
    let mut tiles: Vec<Tile> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut by_key: HashMap<(u64, u16, u16), Vec<usize>> = HashMap::new();
    // Pass 1: changed tiles and their classes.
    let mut band_y = 0u16;
    while band_y < snap.height() {
        let band_h = TILE.min(snap.height() - band_y);
        if let Some(bbox) = changed_box(model, snap, at_x, at_y, band_y, band_h) {
            let mut tx = bbox.x;
            while usize::from(tx) < bbox.right() {
                let tw = TILE.min(u16::try_from(bbox.right() - usize::from(tx)).unwrap_or(TILE));
                let rect = Rect::new(tx, bbox.y, tw, bbox.h);
                tx += tw;
                if !differs(model, snap, at_x, at_y, rect) {
                    continue;
                }
                let mut class = classify(snap, rect);
                if let Class::Few(palette) = class {
                    if !layers_pay(snap, rect, &palette) {
                        class = Class::Mixed;
                    }
                }
                if class == Class::Mixed && tw == TILE && bbox.h == TILE {
                    class = group(snap, rect, at_x, at_y, &mut groups, &mut by_key);
                }
                tiles.push(Tile { rect, class });
            }
            // The client will have the whole box (unchanged tiles are equal).
            model.blit_from(snap, bbox, at_x + bbox.x, at_y + bbox.y);
        }
        band_y += band_h;
    }
    // Pass 2: which groups pay as PFILL.
    let mut pfill_tiles: Vec<(u16, u16, Payload<'static>, u16, u16)> = Vec::new();
    let mut pfill_of_group: HashMap<usize, usize> = HashMap::new();
    for (i, g) in groups.iter_mut().enumerate() {
        let (pw, ph) = period(&g.pixels);
        if g.count == 1 && (pw, ph) == (TILE, TILE) {
            // A PFILL of one whole tile is a RAW with a longer header.
            continue;
        }
        let single = lz4_len(&g.pixels);
        let tile = sub_tile(&g.pixels, pw, ph);
        let bytes = to_bytes(&tile);
        // Weighed by its LZ4 size in either packing (as the RAWs are).
        let lz4 = Payload::compress(&bytes);
        let pfill_bytes = 5 + PFillRepr::HEADER_LEN + Rect::LEN * g.count + lz4.len();
        let raw_bytes = g.count * (5 + RawRepr::HEADER_LEN + single);
        if pfill_bytes < raw_bytes {
            g.pfill = true;
            let abs_x = at_x + g.first.x;
            let abs_y = at_y + g.first.y;
            pfill_of_group.insert(i, pfill_tiles.len());
            let payload = match packing {
                Packing::Lz4 => lz4,
                Packing::Plain => Payload::plain(bytes),
            };
            pfill_tiles.push((pw, ph, payload, abs_x % pw, abs_y % ph));
        }
    }
    for t in &mut tiles {
        if let Class::Pattern(g) = t.class {
            if !groups.get(g).is_some_and(|g| g.pfill) {
                t.class = Class::Mixed;
            }
        }
    }
    // Pass 3: runs of neighbouring tiles of one class.
    let mut fills: BTreeMap<u32, Vec<Rect>> = BTreeMap::new();
    let mut pfill_rects: Vec<Vec<Rect>> = vec![Vec::new(); pfill_tiles.len()];
    let mut bitmaps = Vec::new();
    let mut raws = Vec::new();
    let mut i = 0;
    while let Some(first) = tiles.get(i) {
        let mut run = first.rect;
        let mut n = 1u16;
        let limit = match first.class {
            Class::Two { .. } | Class::Few(_) => BITMAP_RUN,
            Class::Mixed => RAW_RUN,
            Class::Solid(_) | Class::Pattern(_) => u16::MAX,
        };
        while let Some(next) = tiles.get(i + usize::from(n)) {
            let adjacent = next.rect.y == run.y
                && next.rect.h == run.h
                && usize::from(next.rect.x) == run.right();
            if !adjacent || next.class != first.class || n >= limit {
                break;
            }
            run.w += next.rect.w;
            n += 1;
        }
        i += usize::from(n);
        let abs = Rect::new(at_x + run.x, at_y + run.y, run.w, run.h);
        match first.class {
            Class::Solid(c) => {
                let rects = fills.entry(c).or_default();
                // Merge with the same columns in the band above.
                match rects
                    .iter_mut()
                    .rev()
                    .find(|r| r.x == abs.x && r.w == abs.w && r.bottom() == usize::from(abs.y))
                {
                    Some(r) => r.h += abs.h,
                    None => rects.push(abs),
                }
            }
            Class::Pattern(g) => {
                if let Some(rects) = pfill_of_group.get(&g).and_then(|&p| pfill_rects.get_mut(p)) {
                    rects.push(abs);
                }
            }
            Class::Two { bg, fg } => bitmaps.push(Command::Bitmap(BitmapRepr {
                rect: abs,
                fg,
                bg: Some(bg),
                bits: pack(mask(snap, run, fg)),
            })),
            Class::Few(palette) => bitmaps.extend(layers(snap, run, abs, &palette, &pack)),
            Class::Mixed => raws.push(Command::Raw(RawRepr {
                rect: abs,
                data: pack(to_bytes(&pixels_of(snap, run))),
            })),
        }
    }
    let mut out = Vec::new();
    for (colour, rects) in fills {
        for chunk in rects.chunks(usize::from(u16::MAX)) {
            out.push(Command::SFill(SFillRepr {
                colour,
                rects: chunk.to_vec(),
            }));
        }
    }
    out.extend(bitmaps);
    for ((tile_w, tile_h, tile, origin_x, origin_y), rects) in
        pfill_tiles.into_iter().zip(pfill_rects)
    {
        for chunk in rects.chunks(usize::from(u16::MAX)) {
            out.push(Command::PFill(PFillRepr {
                tile_w,
                tile_h,
                origin_x,
                origin_y,
                rects: chunk.to_vec(),
                tile: tile.clone(),
            }));
        }
    }
    out.extend(raws);
    out
}

/// The bounding box (in snapshot coordinates) of the pixels of rows
/// `y .. y + h` that differ from the model.
fn changed_box(model: &Image, snap: &Image, at_x: u16, at_y: u16, y: u16, h: u16) -> Option<Rect> {
    let w = snap.width();
    let (mut x0, mut x1, mut y0, mut y1) = (u16::MAX, 0u16, u16::MAX, 0u16);
    for row in y..y + h {
        let s = snap.seg(0, row, w);
        let m = model.seg(at_x, at_y + row, w);
        if m.len() != s.len() {
            // Not inside the model: treat the whole row as changed.
            (x0, x1, y0, y1) = (0, w, y0.min(row), row + 1);
            continue;
        }
        let Some(first) = s.iter().zip(m).position(|(a, b)| a != b) else {
            continue;
        };
        let last = s.iter().zip(m).rposition(|(a, b)| a != b).unwrap_or(first);
        x0 = x0.min(u16::try_from(first).unwrap_or(0));
        x1 = x1.max(u16::try_from(last + 1).unwrap_or(w));
        y0 = y0.min(row);
        y1 = row + 1;
    }
    (x0 < x1).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
}

fn differs(model: &Image, snap: &Image, at_x: u16, at_y: u16, rect: Rect) -> bool {
    (rect.y..rect.y + rect.h)
        .any(|y| snap.seg(rect.x, y, rect.w) != model.seg(at_x + rect.x, at_y + y, rect.w))
}

fn classify(snap: &Image, rect: Rect) -> Class {
    let mut colours = [0u32; MAX_LAYERS];
    let mut n = 0;
    for y in rect.y..rect.y + rect.h {
        for &p in snap.seg(rect.x, y, rect.w) {
            let known = colours.get(..n).unwrap_or_default();
            if known.contains(&p) {
                continue;
            }
            match colours.get_mut(n) {
                Some(slot) => {
                    *slot = p;
                    n += 1;
                }
                None => return Class::Mixed,
            }
        }
    }
    let found = colours.get_mut(..n).unwrap_or_default();
    found.sort_unstable();
    match *found {
        [] => Class::Solid(0),
        [c] => Class::Solid(c),
        [bg, fg] => Class::Two { bg, fg },
        _ => Class::Few(Palette { colours, n }),
    }
}

/// The layered BITMAPs of `rect` of the snapshot, painted at `abs`: an
/// opaque one for the two most frequent colours, then a transparent one
/// per other colour (PROTOCOL.md §5.4).
fn layers(
    snap: &Image,
    rect: Rect,
    abs: Rect,
    palette: &Palette,
    pack: &dyn Fn(Vec<u8>) -> Payload<'static>,
) -> Vec<Command<'static>> {
    let mut counts: Vec<(usize, u32)> = palette.colours().iter().map(|&c| (0, c)).collect();
    for y in rect.y..rect.y + rect.h {
        for &p in snap.seg(rect.x, y, rect.w) {
            if let Some(entry) = counts.iter_mut().find(|(_, c)| *c == p) {
                entry.0 += 1;
            }
        }
    }
    // Most frequent first (ties: the smaller colour, for stable output).
    counts.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = Vec::new();
    let mut order = counts.iter().map(|&(_, c)| c);
    let (Some(bg), Some(fg)) = (order.next(), order.next()) else {
        return out;
    };
    out.push(Command::Bitmap(BitmapRepr {
        rect: abs,
        fg,
        bg: Some(bg),
        bits: pack(mask(snap, rect, fg)),
    }));
    for c in order {
        out.push(Command::Bitmap(BitmapRepr {
            rect: abs,
            fg: c,
            bg: None,
            bits: pack(mask(snap, rect, c)),
        }));
    }
    out
}

/// Whether layered BITMAPs of a tile are fewer bytes than its RAW.
fn layers_pay(snap: &Image, rect: Rect, palette: &Palette) -> bool {
    let lz4 = |bytes: Vec<u8>| Payload::compress(&bytes);
    let layered: usize = layers(snap, rect, rect, palette, &lz4)
        .into_iter()
        .map(|c| crate::protocol::Message::Command(c).buffer_len())
        .sum();
    let raw = 5 + RawRepr::HEADER_LEN + lz4_len(&pixels_of(snap, rect));
    layered < raw
}

/// Puts a full mixed tile into the group of equal tiles at the same position
/// modulo [`TILE`] (verified pixel by pixel, not by hash alone).
fn group(
    snap: &Image,
    rect: Rect,
    at_x: u16,
    at_y: u16,
    groups: &mut Vec<Group>,
    by_key: &mut HashMap<(u64, u16, u16), Vec<usize>>,
) -> Class {
    let pixels = pixels_of(snap, rect);
    let key = (
        hash_pixels(pixels.iter().copied()),
        (at_x + rect.x) % TILE,
        (at_y + rect.y) % TILE,
    );
    let candidates = by_key.entry(key).or_default();
    for &g in candidates.iter() {
        if let Some(group) = groups.get_mut(g) {
            if group.pixels == pixels {
                group.count += 1;
                return Class::Pattern(g);
            }
        }
    }
    candidates.push(groups.len());
    groups.push(Group {
        first: rect,
        pixels,
        count: 1,
        pfill: false,
    });
    Class::Pattern(groups.len() - 1)
}

/// The smallest power-of-two periods (≤ [`TILE`]) of a full tile.
fn period(px: &[u32]) -> (u16, u16) {
    let n = usize::from(TILE);
    let at = |x: usize, y: usize| px.get(y * n + x).copied();
    let mut pw = 1;
    while pw < n && !(0..n).all(|y| (pw..n).all(|x| at(x, y) == at(x - pw, y))) {
        pw *= 2;
    }
    let mut ph = 1;
    while ph < n && !(ph..n).all(|y| (0..n).all(|x| at(x, y) == at(x, y - ph))) {
        ph *= 2;
    }
    (
        u16::try_from(pw).unwrap_or(TILE),
        u16::try_from(ph).unwrap_or(TILE),
    )
}

fn sub_tile(px: &[u32], pw: u16, ph: u16) -> Vec<u32> {
    let n = usize::from(TILE);
    let mut out = Vec::with_capacity(usize::from(pw) * usize::from(ph));
    for y in 0..usize::from(ph) {
        out.extend(px.iter().skip(y * n).take(usize::from(pw)));
    }
    out
}

fn pixels_of(snap: &Image, rect: Rect) -> Vec<u32> {
    let mut out = Vec::with_capacity(rect.area());
    for y in rect.y..rect.y + rect.h {
        out.extend_from_slice(snap.seg(rect.x, y, rect.w));
    }
    out
}

fn to_bytes(px: &[u32]) -> Vec<u8> {
    px.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn lz4_len(px: &[u32]) -> usize {
    lz4_flex::block::compress(&to_bytes(px))
        .len()
        .min(px.len() * 4)
}

/// The BITMAP mask of `rect`: 1 where the pixel is `fg`, MSB leftmost.
fn mask(snap: &Image, rect: Rect, fg: u32) -> Vec<u8> {
    let stride = usize::from(rect.w).div_ceil(8);
    let mut out = vec![0u8; stride * usize::from(rect.h)];
    for (row, bytes) in out.chunks_exact_mut(stride).enumerate() {
        let y = rect.y + u16::try_from(row).unwrap_or(0);
        for (col, &p) in snap.seg(rect.x, y, rect.w).iter().enumerate() {
            if p == fg {
                if let Some(b) = bytes.get_mut(col / 8) {
                    *b |= 0x80 >> (col % 8);
                }
            }
        }
    }
    out
}
