//! The damaged area not yet sent to one client: a bounded set of rectangles.

use crate::protocol::Rect;

/// Damaged rectangles inside a `width × height` screen, coalesced.
///
/// A rectangle contained in another is dropped; two that overlap or touch
/// merge when their bounding box wastes little area; past `max_rects` the
/// whole set collapses to its bounding box. So the set is bounded however
/// much damage arrives, and a slow client that takes it late simply gets the
/// area's current pixels (PROTOCOL.md §11, bounded queues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    width: u16,
    height: u16,
    max_rects: usize,
    rects: Vec<Rect>,
}

impl Region {
    /// An empty region of a `width × height` screen that holds at most
    /// `max_rects` rectangles (at least 1).
    pub fn new(width: u16, height: u16, max_rects: usize) -> Self {
        Region {
            width,
            height,
            max_rects: max_rects.max(1),
            rects: Vec::new(),
        }
    }

    /// The whole screen.
    pub fn full(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Whether nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// The rectangles.
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    /// Adds `rect` clipped to the screen (an empty result is ignored).
    pub fn add(&mut self, rect: Rect) {
        let Some(mut rect) = clip(rect, self.width, self.height) else {
            return;
        };
        // Merge until nothing more merges with the grown rectangle.
        loop {
            if self.rects.iter().any(|r| contains(*r, rect)) {
                return;
            }
            let before = self.rects.len();
            self.rects.retain(|r| !contains(rect, *r));
            let mergeable = self.rects.iter().position(|r| worth_merging(*r, rect));
            match mergeable {
                Some(i) => {
                    let other = self.rects.swap_remove(i);
                    rect = union(other, rect);
                }
                None if self.rects.len() == before => break,
                None => {}
            }
        }
        self.rects.push(rect);
        if self.rects.len() > self.max_rects {
            let all = self.rects.iter().copied().reduce(union).unwrap_or(rect);
            self.rects = vec![all];
        }
    }

    /// Takes the rectangle of the smallest area out (small updates first:
    /// text and widgets before images, PROTOCOL.md §11).
    pub fn take_smallest(&mut self) -> Option<Rect> {
        let i = self
            .rects
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.area())
            .map(|(i, _)| i)?;
        Some(self.rects.swap_remove(i))
    }

    /// Takes every rectangle out, leaving the region empty.
    pub fn take(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.rects)
    }
}

fn clip(rect: Rect, width: u16, height: u16) -> Option<Rect> {
    let x2 = rect.right().min(usize::from(width));
    let y2 = rect.bottom().min(usize::from(height));
    let (x, y) = (usize::from(rect.x), usize::from(rect.y));
    if x >= x2 || y >= y2 {
        return None;
    }
    Some(Rect::new(
        rect.x,
        rect.y,
        u16::try_from(x2 - x).ok()?,
        u16::try_from(y2 - y).ok()?,
    ))
}

fn contains(outer: Rect, inner: Rect) -> bool {
    outer.x <= inner.x
        && outer.y <= inner.y
        && outer.right() >= inner.right()
        && outer.bottom() >= inner.bottom()
}

fn union(a: Rect, b: Rect) -> Rect {
    let x = a.x.min(b.x);
    let y = a.y.min(b.y);
    let w = a.right().max(b.right()) - usize::from(x);
    let h = a.bottom().max(b.bottom()) - usize::from(y);
    // Both are inside a screen of at most u16 edges, so the union is too.
    Rect::new(
        x,
        y,
        u16::try_from(w).unwrap_or(u16::MAX),
        u16::try_from(h).unwrap_or(u16::MAX),
    )
}

/// Overlapping or touching, and the bounding box is at most 25 % (plus a
/// little) larger than the two areas together.
fn worth_merging(a: Rect, b: Rect) -> bool {
    let touch = usize::from(a.x) <= b.right()
        && usize::from(b.x) <= a.right()
        && usize::from(a.y) <= b.bottom()
        && usize::from(b.y) <= a.bottom();
    let u = union(a, b);
    touch && u.area() <= (a.area() + b.area()) * 5 / 4 + 256
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn clips_merges_and_bounds() {
        let mut region = Region::new(100, 100, 4);
        region.add(Rect::new(90, 90, 20, 20));
        assert_eq!(region.rects(), [Rect::new(90, 90, 10, 10)]);
        // Contained: nothing changes.
        region.add(Rect::new(92, 92, 2, 2));
        assert_eq!(region.rects().len(), 1);
        // Adjacent and the same height: merges.
        region.add(Rect::new(80, 90, 10, 10));
        assert_eq!(region.rects(), [Rect::new(80, 90, 20, 10)]);
        // Far apart: kept apart.
        region.add(Rect::new(0, 0, 5, 5));
        assert_eq!(region.rects().len(), 2);
        // Too many: collapses to the bounding box.
        region.add(Rect::new(0, 50, 1, 1));
        region.add(Rect::new(50, 0, 1, 1));
        region.add(Rect::new(20, 20, 1, 1));
        assert_eq!(region.rects(), [Rect::new(0, 0, 100, 100)]);
        assert_eq!(region.take_smallest(), Some(Rect::new(0, 0, 100, 100)));
        assert_eq!(region.take_smallest(), None);
        region.add(Rect::new(0, 0, 10, 10));
        region.add(Rect::new(50, 50, 2, 2));
        assert_eq!(region.take_smallest(), Some(Rect::new(50, 50, 2, 2)));
        assert_eq!(region.take().len(), 1);
        assert!(region.is_empty());
        // Outside the screen: ignored.
        region.add(Rect::new(100, 0, 5, 5));
        assert!(region.is_empty());
    }

    #[test]
    fn covering_rect_swallows_smaller_ones() {
        let mut region = Region::new(640, 480, 64);
        for i in 0..10 {
            region.add(Rect::new(i * 50, i * 40, 10, 10));
        }
        assert_eq!(region.rects().len(), 10);
        region.add(Rect::new(0, 0, 640, 480));
        assert_eq!(region.rects(), [Rect::new(0, 0, 640, 480)]);
    }
}
