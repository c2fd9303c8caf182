//! Fuzz oracles, shared by the targets in `display/fuzz/` and the regression
//! replay in `tests/main.rs` (feature `fuzzing`; not part of the API).
//!
//! An oracle panics when a property fails; that panic is the finding. Inputs
//! that found something go to `tests/data/fuzz_regression/`, which
//! `cargo test` replays.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::codec::{ApplyError, Framebuffer};
use crate::protocol::{
    BitmapRepr, Command, CompressedRepr, CopyRepr, DecodeError, Deflater, Encoding, Frame,
    FrameDecoder, Inflater, Message, MessageType, PFillRepr, Payload, RawRepr, Rect, SFillRepr,
    Sender, VideoData, VideoRepr, HEADER_LEN,
};

/// Framing and parsing never panic on any bytes, and are consistent:
///
/// - `data[0]` as a type byte and the rest as its body: what parses has a
///   length inside the type's range and survives emit → frame → parse
///   unchanged, with `buffer_len` equal to the bytes emitted;
/// - `data` as a stream: cutting it into chunks changes neither the messages
///   nor the error, and every message that parses round-trips as above;
/// - `data` as a server's stream read by a client with `ZSTD` in force:
///   every `Compressed` is inflated in one context, in order, and what comes
///   out is framed and parsed (errors, never a panic);
/// - the server messages of the stream, sent through a zstd stream in
///   batches that `data` chooses, come out of a client's stream unchanged;
///   with one byte of that stream changed (where `data` says), the client
///   gets the messages before the change and then an error or messages of
///   the same total size, never a panic.
pub fn decode_oracle(data: &[u8]) {
    if let Some((&type_byte, body)) = data.split_first() {
        if let Ok(message) = Message::parse_u8(type_byte, body) {
            let range = message.message_type().body_len_range();
            assert!(range.contains(&body.len()), "{range:?} {}", body.len());
            assert_eq!(message.body_len(), body.len());
            check_round_trip(&message);
            check_h264_framing(&message);
        }
    }

    let whole = decode_stream(data, |_| usize::MAX);
    let mut seed = data.len() as u32 | 1;
    let chunked = decode_stream(data, |_| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 7) as usize
    });
    // The same messages and the same error (not the same count of bytes
    // consumed: a header refused in one call reports none of its bytes).
    assert_eq!(
        (&whole.0, &whole.1),
        (&chunked.0, &chunked.1),
        "chunking changed the result"
    );
    for frame in &whole.0 {
        if let Ok(message) = frame.parse() {
            check_round_trip(&message);
            check_h264_framing(&message);
        }
    }

    client_stream(data);
    compressed_round_trip(&whole.0, data);
}

/// What a client with `ZSTD` in force reads from `data`: the frames, with
/// those inside each `Compressed` in its place, until the first error.
fn client_stream(data: &[u8]) -> (Vec<Frame>, bool) {
    let mut decoder = FrameDecoder::new(Sender::Server);
    let mut inflater = Inflater::new().expect("a zstd context");
    let mut frames = Vec::new();
    let mut input = data;
    while !input.is_empty() {
        let Ok(used) = decoder.handle_bytes(input) else {
            return (frames, false);
        };
        input = &input[used..];
        while let Some(frame) = decoder.poll_message() {
            if frame.msg_type != MessageType::Compressed {
                let _ = frame.parse();
                frames.push(frame);
                continue;
            }
            let Ok(repr) = CompressedRepr::parse(&frame.body) else {
                return (frames, false);
            };
            match inflater.inflate(&repr) {
                Ok(inner) => {
                    let len: usize = inner.iter().map(|f| HEADER_LEN + f.body.len()).sum();
                    assert_eq!(len, repr.decoded_len as usize);
                    for f in inner {
                        assert_ne!(f.msg_type, MessageType::Compressed);
                        let _ = f.parse();
                        frames.push(f);
                    }
                }
                Err(_) => return (frames, false),
            }
        }
    }
    (frames, true)
}

/// The server messages among `frames` through a [`Deflater`] in batches
/// and back through [`client_stream`], whole and with one byte changed.
fn compressed_round_trip(frames: &[Frame], data: &[u8]) {
    let sent: Vec<&Frame> = frames
        .iter()
        .filter(|f| {
            f.msg_type.may_be_sent_by(Sender::Server)
                && f.msg_type != MessageType::Compressed
                && f.msg_type != MessageType::ServerHello
        })
        .collect();
    if sent.is_empty() {
        return;
    }
    let mut u = Unstructured::new(data);
    let level = i32::from(u.byte() % 5) - 1;
    let mut deflater = Deflater::new(level).expect("a zstd context");
    let mut wire = Vec::new();
    // Where each Compressed starts, and how many messages it carries.
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < sent.len() {
        let n = 1 + usize::from(u.byte() % 4);
        let batch = &sent[i..(i + n).min(sent.len())];
        let mut plain = Vec::new();
        for f in batch {
            plain.push(f.msg_type as u8);
            plain.extend_from_slice(&(f.body.len() as u32).to_le_bytes());
            plain.extend_from_slice(&f.body);
        }
        pieces.push((wire.len(), i));
        deflater.deflate(&plain, &mut wire).expect("deflate");
        i += batch.len();
    }
    let (got, ok) = client_stream(&wire);
    assert!(ok, "a clean stream failed");
    assert_eq!(got.len(), sent.len());
    for (a, b) in got.iter().zip(&sent) {
        assert_eq!(a, *b);
    }
    // One byte changed: everything before the piece it is in still comes.
    let at = (usize::from(u.byte()) << 8 | usize::from(u.byte())) % wire.len();
    let flip = u.byte() | 1;
    wire[at] ^= flip;
    let before = pieces
        .iter()
        .take_while(|&&(start, _)| start <= at)
        .last()
        .map_or(0, |&(_, first)| first);
    let (got, _) = client_stream(&wire);
    assert!(got.len() >= before, "{} < {before}", got.len());
    for (a, b) in got.iter().zip(&sent).take(before) {
        assert_eq!(a, *b);
    }
}

/// An H.264 VIDEO frame's access unit splits into NAL units without a
/// panic (PROTOCOL.md §6.3, the framing a viewer checks before its
/// decoder sees the bytes); when it does, there is a unit per start code.
fn check_h264_framing(message: &Message<'_>) {
    let Message::Command(Command::Video(VideoRepr {
        data: VideoData::Codec { codec, data },
        ..
    })) = message
    else {
        return;
    };
    if *codec != crate::protocol::CODEC_H264 {
        return;
    }
    if let Ok(types) = crate::protocol::h264_nal_types(data) {
        assert!(!types.is_empty() && types.iter().all(|&t| t < 32));
        let starts = data.windows(3).filter(|w| *w == [0, 0, 1]).count();
        assert_eq!(types.len(), starts);
    }
}

type Decoded = (Vec<Frame>, Option<DecodeError>, usize);

/// Feeds `data` through a decoder in chunks of `chunk(i)` bytes.
fn decode_stream(data: &[u8], mut chunk: impl FnMut(usize) -> usize) -> Decoded {
    let mut decoder = FrameDecoder::new(Sender::Either);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let end = at.saturating_add(chunk(i)).min(data.len());
        i += 1;
        let mut input = &data[at..end];
        loop {
            match decoder.handle_bytes(input) {
                Ok(used) => {
                    assert!(used <= input.len());
                    at += used;
                    input = &input[used..];
                }
                Err(error) => return (frames, Some(error), at),
            }
            let mut got = false;
            while let Some(frame) = decoder.poll_message() {
                assert!(frame.msg_type.body_len_range().contains(&frame.body.len()));
                frames.push(frame);
                got = true;
            }
            if input.is_empty() || !got {
                break;
            }
        }
    }
    assert_eq!(decoder.is_idle(), decoder.buffered() == 0);
    (frames, None, at)
}

/// Emit, decode and parse again give the same message.
pub fn check_round_trip(message: &Message<'_>) {
    let bytes = message.to_vec().expect("a valid message emits");
    assert_eq!(bytes.len(), message.buffer_len());
    let mut decoder = FrameDecoder::new(Sender::Either);
    assert_eq!(decoder.handle_bytes(&bytes), Ok(bytes.len()));
    let frame = decoder.poll_message().expect("one whole message");
    assert!(decoder.is_idle());
    let again = frame.parse().expect("emitted bytes parse");
    assert_eq!(&again, message);
}

/// Random commands on a small framebuffer never panic and give what a naive
/// per-pixel model gives ([`Model`]); a refused command changes nothing.
/// Valid commands also round-trip through the wire.
pub fn apply_oracle(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let width = 1 + u16::from(u.byte() % 24);
    let height = 1 + u16::from(u.byte() % 24);
    let start: Vec<u32> = (0..u32::from(width) * u32::from(height))
        .map(|i| i.wrapping_mul(0x9e37_79b9) >> 8)
        .collect();
    let mut fb = Framebuffer::from_pixels(width, height, start.clone()).unwrap();
    let mut model = Model {
        width: usize::from(width),
        height: usize::from(height),
        pixels: start,
    };
    for _ in 0..32 {
        if u.is_empty() {
            break;
        }
        let command = random_command(&mut u, width, height);
        let message = Message::Command(command.clone());
        if message.to_vec().is_ok() {
            check_round_trip(&message);
        }
        let before = fb.clone();
        let got = fb.apply(&command);
        match &command {
            Command::Video(video) => check_video(&before, &fb, video, &got),
            _ => {
                let want = model.apply(&command);
                assert_eq!(got.is_ok(), want, "{command:?}: {got:?}");
                if got.is_err() {
                    assert_eq!(fb, before, "a refused command changed pixels");
                }
                assert_eq!(fb.pixels(), &model.pixels[..], "{command:?}");
            }
        }
        model.pixels = fb.pixels().to_vec();
    }
}

/// VIDEO: only `dst` may change, and only when the command was accepted.
fn check_video(
    before: &Framebuffer,
    after: &Framebuffer,
    video: &VideoRepr<'_>,
    got: &Result<(), ApplyError>,
) {
    if got.is_err() {
        assert_eq!(after, before);
        return;
    }
    for y in 0..before.height() {
        for x in 0..before.width() {
            let inside = x >= video.dst.x
                && usize::from(x) < video.dst.right()
                && y >= video.dst.y
                && usize::from(y) < video.dst.bottom();
            if !inside {
                assert_eq!(after.pixel(x, y), before.pixel(x, y), "{x},{y} outside dst");
            }
        }
    }
}

/// The naive reference for RAW, COPY, SFILL, BITMAP and PFILL: one pixel at a
/// time, straight from PROTOCOL.md §5, with its own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u32>,
}

impl Model {
    fn fits(&self, rect: Rect) -> bool {
        rect.w > 0
            && rect.h > 0
            && usize::from(rect.x) + usize::from(rect.w) <= self.width
            && usize::from(rect.y) + usize::from(rect.h) <= self.height
    }

    fn decode(payload: &Payload<'_>, len: usize) -> Option<Vec<u8>> {
        match payload.encoding {
            Encoding::Plain => (payload.data.len() == len).then(|| payload.data.to_vec()),
            // PROTOCOL.md §1: byte i is the sum of data[i], data[i - 4], ...
            Encoding::Delta => (payload.data.len() == len).then(|| {
                (0..len)
                    .map(|i| {
                        (i % 4..=i)
                            .step_by(4)
                            .fold(0u8, |acc, j| acc.wrapping_add(payload.data[j]))
                    })
                    .collect()
            }),
            Encoding::Lz4 => {
                let mut out = vec![0; len];
                match lz4_flex::block::decompress_into(&payload.data, &mut out) {
                    Ok(n) if n == len => Some(out),
                    _ => None,
                }
            }
        }
    }

    fn set(&mut self, x: usize, y: usize, pixel: u32) {
        self.pixels[y * self.width + x] = pixel;
    }

    /// Applies `command` (true), or refuses it (false) and changes nothing.
    /// Not for VIDEO.
    pub fn apply(&mut self, command: &Command<'_>) -> bool {
        match command {
            Command::Raw(raw) => {
                let r = raw.rect;
                if !self.fits(r) {
                    return false;
                }
                let Some(data) = Self::decode(&raw.data, r.area() * 4) else {
                    return false;
                };
                for (i, px) in data.chunks(4).enumerate() {
                    let (col, row) = (i % usize::from(r.w), i / usize::from(r.w));
                    let p = u32::from_le_bytes([px[0], px[1], px[2], px[3]]);
                    self.set(usize::from(r.x) + col, usize::from(r.y) + row, p);
                }
            }
            Command::Copy(c) => {
                if !self.fits(c.src()) || !self.fits(c.dst()) {
                    return false;
                }
                let old = self.pixels.clone();
                for row in 0..usize::from(c.h) {
                    for col in 0..usize::from(c.w) {
                        let s =
                            (usize::from(c.src_y) + row) * self.width + usize::from(c.src_x) + col;
                        self.set(
                            usize::from(c.dst_x) + col,
                            usize::from(c.dst_y) + row,
                            old[s],
                        );
                    }
                }
            }
            Command::SFill(fill) => {
                if fill.rects.is_empty() || !fill.rects.iter().all(|&r| self.fits(r)) {
                    return false;
                }
                for r in &fill.rects {
                    for y in r.y..r.y + r.h {
                        for x in r.x..r.x + r.w {
                            self.set(usize::from(x), usize::from(y), fill.colour);
                        }
                    }
                }
            }
            Command::Bitmap(b) => {
                let r = b.rect;
                if !self.fits(r) {
                    return false;
                }
                let stride = usize::from(r.w).div_ceil(8);
                let Some(bits) = Self::decode(&b.bits, stride * usize::from(r.h)) else {
                    return false;
                };
                for row in 0..usize::from(r.h) {
                    for col in 0..usize::from(r.w) {
                        let bit = (bits[row * stride + col / 8] >> (7 - col % 8)) & 1;
                        let (x, y) = (usize::from(r.x) + col, usize::from(r.y) + row);
                        match (bit, b.bg) {
                            (1, _) => self.set(x, y, b.fg),
                            (_, Some(bg)) => self.set(x, y, bg),
                            _ => {}
                        }
                    }
                }
            }
            Command::PFill(p) => {
                let (tw, th) = (i64::from(p.tile_w), i64::from(p.tile_h));
                if tw == 0
                    || th == 0
                    || p.origin_x >= p.tile_w
                    || p.origin_y >= p.tile_h
                    || p.rects.is_empty()
                    || !p.rects.iter().all(|&r| self.fits(r))
                {
                    return false;
                }
                let Some(tile) = Self::decode(&p.tile, usize::try_from(tw * th * 4).unwrap())
                else {
                    return false;
                };
                for r in &p.rects {
                    for y in i64::from(r.y)..i64::from(r.y) + i64::from(r.h) {
                        for x in i64::from(r.x)..i64::from(r.x) + i64::from(r.w) {
                            let tx = (x - i64::from(p.origin_x)).rem_euclid(tw);
                            let ty = (y - i64::from(p.origin_y)).rem_euclid(th);
                            let i = usize::try_from((ty * tw + tx) * 4).unwrap();
                            let px = u32::from_le_bytes(tile[i..i + 4].try_into().unwrap());
                            self.set(usize::try_from(x).unwrap(), usize::try_from(y).unwrap(), px);
                        }
                    }
                }
            }
            Command::Video(_) => return false,
        }
        true
    }
}

/// The server side end to end on a small screen: random edits of the screen
/// (fills, noise, two-colour text, scrolls and moves of a band), each
/// encoded for a damage rectangle that covers it (sometimes with a move
/// hint, right or wrong) by an [`Encoder`](crate::encode::Encoder), queued
/// in a [`Scheduler`](crate::schedule::Scheduler) with random limits, and
/// sent in SRSF order a random number of commands at a time to a client
/// [`Framebuffer`]. Some edits go as a VIDEO frame of their rectangle (the
/// encoder marks it unknown); the last update repaints the whole screen, as
/// the server does when a video stream ends. The encoder never panics, its
/// image always equals what the client will have once the queue is drained,
/// and after the last edit the client equals the screen.
pub fn encode_oracle(data: &[u8]) {
    use crate::encode::{Encoder, Move, Packing, PixelView};
    use crate::schedule::Scheduler;

    let mut u = Unstructured::new(data);
    let width = 8 + u16::from(u.byte() % 120);
    let height = 8 + u16::from(u.byte() % 120);
    let (w, h) = (usize::from(width), usize::from(height));
    let mut screen: Vec<u32> = (0..w * h)
        .map(|i| if (i % w) / 6 % 2 == 0 { 0x00ff_ffff } else { 0 })
        .collect();
    // Plain payloads, as the server packs them for a zstd viewer, or LZ4.
    let packing = if u.byte() % 2 == 0 {
        Packing::Plain
    } else {
        Packing::Lz4
    };
    let mut encoder = Encoder::new(width, height).with_packing(packing);
    let mut queue = Scheduler::new(1024 * (1 + usize::from(u.byte())));
    let mut client = Framebuffer::new(width, height).unwrap();
    let bytes_of = |px: &[u32]| -> Vec<u8> { px.iter().flat_map(|p| p.to_le_bytes()).collect() };
    let mut first = true;
    let mut videos = 0u32;
    let mut zstd = ZstdLink::new();
    for _ in 0..24 {
        if u.is_empty() && !first {
            break;
        }
        let rect = if first {
            Rect::new(0, 0, width, height)
        } else {
            let x = u16::from(u.byte()) % width;
            let y = u16::from(u.byte()) % height;
            let rw = 1 + u16::from(u.byte()) % (width - x);
            let rh = 1 + u16::from(u.byte()) % (height - y);
            Rect::new(x, y, rw, rh)
        };
        let mut hint = None;
        if !first {
            let kind = u.byte() % 5;
            let colour = u.u32() & 0x00ff_ffff;
            let (dx, dy) = (i32::from(u.byte() % 9) - 4, i32::from(u.byte() % 9) - 4);
            let old = screen.clone();
            for y in rect.y..rect.y + rect.h {
                for x in rect.x..rect.x + rect.w {
                    let (xi, yi) = (usize::from(x), usize::from(y));
                    screen[yi * w + xi] = match kind {
                        0 => colour,
                        1 => u.u32() & 0x00ff_ffff,
                        2 => {
                            if (xi * 7 + yi * 3) % 5 < 2 {
                                colour
                            } else {
                                0x00ff_ffff
                            }
                        }
                        // Content moved by (dx, dy) from where it was.
                        _ => {
                            let sx = (i32::from(x) - dx).clamp(0, i32::from(width) - 1) as usize;
                            let sy = (i32::from(y) - dy).clamp(0, i32::from(height) - 1) as usize;
                            old[sy * w + sx]
                        }
                    };
                }
            }
            if kind >= 3 {
                hint = Some(Move {
                    dst: rect,
                    dx: if kind == 4 { dx } else { -dx },
                    dy,
                });
            }
        }
        first = false;
        let data = bytes_of(&screen);
        let view = PixelView::new(&data, w * 4, width, height).unwrap();
        // The damage sometimes comes in bands, as the server takes it.
        let moves: Vec<Move> = hint.into_iter().collect();
        let mut commands = Vec::new();
        if !first && u.byte() % 8 == 0 {
            commands.extend(encoder.video(&view, rect, 1, videos));
            videos += 1;
        } else {
            commands = encoder.copies(&view, rect, &moves);
            let mut y = rect.y;
            while y < rect.y + rect.h {
                let band = Rect::new(rect.x, y, rect.w, (rect.y + rect.h - y).min(40));
                commands.extend(encoder.paint(&view, band));
                y += band.h;
            }
        }
        for c in &commands {
            let message = Message::Command(c.clone());
            check_round_trip(&message);
        }
        queue.push_update(commands);
        let mut batch = Vec::new();
        for _ in 0..u.byte() % 4 {
            if let Some(c) = queue.poll_command() {
                batch.push(c);
            }
        }
        zstd.send(&batch, &mut client);
    }
    // The end of any video: the whole screen once more (only pixels the
    // client may not have exactly are sent).
    let data = bytes_of(&screen);
    let view = PixelView::new(&data, w * 4, width, height).unwrap();
    queue.push_update(encoder.paint(&view, Rect::new(0, 0, width, height)));
    let mut batch = Vec::new();
    while let Some(c) = queue.poll_command() {
        batch.push(c);
    }
    zstd.send(&batch, &mut client);
    assert!(
        client.pixels() == encoder.model().pixels(),
        "the encoder's image differs from the client"
    );
    assert!(
        client.pixels() == screen.as_slice(),
        "the client differs from the screen"
    );
}

/// A server's zstd stream to a client, as `mobidesk-display` sends it: the
/// commands of one write as one `Compressed` (VIDEO on its own), their
/// payloads recoded for the stream
/// ([`zstd_payloads`](crate::protocol::zstd_payloads)), applied by the
/// client in order.
struct ZstdLink {
    deflater: Deflater,
    inflater: Inflater,
}

impl ZstdLink {
    fn new() -> Self {
        ZstdLink {
            deflater: Deflater::new(crate::protocol::DEFAULT_ZSTD_LEVEL).unwrap(),
            inflater: Inflater::new().unwrap(),
        }
    }

    fn send(&mut self, commands: &[Command<'_>], client: &mut Framebuffer) {
        let mut plain = Vec::new();
        let mut flush = |plain: &mut Vec<u8>, client: &mut Framebuffer| {
            if plain.is_empty() {
                return;
            }
            let mut wire = Vec::new();
            self.deflater.deflate(plain, &mut wire).unwrap();
            plain.clear();
            let repr = CompressedRepr::parse(&wire[HEADER_LEN..]).unwrap();
            for frame in self.inflater.inflate(&repr).unwrap() {
                match frame.parse().unwrap() {
                    Message::Command(c) => client.apply(&c).unwrap(),
                    other => panic!("{other:?}"),
                }
            }
        };
        for c in commands {
            if let Command::Video(_) = c {
                flush(&mut plain, client);
                client.apply(c).unwrap();
            } else {
                let c = crate::protocol::zstd_payloads(c.clone());
                plain.extend(Message::Command(c).to_vec().unwrap());
            }
        }
        flush(&mut plain, client);
    }
}

/// Takes values from the fuzz input; zeros once it runs out.
pub struct Unstructured<'a> {
    data: &'a [u8],
}

impl<'a> Unstructured<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Unstructured { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// `len` bytes: from the input while it lasts, then a pattern.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let take = len.min(self.data.len());
        let (head, rest) = self.data.split_at(take);
        self.data = rest;
        let mut out = head.to_vec();
        out.extend((take..len).map(|i| (i as u8).wrapping_mul(31)));
        out
    }
}

/// A coordinate or size around a framebuffer dimension (sometimes past it).
fn coord(u: &mut Unstructured<'_>, dim: u16) -> u16 {
    u16::from(u.byte()) % (dim + 3)
}

fn random_rect(u: &mut Unstructured<'_>, width: u16, height: u16) -> Rect {
    Rect::new(
        coord(u, width),
        coord(u, height),
        coord(u, width),
        coord(u, height),
    )
}

/// A payload for `decoded` bytes: usually right, sometimes broken.
fn random_payload(u: &mut Unstructured<'_>, len: usize) -> Payload<'static> {
    let decoded = u.bytes(len);
    match u.byte() % 8 {
        0..=1 => Payload::plain(decoded),
        2 => Payload::delta(&decoded),
        3..=5 => Payload::new(Encoding::Lz4, lz4_flex::block::compress(&decoded)),
        6 => {
            let wrong = usize::from(u.byte() % 16);
            Payload::plain(u.bytes(wrong))
        }
        _ => {
            let extra = usize::from(u.byte() % 3);
            let mut block = lz4_flex::block::compress(&u.bytes(len + extra));
            if let Some(b) = block.get_mut(usize::from(u.byte())) {
                *b ^= u.byte();
            }
            Payload::new(Encoding::Lz4, block)
        }
    }
}

fn random_command(u: &mut Unstructured<'_>, width: u16, height: u16) -> Command<'static> {
    match u.byte() % 6 {
        0 => {
            let rect = random_rect(u, width, height);
            let data = random_payload(u, rect.area() * 4);
            Command::Raw(RawRepr { rect, data })
        }
        1 => Command::Copy(CopyRepr {
            src_x: coord(u, width),
            src_y: coord(u, height),
            dst_x: coord(u, width),
            dst_y: coord(u, height),
            w: coord(u, width),
            h: coord(u, height),
        }),
        2 => {
            let count = usize::from(u.byte() % 4);
            Command::SFill(SFillRepr {
                colour: u.u32(),
                rects: (0..count).map(|_| random_rect(u, width, height)).collect(),
            })
        }
        3 => {
            let rect = random_rect(u, width, height);
            let len = usize::from(rect.w).div_ceil(8) * usize::from(rect.h);
            Command::Bitmap(BitmapRepr {
                rect,
                fg: u.u32(),
                bg: (u.byte() % 2 == 0).then(|| u.u32()),
                bits: random_payload(u, len),
            })
        }
        4 => {
            let tile_w = u16::from(u.byte() % 6);
            let tile_h = u16::from(u.byte() % 6);
            let origin_x = u16::from(u.byte() % 7);
            let origin_y = u16::from(u.byte() % 7);
            let count = usize::from(u.byte() % 4);
            let rects = (0..count).map(|_| random_rect(u, width, height)).collect();
            let tile = random_payload(u, usize::from(tile_w) * usize::from(tile_h) * 4);
            Command::PFill(PFillRepr {
                tile_w,
                tile_h,
                origin_x,
                origin_y,
                rects,
                tile,
            })
        }
        _ => {
            let dst = random_rect(u, width, height);
            let src_w = u16::from(u.byte() % 9);
            let src_h = u16::from(u.byte() % 9);
            let (cw, ch) = (
                usize::from(src_w).div_ceil(2),
                usize::from(src_h).div_ceil(2),
            );
            let lz4 = u.byte() % 2 == 0;
            let mut plane = |len: usize| {
                let p = random_payload(u, len);
                if lz4 {
                    lz4_flex::block::compress(&p.data)
                } else {
                    p.data.into_owned()
                }
            };
            let y = plane(usize::from(src_w) * usize::from(src_h));
            let uu = plane(cw * ch);
            let v = plane(cw * ch);
            let data = if u.byte() % 16 == 0 {
                VideoData::Codec {
                    codec: 0x80 | u.byte(),
                    data: y.into(),
                }
            } else {
                VideoData::I420 {
                    encoding: if lz4 { Encoding::Lz4 } else { Encoding::Plain },
                    y: y.into(),
                    u: uu.into(),
                    v: v.into(),
                }
            };
            Command::Video(VideoRepr {
                stream_id: u.u32(),
                frame: u.u32(),
                dst,
                src_w,
                src_h,
                data,
            })
        }
    }
}
