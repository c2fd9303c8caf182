//! VIDEO on the server (PROTOCOL.md §6): which areas change like video
//! ([`VideoDetector`], one per screen), and a frame of such an area as I420
//! ([`video_frame`]).
//!
//! **Detection.** A damaged rectangle of at least [`VideoParams::min_area`]
//! pixels starts or joins a *candidate* (the bounding box of the damage that
//! meets it). Damage of one candidate less than `coalesce` after the last
//! counts once (one drawing reported in several parts). A candidate becomes
//! a stream when it has been updated at least `min_rate` times in the last
//! second and was first seen at least `min_duration` ago; its area is then
//! fixed. A candidate or stream with no update for `calm` is dropped: the
//! stream ends, and the server repaints its area exactly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::image::Image;
use super::PixelView;
use crate::codec::yuv::bgrx_to_i420;
use crate::protocol::{Command, Encoding, Payload, Rect, VideoData, VideoRepr};

/// The thresholds of [`VideoDetector`].
#[derive(Debug, Clone, Copy)]
pub struct VideoParams {
    /// The smallest damaged rectangle that counts, in pixels.
    pub min_area: usize,
    /// Updates in the last second to be video.
    pub min_rate: usize,
    /// How long updates must have gone on.
    pub min_duration: Duration,
    /// Quiet time that ends a stream.
    pub calm: Duration,
    /// Damage closer than this to the last counted update is the same update.
    pub coalesce: Duration,
}

impl Default for VideoParams {
    fn default() -> Self {
        VideoParams {
            min_area: 64 * 64,
            min_rate: 10,
            min_duration: Duration::from_secs(1),
            calm: Duration::from_millis(500),
            coalesce: Duration::from_millis(20),
        }
    }
}

/// The most candidates tracked (the oldest is forgotten first).
const MAX_CANDIDATES: usize = 8;

#[derive(Debug)]
struct Candidate {
    rect: Rect,
    first: Instant,
    /// Counted updates, newest last, none older than a second.
    times: VecDeque<Instant>,
    stream: Option<u32>,
}

/// The areas of one screen that change like video.
#[derive(Debug)]
pub struct VideoDetector {
    params: VideoParams,
    candidates: Vec<Candidate>,
    next_stream: u32,
}

fn intersects(a: Rect, b: Rect) -> bool {
    usize::from(a.x) < b.right()
        && usize::from(b.x) < a.right()
        && usize::from(a.y) < b.bottom()
        && usize::from(b.y) < a.bottom()
}

fn bounding(a: Rect, b: Rect) -> Rect {
    let (x, y) = (a.x.min(b.x), a.y.min(b.y));
    let right = a.right().max(b.right());
    let bottom = a.bottom().max(b.bottom());
    Rect::new(
        x,
        y,
        u16::try_from(right - usize::from(x)).unwrap_or(u16::MAX),
        u16::try_from(bottom - usize::from(y)).unwrap_or(u16::MAX),
    )
}

/// Whether damage `r` belongs to the candidate `c`: they overlap by at
/// least half of their bounding box (the same area redrawn, perhaps a bit
/// larger or smaller), or `c` is a stream and `r` lies inside it.
fn similar(c: &Candidate, r: Rect) -> bool {
    let rect = c.rect;
    if !intersects(rect, r) {
        return false;
    }
    let w = rect.right().min(r.right()) - usize::from(rect.x.max(r.x));
    let h = rect.bottom().min(r.bottom()) - usize::from(rect.y.max(r.y));
    (c.stream.is_some() && w * h == r.area()) || 2 * w * h >= bounding(rect, r).area()
}

/// `r` without `cut`: at most four rectangles (above, below, left, right).
pub fn subtract(r: Rect, cut: Rect) -> Vec<Rect> {
    if !intersects(r, cut) {
        return vec![r];
    }
    let mut out = Vec::new();
    let (top, bottom) = (r.y.max(cut.y), (r.bottom().min(cut.bottom())) as u16);
    if cut.y > r.y {
        out.push(Rect::new(r.x, r.y, r.w, cut.y - r.y));
    }
    if r.bottom() > cut.bottom() {
        out.push(Rect::new(
            r.x,
            bottom,
            r.w,
            (r.bottom() - cut.bottom()) as u16,
        ));
    }
    if cut.x > r.x {
        out.push(Rect::new(r.x, top, cut.x - r.x, bottom - top));
    }
    if r.right() > cut.right() {
        let x = cut.right() as u16;
        out.push(Rect::new(
            x,
            top,
            (r.right() - cut.right()) as u16,
            bottom - top,
        ));
    }
    out
}

impl VideoDetector {
    /// A detector with these thresholds.
    pub fn new(params: VideoParams) -> Self {
        VideoDetector {
            params,
            candidates: Vec::new(),
            next_stream: 1,
        }
    }

    /// Forgets everything (the screen's size changed).
    pub fn clear(&mut self) {
        self.candidates.clear();
    }

    /// Damage reported at `now`.
    pub fn handle_damage(&mut self, rects: &[Rect], now: Instant) {
        for &r in rects {
            if r.area() < self.params.min_area {
                continue;
            }
            let found = self.candidates.iter_mut().find(|c| similar(c, r));
            let c = match found {
                Some(c) => {
                    if c.stream.is_none() {
                        c.rect = bounding(c.rect, r);
                    }
                    c
                }
                None => {
                    if self.candidates.len() >= MAX_CANDIDATES {
                        // The oldest that is not a stream goes first.
                        let old = self
                            .candidates
                            .iter()
                            .position(|c| c.stream.is_none())
                            .unwrap_or(0);
                        self.candidates.remove(old);
                    }
                    self.candidates.push(Candidate {
                        rect: r,
                        first: now,
                        times: VecDeque::new(),
                        stream: None,
                    });
                    let Some(c) = self.candidates.last_mut() else {
                        continue;
                    };
                    c
                }
            };
            let last = c.times.back().copied();
            if last.is_none_or(|t| now.saturating_duration_since(t) >= self.params.coalesce) {
                c.times.push_back(now);
            }
            while c
                .times
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) > Duration::from_secs(1))
            {
                c.times.pop_front();
            }
        }
    }

    /// The streams at `now` (id, area), after dropping calm candidates and
    /// starting streams for those that qualify.
    pub fn poll_streams(&mut self, now: Instant) -> Vec<(u32, Rect)> {
        let p = self.params;
        self.candidates.retain(|c| {
            c.times
                .back()
                .is_some_and(|&t| now.saturating_duration_since(t) < p.calm)
        });
        let mut out = Vec::new();
        for c in &mut self.candidates {
            let recent = c
                .times
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) <= Duration::from_secs(1))
                .count();
            if c.stream.is_none()
                && recent >= p.min_rate
                && now.saturating_duration_since(c.first) >= p.min_duration
                && c.rect.area() >= p.min_area
            {
                c.stream = Some(self.next_stream);
                self.next_stream = self.next_stream.wrapping_add(1).max(1);
            }
            if let Some(id) = c.stream {
                out.push((id, c.rect));
            }
        }
        out
    }
}

/// A VIDEO frame of `rect` of `screen`, 1:1 (`src` = the rectangle's size),
/// the planes LZ4-compressed when that is smaller. `None` when `rect` is not
/// inside `screen`.
pub fn video_frame(
    screen: &PixelView<'_>,
    rect: Rect,
    stream_id: u32,
    frame: u32,
) -> Option<Command<'static>> {
    let image = Image::snapshot(screen, rect)?;
    let i420 = bgrx_to_i420(image.pixels(), usize::from(rect.w), usize::from(rect.h));
    let planes = [&i420.y, &i420.u, &i420.v].map(|p| Payload::lz4(p));
    let packed: usize = planes.iter().map(|p| p.data.len()).sum();
    let plain = i420.y.len() + i420.u.len() + i420.v.len();
    let data = if packed < plain {
        let [y, u, v] = planes;
        VideoData::I420 {
            encoding: Encoding::Lz4,
            y: y.data,
            u: u.data,
            v: v.data,
        }
    } else {
        VideoData::I420 {
            encoding: Encoding::Plain,
            y: i420.y.into(),
            u: i420.u.into(),
            v: i420.v.into(),
        }
    };
    Some(Command::Video(VideoRepr {
        stream_id,
        frame,
        dst: rect,
        src_w: rect.w,
        src_h: rect.h,
        data,
    }))
}

/// A VIDEO frame of `rect` of `screen` as one H.264 access unit of
/// `encoder`'s stream (codec 0x80, PROTOCOL.md §6.3), 1:1. `None` when
/// `rect` is not inside `screen` or is not the encoder's size, or the
/// encoder fails.
#[cfg(feature = "h264")]
pub fn h264_frame(
    screen: &PixelView<'_>,
    rect: Rect,
    stream_id: u32,
    frame: u32,
    encoder: &mut crate::codec::h264::H264Encoder,
) -> Option<Command<'static>> {
    let image = Image::snapshot(screen, rect)?;
    let i420 = bgrx_to_i420(image.pixels(), usize::from(rect.w), usize::from(rect.h));
    let (au, _) = encoder.encode(&i420.as_ref()).ok()?;
    Some(Command::Video(VideoRepr {
        stream_id,
        frame,
        dst: rect,
        src_w: rect.w,
        src_h: rect.h,
        data: VideoData::Codec {
            codec: crate::protocol::CODEC_H264,
            data: au.into(),
        },
    }))
}

#[cfg(test)]
mod test {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sustained_updates_become_a_stream_and_calm_ends_it() {
        let mut d = VideoDetector::new(VideoParams::default());
        let t0 = Instant::now();
        let area = Rect::new(100, 100, 320, 240);
        // 25 updates per second for 1.2 s.
        for i in 0..30u64 {
            let now = t0 + Duration::from_millis(40 * i);
            d.handle_damage(&[area], now);
            // Small damage (typing) never counts.
            d.handle_damage(&[Rect::new(0, 0, 8, 13)], now);
            let streams = d.poll_streams(now);
            if i < 25 {
                assert!(streams.is_empty(), "{i}");
            }
        }
        let now = t0 + Duration::from_millis(1200);
        assert_eq!(d.poll_streams(now), [(1, area)]);
        // Damage inside keeps it; the area stays fixed.
        d.handle_damage(&[Rect::new(110, 110, 100, 100)], now);
        assert_eq!(d.poll_streams(now), [(1, area)]);
        // A full-screen repaint is not part of it.
        d.handle_damage(&[Rect::new(0, 0, 1024, 768)], now);
        assert_eq!(d.poll_streams(now), [(1, area)]);
        assert!(d.poll_streams(now + Duration::from_millis(600)).is_empty());
        // Slow updates (a clock) never become video.
        let mut d = VideoDetector::new(VideoParams::default());
        for i in 0..10u64 {
            let now = t0 + Duration::from_millis(500 * i);
            d.handle_damage(&[area], now);
            assert!(d.poll_streams(now).is_empty());
        }
    }

    #[test]
    fn subtract_leaves_the_outside() {
        let r = Rect::new(0, 0, 100, 100);
        let parts = subtract(r, Rect::new(20, 30, 50, 40));
        let total: usize = parts.iter().map(|p| p.area()).sum();
        assert_eq!(total, 100 * 100 - 50 * 40);
        assert_eq!(subtract(r, Rect::new(200, 0, 5, 5)), [r]);
        assert!(subtract(r, Rect::new(0, 0, 100, 100)).is_empty());
        assert_eq!(
            subtract(r, Rect::new(50, 50, 100, 100)),
            [Rect::new(0, 0, 100, 50), Rect::new(0, 50, 50, 50)]
        );
    }
}
