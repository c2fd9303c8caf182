//! The server's encoder, sans I/O: pixels in, display commands out
//! (PROTOCOL.md §5). It builds without any feature, so its tests run
//! everywhere and a client-side tool can use it too.
//!
//! - [`PixelView`]: a borrowed BGRX image with a stride — the Xvfb
//!   framebuffer mapping, or the server's `GetImage` copy — never copied
//!   except for the area being encoded.
//! - [`Encoder`]: one per client. It keeps an [`Image`] of what that client
//!   has (or will have once every command it was given is applied) and
//!   turns a damaged rectangle of the screen into the commands that bring the
//!   client from its image to the screen: first COPY for areas it already
//!   has elsewhere (scrolling, moved windows; `copy.rs`), then, for the pixels
//!   that still differ, SFILL for one-colour tiles, BITMAP for two-colour
//!   tiles, PFILL for repeated or periodic tiles where it pays, RAW for the
//!   rest (`tiles.rs`). Pixels equal to the client's image are not sent.
//! - [`Region`]: the damaged rectangles not yet encoded for one client,
//!   coalesced and bounded in count.
//!
//! Why one image per client and not one shared previous frame: clients are
//! at different points (a slow client skips frames, PROTOCOL.md §11), and a
//! COPY is only right against what *that* client has. The cost is fixed:
//! `width × height × 4` bytes per client (1.2 MB at 640×480, 8.3 MB at
//! 1920×1080), never more.

mod copy;
mod image;
mod region;
pub mod scale;
mod tiles;
pub mod video;

pub use self::copy::{Move, MIN_COPY_ROWS};
pub use self::image::Image;
pub use self::region::Region;
pub use self::tiles::{BITMAP_RUN, MAX_LAYERS, RAW_RUN};

use crate::protocol::{Command, Rect};

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

/// A pixel of the client's image whose value is not known exactly (after a
/// VIDEO frame): its X byte is set, and screen pixels always have it clear.
pub const UNKNOWN: u32 = 0xff00_0000;

/// What one client has, and the encoder that brings it up to date.
///
/// INVARIANT: `model` is exactly what the client's framebuffer is after it
/// applied every command this encoder returned, in the order returned.
#[derive(Debug, Clone)]
pub struct Encoder {
    model: Image,
    packing: Packing,
}

/// How [`Encoder::paint`] packs the payloads of RAW, BITMAP and PFILL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Packing {
    /// LZ4 when that is smaller (PROTOCOL.md §1): what every client takes.
    #[default]
    Lz4,
    /// Plain, for a connection whose zstd stream (PROTOCOL.md §2.1)
    /// compresses them: LZ4 would only be undone there
    /// ([`zstd_payloads`](crate::protocol::zstd_payloads)), at the cost of
    /// compressing and decompressing every pixel once more.
    Plain,
}

impl Encoder {
    /// An encoder for a client whose `width × height` framebuffer is black
    /// (as after `FramebufferSize`, PROTOCOL.md §3.4).
    pub fn new(width: u16, height: u16) -> Self {
        Encoder {
            model: Image::new(width, height),
            packing: Packing::Lz4,
        }
    }

    /// The same encoder, packing payloads as `packing` says.
    pub fn with_packing(self, packing: Packing) -> Self {
        Encoder { packing, ..self }
    }

    /// What the client has.
    pub fn model(&self) -> &Image {
        &self.model
    }

    /// The client's framebuffer was reset to black (a new full state).
    pub fn reset(&mut self) {
        self.model = Image::new(self.model.width(), self.model.height());
    }

    /// COPY commands for the `moves` hints that the screen shows (each
    /// verified pixel by pixel against the client's image).
    pub fn moves(&mut self, screen: &PixelView<'_>, moves: &[Move]) -> Vec<Command<'static>> {
        let mut out = Vec::new();
        if (screen.width(), screen.height()) != (self.model.width(), self.model.height()) {
            return out;
        }
        for mv in moves {
            if let Some(c) = copy::verify_move(&self.model, screen, mv) {
                self.model.copy(&c);
                out.push(Command::Copy(c));
            }
        }
        out
    }

    /// COPY commands for areas of `rect` (and of the `moves` hints) that the
    /// client already has elsewhere. `screen` is the whole screen, of the
    /// encoder's size.
    pub fn copies(
        &mut self,
        screen: &PixelView<'_>,
        rect: Rect,
        moves: &[Move],
    ) -> Vec<Command<'static>> {
        let mut out = self.moves(screen, moves);
        if (screen.width(), screen.height()) != (self.model.width(), self.model.height()) {
            return out;
        }
        // A second pass finds a second scroll (e.g. two panes).
        for _ in 0..2 {
            match copy::detect_scroll(&self.model, screen, rect) {
                Some(c) => {
                    self.model.copy(&c);
                    out.push(Command::Copy(c));
                }
                None => break,
            }
        }
        out
    }

    /// The commands that paint the pixels of `rect` of `screen` that differ
    /// from the client's image (none when nothing differs). The pixels are
    /// read once, so a screen that changes meanwhile cannot make the image
    /// and the client disagree.
    pub fn paint(&mut self, screen: &PixelView<'_>, rect: Rect) -> Vec<Command<'static>> {
        if (screen.width(), screen.height()) != (self.model.width(), self.model.height()) {
            return Vec::new();
        }
        match Image::snapshot(screen, rect) {
            Some(snap) => tiles::paint(&mut self.model, &snap, (rect.x, rect.y), self.packing),
            None => Vec::new(),
        }
    }

    /// A VIDEO frame of `rect` of `screen` (see [`video::video_frame`]).
    /// The client's pixels there are then only close to the screen's, so
    /// the image marks them unknown ([`UNKNOWN`], never equal to a screen
    /// pixel): the next paint of any of them is sent in full, exactly.
    pub fn video(
        &mut self,
        screen: &PixelView<'_>,
        rect: Rect,
        stream_id: u32,
        frame: u32,
    ) -> Option<Command<'static>> {
        if (screen.width(), screen.height()) != (self.model.width(), self.model.height()) {
            return None;
        }
        let command = video::video_frame(screen, rect, stream_id, frame)?;
        self.model.blit(rect, &vec![UNKNOWN; rect.area()]);
        Some(command)
    }

    /// Like [`Self::video`], as an H.264 access unit of `h264`'s stream
    /// (PROTOCOL.md §6.3; `h264` has `rect`'s size).
    #[cfg(feature = "h264")]
    pub fn video_h264(
        &mut self,
        screen: &PixelView<'_>,
        rect: Rect,
        (stream_id, frame): (u32, u32),
        h264: &mut crate::codec::h264::H264Encoder,
    ) -> Option<Command<'static>> {
        if (screen.width(), screen.height()) != (self.model.width(), self.model.height()) {
            return None;
        }
        let command = video::h264_frame(screen, rect, stream_id, frame, h264)?;
        self.model.blit(rect, &vec![UNKNOWN; rect.area()]);
        Some(command)
    }

    /// [`Self::copies`] then [`Self::paint`]: after applying the result, the
    /// client's `rect` equals the screen's.
    pub fn update(
        &mut self,
        screen: &PixelView<'_>,
        rect: Rect,
        moves: &[Move],
    ) -> Vec<Command<'static>> {
        let mut out = self.copies(screen, rect, moves);
        out.extend(self.paint(screen, rect));
        out
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::codec::Framebuffer;
    use crate::protocol::{Message, Payload, SFillRepr};

    /// A `w × h` screen, X bytes set to garbage to check they are ignored.
    pub(super) fn screen(w: u16, h: u16, f: impl Fn(u16, u16) -> u32) -> Vec<u8> {
        let mut out = Vec::new();
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&(f(x, y) | 0xab00_0000).to_le_bytes());
            }
        }
        out
    }

    fn view(data: &[u8], w: u16, h: u16) -> PixelView<'_> {
        PixelView::new(data, usize::from(w) * 4, w, h).unwrap()
    }

    fn pixels(view: &PixelView<'_>) -> Vec<u32> {
        let mut out = Vec::new();
        for y in 0..view.height() {
            for x in 0..view.width() {
                out.push(view.pixel(x, y));
            }
        }
        out
    }

    /// A client whose framebuffer is what `encoder` believes it is.
    fn client_of(encoder: &Encoder) -> Framebuffer {
        let m = encoder.model();
        Framebuffer::from_pixels(m.width(), m.height(), m.pixels().to_vec()).unwrap()
    }

    /// Applies `commands` to `client`; checks it ends equal to `view` and to
    /// the encoder's image; returns the bytes on the wire.
    fn apply(
        client: &mut Framebuffer,
        commands: &[Command<'_>],
        view: &PixelView<'_>,
        encoder: &Encoder,
    ) -> usize {
        let mut bytes = 0;
        for c in commands {
            client.apply(c).unwrap();
            bytes += Message::Command(c.clone()).buffer_len();
        }
        assert!(
            client.pixels() == pixels(view).as_slice(),
            "client differs from the screen"
        );
        assert!(
            client.pixels() == encoder.model().pixels(),
            "image differs from the client"
        );
        bytes
    }

    #[test]
    fn plain_packing_makes_the_same_commands_without_lz4() {
        use crate::protocol::{zstd_payloads, Encoding};
        let (w, h) = (256u16, 192u16);
        // Text, a repeated pattern, solid areas and photo-like noise.
        let data = screen(w, h, |x, y| match (x / 64, y / 64) {
            (0, _) => text(0)(x, y),
            (1, _) => (u32::from(x % 4 == y % 4)) * 0x00ff_00ff,
            (2, 0) => 0x0012_3456,
            _ => {
                (u32::from(x).wrapping_mul(2_654_435_761) ^ u32::from(y).wrapping_mul(40_503))
                    & 0x00ff_ffff
            }
        });
        let full = Rect::new(0, 0, w, h);
        let kinds = |commands: &[Command<'_>]| -> Vec<(String, Vec<Rect>)> {
            commands
                .iter()
                .map(|c| {
                    let rects = match c {
                        Command::Raw(r) => vec![r.rect],
                        Command::Bitmap(b) => vec![b.rect],
                        Command::SFill(f) => f.rects.clone(),
                        Command::PFill(p) => p.rects.clone(),
                        Command::Copy(_) | Command::Video(_) => Vec::new(),
                    };
                    (format!("{:?}", c.message_type()), rects)
                })
                .collect()
        };
        let mut lz4 = Encoder::new(w, h);
        let lz4_commands = lz4.paint(&view(&data, w, h), full);
        let mut plain = Encoder::new(w, h).with_packing(Packing::Plain);
        let mut client = client_of(&plain);
        let commands = plain.paint(&view(&data, w, h), full);
        // The same choices, in the same order.
        assert_eq!(kinds(&commands), kinds(&lz4_commands));
        let payloads: Vec<Encoding> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Raw(r) => Some(r.data.encoding),
                Command::Bitmap(b) => Some(b.bits.encoding),
                Command::PFill(p) => Some(p.tile.encoding),
                _ => None,
            })
            .collect();
        assert!(payloads.len() >= 3, "{payloads:?}");
        assert!(
            payloads.iter().all(|&e| e == Encoding::Plain),
            "{payloads:?}"
        );
        assert!(lz4_commands.iter().any(|c| match c {
            Command::Bitmap(b) => b.bits.encoding == Encoding::Lz4,
            _ => false,
        }));
        // As they go into the zstd stream, the client gets the screen.
        let recoded: Vec<Command<'_>> = commands.into_iter().map(zstd_payloads).collect();
        apply(&mut client, &recoded, &view(&data, w, h), &plain);
    }

    #[test]
    fn after_video_the_area_is_repainted_exactly() {
        let (w, h) = (160u16, 120u16);
        let smooth = |t: u32| {
            move |x: u16, y: u16| {
                // A triangle wave: smooth, like a photo.
                let v = |k: u32| {
                    let a = (u32::from(x) * k + u32::from(y) * 2 + t * 7) % 512;
                    a.min(511 - a)
                };
                (v(1) << 16) | (v(2) << 8) | v(3)
            }
        };
        let mut encoder = Encoder::new(w, h);
        let data = screen(w, h, smooth(0));
        let mut client = client_of(&encoder);
        apply(
            &mut client,
            &encoder.paint(&view(&data, w, h), Rect::new(0, 0, w, h)),
            &view(&data, w, h),
            &encoder,
        );
        // Two VIDEO frames of an area: the client is close, not exact, and
        // the encoder's image marks the area unknown.
        let area = Rect::new(16, 8, 96, 64);
        for t in 1..3 {
            let data = screen(w, h, smooth(t));
            let frame = encoder.video(&view(&data, w, h), area, 1, t).unwrap();
            client.apply(&frame).unwrap();
            let inside = client.region(area).unwrap();
            let want = Image::snapshot(&view(&data, w, h), area).unwrap();
            let db = crate::codec::yuv::psnr(&inside, want.pixels());
            assert!(db >= crate::codec::yuv::CLOSE_PSNR_DB, "{db} dB");
            assert!(encoder
                .model()
                .seg(area.x, area.y, area.w)
                .iter()
                .all(|&p| p == UNKNOWN));
        }
        // The stream ends: painting the area (or a rectangle around it)
        // sends every pixel of it again, and the client is exact.
        let data = screen(w, h, smooth(2));
        let commands = encoder.paint(&view(&data, w, h), Rect::new(0, 0, w, h));
        assert!(!commands.is_empty());
        apply(&mut client, &commands, &view(&data, w, h), &encoder);
        // No COPY ever reads unknown pixels.
        let mut encoder = Encoder::new(w, h);
        let text_screen = screen(w, h, text(0));
        encoder.paint(&view(&text_screen, w, h), Rect::new(0, 0, w, h));
        encoder
            .video(&view(&text_screen, w, h), Rect::new(0, 0, w, 60), 2, 0)
            .unwrap();
        let scrolled = screen(w, h, text(2));
        let copies = encoder.copies(&view(&scrolled, w, h), Rect::new(0, 0, w, h), &[]);
        assert!(copies.iter().all(|c| match c {
            Command::Copy(c) => c.src_y >= 60,
            _ => true,
        }));
    }

    fn count(commands: &[Command<'_>], t: fn(&Command<'_>) -> bool) -> usize {
        commands.iter().filter(|c| t(c)).count()
    }

    /// xterm-like text: 6×13 cells, dark glyph strokes on white, line `l`
    /// showing the digits of `l + first`.
    pub(super) fn text(first: u32) -> impl Fn(u16, u16) -> u32 {
        move |x, y| {
            let line = u32::from(y / 13) + first;
            let col = u32::from(x / 6);
            let (cx, cy) = (u32::from(x % 6), u32::from(y % 13));
            let glyph = (line.wrapping_mul(31) ^ col.wrapping_mul(17)).wrapping_mul(2_654_435_761);
            let on = cx < 5
                && (2..11).contains(&cy)
                && (glyph >> ((cx + 5 * (cy - 2)) % 32)) & 1 == 1
                && col < 20;
            if on {
                0x0000_0000
            } else {
                0x00ff_ffff
            }
        }
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
        let data = screen(300, 200, |_, _| 0x0012_3456);
        let view = view(&data, 300, 200);
        let mut enc = Encoder::new(300, 200);
        let commands = enc.update(&view, Rect::new(0, 0, 300, 200), &[]);
        assert_eq!(
            commands,
            [Command::SFill(SFillRepr {
                colour: 0x0012_3456,
                rects: vec![Rect::new(0, 0, 300, 200)],
            })]
        );
        // Nothing changed: nothing to send.
        assert!(enc.update(&view, Rect::new(0, 0, 300, 200), &[]).is_empty());
    }

    #[test]
    fn classes_round_trip_through_the_framebuffer() {
        // Left: solid stripes; middle: two-colour text; right: noise.
        let (w, h) = (320u16, 150u16);
        let data = screen(w, h, |x, y| {
            if x < 64 {
                if (y / 64) % 2 == 0 {
                    0x00ff_0000
                } else {
                    0x0000_ff00
                }
            } else if x < 192 {
                text(0)(x - 64, y)
            } else {
                u32::from(x).wrapping_mul(2_654_435_761) ^ u32::from(y).wrapping_mul(40_503)
            }
        });
        let view = view(&data, w, h);
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let commands = enc.update(&view, Rect::new(0, 0, w, h), &[]);
        apply(&mut client, &commands, &view, &enc);
        assert_eq!(count(&commands, |c| matches!(c, Command::SFill(_))), 2);
        assert_eq!(
            count(&commands, |c| matches!(c, Command::Bitmap(_))),
            3,
            "{commands:?}"
        );
        assert_eq!(count(&commands, |c| matches!(c, Command::Raw(_))), 3);
    }

    #[test]
    fn typing_one_character_is_a_tiny_bitmap() {
        let (w, h) = (320u16, 200u16);
        let before = screen(w, h, text(0));
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let v = view(&before, w, h);
        let c = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &c, &v, &enc);
        // One new glyph at cell (20, 3), where the text had none.
        let after = screen(w, h, |x, y| {
            if (120..125).contains(&x) && (41..50).contains(&y) && (x + y) % 2 == 0 {
                0
            } else {
                text(0)(x, y)
            }
        });
        let v = view(&after, w, h);
        // The damage X reports is larger than the glyph.
        let commands = enc.update(&v, Rect::new(100, 30, 60, 30), &[]);
        let bytes = apply(&mut client, &commands, &v, &enc);
        assert!(
            matches!(commands.as_slice(), [Command::Bitmap(b)] if b.rect == Rect::new(120, 41, 5, 9)),
            "{commands:?}"
        );
        assert!(bytes < 60, "{bytes} bytes");
    }

    fn v_rect(w: u16, h: u16) -> Rect {
        Rect::new(0, 0, w, h)
    }

    #[test]
    fn scroll_is_one_copy_plus_the_new_strip() {
        // A 20-line terminal scrolled by 3 lines (39 rows).
        let (w, h) = (240u16, 260u16);
        let before = screen(w, h, text(0));
        let after = screen(w, h, text(3));
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let v = view(&before, w, h);
        let c = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &c, &v, &enc);

        let v = view(&after, w, h);
        let mut plain = enc.clone();
        let commands = enc.update(&v, v_rect(w, h), &[]);
        let bytes = apply(&mut client, &commands, &v, &enc);
        assert_eq!(
            commands.first(),
            Some(&Command::Copy(crate::protocol::CopyRepr {
                src_x: 0,
                src_y: 39,
                dst_x: 0,
                dst_y: 0,
                w,
                h: h - 41
            }))
        );
        assert_eq!(count(&commands, |c| matches!(c, Command::Copy(_))), 1);
        // Everything else is the new strip at the bottom.
        for c in commands.iter().skip(1) {
            let y = match c {
                Command::Bitmap(b) => b.rect.y,
                Command::SFill(s) => s.rects.iter().map(|r| r.y).min().unwrap(),
                Command::Raw(r) => r.rect.y,
                other => panic!("unexpected {other:?}"),
            };
            assert!(y >= h - 39, "{c:?}");
        }
        // Without COPY (paint only) it costs several times more.
        let mut plain_client = client_of(&plain);
        let painted = plain.paint(&v, v_rect(w, h));
        let plain_bytes = apply(&mut plain_client, &painted, &v, &plain);
        eprintln!("scroll by 39 rows: {bytes} bytes with COPY, {plain_bytes} bytes painted");
        assert!(
            bytes * 3 < plain_bytes,
            "copy {bytes} bytes, paint {plain_bytes} bytes"
        );
    }

    #[test]
    fn scroll_down_and_partial_area() {
        // Only a 160-wide pane in the middle scrolls down by 5 rows.
        let (w, h) = (320u16, 200u16);
        let pane = |first: i32| {
            move |x: u16, y: u16| {
                if (80..240).contains(&x) && (20..180).contains(&y) {
                    let yy = i32::from(y) - first;
                    u32::from(x).wrapping_mul(2_654_435_761) ^ (yy as u32).wrapping_mul(40_503)
                } else {
                    0x0020_2020
                }
            }
        };
        let before = screen(w, h, pane(0));
        let after = screen(w, h, pane(5));
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let v = view(&before, w, h);
        let c = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &c, &v, &enc);
        let v = view(&after, w, h);
        let commands = enc.update(&v, Rect::new(80, 20, 160, 160), &[]);
        apply(&mut client, &commands, &v, &enc);
        assert_eq!(
            commands.first(),
            Some(&Command::Copy(crate::protocol::CopyRepr {
                src_x: 80,
                src_y: 20,
                dst_x: 80,
                dst_y: 25,
                w: 160,
                h: 155
            }))
        );
        let raw = raw_area(&commands);
        assert!(raw <= 160 * 5, "{raw} pixels of RAW");
    }

    /// The pixels that `commands` paint as RAW.
    fn raw_area(commands: &[Command<'_>]) -> usize {
        commands
            .iter()
            .map(|c| match c {
                Command::Raw(r) => r.rect.area(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn moved_window_is_a_copy_from_the_hint() {
        let (w, h) = (400u16, 300u16);
        let win = |wx: u16, wy: u16| {
            move |x: u16, y: u16| {
                if (wx..wx + 150).contains(&x) && (wy..wy + 100).contains(&y) {
                    u32::from(x - wx).wrapping_mul(2_654_435_761)
                        ^ u32::from(y - wy).wrapping_mul(40_503)
                } else {
                    0x0040_4080
                }
            }
        };
        let before = screen(w, h, win(30, 40));
        let after = screen(w, h, win(170, 90));
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let v = view(&before, w, h);
        let c = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &c, &v, &enc);
        let v = view(&after, w, h);
        let hint = Move {
            dst: Rect::new(170, 90, 150, 100),
            dx: 140,
            dy: 50,
        };
        let damage = Rect::new(30, 40, 290, 150);
        let commands = enc.update(&v, damage, &[hint]);
        let bytes = apply(&mut client, &commands, &v, &enc);
        assert_eq!(
            commands.first(),
            Some(&Command::Copy(crate::protocol::CopyRepr {
                src_x: 30,
                src_y: 40,
                dst_x: 170,
                dst_y: 90,
                w: 150,
                h: 100
            }))
        );
        // Left to paint: the uncovered background (SFILL), and RAW only for
        // the tile where the old and new places meet.
        let raw = raw_area(&commands);
        assert!(raw <= 64 * 64, "{commands:?}");
        assert!(bytes < 8000, "{bytes} bytes");
        // A wrong hint is refused by the pixels; the result is still exact.
        let mut enc2 = Encoder::new(w, h);
        let mut client2 = client_of(&enc2);
        let v0 = view(&before, w, h);
        let c = enc2.update(&v0, v_rect(w, h), &[]);
        apply(&mut client2, &c, &v0, &enc2);
        let wrong = Move {
            dst: Rect::new(170, 90, 150, 100),
            dx: 10,
            dy: 3,
        };
        let commands = enc2.update(&v, damage, &[wrong]);
        apply(&mut client2, &commands, &v, &enc2);
        assert_eq!(count(&commands, |c| matches!(c, Command::Copy(_))), 0);
    }

    #[test]
    fn coloured_text_is_layered_bitmaps() {
        // Terminal text in three colours on a background (e.g. `ls --color`)
        // plus a block cursor: four colours per tile.
        let (w, h) = (256u16, 128u16);
        let data = screen(w, h, |x, y| {
            let on = text(0)(x, y) == 0;
            let colour = [0x0000_00aa, 0x0000_aa00, 0x00aa_5500][usize::from(x / 48 % 3)];
            if (120..126).contains(&x) && (39..52).contains(&y) {
                0x0000_ff00
            } else if on {
                colour
            } else {
                0x00ff_ffff
            }
        });
        let v = view(&data, w, h);
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let commands = enc.update(&v, v_rect(w, h), &[]);
        let bytes = apply(&mut client, &commands, &v, &enc);
        assert_eq!(
            count(&commands, |c| matches!(c, Command::Raw(_))),
            0,
            "{commands:?}"
        );
        assert!(
            count(
                &commands,
                |c| matches!(c, Command::Bitmap(b) if b.bg.is_none())
            ) > 0
        );
        // As RAW (LZ4) the same screen costs several times more.
        let raw = Payload::compress(&v.to_packed()).len();
        eprintln!("coloured text: {bytes} bytes as layered BITMAPs, {raw} bytes as one LZ4 RAW");
        assert!(bytes * 2 < raw, "{bytes} bytes, RAW {raw}");
    }

    #[test]
    fn repeated_and_periodic_tiles_are_pfill() {
        // A wallpaper of a 16×8 motif with many colours, over 5×4 tiles.
        let (w, h) = (320u16, 256u16);
        let data = screen(w, h, |x, y| {
            (u32::from(x % 16) * 0x0001_0307) ^ (u32::from(y % 8) * 0x0011_0000)
        });
        let v = view(&data, w, h);
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let commands = enc.update(&v, v_rect(w, h), &[]);
        let bytes = apply(&mut client, &commands, &v, &enc);
        assert!(
            matches!(commands.as_slice(), [Command::PFill(p)] if (p.tile_w, p.tile_h) == (16, 8)),
            "{commands:?}"
        );
        assert!(bytes < 1200, "{bytes} bytes");
        // The same noisy 64×64 tile twice (not periodic): one PFILL, two rects.
        let (w, h) = (256u16, 64u16);
        let data = screen(w, h, |x, y| {
            if x < 64 || (128..192).contains(&x) {
                let x = x % 64;
                u32::from(x).wrapping_mul(2_654_435_761) ^ u32::from(y).wrapping_mul(40_503)
            } else {
                u32::from(x).wrapping_mul(97) ^ u32::from(y).wrapping_mul(7_919)
            }
        });
        let v = view(&data, w, h);
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let commands = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &commands, &v, &enc);
        assert!(
            commands
                .iter()
                .any(|c| matches!(c, Command::PFill(p) if p.rects.len() == 2 && p.tile_w == 64)),
            "{commands:?}"
        );
    }

    /// A tiny deterministic PRNG (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        fn below(&mut self, n: u32) -> u32 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn random_edits_always_end_pixel_exact() {
        let (w, h) = (200u16, 150u16);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut px: Vec<u32> = (0..usize::from(w) * usize::from(h))
            .map(|i| text(0)((i % 200) as u16, (i / 200) as u16))
            .collect();
        let mut enc = Encoder::new(w, h);
        let mut client = client_of(&enc);
        let bytes: Vec<u8> = px.iter().flat_map(|p| p.to_le_bytes()).collect();
        let v = view(&bytes, w, h);
        let commands = enc.update(&v, v_rect(w, h), &[]);
        apply(&mut client, &commands, &v, &enc);
        for step in 0..200 {
            // Edit: a fill, noise, a scroll of a band, or text.
            let x = rng.below(u32::from(w) - 1) as u16;
            let y = rng.below(u32::from(h) - 1) as u16;
            let rw = 1 + rng.below(u32::from(w - x)) as u16;
            let rh = 1 + rng.below(u32::from(h - y)) as u16;
            let kind = rng.below(4);
            let colour = rng.next() & 0x00ff_ffff;
            let old = px.clone();
            for yy in y..y + rh {
                for xx in x..x + rw {
                    let i = usize::from(yy) * usize::from(w) + usize::from(xx);
                    px[i] = match kind {
                        0 => colour,
                        1 => rng.next() & 0x00ff_ffff,
                        2 => {
                            let sy = (yy + 7).min(h - 1);
                            old[usize::from(sy) * usize::from(w) + usize::from(xx)]
                        }
                        _ => text(step)(xx, yy),
                    };
                }
            }
            let bytes: Vec<u8> = px.iter().flat_map(|p| p.to_le_bytes()).collect();
            let v = view(&bytes, w, h);
            // Damage sometimes smaller than the change: the rest comes later.
            let commands = enc.update(&v, Rect::new(x, y, rw, rh), &[]);
            for c in &commands {
                client.apply(c).unwrap();
            }
            assert!(
                client.pixels() == enc.model().pixels(),
                "step {step}: image differs"
            );
            assert!(
                client.pixels() == px.as_slice(),
                "step {step}: client differs"
            );
        }
    }
}
