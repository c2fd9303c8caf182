//! The per-viewer queue of display commands: Shortest-Remaining-Size-First,
//! preemptive between commands, with superseded commands dropped and the
//! queued bytes bounded (PROTOCOL.md §11). Sans I/O: the server pushes
//! updates and polls commands when its socket can take more.
//!
//! - An **update** is the list of commands the encoder made for one damaged
//!   area (e.g. a COPY and the new strip of a scroll, or the RAW pieces of
//!   an image). Its *remaining size* is the bytes of its commands not yet
//!   sent.
//! - [`Scheduler::poll_command`] sends the next command of the update with
//!   the smallest remaining size (ties: the older update), so a small update
//!   queued while a big one is half sent goes next: preemption happens
//!   between commands, which is why the encoder cuts images into RAWs of at
//!   most four tiles.
//! - **Dependencies.** A command may go before a command queued earlier only
//!   if they are independent: neither writes a pixel the other writes, and
//!   neither writes a pixel the other reads (a COPY reads its source). So a
//!   COPY never overtakes a command that paints its source, and no command
//!   that paints a COPY's source overtakes the COPY: whatever the order, the
//!   client ends with the pixels of the queue order. The oldest command is
//!   always free to go, so the queue always drains.
//! - **Superseded commands.** When a new command paints every pixel an older
//!   one writes (RAW, SFILL, PFILL, opaque BITMAP), the older one is dropped
//!   — or, for SFILL and PFILL, the rectangles it covers are removed — unless
//!   a command in between reads those pixels (a COPY from them). Frames of
//!   a compressed VIDEO codec (H.264) are never dropped: each predicts from
//!   the one before, so the client could not decode the next one (the
//!   server encodes a frame only when the queue has room, so a slow client
//!   gets fewer frames from the encoder instead).
//! - **No starvation.** Once [`MAX_WAIT`] commands were sent since the
//!   oldest queued command was queued, it goes next, whatever its size: a
//!   stream of small updates that fills the link delays a large one, but not
//!   forever.
//! - **Bound.** [`Scheduler::has_room`] says whether the queue holds fewer
//!   than its limit in bytes; the server encodes new damage only then (the
//!   damage itself waits in a bounded [`Region`](crate::encode::Region)), so
//!   the queue never holds more than the limit plus one update.

use std::collections::{HashMap, VecDeque};

use crate::protocol::{Command, Message, Rect, VideoData, VideoRepr};

/// Commands sent, at most, while the oldest queued command waits.
pub const MAX_WAIT: u64 = 256;

/// Counters of what the scheduler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleStats {
    /// Commands queued.
    pub queued: u64,
    /// Commands handed out by [`Scheduler::poll_command`].
    pub sent: u64,
    /// Of those, commands that went before an older queued command.
    pub overtaken: u64,
    /// Commands dropped because newer ones covered them.
    pub dropped: u64,
    /// Bytes saved by dropping or trimming superseded commands.
    pub dropped_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    update: u64,
    size: usize,
    writes: Vec<Rect>,
    reads: Option<Rect>,
    /// Paints every pixel of `writes` without reading any.
    opaque: bool,
    /// Never superseded (a frame of an inter-coded VIDEO stream).
    keep: bool,
    /// `stats.sent` when it was queued.
    queued_at: u64,
    command: Command<'static>,
}

/// One viewer's queue.
#[derive(Debug)]
pub struct Scheduler {
    entries: VecDeque<Entry>,
    /// Remaining bytes per update.
    remaining: HashMap<u64, usize>,
    bytes: usize,
    limit: usize,
    next_seq: u64,
    next_update: u64,
    stats: ScheduleStats,
}

impl Scheduler {
    /// An empty queue that has room until it holds `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Scheduler {
            entries: VecDeque::new(),
            remaining: HashMap::new(),
            bytes: 0,
            limit,
            next_seq: 0,
            next_update: 0,
            stats: ScheduleStats::default(),
        }
    }

    /// Whether the queue holds fewer bytes than its limit.
    pub fn has_room(&self) -> bool {
        self.bytes < self.limit
    }

    /// Bytes queued (whole messages, headers included).
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Commands queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the scheduler did so far.
    pub fn stats(&self) -> ScheduleStats {
        self.stats
    }

    /// Forgets everything queued (a full state replaces it).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.remaining.clear();
        self.bytes = 0;
    }

    /// Queues one update: `commands`, to be applied in this order (among
    /// themselves and after everything queued before them).
    pub fn push_update(&mut self, commands: Vec<Command<'static>>) {
        let update = self.next_update;
        self.next_update += 1;
        for command in commands {
            let entry = self.entry(update, command);
            if entry.opaque {
                self.supersede(&entry.writes);
            }
            self.bytes += entry.size;
            *self.remaining.entry(update).or_default() += entry.size;
            self.stats.queued += 1;
            self.entries.push_back(entry);
        }
    }

    fn entry(&mut self, update: u64, command: Command<'static>) -> Entry {
        let (writes, reads, opaque) = match &command {
            Command::Raw(r) => (vec![r.rect], None, true),
            Command::Copy(c) => (vec![c.dst()], Some(c.src()), false),
            Command::SFill(s) => (s.rects.clone(), None, true),
            Command::Bitmap(b) => (vec![b.rect], None, b.bg.is_some()),
            Command::PFill(p) => (p.rects.clone(), None, true),
            Command::Video(v) => (vec![v.dst], None, true),
        };
        let keep = matches!(
            &command,
            Command::Video(VideoRepr {
                data: VideoData::Codec { .. },
                ..
            })
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        Entry {
            seq,
            update,
            size: Message::Command(command.clone()).buffer_len(),
            writes,
            reads,
            opaque,
            keep,
            queued_at: self.stats.sent,
            command,
        }
    }

    /// Drops (or trims) queued commands whose every written pixel `cover`
    /// paints, unless a command queued after them reads those pixels.
    fn supersede(&mut self, cover: &[Rect]) {
        let covered = |r: &Rect| cover.iter().any(|c| contains(*c, *r));
        // Sources read by the commands newer than the one looked at.
        let mut reads: Vec<Rect> = Vec::new();
        let mut i = self.entries.len();
        while i > 0 {
            i -= 1;
            let Some(e) = self.entries.get_mut(i) else {
                break;
            };
            let free = |r: &Rect| covered(r) && !reads.iter().any(|s| overlaps(*s, *r));
            if !e.keep && e.writes.iter().all(free) {
                let size = e.size;
                let update = e.update;
                if let Some(read) = e.reads {
                    reads.push(read);
                }
                self.entries.remove(i);
                self.forget(update, size);
                self.stats.dropped += 1;
                self.stats.dropped_bytes += size as u64;
                continue;
            }
            let trimmable = matches!(e.command, Command::SFill(_) | Command::PFill(_));
            if trimmable && e.writes.iter().any(free) {
                let keep: Vec<Rect> = e.writes.iter().copied().filter(|r| !free(r)).collect();
                match &mut e.command {
                    Command::SFill(s) => s.rects = keep.clone(),
                    Command::PFill(p) => p.rects = keep.clone(),
                    _ => {}
                }
                e.writes = keep;
                let size = Message::Command(e.command.clone()).buffer_len();
                let saved = e.size.saturating_sub(size);
                e.size = size;
                let update = e.update;
                self.forget(update, saved);
                self.stats.dropped_bytes += saved as u64;
            }
            if let Some(read) = self.entries.get(i).and_then(|e| e.reads) {
                reads.push(read);
            }
        }
    }

    fn forget(&mut self, update: u64, size: usize) {
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(r) = self.remaining.get_mut(&update) {
            *r = r.saturating_sub(size);
            if *r == 0 {
                self.remaining.remove(&update);
            }
        }
    }

    /// The next command to send: the first queued command of the update
    /// with the smallest remaining size that no older queued command
    /// conflicts with.
    pub fn poll_command(&mut self) -> Option<Command<'static>> {
        let starving = self
            .entries
            .front()
            .is_some_and(|e| self.stats.sent - e.queued_at >= MAX_WAIT);
        if starving {
            let entry = self.entries.pop_front()?;
            self.stats.sent += 1;
            self.forget(entry.update, entry.size);
            return Some(entry.command);
        }
        // The first command of each update, in queue order.
        let mut heads: Vec<(usize, u64, usize)> = Vec::new(); // (remaining, seq, index)
        let mut seen: HashMap<u64, ()> = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if seen.insert(e.update, ()).is_none() {
                let rem = self.remaining.get(&e.update).copied().unwrap_or(0);
                heads.push((rem, e.seq, i));
            }
        }
        heads.sort_unstable();
        let index = heads.iter().map(|h| h.2).find(|&i| {
            self.entries.get(i).is_some_and(|e| {
                self.entries
                    .iter()
                    .take(i)
                    .all(|older| !conflicts(older, e))
            })
        })?;
        let entry = self.entries.remove(index)?;
        if index > 0 {
            self.stats.overtaken += 1;
        }
        self.stats.sent += 1;
        self.forget(entry.update, entry.size);
        Some(entry.command)
    }
}

/// Whether `later` must stay after `earlier`.
fn conflicts(earlier: &Entry, later: &Entry) -> bool {
    let any = |a: &[Rect], b: &[Rect]| a.iter().any(|x| b.iter().any(|y| overlaps(*x, *y)));
    any(&earlier.writes, &later.writes)
        || later
            .reads
            .is_some_and(|r| any(&earlier.writes, std::slice::from_ref(&r)))
        || earlier
            .reads
            .is_some_and(|r| any(std::slice::from_ref(&r), &later.writes))
}

fn overlaps(a: Rect, b: Rect) -> bool {
    usize::from(a.x) < b.right()
        && usize::from(b.x) < a.right()
        && usize::from(a.y) < b.bottom()
        && usize::from(b.y) < a.bottom()
}

fn contains(outer: Rect, inner: Rect) -> bool {
    outer.x <= inner.x
        && outer.y <= inner.y
        && outer.right() >= inner.right()
        && outer.bottom() >= inner.bottom()
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec::Framebuffer;
    use crate::protocol::{BitmapRepr, CopyRepr, Payload, RawRepr, SFillRepr};

    fn raw(rect: Rect, seed: u32) -> Command<'static> {
        let data: Vec<u8> = (0..rect.area() as u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes())
            .map(|b| b & 0x7f)
            .collect();
        Command::Raw(RawRepr {
            rect,
            data: Payload::plain(data),
        })
    }

    fn sfill(colour: u32, rects: &[Rect]) -> Command<'static> {
        Command::SFill(SFillRepr {
            colour,
            rects: rects.to_vec(),
        })
    }

    fn text(rect: Rect) -> Command<'static> {
        let stride = usize::from(rect.w).div_ceil(8);
        Command::Bitmap(BitmapRepr {
            rect,
            fg: 0,
            bg: Some(0x00ff_ffff),
            bits: Payload::plain(vec![0x5a; stride * usize::from(rect.h)]),
        })
    }

    fn copy(src: (u16, u16), dst: (u16, u16), w: u16, h: u16) -> Command<'static> {
        Command::Copy(CopyRepr {
            src_x: src.0,
            src_y: src.1,
            dst_x: dst.0,
            dst_y: dst.1,
            w,
            h,
        })
    }

    fn drain(s: &mut Scheduler) -> Vec<Command<'static>> {
        std::iter::from_fn(|| s.poll_command()).collect()
    }

    #[test]
    fn small_update_overtakes_a_big_one_between_its_pieces() {
        let mut s = Scheduler::new(1 << 20);
        // An image in four RAW pieces of 64 KiB each.
        let image: Vec<_> = (0..4)
            .map(|i| raw(Rect::new(i * 128, 0, 128, 128), 1))
            .collect();
        s.push_update(image.clone());
        assert_eq!(s.poll_command().as_ref(), image.first());
        // A keystroke arrives while the image is being sent.
        let key = text(Rect::new(10, 300, 6, 13));
        s.push_update(vec![key.clone()]);
        assert_eq!(s.poll_command(), Some(key));
        assert_eq!(drain(&mut s), image[1..]);
        assert_eq!(s.stats().overtaken, 1);
        assert_eq!(s.queued_bytes(), 0);
        // Both queued before anything is sent: the small one first.
        s.push_update(image.clone());
        let key = text(Rect::new(10, 300, 6, 13));
        s.push_update(vec![key.clone()]);
        assert_eq!(s.poll_command(), Some(key));
    }

    #[test]
    fn a_stream_of_small_updates_does_not_starve_a_big_one() {
        let mut s = Scheduler::new(usize::MAX);
        let image = raw(Rect::new(0, 0, 128, 128), 1);
        s.push_update(vec![image.clone()]);
        let mut waited = 0;
        loop {
            s.push_update(vec![text(Rect::new(300, 300, 6, 13))]);
            if s.poll_command() == Some(image.clone()) {
                break;
            }
            waited += 1;
            assert!(waited <= MAX_WAIT, "starved");
        }
        assert_eq!(waited, MAX_WAIT);
    }

    #[test]
    fn overlapping_update_waits_for_what_it_overlaps() {
        let mut s = Scheduler::new(1 << 20);
        let image: Vec<_> = (0..4)
            .map(|i| raw(Rect::new(i * 128, 0, 128, 128), 1))
            .collect();
        s.push_update(image.clone());
        // Text over the third piece (not covering it): it must follow it.
        let key = text(Rect::new(260, 10, 12, 13));
        s.push_update(vec![key.clone()]);
        let order = drain(&mut s);
        let key_at = order.iter().position(|c| *c == key).unwrap();
        let piece_at = order.iter().position(|c| *c == image[2]).unwrap();
        assert!(key_at > piece_at, "{key_at} {piece_at}");
        // It still overtook the fourth piece.
        assert!(key_at < order.iter().position(|c| *c == image[3]).unwrap());
    }

    #[test]
    fn copy_is_not_reordered_across_its_source() {
        let mut s = Scheduler::new(1 << 20);
        // A big paint of the area a later scroll copies from.
        let paint = raw(Rect::new(0, 100, 256, 100), 2);
        s.push_update(vec![paint.clone()]);
        let scroll = vec![
            copy((0, 100), (0, 87), 256, 100),
            sfill(7, &[Rect::new(0, 187, 256, 13)]),
        ];
        s.push_update(scroll.clone());
        // A small paint of the copy's source, queued after the copy.
        let later = text(Rect::new(0, 150, 8, 13));
        s.push_update(vec![later.clone()]);
        let order = drain(&mut s);
        let at = |c: &Command<'_>| order.iter().position(|o| o == c).unwrap();
        assert!(at(&paint) < at(&scroll[0]));
        assert!(at(&scroll[0]) < at(&later));
    }

    #[test]
    fn superseded_commands_are_dropped_unless_a_copy_reads_them() {
        let mut s = Scheduler::new(1 << 20);
        let old = raw(Rect::new(0, 0, 64, 64), 3);
        s.push_update(vec![old]);
        let before = s.queued_bytes();
        s.push_update(vec![sfill(1, &[Rect::new(0, 0, 128, 128)])]);
        assert_eq!(s.len(), 1);
        assert!(s.queued_bytes() < before / 100);
        assert_eq!(s.stats().dropped, 1);
        // Trimmed: an SFILL rect covered by a newer RAW goes away.
        let mut s = Scheduler::new(1 << 20);
        s.push_update(vec![sfill(
            1,
            &[Rect::new(0, 0, 8, 8), Rect::new(100, 0, 8, 8)],
        )]);
        s.push_update(vec![raw(Rect::new(0, 0, 16, 16), 4)]);
        assert_eq!(s.poll_command(), Some(sfill(1, &[Rect::new(100, 0, 8, 8)])));
        // A COPY in between reads the old pixels: nothing is dropped.
        let mut s = Scheduler::new(1 << 20);
        s.push_update(vec![raw(Rect::new(0, 0, 64, 64), 3)]);
        s.push_update(vec![copy((0, 0), (200, 0), 64, 64)]);
        s.push_update(vec![sfill(1, &[Rect::new(0, 0, 64, 64)])]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn bounded_in_bytes() {
        let limit = 256 * 1024;
        let mut s = Scheduler::new(limit);
        let mut biggest = 0;
        // A producer four times faster than the consumer: it only encodes
        // while there is room. Newer updates of the same places replace
        // queued ones.
        let mut n = 0u32;
        for round in 0..1000u32 {
            // Up to 4 updates per command sent, at 12 places in turn.
            for _ in 0..4 {
                if !s.has_room() {
                    break;
                }
                n += 1;
                let x = (n % 6) as u16 * 64;
                let y = (n / 6 % 2) as u16 * 64;
                let update: Vec<_> = (0..2)
                    .map(|i| raw(Rect::new(x, y + i * 32, 64, 32), round))
                    .collect();
                biggest = biggest.max(
                    update
                        .iter()
                        .map(|c| Message::Command(c.clone()).buffer_len())
                        .sum::<usize>(),
                );
                s.push_update(update);
            }
            assert!(s.queued_bytes() < limit + biggest, "{}", s.queued_bytes());
            s.poll_command();
        }
        assert!(s.stats().dropped > 0);
    }

    /// Tiny xorshift PRNG.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        fn rect(&mut self) -> Rect {
            let x = (self.next() % 60) as u16;
            let y = (self.next() % 60) as u16;
            let w = 1 + (self.next() % u32::from(64 - x)) as u16;
            let h = 1 + (self.next() % u32::from(64 - y)) as u16;
            Rect::new(x, y, w, h)
        }
    }

    #[test]
    fn any_interleaving_ends_like_the_queue_order() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..200 {
            let mut s = Scheduler::new(usize::MAX);
            let mut fifo = Framebuffer::new(64, 64).unwrap();
            let mut client = Framebuffer::new(64, 64).unwrap();
            for _ in 0..30 {
                let n = 1 + rng.next() % 3;
                let mut update = Vec::new();
                for _ in 0..n {
                    let r = rng.rect();
                    let c = match rng.next() % 4 {
                        0 => raw(r, rng.next()),
                        1 => sfill(rng.next() & 0xff_ffff, &[r, rng.rect()]),
                        2 => text(r),
                        _ => {
                            let (sx, sy) = (
                                (rng.next() % u32::from(65 - r.w)) as u16,
                                (rng.next() % u32::from(65 - r.h)) as u16,
                            );
                            copy((sx, sy), (r.x, r.y), r.w, r.h)
                        }
                    };
                    fifo.apply(&c).unwrap();
                    update.push(c);
                }
                s.push_update(update);
                // Send a random number of commands between updates.
                for _ in 0..rng.next() % 3 {
                    if let Some(c) = s.poll_command() {
                        client.apply(&c).unwrap();
                    }
                }
            }
            for c in drain(&mut s) {
                client.apply(&c).unwrap();
            }
            assert!(client == fifo, "round {round}");
        }
    }

    /// Frames of an H.264 stream are never superseded: newer frames of the
    /// same area, a RAW over it and an I420 frame of it leave every frame
    /// queued, in order, so the client's decoder gets an unbroken chain
    /// from the IDR picture on (the RAW and the I420 frame, which stand
    /// alone, are still superseded).
    #[cfg(feature = "h264")]
    #[test]
    fn h264_frames_are_never_superseded() {
        use crate::codec::h264::{H264Decoder, H264Encoder};
        use crate::codec::yuv::bgrx_to_i420;
        use crate::protocol::{Encoding, CODEC_H264};
        use std::borrow::Cow;

        let area = Rect::new(8, 8, 48, 32);
        let (w, h) = (usize::from(area.w), usize::from(area.h));
        let mut encoder = H264Encoder::new(area.w, area.h).unwrap();
        let mut s = Scheduler::new(1 << 20);
        for frame in 0..12u32 {
            let pixels: Vec<u32> = (0..w * h)
                .map(|i| (i as u32).wrapping_mul(2_654_435_761) >> (frame % 8))
                .collect();
            let i420 = bgrx_to_i420(&pixels, w, h);
            let (au, _) = encoder.encode(&i420.as_ref()).unwrap();
            s.push_update(vec![Command::Video(VideoRepr {
                stream_id: 1,
                frame,
                dst: area,
                src_w: area.w,
                src_h: area.h,
                data: VideoData::Codec {
                    codec: CODEC_H264,
                    data: Cow::Owned(au),
                },
            })]);
            // A RAW over the whole area, and an I420 frame of it: each
            // would drop every queued frame it covers.
            if frame % 3 == 1 {
                s.push_update(vec![raw(Rect::new(0, 0, 64, 64), frame)]);
            }
            if frame % 4 == 2 {
                s.push_update(vec![Command::Video(VideoRepr {
                    stream_id: 2,
                    frame,
                    dst: area,
                    src_w: area.w,
                    src_h: area.h,
                    data: VideoData::I420 {
                        encoding: Encoding::Plain,
                        y: Cow::Owned(i420.y.clone()),
                        u: Cow::Owned(i420.u.clone()),
                        v: Cow::Owned(i420.v.clone()),
                    },
                })]);
            }
        }
        // Standalone commands are still superseded.
        assert!(s.stats().dropped > 0);
        let mut frames = Vec::new();
        for c in drain(&mut s) {
            if let Command::Video(v) = c {
                if let VideoData::Codec { data, .. } = &v.data {
                    frames.push((v.frame, data.to_vec()));
                }
            }
        }
        let mut decoder = H264Decoder::new().unwrap();
        let mut next = 0;
        for (frame, au) in frames {
            assert_eq!(frame, next, "frames in order, none missing");
            decoder.decode(&au, frame, area.w, area.h).unwrap();
            next += 1;
        }
        assert_eq!(next, 12);
    }
}
