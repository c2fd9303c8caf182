//! The display server against a real Xvfb, end to end with the headless
//! viewer (issue 4, step 2). Xvfb must be installed (`scripts/setup`); these
//! tests fail, not skip, without it.
//!
//! Each test starts its own `Xvfb :N -screen 0 640x480x24 -nolisten tcp`
//! on a free display number (a Drop guard kills it), draws with x11rb,
//! starts the display server in-process and compares the viewer's
//! framebuffer with the X server's (`GetImage` on the root), pixel for pixel.
//! `apps.rs` does the same with real applications (xterm, openbox, xclock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apps;
mod clipboard;
mod randr;
mod scale;
mod tls;
mod video;
mod xvfb;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mobidesk_client::{Connection, Security as ClientSecurity, ViewerConfig};
use mobidesk_display::protocol::{
    Buttons, Capabilities, CloseCode, KeyRepr, Message, PingRepr, PointerRepr,
};
use mobidesk_display::server::{self, Config, Security};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{ConnectionExt as _, CreateGCAux, ImageFormat};
use x11rb::rust_connection::RustConnection;

use self::xvfb::Xvfb;

const IDLE: Duration = Duration::from_millis(300);
const MAX: Duration = Duration::from_secs(20);

/// An X client that draws on the root window.
struct Painter {
    conn: RustConnection,
    root: u32,
    gc: u32,
    font: u32,
}

impl Painter {
    fn new(display: &str) -> Painter {
        let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
        let root = conn.setup().roots[screen].root;
        let gc = conn.generate_id().unwrap();
        conn.create_gc(
            gc,
            root,
            &CreateGCAux::new()
                .subwindow_mode(x11rb::protocol::xproto::SubwindowMode::INCLUDE_INFERIORS),
        )
        .unwrap();
        let font = conn.generate_id().unwrap();
        conn.open_font(font, b"fixed").unwrap().check().unwrap();
        Painter {
            conn,
            root,
            gc,
            font,
        }
    }

    fn fill(&self, colour: u32, x: i16, y: i16, w: u16, h: u16) {
        self.conn
            .change_gc(
                self.gc,
                &x11rb::protocol::xproto::ChangeGCAux::new().foreground(colour),
            )
            .unwrap();
        let r = x11rb::protocol::xproto::Rectangle {
            x,
            y,
            width: w,
            height: h,
        };
        self.conn
            .poly_fill_rectangle(self.root, self.gc, &[r])
            .unwrap();
    }

    fn text(&self, fg: u32, bg: u32, x: i16, y: i16, text: &str) {
        self.conn
            .change_gc(
                self.gc,
                &x11rb::protocol::xproto::ChangeGCAux::new()
                    .foreground(fg)
                    .background(bg)
                    .font(self.font),
            )
            .unwrap();
        self.conn
            .image_text8(self.root, self.gc, x, y, text.as_bytes())
            .unwrap();
    }

    /// A photo-like gradient with noise (no solid tiles).
    fn image(&self, x: i16, y: i16, w: u16, h: u16, seed: u32) {
        let mut data = Vec::with_capacity(usize::from(w) * usize::from(h) * 4);
        let mut s = seed;
        for j in 0..u32::from(h) {
            for i in 0..u32::from(w) {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (s >> 28) as u8;
                let r = (i * 255 / u32::from(w)) as u8;
                let g = (j * 255 / u32::from(h)) as u8;
                data.extend_from_slice(&[r ^ noise, g, 128u8.wrapping_add(noise), 0]);
            }
        }
        self.conn
            .put_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                self.gc,
                w,
                h,
                x,
                y,
                0,
                24,
                &data,
            )
            .unwrap();
    }

    /// The test pattern: solid areas, text, a photo-like image.
    fn pattern(&self) {
        self.fill(0x0030_6090, 0, 0, 640, 480);
        self.fill(0x00ff_0000, 20, 20, 200, 130);
        self.fill(0x0000_ff00, 240, 20, 150, 200);
        self.fill(0x0000_00ff, 420, 300, 200, 160);
        self.fill(0x00ff_ffff, 20, 300, 380, 150);
        for (i, line) in [
            "MobiDesk display server",
            "pixel-exact over DAMAGE",
            "SFILL + RAW (LZ4)",
        ]
        .iter()
        .enumerate()
        {
            self.text(0, 0x00ff_ffff, 30, 320 + 16 * i as i16, line);
        }
        self.image(420, 30, 200, 180, 7);
        self.sync();
    }

    fn sync(&self) {
        self.conn.get_input_focus().unwrap().reply().unwrap();
    }

    /// The root window's size now.
    fn size(&self) -> (u16, u16) {
        let g = self.conn.get_geometry(self.root).unwrap().reply().unwrap();
        (g.width, g.height)
    }

    /// The root window's pixels (X bytes cleared).
    fn screen(&self) -> Vec<u32> {
        let (w, h) = self.size();
        let image = self
            .conn
            .get_image(ImageFormat::Z_PIXMAP, self.root, 0, 0, w, h, !0)
            .unwrap()
            .reply()
            .unwrap();
        image
            .data
            .chunks_exact(4)
            .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
            .collect()
    }

    /// The root window's pixels as BGRX bytes (X bytes cleared), for a
    /// `PixelView`.
    fn screen_bytes(&self) -> Vec<u8> {
        self.screen().iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    /// Whether the root window has the property `name`.
    fn has_root_property(&self, name: &str) -> bool {
        let atom = self
            .conn
            .intern_atom(false, name.as_bytes())
            .unwrap()
            .reply()
            .unwrap()
            .atom;
        let reply = self
            .conn
            .get_property(false, self.root, atom, x11rb::NONE, 0, 1)
            .unwrap()
            .reply()
            .unwrap();
        reply.type_ != x11rb::NONE
    }

    fn pointer(&self) -> (i16, i16) {
        let reply = self.conn.query_pointer(self.root).unwrap().reply().unwrap();
        (reply.root_x, reply.root_y)
    }
}

/// Starts the display server in-process on its own thread.
fn start_server(xvfb: &Xvfb, fbdir: bool) -> SocketAddr {
    start_server_with(xvfb, fbdir, |_| {})
}

/// [`start_server`] with the configuration changed by `tune`.
fn start_server_with(xvfb: &Xvfb, fbdir: bool, tune: impl FnOnce(&mut Config)) -> SocketAddr {
    // Plain TCP unless `tune` sets TLS: `tls.rs` tests the TLS transport.
    let mut config = Config::new(
        xvfb.display(),
        "127.0.0.1:0".parse().unwrap(),
        Security::InsecurePlaintext,
    );
    if fbdir {
        config.fbdir = Some(xvfb.fbdir().to_owned());
    }
    tune(&mut config);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = match server::start(config).await {
                Ok(s) => s,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            tx.send(Ok(server.local_addr().unwrap())).unwrap();
            // Ends with an X error when the test's Xvfb goes away.
            if let Err(e) = server.run().await {
                eprintln!("display server ended: {e}");
            }
        });
    });
    rx.recv_timeout(MAX).unwrap().unwrap()
}

fn connect(addr: SocketAddr) -> Connection {
    Connection::connect(
        addr,
        &ViewerConfig::default(),
        &ClientSecurity::InsecurePlaintext,
    )
    .unwrap()
}

/// Polls the viewer until its framebuffer equals the screen.
fn assert_catches_up(viewer: &mut Connection, painter: &Painter) {
    let deadline = Instant::now() + MAX;
    loop {
        viewer.run_until_idle(IDLE, MAX).unwrap();
        let want = painter.screen();
        let size = painter.size();
        let fb = viewer.framebuffer().unwrap();
        let got = fb.pixels();
        if (fb.width(), fb.height()) == size && got == want.as_slice() {
            return;
        }
        if Instant::now() > deadline {
            assert_eq!((fb.width(), fb.height()), size, "framebuffer size");
            let diff = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            let w = usize::from(size.0);
            panic!(
                "framebuffer differs at ({}, {}): viewer {:#08x}, X {:#08x}",
                diff % w,
                diff / w,
                got[diff],
                want[diff]
            );
        }
    }
}

fn pixel_exact(fbdir: bool) {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, fbdir);

    let mut viewer = connect(addr);
    viewer.run_until_idle(IDLE, MAX).unwrap();
    assert!(!viewer.viewer().server_hello().unwrap().view_only);
    assert_catches_up(&mut viewer, &painter);
    let first = viewer.viewer().stats().clone();
    eprintln!("full state (fbdir {fbdir}): {}", first.to_json());
    assert_eq!(first.full_states, 1);
    assert!(first.of("SFill").messages > 0, "solid areas go as SFILL");
    assert!(first.of("Raw").messages > 0, "the image goes as RAW");
    // The screen is 1.2 MB of pixels; the noisy image is ~144 kB of them.
    assert!(first.bytes < 640 * 480 * 4 / 2, "{} bytes", first.bytes);

    // Change the screen: a solid area, text and a new image.
    painter.fill(0x00ff_ff00, 100, 100, 300, 50);
    painter.text(0x00ff_0000, 0, 110, 120, "updated");
    painter.image(40, 200, 64, 64, 99);
    painter.sync();
    assert_catches_up(&mut viewer, &painter);
    let second = viewer.viewer().stats().clone();
    eprintln!("after the update: {}", second.to_json());
    assert!(second.of("SFill").messages > first.of("SFill").messages);
    assert!(second.of("Raw").messages > first.of("Raw").messages);
    assert_eq!(second.full_states, 1);

    // A late viewer gets the complete current screen, view-only.
    let mut late = connect(addr);
    late.run_until_idle(IDLE, MAX).unwrap();
    assert!(late.viewer().server_hello().unwrap().view_only);
    assert_catches_up(&mut late, &painter);
    assert_eq!(
        late.framebuffer().unwrap().pixels(),
        viewer.framebuffer().unwrap().pixels()
    );

    // These viewers offered ZSTD and got their messages in the zstd stream
    // (PROTOCOL.md §2.1); one that does not offer it gets the same pixels
    // without the stream, in more bytes.
    let zstd = late.viewer();
    assert!(zstd
        .server_hello()
        .unwrap()
        .capabilities
        .contains(Capabilities::ZSTD));
    assert!(zstd.stats().of("Compressed").messages > 0);
    let config = ViewerConfig {
        capabilities: Capabilities::CURSOR,
        ..ViewerConfig::default()
    };
    let mut plain = Connection::connect(addr, &config, &ClientSecurity::InsecurePlaintext).unwrap();
    plain.run_until_idle(IDLE, MAX).unwrap();
    assert_catches_up(&mut plain, &painter);
    let hello = plain.viewer().server_hello().unwrap();
    assert!(!hello.capabilities.contains(Capabilities::ZSTD));
    assert_eq!(plain.viewer().stats().of("Compressed").messages, 0);
    assert_eq!(
        plain.framebuffer().unwrap().pixels(),
        late.framebuffer().unwrap().pixels()
    );
    let (with, without) = (late.viewer().stats().bytes, plain.viewer().stats().bytes);
    eprintln!("full state: {with} bytes in the zstd stream, {without} without");
    assert!(with < without, "{with} bytes with zstd, {without} without");
}

#[test]
fn pixel_exact_with_fbdir_mapping() {
    pixel_exact(true);
}

#[test]
fn pixel_exact_with_get_image() {
    pixel_exact(false);
}

#[test]
fn owner_input_is_injected_and_view_only_input_ignored() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let mut owner = connect(addr);
    owner.run_until_idle(IDLE, MAX).unwrap();
    let mut viewer = connect(addr);
    viewer.run_until_idle(IDLE, MAX).unwrap();
    assert!(viewer.viewer().server_hello().unwrap().view_only);

    let pointer = |x, y| {
        Message::Pointer(PointerRepr {
            x,
            y,
            buttons: Buttons(0),
        })
    };
    owner.send(&pointer(123, 77)).unwrap();
    wait_for(|| painter.pointer() == (123, 77));
    // The view-only viewer's input is ignored, and it stays connected.
    viewer.send(&pointer(10, 10)).unwrap();
    viewer.send(&Message::Ping(PingRepr { token: 5 })).unwrap();
    viewer.run_until_idle(IDLE, MAX).unwrap();
    assert_eq!(painter.pointer(), (123, 77));
    assert!(viewer.viewer().stats().of("Pong").messages == 1);
    // Keys: a press and release of `a` go through without an error.
    owner
        .send(&Message::Key(KeyRepr {
            keysym: 0x61,
            down: true,
        }))
        .unwrap();
    owner
        .send(&Message::Key(KeyRepr {
            keysym: 0x61,
            down: false,
        }))
        .unwrap();
    owner.send(&pointer(300, 200)).unwrap();
    wait_for(|| painter.pointer() == (300, 200));
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + MAX;
    while !f() {
        assert!(Instant::now() < deadline, "condition not met in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn malformed_viewer_is_closed_others_carry_on() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let mut good = connect(addr);
    good.run_until_idle(IDLE, MAX).unwrap();

    // Garbage instead of a hello: an unknown message type.
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut garbage, &[0xff, 0, 0, 0, 0, 1, 2, 3]).unwrap();
    let (code, reason) = read_close(&mut garbage);
    assert_eq!(code, CloseCode::UnknownMessageType.to_u16(), "{reason}");

    // A valid hello, then a KEY whose `down` byte is 7: malformed.
    let mut bad = connect(addr);
    bad.run_until_idle(IDLE, MAX).unwrap();
    bad.send_raw(&[0x20, 5, 0, 0, 0, 0x61, 0, 0, 0, 7]).unwrap();
    let (code, reason) = bad.wait_for_close(MAX).unwrap().unwrap();
    assert_eq!(code, CloseCode::MalformedMessage, "{reason}");

    // A huge announced length: closed from the header alone.
    let mut huge = connect(addr);
    huge.run_until_idle(IDLE, MAX).unwrap();
    huge.send_raw(&[0x06, 0xff, 0xff, 0xff, 0x7f]).unwrap();
    let (code, _) = huge.wait_for_close(MAX).unwrap().unwrap();
    assert_eq!(code, CloseCode::MessageTooLarge);

    // The good viewer still gets updates.
    painter.fill(0x0012_3456, 0, 0, 640, 100);
    painter.sync();
    assert_catches_up(&mut good, &painter);
}

/// Reads a raw stream until a Close message; returns its code and reason.
fn read_close(stream: &mut std::net::TcpStream) -> (u16, String) {
    use mobidesk_display::protocol::{FrameDecoder, Sender};
    use std::io::Read;
    stream.set_read_timeout(Some(MAX)).unwrap();
    let mut decoder = FrameDecoder::new(Sender::Server);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed without a Close");
        let mut input = &buf[..n];
        while !input.is_empty() {
            let used = decoder.handle_bytes(input).unwrap();
            input = &input[used..];
            if let Some(frame) = decoder.poll_message() {
                if let Message::Close(c) = frame.parse().unwrap() {
                    return (c.code.to_u16(), c.reason.to_string());
                }
            }
        }
    }
}

#[test]
fn slow_viewer_gets_fewer_newer_frames_and_does_not_slow_a_fast_one() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let mut fast = connect(addr);
    fast.run_until_idle(IDLE, MAX).unwrap();
    let mut slow = connect(addr);
    slow.run_until_idle(IDLE, MAX).unwrap();
    let slow_before = slow.viewer().stats().bytes;
    let fast_before = fast.viewer().stats().bytes;

    // 10 full screens of noise (~1.2 MB each after LZ4) while `slow` does
    // not read: its socket fills, its queue fills, and the server stops
    // encoding for it. The fast viewer gets every one of them.
    for frame in 0..10 {
        painter.image(0, 0, 640, 480, frame);
        painter.sync();
        assert_catches_up(&mut fast, &painter);
    }
    assert_catches_up(&mut fast, &painter);
    // Now the slow viewer reads: it gets the current screen, pixel-exact,
    // having skipped the frames it could not take.
    assert_catches_up(&mut slow, &painter);
    let slow_bytes = slow.viewer().stats().bytes - slow_before;
    let fast_bytes = fast.viewer().stats().bytes - fast_before;
    eprintln!("10 noisy frames: fast viewer {fast_bytes} bytes, slow viewer {slow_bytes} bytes");
    assert!(
        slow_bytes < fast_bytes / 3,
        "slow {slow_bytes} bytes, fast {fast_bytes} bytes"
    );
}
