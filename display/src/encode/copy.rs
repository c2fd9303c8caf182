//! COPY detection: areas of the screen that the client already has
//! elsewhere (scrolling, moved windows), found by row hashing against the
//! client's image and verified pixel by pixel (PROTOCOL.md §5.2).
//!
//! - **Scrolling** ([`detect_scroll`]): inside a damaged rectangle, each row
//!   that differs from the client's image and is not of one colour is
//!   hashed over the rectangle's columns and looked up among the client's
//!   rows (same columns, within one rectangle height above and below). Each
//!   hit votes for a vertical offset; the offset with the most votes is
//!   verified row by row, and its longest run of equal rows (at least
//!   [`MIN_COPY_ROWS`] of them changed) becomes one COPY.
//! - **Moves** ([`verify_move`]): a hint from the X side (a top-level window
//!   moved by `(dx, dy)`, now at `dst`) is verified the same way over the
//!   window's columns.
//!
//! Hashes only propose; equality is always checked on the pixels, so a COPY
//! is never wrong, whatever the hints say.

use std::collections::HashMap;

use crate::protocol::{CopyRepr, Rect};

use super::image::{hash_pixels, view_seg, Image};
use super::PixelView;

/// The fewest changed rows a COPY must repair to be worth sending.
pub const MIN_COPY_ROWS: usize = 4;
/// How many of the client's rows with one hash are kept as candidates.
const MAX_CANDIDATES: usize = 8;

/// A hint: the content now at `dst` was at `dst` shifted by `(-dx, -dy)`
/// (a window moved by `(dx, dy)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Where the content is now.
    pub dst: Rect,
    /// Horizontal offset, new minus old.
    pub dx: i32,
    /// Vertical offset, new minus old.
    pub dy: i32,
}

/// The best vertical scroll inside `rect`, or `None`.
pub(super) fn detect_scroll(model: &Image, screen: &PixelView<'_>, rect: Rect) -> Option<CopyRepr> {
    let (x, w) = (rect.x, rect.w);
    let height = usize::from(model.height());
    if rect.right() > usize::from(model.width()) || rect.bottom() > height || w < 8 {
        return None;
    }
    // Rows of the rectangle that changed, with their hashes when informative.
    let rows: Vec<(u16, bool, Option<u64>)> = (rect.y..rect.y + rect.h)
        .map(|y| {
            let changed = !Image::row_equals(screen, x, y, model.seg(x, y, w));
            let hash = changed
                .then(|| informative_hash(view_seg(screen, x, y, w)))
                .flatten();
            (y, changed, hash)
        })
        .collect();
    if rows.iter().filter(|r| r.1).count() < MIN_COPY_ROWS {
        return None;
    }
    // The client's rows around the rectangle, by hash.
    let lo = usize::from(rect.y).saturating_sub(usize::from(rect.h));
    let hi = (rect.bottom() + usize::from(rect.h)).min(height);
    let mut index: HashMap<u64, Vec<u16>> = HashMap::new();
    for y in lo..hi {
        let y = u16::try_from(y).ok()?;
        if let Some(h) = informative_hash(model.seg(x, y, w).iter().copied()) {
            let list = index.entry(h).or_default();
            if list.len() < MAX_CANDIDATES {
                list.push(y);
            }
        }
    }
    let mut votes: HashMap<i32, u32> = HashMap::new();
    for &(y, _, hash) in &rows {
        let Some(list) = hash.and_then(|h| index.get(&h)) else {
            continue;
        };
        for &src in list {
            let dy = i32::from(src) - i32::from(y);
            if dy != 0 {
                *votes.entry(dy).or_default() += 1;
            }
        }
    }
    let (&dy, _) = votes
        .iter()
        .max_by_key(|(dy, n)| (**n, std::cmp::Reverse(dy.abs()), **dy))?;
    // The longest run of rows equal to the client's rows `dy` away.
    let mut runs = BestRun::default();
    for (i, &(y, changed, _)) in rows.iter().enumerate() {
        let src = i32::from(y) + dy;
        let equal = u16::try_from(src)
            .ok()
            .filter(|&s| usize::from(s) < height)
            .is_some_and(|s| Image::row_equals(screen, x, y, model.seg(x, s, w)));
        runs.push(i, equal.then_some(changed));
    }
    let (start, len) = runs.finish()?;
    let dst_y = rows.get(start)?.0;
    Some(CopyRepr {
        src_x: x,
        src_y: u16::try_from(i32::from(dst_y) + dy).ok()?,
        dst_x: x,
        dst_y,
        w,
        h: u16::try_from(len).ok()?,
    })
}

/// The COPY a move hint stands for, if the screen shows it.
pub(super) fn verify_move(model: &Image, screen: &PixelView<'_>, mv: &Move) -> Option<CopyRepr> {
    if mv.dx == 0 && mv.dy == 0 {
        return None;
    }
    let (width, height) = (i32::from(model.width()), i32::from(model.height()));
    // Clip the destination so that it and its source are on the screen.
    let x0 = i32::from(mv.dst.x).max(mv.dx).max(0);
    let x1 = (i32::from(mv.dst.x) + i32::from(mv.dst.w))
        .min(width)
        .min(width + mv.dx);
    let y0 = i32::from(mv.dst.y).max(mv.dy).max(0);
    let y1 = (i32::from(mv.dst.y) + i32::from(mv.dst.h))
        .min(height)
        .min(height + mv.dy);
    if x1 - x0 < 8 || y1 - y0 < 1 {
        return None;
    }
    let w = u16::try_from(x1 - x0).ok()?;
    let x = u16::try_from(x0).ok()?;
    let sx = u16::try_from(x0 - mv.dx).ok()?;
    let mut runs = BestRun::default();
    for y in y0..y1 {
        let yy = u16::try_from(y).ok()?;
        let sy = u16::try_from(y - mv.dy).ok()?;
        let equal = Image::row_equals(screen, x, yy, model.seg(sx, sy, w));
        let changed = || !Image::row_equals(screen, x, yy, model.seg(x, yy, w));
        runs.push(y, equal.then(changed));
    }
    let (start, len) = runs.finish()?;
    Some(CopyRepr {
        src_x: sx,
        src_y: u16::try_from(start - mv.dy).ok()?,
        dst_x: x,
        dst_y: u16::try_from(start).ok()?,
        w,
        h: u16::try_from(len).ok()?,
    })
}

/// The run of consecutive matching rows with the most changed rows, as
/// (first row's key, rows, changed rows); the earliest wins a tie.
struct BestRun<K> {
    best: Option<(K, usize, usize)>,
    run: Option<(K, usize, usize)>,
}

impl<K> Default for BestRun<K> {
    fn default() -> Self {
        BestRun {
            best: None,
            run: None,
        }
    }
}

impl<K: Copy> BestRun<K> {
    /// The next row: `Some(changed)` when it matches, `None` when it ends
    /// the run.
    fn push(&mut self, key: K, matched: Option<bool>) {
        let Some(changed) = matched else {
            self.run = None;
            return;
        };
        let r = self.run.get_or_insert((key, 0, 0));
        r.1 += 1;
        r.2 += usize::from(changed);
        if self.best.is_none_or(|b| r.2 > b.2) {
            self.best = Some(*r);
        }
    }

    /// The best run's first key and length, if it has at least
    /// `MIN_COPY_ROWS` changed rows.
    fn finish(self) -> Option<(K, usize)> {
        let (start, len, changed) = self.best?;
        (changed >= MIN_COPY_ROWS).then_some((start, len))
    }
}

/// The hash of a row, or `None` when it is of one colour (such rows match
/// every row of that colour and would only add noise to the votes).
pub(super) fn informative_hash(px: impl Iterator<Item = u32> + Clone) -> Option<u64> {
    let mut it = px.clone();
    let first = it.next()?;
    if it.all(|p| p == first) {
        return None;
    }
    Some(hash_pixels(px))
}
