//! The X workload every system gets, drawn by this process through a plain
//! X11 connection (x11rb) the way the applications it stands for draw:
//!
//! - text pages: a full-screen window cleared, then filled with lines of
//!   text in the core font `fixed` (6×13) with `ImageText8`, as xterm draws
//!   (`cat` of a file after `clear`);
//! - graphics pages: full-screen photo-like images put with `PutImage`
//!   (32-row strips), as an image viewer does;
//! - scrolling: one text line at a time, `CopyArea` of the screen up by one
//!   line, the bottom line cleared and drawn, as xterm scrolls without jump
//!   scroll;
//! - video: 1024×768 frames at 24 fps put with `PutImage`, as a player's X11
//!   output does (`mplayer -vo x11`, `ffmpeg -f xv` are not installed by
//!   the setup, and a player's timing would differ between runs).
//!
//! Every picture is generated from a fixed seed: the same on every system.

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ChangeGCAux, ConnectionExt as _, CreateGCAux, CreateWindowAux, Font, Gcontext, ImageFormat,
    Rectangle, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;

/// The core font's cell.
pub(crate) const CELL_W: u16 = 6;
pub(crate) const CELL_H: u16 = 13;
const ASCENT: i16 = 10;
/// Rows of the PutImage strips.
const STRIP: usize = 32;

const WORDS: &[&str] = &[
    "the",
    "session",
    "display",
    "server",
    "viewer",
    "pixel",
    "update",
    "frame",
    "protocol",
    "encoder",
    "command",
    "bitmap",
    "copy",
    "fill",
    "network",
    "latency",
    "bytes",
    "of",
    "and",
    "to",
    "a",
    "is",
    "in",
    "for",
    "with",
    "on",
    "fn",
    "let",
    "mut",
    "return",
    "Result<()>",
    "{",
    "}",
    "//",
    "=",
    "+",
    "0x00ff",
    "42",
    "self.width",
    "match",
    "if",
    "else",
    "=>",
    "struct",
    "MobiDesk",
    "desktop",
    "remote",
    "thin-client",
    "X11",
    "window",
    "scroll",
];

/// A small deterministic PRNG (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One line of text-like content: words, some lines indented, some empty.
pub(crate) fn text_line(rng: &mut Rng, cols: usize) -> String {
    if rng.below(8) == 0 {
        return String::new();
    }
    let mut line = " ".repeat(rng.below(4) * 4);
    let target = 20 + rng.below(cols.saturating_sub(20).max(1));
    while line.len() < target {
        line.push_str(WORDS[rng.below(WORDS.len())]);
        line.push(' ');
    }
    line.truncate(cols);
    line
}

/// A photo-like image: smooth colour fields (sums of sines) with a little
/// sensor-like noise, `0x00RRGGBB`.
pub(crate) fn photo(width: usize, height: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let f: Vec<f32> = (0..9)
        .map(|_| 0.004 + (rng.below(1000) as f32) * 0.00002)
        .collect();
    let ph: Vec<f32> = (0..9).map(|_| rng.below(628) as f32 / 100.0).collect();
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let (xf, yf) = (x as f32, y as f32);
            let mut c = [0u32; 3];
            for (ch, v) in c.iter_mut().enumerate() {
                let i = ch * 3;
                let s = (xf * f[i] + ph[i]).sin()
                    + (yf * f[i + 1] + ph[i + 1]).sin()
                    + ((xf + yf) * f[i + 2] + ph[i + 2]).sin();
                let noise = (rng.next() >> 61) as f32 - 3.5;
                *v = (128.0 + s * 38.0 + noise).clamp(0.0, 255.0) as u32;
            }
            out.push(c[0] << 16 | c[1] << 8 | c[2]);
        }
    }
    out
}

/// An X connection with a full-screen window to draw in.
pub(crate) struct Drawer {
    conn: RustConnection,
    window: Window,
    gc: Gcontext,
    font: Font,
    pub(crate) width: u16,
    pub(crate) height: u16,
    root: Window,
}

impl Drawer {
    /// Connects to `display` (`:N`), maps a white override-redirect window
    /// over the whole screen and moves the pointer to the bottom-right
    /// corner (out of the way of every comparison).
    pub(crate) fn open(display: &str) -> Result<Drawer> {
        let (conn, screen) =
            x11rb::connect(Some(display)).with_context(|| format!("connecting to X {display}"))?;
        let s = conn.setup().roots[screen].clone();
        ensure!(
            s.root_depth == 24,
            "X screen depth {} (want 24)",
            s.root_depth
        );
        let window = conn.generate_id()?;
        conn.create_window(
            s.root_depth,
            window,
            s.root,
            0,
            0,
            s.width_in_pixels,
            s.height_in_pixels,
            0,
            WindowClass::INPUT_OUTPUT,
            s.root_visual,
            &CreateWindowAux::new()
                .background_pixel(s.white_pixel)
                .override_redirect(1),
        )?;
        let font = conn.generate_id()?;
        conn.open_font(font, b"fixed")?;
        let gc = conn.generate_id()?;
        conn.create_gc(
            gc,
            window,
            &CreateGCAux::new()
                .foreground(s.black_pixel)
                .background(s.white_pixel)
                .font(font)
                .graphics_exposures(0),
        )?;
        conn.map_window(window)?;
        conn.warp_pointer(
            x11rb::NONE,
            s.root,
            0,
            0,
            0,
            0,
            (s.width_in_pixels - 1) as i16,
            (s.height_in_pixels - 1) as i16,
        )?;
        let drawer = Drawer {
            conn,
            window,
            gc,
            font,
            width: s.width_in_pixels,
            height: s.height_in_pixels,
            root: s.root,
        };
        drawer.sync()?;
        Ok(drawer)
    }

    /// Waits until the X server has executed every request sent (one round
    /// trip): the screen then shows what was drawn.
    pub(crate) fn sync(&self) -> Result<()> {
        self.conn.get_input_focus()?.reply()?;
        Ok(())
    }

    /// The screen as the X server has it (`GetImage` of the root), as
    /// `0x00RRGGBB`.
    pub(crate) fn screen(&self) -> Result<Vec<u32>> {
        let (w, h) = (usize::from(self.width), usize::from(self.height));
        let mut out = Vec::with_capacity(w * h);
        // In strips: a request's reply is bounded too.
        let mut y = 0;
        while y < h {
            let rows = (h - y).min(128);
            let reply = self
                .conn
                .get_image(
                    ImageFormat::Z_PIXMAP,
                    self.root,
                    0,
                    y as i16,
                    self.width,
                    rows as u16,
                    !0,
                )?
                .reply()?;
            ensure!(
                reply.data.len() == w * rows * 4,
                "GetImage returned {} bytes for {w}x{rows} (not 32 bits per pixel?)",
                reply.data.len()
            );
            out.extend(
                reply
                    .data
                    .chunks_exact(4)
                    .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0])),
            );
            y += rows;
        }
        Ok(out)
    }

    /// Text rows and columns that fit the screen.
    pub(crate) fn text_size(&self) -> (usize, usize) {
        (
            usize::from(self.height / CELL_H),
            usize::from(self.width / CELL_W),
        )
    }

    fn fill(&self, colour: u32, x: i16, y: i16, w: u16, h: u16) -> Result<()> {
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(colour))?;
        self.conn.poly_fill_rectangle(
            self.window,
            self.gc,
            &[Rectangle {
                x,
                y,
                width: w,
                height: h,
            }],
        )?;
        self.conn
            .change_gc(self.gc, &ChangeGCAux::new().foreground(0))?;
        Ok(())
    }

    fn line(&self, row: usize, text: &str) -> Result<()> {
        if !text.is_empty() {
            let y = (row as i16) * CELL_H as i16 + ASCENT;
            self.conn
                .image_text8(self.window, self.gc, 0, y, text.as_bytes())?;
        }
        Ok(())
    }

    /// Clears the window and draws a page of `lines`.
    pub(crate) fn text_page(&self, lines: &[String]) -> Result<()> {
        self.fill(0xffffff, 0, 0, self.width, self.height)?;
        for (row, text) in lines.iter().enumerate() {
            self.line(row, text)?;
        }
        self.sync()
    }

    /// Scrolls the text rows up by one line and draws `text` in the last.
    pub(crate) fn scroll_line(&self, text: &str) -> Result<()> {
        let (rows, _) = self.text_size();
        let h = rows as u16 * CELL_H;
        self.conn.copy_area(
            self.window,
            self.window,
            self.gc,
            0,
            CELL_H as i16,
            0,
            0,
            self.width,
            h - CELL_H,
        )?;
        self.fill(0xffffff, 0, (h - CELL_H) as i16, self.width, CELL_H)?;
        self.line(rows - 1, text)?;
        self.sync()
    }

    /// Puts a full-screen image (`0x00RRGGBB`) in strips.
    pub(crate) fn image(&self, pixels: &Arc<Vec<u32>>) -> Result<()> {
        let w = usize::from(self.width);
        let mut bytes = Vec::with_capacity(w * STRIP * 4);
        for (i, rows) in pixels.chunks(w * STRIP).enumerate() {
            bytes.clear();
            for p in rows {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
            self.conn.put_image(
                ImageFormat::Z_PIXMAP,
                self.window,
                self.gc,
                self.width,
                (rows.len() / w) as u16,
                0,
                (i * STRIP) as i16,
                0,
                24,
                &bytes,
            )?;
        }
        self.sync()
    }
}

impl Drop for Drawer {
    fn drop(&mut self) {
        let _ = self.conn.close_font(self.font);
        let _ = self.conn.destroy_window(self.window);
        let _ = self.conn.flush();
    }
}
