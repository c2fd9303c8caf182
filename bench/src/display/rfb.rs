//! A headless VNC viewer (RFB 3.8, RFC 6143) for the baselines: the
//! handshake (security type None), 32-bit true colour, the encodings ZRLE,
//! CopyRect and Raw (plus the Cursor pseudo-encoding, so that the servers
//! do not draw the pointer into the picture), and the classic
//! FramebufferUpdateRequest loop (one incremental request outstanding, a
//! new one as soon as an update has been read, as TigerVNC's and most
//! viewers do without the ContinuousUpdates extension).
//!
//! It decodes every rectangle into a framebuffer of `0x00RRGGBB` pixels, so
//! that the benchmark can tell when the viewer is pixel-exact.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use flate2::{Decompress, FlushDecompress, Status};

/// Encodings (RFC 6143 §7.7).
const ENC_RAW: i32 = 0;
const ENC_COPYRECT: i32 = 1;
const ENC_ZRLE: i32 = 16;
const ENC_CURSOR: i32 = -239;
const ENC_DESKTOP_SIZE: i32 = -223;
/// zlib level 2, TigerVNC's viewer default (`CompressLevel=2`).
const ENC_COMPRESS_LEVEL_2: i32 = -256 + 2;
/// The ContinuousUpdates and Fence extensions (TigerVNC; x11vnc has
/// neither): the server pushes updates without waiting for requests.
const ENC_CONTINUOUS_UPDATES: i32 = -313;
const ENC_FENCE: i32 = -312;
/// Message type of EndOfContinuousUpdates (server) and
/// EnableContinuousUpdates (client).
const MSG_CONTINUOUS_UPDATES: u8 = 150;
const MSG_FENCE: u8 = 248;
const FENCE_REQUEST: u32 = 1 << 31;
/// BlockBefore, BlockAfter, SyncNext: the flags a reply may carry.
const FENCE_FLAGS: u32 = 0b111;

/// What the viewer asks for, most preferred first.
pub(crate) const ENCODINGS: [i32; 8] = [
    ENC_ZRLE,
    ENC_COPYRECT,
    ENC_RAW,
    ENC_CURSOR,
    ENC_DESKTOP_SIZE,
    ENC_COMPRESS_LEVEL_2,
    ENC_CONTINUOUS_UPDATES,
    ENC_FENCE,
];

/// The largest framebuffer side accepted (a guard against garbage).
const MAX_SIDE: usize = 8192;

/// A reader that counts the bytes it read.
pub(crate) struct Counting<R> {
    inner: R,
    pub(crate) bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes
            .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        Ok(n)
    }
}

/// The viewer's state: the framebuffer and the ZRLE stream.
pub(crate) struct Rfb<R, W> {
    input: io::BufReader<Counting<R>>,
    output: W,
    pub(crate) width: usize,
    pub(crate) height: usize,
    /// `0x00RRGGBB`, rows top to bottom.
    pub(crate) pixels: Vec<u32>,
    zlib: Decompress,
    zbuf: Vec<u8>,
    /// Rectangles decoded per encoding (Raw, CopyRect, ZRLE), for the report.
    pub(crate) rects: [u64; 3],
    /// Whether the server pushes updates (ContinuousUpdates enabled): then
    /// no request follows an update.
    pub(crate) continuous: bool,
    /// Fences answered.
    pub(crate) fences: u64,
}

impl<R: Read, W: Write> Rfb<R, W> {
    /// The handshake: version 3.8, security None, shared ClientInit, then
    /// our pixel format and encodings and a first full update request.
    pub(crate) fn connect(input: R, output: W, bytes: Arc<AtomicU64>) -> Result<Self> {
        let mut rfb = Rfb {
            input: io::BufReader::with_capacity(
                256 * 1024,
                Counting {
                    inner: input,
                    bytes,
                },
            ),
            output,
            width: 0,
            height: 0,
            pixels: Vec::new(),
            zlib: Decompress::new(true),
            zbuf: Vec::new(),
            rects: [0; 3],
            continuous: false,
            fences: 0,
        };
        let mut version = [0u8; 12];
        rfb.input
            .read_exact(&mut version)
            .context("server version")?;
        ensure!(
            version.starts_with(b"RFB 003."),
            "not an RFB server: {:?}",
            String::from_utf8_lossy(&version)
        );
        rfb.output.write_all(b"RFB 003.008\n")?;
        rfb.output.flush()?;
        let n = rfb.u8()?;
        if n == 0 {
            let len = rfb.u32()? as usize;
            let reason = rfb.bytes(len.min(4096))?;
            bail!("server refused: {}", String::from_utf8_lossy(&reason));
        }
        let types = rfb.bytes(usize::from(n))?;
        ensure!(
            types.contains(&1),
            "server offers no security type None (offers {types:?})"
        );
        rfb.output.write_all(&[1])?;
        rfb.output.flush()?;
        let result = rfb.u32()?;
        ensure!(result == 0, "security handshake failed ({result})");
        // ClientInit: shared.
        rfb.output.write_all(&[1])?;
        rfb.output.flush()?;
        let w = usize::from(rfb.u16()?);
        let h = usize::from(rfb.u16()?);
        let _server_format = rfb.bytes(16)?;
        let name_len = rfb.u32()? as usize;
        let _name = rfb.bytes(name_len.min(1 << 16))?;
        rfb.resize(w, h)?;
        // SetPixelFormat: 32 bpp, depth 24, little endian, true colour,
        // 8 bits each, red at 16, green at 8, blue at 0.
        let mut msg = vec![0u8, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0];
        msg.extend_from_slice(&[0, 0, 0]);
        rfb.output.write_all(&msg)?;
        let mut msg = vec![2u8, 0];
        msg.extend_from_slice(&(ENCODINGS.len() as u16).to_be_bytes());
        for e in ENCODINGS {
            msg.extend_from_slice(&e.to_be_bytes());
        }
        rfb.output.write_all(&msg)?;
        rfb.request(false)?;
        Ok(rfb)
    }

    fn resize(&mut self, w: usize, h: usize) -> Result<()> {
        ensure!(
            (1..=MAX_SIDE).contains(&w) && (1..=MAX_SIDE).contains(&h),
            "framebuffer {w}x{h}"
        );
        self.width = w;
        self.height = h;
        self.pixels = vec![0; w * h];
        Ok(())
    }

    /// FramebufferUpdateRequest for the whole screen.
    pub(crate) fn request(&mut self, incremental: bool) -> Result<()> {
        let mut msg = vec![3u8, u8::from(incremental), 0, 0, 0, 0];
        msg.extend_from_slice(&(self.width as u16).to_be_bytes());
        msg.extend_from_slice(&(self.height as u16).to_be_bytes());
        self.output.write_all(&msg)?;
        self.output.flush()?;
        Ok(())
    }

    /// Whether a server message has started to arrive (false when the read
    /// timed out first).
    pub(crate) fn message_waiting(&mut self) -> Result<bool> {
        use std::io::BufRead as _;
        match self.input.fill_buf() {
            Ok([]) => bail!("the VNC server closed the connection"),
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one server message and acts on it; true when it was a
    /// FramebufferUpdate (applied; the next one requested unless the server
    /// pushes them). Fences are answered; the server's first
    /// EndOfContinuousUpdates (it supports them) is answered by enabling
    /// them for the whole screen, as TigerVNC's viewer does.
    pub(crate) fn next_message(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => {
                self.update()?;
                if !self.continuous {
                    self.request(true)?;
                }
                return Ok(true);
            }
            1 => {
                let _pad = self.u8()?;
                let _first = self.u16()?;
                let n = usize::from(self.u16()?);
                self.bytes(n * 6)?;
            }
            2 => {}
            3 => {
                self.bytes(3)?;
                let len = self.u32()? as usize;
                ensure!(len <= 16 << 20, "cut text of {len} bytes");
                self.bytes(len)?;
            }
            MSG_CONTINUOUS_UPDATES => {
                if !self.continuous {
                    self.continuous = true;
                    let mut msg = vec![MSG_CONTINUOUS_UPDATES, 1, 0, 0, 0, 0];
                    msg.extend_from_slice(&(self.width as u16).to_be_bytes());
                    msg.extend_from_slice(&(self.height as u16).to_be_bytes());
                    self.output.write_all(&msg)?;
                    self.output.flush()?;
                }
            }
            MSG_FENCE => {
                self.bytes(3)?;
                let flags = self.u32()?;
                let len = self.u8()?;
                ensure!(len <= 64, "fence payload of {len} bytes");
                let payload = self.bytes(usize::from(len))?;
                if flags & FENCE_REQUEST != 0 {
                    let mut msg = vec![MSG_FENCE, 0, 0, 0];
                    msg.extend_from_slice(&(flags & FENCE_FLAGS).to_be_bytes());
                    msg.push(len);
                    msg.extend_from_slice(&payload);
                    self.output.write_all(&msg)?;
                    self.output.flush()?;
                    self.fences += 1;
                }
            }
            t => bail!("unknown server message type {t}"),
        }
        Ok(false)
    }

    /// Reads server messages until one FramebufferUpdate has been applied.
    #[cfg(test)]
    pub(crate) fn next_update(&mut self) -> Result<()> {
        while !self.next_message()? {}
        Ok(())
    }

    fn update(&mut self) -> Result<()> {
        let _pad = self.u8()?;
        let n = self.u16()?;
        for _ in 0..n {
            let x = usize::from(self.u16()?);
            let y = usize::from(self.u16()?);
            let w = usize::from(self.u16()?);
            let h = usize::from(self.u16()?);
            let enc = self.u32()? as i32;
            match enc {
                ENC_DESKTOP_SIZE => {
                    self.resize(w, h)?;
                    continue;
                }
                ENC_CURSOR => {
                    // Pixels, then a bit mask; the headless viewer keeps
                    // neither.
                    self.bytes(w * h * 4 + w.div_ceil(8) * h)?;
                    continue;
                }
                _ => {}
            }
            ensure!(
                x + w <= self.width && y + h <= self.height,
                "rectangle {w}x{h}+{x}+{y} outside {}x{}",
                self.width,
                self.height
            );
            match enc {
                ENC_RAW => {
                    let data = self.bytes(w * h * 4)?;
                    for row in 0..h {
                        for col in 0..w {
                            let i = (row * w + col) * 4;
                            self.pixels[(y + row) * self.width + x + col] =
                                u32::from_le_bytes([data[i], data[i + 1], data[i + 2], 0]);
                        }
                    }
                    self.rects[0] += 1;
                }
                ENC_COPYRECT => {
                    let sx = usize::from(self.u16()?);
                    let sy = usize::from(self.u16()?);
                    ensure!(
                        sx + w <= self.width && sy + h <= self.height,
                        "CopyRect source outside"
                    );
                    let src = self.pixels.clone();
                    for row in 0..h {
                        let from = (sy + row) * self.width + sx;
                        let to = (y + row) * self.width + x;
                        self.pixels[to..to + w].copy_from_slice(&src[from..from + w]);
                    }
                    self.rects[1] += 1;
                }
                ENC_ZRLE => {
                    let len = self.u32()? as usize;
                    ensure!(len <= 64 << 20, "ZRLE rectangle of {len} bytes");
                    let data = self.bytes(len)?;
                    self.inflate(&data)?;
                    self.zrle(x, y, w, h)?;
                    self.rects[2] += 1;
                }
                e => bail!("encoding {e} was not asked for"),
            }
        }
        Ok(())
    }

    /// Inflates one ZRLE rectangle's data (one zlib stream for the whole
    /// connection) into `zbuf`.
    fn inflate(&mut self, data: &[u8]) -> Result<()> {
        self.zbuf.clear();
        let mut input = data;
        loop {
            if self.zbuf.capacity() - self.zbuf.len() < 64 * 1024 {
                self.zbuf.reserve(256 * 1024);
            }
            let before_in = self.zlib.total_in();
            let before_out = self.zbuf.len();
            let status = self
                .zlib
                .decompress_vec(input, &mut self.zbuf, FlushDecompress::Sync)
                .context("ZRLE zlib stream")?;
            let used = (self.zlib.total_in() - before_in) as usize;
            input = &input[used..];
            ensure!(
                used > 0 || self.zbuf.len() > before_out || input.is_empty(),
                "ZRLE zlib stream makes no progress"
            );
            ensure!(
                self.zbuf.len() <= 256 << 20,
                "ZRLE rectangle inflates too far"
            );
            if input.is_empty() && self.zbuf.capacity() > self.zbuf.len() {
                return Ok(());
            }
            if status == Status::StreamEnd {
                return Ok(());
            }
        }
    }

    /// Decodes the tiles of a ZRLE rectangle from `zbuf` (RFC 6143 §7.7.6;
    /// CPIXELs are 3 bytes, blue green red, for our pixel format).
    fn zrle(&mut self, x0: usize, y0: usize, w: usize, h: usize) -> Result<()> {
        let data = std::mem::take(&mut self.zbuf);
        let mut r = Cursor { data: &data, at: 0 };
        let mut palette = [0u32; 128];
        let mut ty = 0;
        while ty < h {
            let th = (h - ty).min(64);
            let mut tx = 0;
            while tx < w {
                let tw = (w - tx).min(64);
                let sub = r.u8()?;
                let stride = self.width;
                let base = (y0 + ty) * stride + x0 + tx;
                let px = &mut self.pixels;
                let mut put = |i: usize, v: u32| {
                    px[base + (i / tw) * stride + i % tw] = v;
                };
                match sub {
                    0 => {
                        for i in 0..tw * th {
                            put(i, r.cpixel()?);
                        }
                    }
                    1 => {
                        let v = r.cpixel()?;
                        for i in 0..tw * th {
                            put(i, v);
                        }
                    }
                    2..=16 => {
                        let n = usize::from(sub);
                        for p in palette.iter_mut().take(n) {
                            *p = r.cpixel()?;
                        }
                        let bits = match n {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        for row in 0..th {
                            let mut byte = 0u8;
                            let mut left = 0;
                            for col in 0..tw {
                                if left == 0 {
                                    byte = r.u8()?;
                                    left = 8;
                                }
                                left -= bits;
                                let idx = usize::from((byte >> left) & ((1 << bits) - 1));
                                put(row * tw + col, palette[idx.min(n - 1)]);
                            }
                        }
                    }
                    128 => {
                        let mut i = 0;
                        while i < tw * th {
                            let v = r.cpixel()?;
                            let run = r.run()?;
                            ensure!(i + run <= tw * th, "ZRLE run past its tile");
                            for k in i..i + run {
                                put(k, v);
                            }
                            i += run;
                        }
                    }
                    130..=255 => {
                        let n = usize::from(sub - 128);
                        for p in palette.iter_mut().take(n) {
                            *p = r.cpixel()?;
                        }
                        let mut i = 0;
                        while i < tw * th {
                            let b = r.u8()?;
                            let v = palette[usize::from(b & 127).min(n - 1)];
                            let run = if b & 128 != 0 { r.run()? } else { 1 };
                            ensure!(i + run <= tw * th, "ZRLE run past its tile");
                            for k in i..i + run {
                                put(k, v);
                            }
                            i += run;
                        }
                    }
                    s => bail!("ZRLE subencoding {s}"),
                }
                tx += 64;
            }
            ty += 64;
        }
        ensure!(r.at == data.len(), "ZRLE rectangle has trailing data");
        self.zbuf = data;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.input.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.input.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.input.read_exact(&mut b)?;
        Ok(b)
    }
}

/// Reads an inflated ZRLE rectangle.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Result<u8> {
        let b = *self.data.get(self.at).context("ZRLE data ends early")?;
        self.at += 1;
        Ok(b)
    }

    fn cpixel(&mut self) -> Result<u32> {
        let b = self
            .data
            .get(self.at..self.at + 3)
            .context("ZRLE data ends early")?;
        self.at += 3;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    /// A run length: bytes summed while they are 255, plus one.
    fn run(&mut self) -> Result<usize> {
        let mut n = 1;
        loop {
            let b = self.u8()?;
            n += usize::from(b);
            if b != 255 {
                return Ok(n);
            }
            ensure!(n <= 64 * 64, "ZRLE run too long");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A server speaking the handshake, then one update with a ZRLE tile of
    /// each kind, a Raw rectangle and a CopyRect: the framebuffer must come
    /// out as built.
    #[test]
    fn decodes_the_handshake_and_every_encoding_it_asks_for() {
        let mut s = Vec::new();
        s.extend_from_slice(b"RFB 003.008\n");
        s.extend_from_slice(&[1, 1]); // one security type: None
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&8u16.to_be_bytes());
        s.extend_from_slice(&4u16.to_be_bytes());
        s.extend_from_slice(&[0; 16]);
        s.extend_from_slice(&1u32.to_be_bytes());
        s.push(b'x');
        // Update: 4 rectangles.
        s.extend_from_slice(&[0, 0, 0, 4]);
        let rect = |s: &mut Vec<u8>, x: u16, y: u16, w: u16, h: u16, e: i32| {
            for v in [x, y, w, h] {
                s.extend_from_slice(&v.to_be_bytes());
            }
            s.extend_from_slice(&e.to_be_bytes());
        };
        // ZRLE 4x2 at 0,0: palette RLE, 2 colours: red x5, blue x3.
        let mut z = vec![130u8, 0, 0, 255, 255, 0, 0, 128, 4, 129, 2];
        // ZRLE 2x2 at 4,0 (second rectangle, same stream): packed palette
        // of 2 with bits 1: rows "10", "01".
        let mut z2 = vec![2u8, 1, 2, 3, 4, 5, 6, 0b1000_0000, 0b0100_0000];
        let mut comp = Compress::new(Compression::default(), true);
        let mut deflate = |raw: &mut Vec<u8>| {
            let mut out = Vec::with_capacity(1024);
            comp.compress_vec(raw, &mut out, FlushCompress::Sync)
                .unwrap();
            out
        };
        let d1 = deflate(&mut z);
        let d2 = deflate(&mut z2);
        rect(&mut s, 0, 0, 4, 2, ENC_ZRLE);
        s.extend_from_slice(&(d1.len() as u32).to_be_bytes());
        s.extend_from_slice(&d1);
        rect(&mut s, 4, 0, 2, 2, ENC_ZRLE);
        s.extend_from_slice(&(d2.len() as u32).to_be_bytes());
        s.extend_from_slice(&d2);
        rect(&mut s, 6, 0, 1, 1, ENC_RAW);
        s.extend_from_slice(&[0x11, 0x22, 0x33, 0]);
        rect(&mut s, 0, 2, 4, 2, ENC_COPYRECT);
        s.extend_from_slice(&[0, 0, 0, 0]);
        let bytes = Arc::new(AtomicU64::new(0));
        let mut out = Vec::new();
        let mut rfb = Rfb::connect(&s[..], &mut out, bytes.clone()).unwrap();
        rfb.next_update().unwrap();
        let red = 0xff0000;
        let blue = 0x0000ff;
        assert_eq!(&rfb.pixels[0..4], &[red, red, red, red]);
        assert_eq!(&rfb.pixels[8..12], &[red, blue, blue, blue]);
        assert_eq!(&rfb.pixels[16..20], &rfb.pixels[0..4].to_vec()[..]);
        assert_eq!(rfb.pixels[4], 0x060504);
        assert_eq!(rfb.pixels[5], 0x030201);
        assert_eq!(rfb.pixels[12], 0x030201);
        assert_eq!(rfb.pixels[13], 0x060504);
        assert_eq!(rfb.pixels[6], 0x332211);
        assert_eq!(rfb.rects, [1, 1, 2]);
        assert_eq!(bytes.load(Ordering::Relaxed), s.len() as u64);
        // The client sent: version, security, ClientInit, SetPixelFormat,
        // SetEncodings, two requests (full, then incremental).
        assert!(out.starts_with(b"RFB 003.008\n\x01\x01\x00"));
        assert_eq!(out.len(), 12 + 2 + 20 + 4 + 4 * ENCODINGS.len() + 20);
    }
}
