//! VIDEO on the server (PROTOCOL.md §6): which areas change like video
//! ([`VideoDetector`], one per screen), and a frame of such an area as I420
//! ([`video_frame`]).
//!
//! **Detection.** Damage that comes less than `coalesce` after other damage
//! is one *drawing* (X reports a frame put in strips in several parts when
//! the server fetches damage meanwhile); the bounding boxes of its touching
//! parts are looked at once it is done. Such a box of at least
//! [`VideoParams::min_area`] pixels starts or joins a *candidate* (the
//! bounding box of the damage that meets it). Damage that COPY explains does
//! not count as an update: a window move's damage (covered by the move hints)
//! and a scroll (most of the rectangle's changed rows equal, at one vertical
//! offset, its rows when it was last damaged: row hashes of the screen, as
//! `copy.rs` finds scrolls against a client's image). The check is on the
//! screen, so it is the same for every viewer. A candidate becomes a stream
//! when it has been updated at least `min_rate` times in the last second, for
//! at least `min_duration` without a pause of `calm`; its area is then fixed.
//! A stream ends when it has had no update for a few of its own frame
//! intervals ([`VideoParams::calm_intervals`] times the longest of the last
//! second, within `min_calm ..= calm`), and the server repaints its area
//! exactly; a candidate seen no more for `calm` is forgotten.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::copy::{informative_hash, Move, MIN_COPY_ROWS};
use super::image::{view_seg, Image};
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
    /// A frame of a stream is read once no damage came over it for this
    /// long (X reports a frame put in parts, milliseconds apart; one read
    /// before the last part would tear) ...
    pub frame_settle: Duration,
    /// ... or this long after its first damage, whichever comes first.
    pub frame_settle_max: Duration,
    /// The longest quiet time that ends a stream; a pause this long also
    /// restarts a candidate's `min_duration`, and a candidate not damaged
    /// for this long is forgotten.
    pub calm: Duration,
    /// The shortest quiet time that ends a stream.
    pub min_calm: Duration,
    /// A stream ends after this many times its longest interval between
    /// updates in the last second without an update (within `min_calm ..=
    /// calm`).
    pub calm_intervals: u32,
    /// Damage closer than this to the last counted update is the same update.
    pub coalesce: Duration,
    /// An area of at least this many pixels is a stream sooner: after
    /// `large_min_updates` updates at `min_rate` or more (lossless frames of
    /// a large area are what fill a link).
    pub large_area: usize,
    /// See `large_area`.
    pub large_min_updates: usize,
    /// A stream whose last frame is older than this share of its longest
    /// interval between updates in the last second, in percent, *stands
    /// still*: the server sends that frame exactly, without waiting for
    /// the stream to end.
    pub still_percent: u32,
}

impl Default for VideoParams {
    fn default() -> Self {
        VideoParams {
            min_area: 64 * 64,
            min_rate: 10,
            min_duration: Duration::from_millis(500),
            calm: Duration::from_millis(500),
            min_calm: Duration::from_millis(100),
            calm_intervals: 2,
            coalesce: Duration::from_millis(20),
            frame_settle: Duration::from_millis(12),
            frame_settle_max: Duration::from_millis(30),
            large_area: 256 * 256,
            large_min_updates: 3,
            still_percent: 110,
        }
    }
}

/// The most candidates tracked (the oldest is forgotten first).
const MAX_CANDIDATES: usize = 8;
/// The most column ranges whose rows a candidate remembers.
const MAX_ROWS: usize = 4;
/// How many of the previous rows with one hash are kept as candidates.
const MAX_SAME_HASH: usize = 8;
/// The most parts (rectangles, rows, moves) a drawing keeps.
const MAX_PARTS: usize = 64;

#[derive(Debug)]
struct Candidate {
    rect: Rect,
    /// The first counted update since the last pause of `calm`.
    first: Instant,
    /// The last damage, counted or not.
    seen: Instant,
    /// Counted updates, newest last, none more than a second older than
    /// the newest.
    times: VecDeque<Instant>,
    /// Counted updates since the candidate was made.
    updates: u64,
    stream: Option<u32>,
    /// The rows of the last damage of up to [`MAX_ROWS`] column ranges,
    /// most recent last.
    rows: Vec<Rows>,
}

/// The rows of a damaged rectangle of the screen, hashed over its columns.
#[derive(Debug)]
struct Rows {
    x: u16,
    w: u16,
    y: u16,
    /// Per row from `y`: its hash, `None` when it is of one colour.
    hashes: Vec<Option<u64>>,
}

impl Rows {
    /// The rows of `r` of `screen` (`None` when `r` is not inside it).
    fn of(screen: &PixelView<'_>, r: Rect) -> Option<Rows> {
        if !r.fits(screen.width(), screen.height()) {
            return None;
        }
        let hashes = (r.y..r.y + r.h)
            .map(|y| informative_hash(view_seg(screen, r.x, y, r.w)))
            .collect();
        Some(Rows {
            x: r.x,
            w: r.w,
            y: r.y,
            hashes,
        })
    }

    /// Whether row `y` is one of these.
    fn covers(&self, y: i32) -> bool {
        usize::try_from(y - i32::from(self.y)).is_ok_and(|i| i < self.hashes.len())
    }

    /// The hash of row `y`, if it is one of these and not of one colour.
    fn at(&self, y: i32) -> Option<u64> {
        let i = usize::try_from(y - i32::from(self.y)).ok()?;
        self.hashes.get(i).copied().flatten()
    }

    /// Whether `self` is mostly `before` (the same columns) scrolled: of
    /// the rows that changed and are not of one colour (at least
    /// [`MIN_COPY_ROWS`]), at least half equal `before`'s rows at one
    /// vertical offset — what a COPY repairs.
    fn scrolled_from(&self, before: &Rows) -> bool {
        let changed: Vec<(i32, u64)> = (i32::from(self.y)..)
            .zip(&self.hashes)
            .filter_map(|(y, h)| h.filter(|&h| before.at(y) != Some(h)).map(|h| (y, h)))
            .collect();
        if changed.len() < MIN_COPY_ROWS {
            return false;
        }
        let mut index: HashMap<u64, Vec<i32>> = HashMap::new();
        for (y, h) in (i32::from(before.y)..).zip(&before.hashes) {
            if let Some(h) = h {
                let list = index.entry(*h).or_default();
                if list.len() < MAX_SAME_HASH {
                    list.push(y);
                }
            }
        }
        let mut votes: HashMap<i32, usize> = HashMap::new();
        for (y, h) in &changed {
            for src in index.get(h).into_iter().flatten() {
                *votes.entry(src - y).or_default() += 1;
            }
        }
        let Some((&dy, _)) = votes
            .iter()
            .max_by_key(|(dy, n)| (**n, std::cmp::Reverse(dy.abs()), **dy))
        else {
            return false;
        };
        let explained = changed
            .iter()
            .filter(|&&(y, h)| before.at(y + dy) == Some(h))
            .count();
        2 * explained >= changed.len()
    }
}

/// Damage that came in one burst: X reports a drawing in parts when the
/// server fetches damage while it is being drawn.
#[derive(Debug)]
struct Drawing {
    first: Instant,
    last: Instant,
    /// The bounding boxes of touching parts.
    rects: Vec<Rect>,
    /// The window moves that came with it (at most [`MAX_PARTS`]).
    moves: Vec<Move>,
    /// The rows of each part when it was reported (at most [`MAX_PARTS`],
    /// the oldest forgotten first).
    rows: Vec<Rows>,
}

impl Drawing {
    /// Whether damage at `now` is part of this drawing: less than
    /// `coalesce` after its last part, and less than twice that after its
    /// first (so that frames drawn back to back stay apart).
    fn open(&self, p: &VideoParams, now: Instant) -> bool {
        now.saturating_duration_since(self.last) < p.coalesce
            && now.saturating_duration_since(self.first) < 2 * p.coalesce
    }

    /// Whether some of it is in `area`.
    fn touches(&self, area: Rect) -> bool {
        self.rects.iter().any(|r| r.overlaps(&area))
    }

    /// When it is over unless more damage comes.
    fn done(&self, p: &VideoParams) -> Instant {
        (self.last + p.coalesce).min(self.first + 2 * p.coalesce)
    }

    /// Adds `r`, merging the bounding boxes it touches.
    fn add(&mut self, r: Rect) {
        let mut r = r;
        while let Some(i) = self.rects.iter().position(|&o| touches(o, r)) {
            r = bounding(self.rects.swap_remove(i), r);
        }
        if self.rects.len() >= MAX_PARTS {
            // Too scattered: one bounding box.
            r = self.rects.drain(..).fold(r, bounding);
        }
        self.rects.push(r);
    }

    /// The rows of `r` (one of its bounding boxes), from its parts of the
    /// same columns, the latest for each row (rows no part of those columns
    /// covers count as of one colour); `None` when no part has them.
    fn rows_of(&self, r: Rect) -> Option<Rows> {
        let mut hashes = vec![None; usize::from(r.h)];
        let mut any = false;
        for part in self.rows.iter().filter(|o| (o.x, o.w) == (r.x, r.w)) {
            any = true;
            for (y, h) in (i32::from(r.y)..).zip(hashes.iter_mut()) {
                if part.covers(y) {
                    *h = part.at(y);
                }
            }
        }
        any.then_some(Rows {
            x: r.x,
            w: r.w,
            y: r.y,
            hashes,
        })
    }
}

/// Whether `a` and `b` overlap or share an edge.
fn touches(a: Rect, b: Rect) -> bool {
    usize::from(a.x) <= b.right()
        && usize::from(b.x) <= a.right()
        && usize::from(a.y) <= b.bottom()
        && usize::from(b.y) <= a.bottom()
}

/// How long stream `c` may go without an update before it ends: a few of
/// its longest recent intervals, within `min_calm ..= calm`.
fn calm_of(p: &VideoParams, c: &Candidate) -> Duration {
    match intervals(c).max() {
        Some(i) => i
            .saturating_mul(p.calm_intervals)
            .clamp(p.min_calm, p.calm.max(p.min_calm)),
        None => p.calm,
    }
}

/// The intervals between `c`'s updates in the last second.
fn intervals(c: &Candidate) -> impl Iterator<Item = Duration> + '_ {
    c.times
        .iter()
        .zip(c.times.iter().skip(1))
        .map(|(a, b)| b.saturating_duration_since(*a))
}

/// How long stream `c`'s last frame must stand before it *stands still*:
/// `still_percent` of its median interval in the last second, at most its
/// calm. (The median: a player that draws one frame late draws the next
/// one early, and a frame never comes later than the one late frame did.)
fn still_of(p: &VideoParams, c: &Candidate) -> Duration {
    let calm = calm_of(p, c);
    let mut sorted: Vec<Duration> = intervals(c).collect();
    sorted.sort_unstable();
    match sorted.get(sorted.len() / 2) {
        Some(&i) => (i * p.still_percent / 100).min(calm),
        None => calm,
    }
}

/// Whether candidate `c` (not a stream) qualifies as one at `now`: at
/// least `min_rate` updates in the last second, going on for at least
/// `min_duration`; or, for an area of at least `large_area` pixels, at
/// least `large_min_updates` updates at `min_rate` or more.
fn qualifies(p: &VideoParams, c: &Candidate, now: Instant) -> bool {
    let recent: Vec<Instant> = c
        .times
        .iter()
        .copied()
        .filter(|&t| now.saturating_duration_since(t) <= Duration::from_secs(1))
        .collect();
    if c.rect.area() < p.min_area {
        return false;
    }
    let steady =
        recent.len() >= p.min_rate && now.saturating_duration_since(c.first) >= p.min_duration;
    let large = c.rect.area() >= p.large_area
        && recent.len() >= p.large_min_updates.max(2)
        && match (recent.first(), recent.last()) {
            (Some(&a), Some(&b)) => {
                let gaps = u32::try_from(recent.len() - 1).unwrap_or(u32::MAX);
                let rate = u32::try_from(p.min_rate.max(1)).unwrap_or(u32::MAX);
                b.saturating_duration_since(a) * rate <= Duration::from_secs(1) * gaps
            }
            _ => false,
        };
    steady || large
}

/// Whether at least half of `r` lies in the destinations of `moves`
/// (rectangles assumed apart: window moves of different windows).
fn moved(r: Rect, moves: &[Move]) -> bool {
    let covered: usize = moves.iter().map(|m| overlap(r, m.dst)).sum();
    2 * covered >= r.area()
}

fn overlap(a: Rect, b: Rect) -> usize {
    if !a.overlaps(&b) {
        return 0;
    }
    let w = a.right().min(b.right()) - usize::from(a.x.max(b.x));
    let h = a.bottom().min(b.bottom()) - usize::from(a.y.max(b.y));
    w * h
}

/// A video stream as [`VideoDetector::poll_streams`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub id: u32,
    /// Its area of the screen (fixed while it lasts).
    pub rect: Rect,
    /// Updates counted in its area since it was a candidate: a new value
    /// means a new frame.
    pub updates: u64,
    /// Whether its last frame *stands still*: no update for
    /// [`VideoParams::still_percent`] of its longest recent interval and
    /// none being drawn. The video paused or ended; a server sends that
    /// frame exactly now rather than when the stream ends.
    pub still: bool,
}

/// The areas of one screen that change like video.
#[derive(Debug)]
pub struct VideoDetector {
    params: VideoParams,
    candidates: Vec<Candidate>,
    /// Damage of the drawing going on, not yet counted.
    drawing: Option<Drawing>,
    next_stream: u32,
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
    if !rect.overlaps(&r) {
        return false;
    }
    let both = overlap(rect, r);
    (c.stream.is_some() && both == r.area()) || 2 * both >= bounding(rect, r).area()
}

/// `r` without `cut`: at most four rectangles (above, below, left, right).
pub fn subtract(r: Rect, cut: Rect) -> Vec<Rect> {
    if !r.overlaps(&cut) {
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
            drawing: None,
            next_stream: 1,
        }
    }

    /// Whether it has anything of the damage so far (a candidate or a
    /// drawing going on).
    pub fn watching(&self) -> bool {
        !self.candidates.is_empty() || self.drawing.is_some()
    }

    /// Forgets everything (the screen's size changed, or nobody watches).
    pub fn clear(&mut self) {
        self.candidates.clear();
        self.drawing = None;
    }

    /// Damage reported at `now`, with the window moves behind it, and the
    /// screen after it (`None`: not readable; then no damage is known to be
    /// a scroll). Damage that follows other damage by less than `coalesce`
    /// (for at most twice that) is one drawing, which X may report in parts
    /// (a frame put in strips while the server fetches damage): the
    /// detector looks at it once it is complete, as the bounding boxes of
    /// its touching parts.
    pub fn handle_damage(
        &mut self,
        screen: Option<&PixelView<'_>>,
        rects: &[Rect],
        moves: &[Move],
        now: Instant,
    ) {
        if self
            .drawing
            .as_ref()
            .is_some_and(|d| !d.open(&self.params, now))
        {
            self.flush();
        }
        let d = self.drawing.get_or_insert_with(|| Drawing {
            first: now,
            last: now,
            rects: Vec::new(),
            moves: Vec::new(),
            rows: Vec::new(),
        });
        d.last = now;
        for &r in rects {
            d.add(r);
            if let Some(rows) = screen.and_then(|s| Rows::of(s, r)) {
                if d.rows.len() >= MAX_PARTS {
                    d.rows.remove(0);
                }
                d.rows.push(rows);
            }
        }
        for &m in moves {
            if d.moves.len() >= MAX_PARTS {
                d.moves.remove(0);
            }
            d.moves.push(m);
        }
    }

    /// Counts the pending drawing's areas as updates of their candidates.
    fn flush(&mut self) {
        let Some(d) = self.drawing.take() else {
            return;
        };
        let (p, now) = (self.params, d.first);
        for &r in &d.rects {
            if r.area() < p.min_area {
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
                        seen: now,
                        times: VecDeque::new(),
                        updates: 0,
                        stream: None,
                        rows: Vec::new(),
                    });
                    let Some(c) = self.candidates.last_mut() else {
                        continue;
                    };
                    c
                }
            };
            c.seen = now;
            let mut explained = moved(r, &d.moves);
            if let Some(rows) = d.rows_of(r) {
                let same = c.rows.iter().position(|o| (o.x, o.w) == (r.x, r.w));
                let before = same.map(|i| c.rows.remove(i));
                explained |= before.is_some_and(|b| rows.scrolled_from(&b));
                if c.rows.len() >= MAX_ROWS {
                    c.rows.remove(0);
                }
                c.rows.push(rows);
            }
            if explained {
                continue;
            }
            let last = c.times.back().copied();
            if last.is_none_or(|t| now.saturating_duration_since(t) >= p.calm) {
                // A new run of updates.
                c.first = now;
                c.times.clear();
            }
            if last.is_none_or(|t| now.saturating_duration_since(t) >= p.coalesce) {
                c.times.push_back(now);
                c.updates += 1;
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

    /// Until when the drawing going on over `area` at `now` may still get
    /// parts (`None`: no drawing over `area`, or it settled):
    /// [`VideoParams::frame_settle`] after its last damage, at most
    /// [`VideoParams::frame_settle_max`] after its first. (Reading a frame
    /// as soon as damage covered the area — the drawing's parts, or the
    /// viewer's damage since it last read the area — still gave torn
    /// frames under load: a drawing may hold the start of the next frame,
    /// and a writer that waited on its socket reads while the next frame
    /// is being drawn. 12 ms of calm did not.)
    pub fn drawing_over(&self, area: Rect, now: Instant) -> Option<Instant> {
        let p = &self.params;
        let d = self.drawing.as_ref().filter(|d| d.touches(area))?;
        let settled = (d.last + p.frame_settle).min(d.first + p.frame_settle_max);
        (now < settled).then_some(settled)
    }

    /// When the first stream stands still or ends if it gets no update,
    /// after `now` (`None`: no stream): a server checks
    /// [`Self::poll_streams`] then.
    pub fn next_change(&self, now: Instant) -> Option<Instant> {
        let p = &self.params;
        self.candidates
            .iter()
            .filter(|c| c.stream.is_some())
            .filter_map(|c| {
                // A drawing over it may be its next frame: look again when
                // the drawing is done (it is counted then, and the frame
                // stands still from then on).
                if let Some(d) = self.drawing.as_ref().filter(|d| d.touches(c.rect)) {
                    return Some(d.done(p));
                }
                let last = *c.times.back()?;
                let still = last + still_of(p, c);
                Some(if still > now {
                    still
                } else {
                    last + calm_of(p, c)
                })
            })
            .min()
    }

    /// The streams at `now`, after ending calm streams, forgetting
    /// candidates not seen for `calm`, and starting streams for those that
    /// qualify.
    pub fn poll_streams(&mut self, now: Instant) -> Vec<Stream> {
        let p = self.params;
        if self.drawing.as_ref().is_some_and(|d| !d.open(&p, now)) {
            self.flush();
        }
        // No stream ends while a drawing over it is still open (it may be
        // a frame).
        let drawing = &self.drawing;
        self.candidates.retain(|c| {
            let open = || drawing.as_ref().is_some_and(|d| d.touches(c.rect));
            match (c.stream, c.times.back()) {
                (Some(_), Some(&t)) => now.saturating_duration_since(t) < calm_of(&p, c) || open(),
                (Some(_), None) => open(),
                (None, _) => now.saturating_duration_since(c.seen) < p.calm,
            }
        });
        let mut out = Vec::new();
        for c in &mut self.candidates {
            if c.stream.is_none() && qualifies(&p, c, now) {
                c.stream = Some(self.next_stream);
                self.next_stream = self.next_stream.wrapping_add(1).max(1);
            }
            if let Some(id) = c.stream {
                let open = drawing.as_ref().is_some_and(|d| d.touches(c.rect));
                let still = !open
                    && c.times
                        .back()
                        .is_some_and(|&t| now.saturating_duration_since(t) >= still_of(&p, c));
                out.push(Stream {
                    id,
                    rect: c.rect,
                    updates: c.updates,
                    still,
                });
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
    Some(video_command(stream_id, frame, rect, data))
}

/// A VIDEO command of `rect` at 1:1 (`src` = the rectangle's size).
fn video_command(
    stream_id: u32,
    frame: u32,
    rect: Rect,
    data: VideoData<'static>,
) -> Command<'static> {
    Command::Video(VideoRepr {
        stream_id,
        frame,
        dst: rect,
        src_w: rect.w,
        src_h: rect.h,
        data,
    })
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
    let data = VideoData::Codec {
        codec: crate::protocol::CODEC_H264,
        data: au.into(),
    };
    Some(video_command(stream_id, frame, rect, data))
}

#[cfg(test)]
mod test {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The thresholds with a `min_duration` of one second: the tests below
    /// count frames against it.
    fn one_second() -> VideoParams {
        VideoParams {
            min_duration: Duration::from_secs(1),
            large_area: usize::MAX,
            ..VideoParams::default()
        }
    }

    /// The streams at `now`, id and area.
    fn polled(d: &mut VideoDetector, now: Instant) -> Vec<(u32, Rect)> {
        d.poll_streams(now).iter().map(|s| (s.id, s.rect)).collect()
    }

    #[test]
    fn by_default_a_24_fps_video_is_a_stream_after_half_a_second_or_three_frames_when_large() {
        // Frame `i` is drawn at `i` × 41.667 ms; the first poll that sees a
        // stream, for an area of 640×480 (large) and of 240×180 (not).
        let first_stream = |area: Rect, every_us: u64| {
            let mut d = VideoDetector::new(VideoParams::default());
            let t0 = Instant::now();
            (0..24u32).find(|&i| {
                let now = t0 + Duration::from_micros(every_us) * i;
                d.handle_damage(None, &[area], &[], now);
                !d.poll_streams(now).is_empty()
            })
        };
        // Frame 12 is drawn at 500 ms (and is the 13th update).
        assert_eq!(first_stream(Rect::new(0, 0, 240, 180), 41_667), Some(12));
        // Three updates (frames 0..=2, the 3rd done by frame 3) of a large
        // area.
        assert_eq!(first_stream(Rect::new(0, 0, 640, 480), 41_667), Some(3));
        // A large area at less than 10 updates/s is no stream in a second.
        assert_eq!(first_stream(Rect::new(0, 0, 640, 480), 125_000), None);
    }

    #[test]
    fn a_frame_being_drawn_is_read_once_its_drawing_settled() {
        let mut d = VideoDetector::new(VideoParams::default());
        let t0 = Instant::now();
        let area = Rect::new(0, 0, 640, 480);
        assert_eq!(d.drawing_over(area, t0), None);
        // The top half, then the bottom half 5 ms later.
        d.handle_damage(None, &[Rect::new(0, 0, 640, 240)], &[], t0);
        assert_eq!(d.drawing_over(area, t0 + ms(1)), Some(t0 + ms(12)));
        assert_eq!(d.drawing_over(Rect::new(0, 400, 64, 64), t0), None);
        d.handle_damage(None, &[Rect::new(0, 240, 640, 240)], &[], t0 + ms(5));
        assert_eq!(d.drawing_over(area, t0 + ms(6)), Some(t0 + ms(17)));
        assert_eq!(d.drawing_over(area, t0 + ms(17)), None);
        // Damage that never stops: read 30 ms after the drawing began.
        let t1 = t0 + ms(100);
        for i in 0..6 {
            d.handle_damage(None, &[area], &[], t1 + ms(5 * i));
        }
        assert_eq!(d.drawing_over(area, t1 + ms(26)), Some(t1 + ms(30)));
        assert_eq!(d.drawing_over(area, t1 + ms(30)), None);
    }

    #[test]
    fn a_stream_stands_still_after_a_little_more_than_its_median_interval() {
        let mut d = VideoDetector::new(VideoParams::default());
        let t0 = Instant::now();
        let area = Rect::new(0, 0, 640, 480);
        for i in 0..10u64 {
            d.handle_damage(None, &[area], &[], t0 + ms(40 * i));
        }
        let last = t0 + ms(40 * 9);
        let at = |d: &mut VideoDetector, t: Duration| d.poll_streams(last + t);
        let s = at(&mut d, ms(21));
        assert_eq!((s.len(), s[0].updates, s[0].still), (1, 10, false));
        assert!(!at(&mut d, us(43_999))[0].still);
        assert!(at(&mut d, ms(44))[0].still);
        // The next frame, in parts: not still while it is being drawn.
        d.handle_damage(None, &[Rect::new(0, 0, 640, 240)], &[], last + ms(46));
        assert!(!at(&mut d, ms(50))[0].still);
        d.handle_damage(None, &[Rect::new(0, 240, 640, 240)], &[], last + ms(52));
        let s = at(&mut d, ms(75));
        assert_eq!((s[0].updates, s[0].still), (11, false));
        // One late frame leaves the median at 40 ms: still 44 ms after it.
        assert!(!at(&mut d, ms(46) + us(43_999))[0].still);
        assert!(at(&mut d, ms(46) + ms(44))[0].still);
        assert_eq!(d.next_change(last + ms(60)), Some(last + ms(90)));
        // After that, the next change is its end (twice its longest
        // interval, 92 ms, is below the floor of 100 ms).
        assert_eq!(d.next_change(last + ms(91)), Some(last + ms(46 + 100)));
    }

    use crate::encode::test::{screen, text};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn view(data: &[u8], w: u16, h: u16) -> PixelView<'_> {
        PixelView::new(data, usize::from(w) * 4, w, h).unwrap()
    }

    /// Frame `t` of a photo-like picture panned by (5, 3) pixels a frame,
    /// its brightness drifting: every pixel changes every frame, nothing is
    /// a scroll (the bench's video).
    fn video(t: u32) -> impl Fn(u16, u16) -> u32 {
        move |x, y| {
            let (x, y) = (u32::from(x) + 5 * t, u32::from(y) + 3 * t);
            let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 29;
            let v = |a: u32| (a % 200 + noise + t) & 0xff;
            (v(x) << 16) | (v(y) << 8) | v(x + y)
        }
    }

    /// Damages `area` every `every` from `t0` for `frames` frames drawn by
    /// `draw(frame)`; the streams once each is done.
    fn play(
        d: &mut VideoDetector,
        (w, h): (u16, u16),
        area: Rect,
        t0: Instant,
        every: Duration,
        frames: u32,
        draw: impl Fn(u32) -> Vec<u8>,
    ) -> Vec<Vec<(u32, Rect)>> {
        (0..frames)
            .map(|i| {
                let now = t0 + every * i;
                let data = draw(i);
                d.handle_damage(Some(&view(&data, w, h)), &[area], &[], now);
                polled(d, now + d.params.coalesce)
            })
            .collect()
    }

    #[test]
    fn sustained_updates_become_a_stream_and_calm_ends_it() {
        let mut d = VideoDetector::new(one_second());
        let t0 = Instant::now();
        let area = Rect::new(100, 100, 320, 240);
        // 25 updates per second for 1.2 s.
        for i in 0..30u64 {
            let now = t0 + ms(40 * i);
            d.handle_damage(None, &[area], &[], now);
            // Small damage (typing) never counts.
            d.handle_damage(None, &[Rect::new(0, 0, 8, 13)], &[], now);
            let streams = polled(&mut d, now);
            if i < 25 {
                assert!(streams.is_empty(), "{i}");
            }
        }
        let now = t0 + ms(1200);
        assert_eq!(polled(&mut d, now), [(1, area)]);
        // Damage inside keeps it; the area stays fixed.
        d.handle_damage(None, &[Rect::new(110, 110, 100, 100)], &[], now);
        assert_eq!(polled(&mut d, now), [(1, area)]);
        // A full-screen repaint is not part of it.
        d.handle_damage(None, &[Rect::new(0, 0, 1024, 768)], &[], now);
        assert_eq!(polled(&mut d, now), [(1, area)]);
        assert!(polled(&mut d, now + ms(600)).is_empty());
        // Slow updates (a clock) never become video.
        let mut d = VideoDetector::new(one_second());
        for i in 0..10u64 {
            let now = t0 + ms(500 * i);
            d.handle_damage(None, &[area], &[], now);
            assert!(polled(&mut d, now).is_empty());
        }
    }

    #[test]
    fn scrolling_text_is_not_video_and_video_still_is() {
        let (w, h) = (320u16, 260u16);
        let whole = Rect::new(0, 0, w, h);
        let t0 = Instant::now();
        // A terminal scrolled by one line (13 rows) every 25 ms for 2 s.
        let scroll = |i: u32| screen(w, h, text(i));
        let mut d = VideoDetector::new(one_second());
        let streams = play(&mut d, (w, h), whole, t0, ms(25), 80, scroll);
        assert!(streams.iter().all(Vec::is_empty), "scrolling became video");
        // By three lines, in the lower part only (a pane).
        let pane = Rect::new(0, 130, w, 130);
        let mut d = VideoDetector::new(one_second());
        let streams = play(&mut d, (w, h), pane, t0, ms(25), 80, |i| {
            screen(w, h, |x, y| {
                if y < 130 {
                    text(0)(x, y)
                } else {
                    text(3 * i)(x, y)
                }
            })
        });
        assert!(
            streams.iter().all(Vec::is_empty),
            "scrolled pane became video"
        );
        // The same damage with no pixels to look at becomes video.
        let mut d = VideoDetector::new(one_second());
        for i in 0..80 {
            d.handle_damage(None, &[whole], &[], t0 + ms(25) * i);
        }
        assert_eq!(polled(&mut d, t0 + ms(25 * 79)), [(1, whole)]);
        // A video (every pixel changes) is one after a second.
        let mut d = VideoDetector::new(one_second());
        let streams = play(&mut d, (w, h), whole, t0, ms(40), 30, |i| {
            screen(w, h, video(i))
        });
        assert!(streams[..25].iter().all(Vec::is_empty));
        assert_eq!(streams[29], [(1, whole)]);
        // Redrawn unchanged, it goes on (a player holding a frame).
        let same = screen(w, h, video(29));
        for i in 30..60 {
            let now = t0 + ms(40) * i;
            d.handle_damage(Some(&view(&same, w, h)), &[whole], &[], now);
            assert_eq!(polled(&mut d, now), [(1, whole)]);
        }
        // Then scrolled: the stream ends as after a pause.
        let scrolled = play(&mut d, (w, h), whole, t0 + ms(2400), ms(25), 10, |i| {
            screen(w, h, text(i))
        });
        assert_eq!(scrolled[0], [(1, whole)]);
        assert!(scrolled[9].is_empty());
    }

    #[test]
    fn a_drawing_reported_in_parts_is_one_update() {
        // Each frame reported as strips of 32 to 96 rows, 1 ms apart (the
        // server fetched damage while X was still putting the frame).
        let (w, h) = (320u16, 256u16);
        let strips = [0u16, 32, 128, 160, 256];
        let t0 = Instant::now();
        let mut d = VideoDetector::new(one_second());
        let mut streams = Vec::new();
        for i in 0..30u32 {
            let data = screen(w, h, video(i));
            for (k, pair) in strips.windows(2).enumerate() {
                let part = Rect::new(0, pair[0], w, pair[1] - pair[0]);
                let now = t0 + ms(40) * i + ms(k as u64);
                d.handle_damage(Some(&view(&data, w, h)), &[part], &[], now);
            }
            streams.push(polled(&mut d, t0 + ms(40) * i + ms(30)));
        }
        assert!(streams[..25].iter().all(Vec::is_empty));
        assert_eq!(streams[29], [(1, Rect::new(0, 0, w, h))]);
        // A scroll reported as the moved rows, then the new line.
        let mut d = VideoDetector::new(one_second());
        for i in 0..80u32 {
            let data = screen(w, h, text(i));
            let now = t0 + ms(25) * i;
            let v = view(&data, w, h);
            d.handle_damage(Some(&v), &[Rect::new(0, 0, w, h - 13)], &[], now);
            d.handle_damage(Some(&v), &[Rect::new(0, h - 13, w, 13)], &[], now + ms(2));
            assert!(polled(&mut d, now + ms(22)).is_empty(), "{i}");
        }
    }

    #[test]
    fn moved_windows_are_not_video() {
        // A 200×150 window dragged by 4 pixels every 20 ms for 2 s.
        let mut d = VideoDetector::new(one_second());
        let t0 = Instant::now();
        for i in 0..100u16 {
            let now = t0 + ms(20) * u32::from(i);
            let dst = Rect::new(100 + 4 * i, 100, 200, 150);
            let mv = Move { dst, dx: 4, dy: 0 };
            // The damage: where it was and where it is.
            let damage = Rect::new(96 + 4 * i, 100, 204, 150);
            d.handle_damage(None, &[damage], &[mv], now);
            assert!(polled(&mut d, now).is_empty(), "{i}");
        }
    }

    #[test]
    fn a_stream_ends_after_a_few_of_its_frame_intervals() {
        let area = Rect::new(0, 0, 320, 240);
        let t0 = Instant::now();
        let feed = |d: &mut VideoDetector, from: Instant, times: &[u64]| {
            for &t in times {
                d.handle_damage(None, &[area], &[], from + ms(t));
            }
        };
        let every = |step: u64, n: u64| (0..n).map(|i| i * step).collect::<Vec<_>>();
        // 25 frames/s: twice 40 ms is below the floor of 100 ms.
        let mut d = VideoDetector::new(one_second());
        feed(&mut d, t0, &every(40, 30));
        let last = t0 + ms(40 * 29);
        // Until the last drawing is done, it may go on.
        assert_eq!(polled(&mut d, last + ms(19)), [(1, area)]);
        assert_eq!(polled(&mut d, last + ms(20)), [(1, area)]);
        // It stands still after 110 % of 40 ms, and ends at 100 ms.
        assert_eq!(d.next_change(last + ms(20)), Some(last + ms(44)));
        assert_eq!(d.next_change(last + ms(45)), Some(last + ms(100)));
        assert_eq!(polled(&mut d, last + ms(99)), [(1, area)]);
        assert!(polled(&mut d, last + ms(100)).is_empty());
        assert_eq!(d.next_change(last + ms(100)), None);
        // Resumed: a new stream only after the usual second.
        let resumed = last + ms(300);
        for i in 0..30u32 {
            let now = resumed + ms(40) * i;
            d.handle_damage(None, &[area], &[], now);
            let streams = polled(&mut d, now);
            if i < 25 {
                assert!(streams.is_empty(), "{i}");
            } else {
                assert_eq!(streams, [(2, area)], "{i}");
            }
        }
        // 12.5 frames/s: 160 ms.
        let mut d = VideoDetector::new(one_second());
        feed(&mut d, t0, &every(80, 16));
        let last = t0 + ms(80 * 15);
        assert_eq!(polled(&mut d, last + ms(20)), [(1, area)]);
        assert_eq!(polled(&mut d, last + ms(159)), [(1, area)]);
        assert!(polled(&mut d, last + ms(160)).is_empty());
        // Jerky, one interval of 300 ms in the last second: at most 500 ms.
        let mut d = VideoDetector::new(one_second());
        let mut times = every(40, 20);
        times.extend(every(40, 12).iter().map(|t| 760 + 300 + t));
        feed(&mut d, t0, &times);
        let last = t0 + ms(*times.last().unwrap());
        assert_eq!(polled(&mut d, last + ms(20)), [(1, area)]);
        assert_eq!(polled(&mut d, last + ms(499)), [(1, area)]);
        assert!(polled(&mut d, last + ms(500)).is_empty());
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
