//! Real X applications (issue 4 acceptance): xterm, openbox, xclock, driven
//! through the viewer's own input (KEY messages) or xdotool, each scenario
//! ending pixel-exact against `GetImage` of the root, with the command mix
//! checked in the viewer's statistics.
//!
//! No fixed sleeps synchronise anything: windows are awaited with
//! `xdotool search --sync`, the screen with [`assert_converges`] (the
//! viewer reads until its stream is idle, then compares with the screen as
//! it is then, until a deadline).

use std::process::{Child, Command, Stdio};

use mobidesk_client::Stats;
use mobidesk_display::protocol::{Capabilities, Rect, WheelRepr};

use super::*;

/// An X client process, killed on drop.
struct App(Child);

impl App {
    fn spawn(display: &str, program: &str, args: &[&str]) -> App {
        let child = Command::new(program)
            .args(args)
            .env("DISPLAY", display)
            // A plain, predictable shell in xterm.
            .env("PS1", "$ ")
            .env("HOME", std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup installs it): {e}"));
        App(child)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `xdotool ARGS` on `display`; its standard output.
fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("xdotool")
        .args(args)
        .env("DISPLAY", display)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run xdotool (scripts/setup installs it)");
    assert!(out.status.success(), "xdotool {args:?}: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (xdotool's `--sync`, bounded by a timeout) for a visible window of
/// `class`; returns its id.
fn window_of(display: &str, class: &str) -> String {
    let out = Command::new("timeout")
        .args([
            "20",
            "xdotool",
            "search",
            "--sync",
            "--onlyvisible",
            "--class",
            class,
        ])
        .env("DISPLAY", display)
        .output()
        .expect("xdotool");
    let id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "no visible {class} window");
    id
}

/// Reads until the viewer's framebuffer equals the screen as it is at that
/// moment (applications may still be drawing); fails after [`MAX`].
fn assert_converges(viewer: &mut Connection, painter: &Painter) {
    let deadline = Instant::now() + MAX;
    loop {
        viewer.run_until_idle(IDLE, MAX).unwrap();
        let want = painter.screen();
        let got = viewer.framebuffer().unwrap().pixels();
        if got == want.as_slice() {
            return;
        }
        if Instant::now() > deadline {
            let diff = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "framebuffer differs at ({}, {}): viewer {:#08x}, X {:#08x}",
                diff % 640,
                diff / 640,
                got[diff],
                want[diff]
            );
        }
    }
}

/// What arrived between two snapshots of the stats, per message type:
/// `(name, messages, bytes)`, and the total bytes.
fn delta(before: &Stats, after: &Stats) -> (Vec<(String, u64, u64)>, u64) {
    let rows = after
        .by_type
        .iter()
        .map(|(name, a)| {
            let b = before.of(name);
            (name.clone(), a.messages - b.messages, a.bytes - b.bytes)
        })
        .filter(|(_, m, _)| *m > 0)
        .collect();
    (rows, after.bytes - before.bytes)
}

fn of(rows: &[(String, u64, u64)], name: &str) -> (u64, u64) {
    rows.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, m, b)| (*m, *b))
        .unwrap_or((0, 0))
}

/// An xterm (80x24, white, options `extra`) at the top left running a plain
/// shell, once its window is mapped.
fn spawn_xterm(display: &str, extra: &[&str]) -> App {
    let mut args = vec![
        "-geometry",
        "80x24+0+0",
        "+sb",
        "-bg",
        "white",
        "-fg",
        "black",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-e", "sh"]);
    let xterm = App::spawn(display, "xterm", &args);
    window_of(display, "XTerm");
    xterm
}

/// An xterm at the top left running a plain shell, the server and an owner
/// viewer that has caught up with it (offering `VIDEO`, as
/// `mobidesk-client --video` does: nothing here should become video).
fn xterm_session(xvfb: &Xvfb, extra: &[&str]) -> (App, Painter, Connection) {
    let display = xvfb.display();
    let xterm = spawn_xterm(&display, extra);
    let painter = Painter::new(&display);
    let addr = start_server(xvfb, true);
    let config = ViewerConfig {
        capabilities: Capabilities(Capabilities::CURSOR.0 | Capabilities::VIDEO.0),
        ..ViewerConfig::default()
    };
    let mut viewer =
        Connection::connect(addr, &config, &ClientSecurity::InsecurePlaintext).unwrap();
    assert_converges(&mut viewer, &painter);
    assert!(!viewer.viewer().server_hello().unwrap().view_only);
    (xterm, painter, viewer)
}

#[test]
fn typing_in_xterm_is_bitmap_and_sfill_and_pixel_exact() {
    let xvfb = Xvfb::start();
    let (_xterm, painter, mut viewer) = xterm_session(&xvfb, &[]);
    let before = viewer.viewer().stats().clone();
    let text = "echo typed by mobidesk\n";
    viewer
        .type_text(text, Duration::from_millis(100), Duration::from_secs(5))
        .unwrap();
    assert_converges(&mut viewer, &painter);
    let after = viewer.viewer().stats().clone();
    let (rows, bytes) = delta(&before, &after);
    eprintln!("typing {:?}: {bytes} bytes, {rows:?}", text);
    eprintln!("input latency: {:?}", after.input);
    let (bitmaps, _) = of(&rows, "Bitmap");
    let (sfills, _) = of(&rows, "SFill");
    let (_, raw_bytes) = of(&rows, "Raw");
    assert!(bitmaps + sfills >= text.len() as u64 / 2, "{rows:?}");
    // Text is never sent as pixels: at most a stray tile.
    assert!(raw_bytes < 2_000, "{raw_bytes} bytes of RAW");
    assert!(
        bytes < 10_000,
        "{bytes} bytes for {} characters",
        text.len()
    );
    // Every key press was answered by an update.
    assert_eq!(after.input.events, text.chars().count() as u64);
    assert_eq!(after.input.unanswered, 0);
}

/// Scrolling in xterm: a long output (`seq 1 2000`, xterm's jump scroll
/// moves by more than a screen between two frames: repainted as text), then
/// the user scrolling back through it with the wheel and output arriving
/// line by line: COPY, never VIDEO. Pixel-exact after each.
#[test]
fn scrolling_in_xterm_is_copy_and_pixel_exact() {
    let xvfb = Xvfb::start();
    let (_xterm, painter, mut viewer) = xterm_session(&xvfb, &["-sl", "5000"]);
    let settle = Duration::from_millis(100);

    let before = viewer.viewer().stats().clone();
    viewer
        .type_text("seq 1 2000\n", settle, Duration::from_secs(5))
        .unwrap();
    assert_converges(&mut viewer, &painter);
    let (rows, bytes) = delta(&before, viewer.viewer().stats());
    eprintln!("seq 1 2000 (jump scroll): {bytes} bytes, {rows:?}");
    assert!(of(&rows, "Raw").1 < 10_000, "{rows:?}");
    assert!(bytes < 100_000, "{bytes} bytes");

    // Wheel up over the text, one notch at a time (xterm scrolls back by
    // some lines per notch).
    let before = viewer.viewer().stats().clone();
    viewer
        .send(&Message::Pointer(PointerRepr {
            x: 200,
            y: 150,
            buttons: Buttons(0),
        }))
        .unwrap();
    for _ in 0..10 {
        viewer
            .send(&Message::Wheel(WheelRepr { dx: 0, dy: -120 }))
            .unwrap();
        viewer.run_until_idle(settle, MAX).unwrap();
    }
    assert_converges(&mut viewer, &painter);
    let (rows, bytes) = delta(&before, viewer.viewer().stats());
    eprintln!("10 wheel notches back: {bytes} bytes, {rows:?}");
    let (copies, _) = of(&rows, "Copy");
    assert!(copies >= 8, "{rows:?}");
    assert_eq!(of(&rows, "Raw").0, 0, "{rows:?}");

    // Back to the bottom, then output paced by the program, line by line
    // (the delta includes typing the command and `clear`).
    let before = viewer.viewer().stats().clone();
    viewer
        .type_text(
            "clear; for i in $(seq 1 80); do echo line $i; sleep 0.05; done\n",
            settle,
            Duration::from_secs(5),
        )
        .unwrap();
    let deadline = Instant::now() + MAX;
    while !painter_shows_prompt_after_loop(&painter) {
        assert!(Instant::now() < deadline, "the loop did not finish");
        viewer.poll(Duration::from_millis(20)).unwrap();
    }
    assert_converges(&mut viewer, &painter);
    let (rows, bytes) = delta(&before, viewer.viewer().stats());
    eprintln!("80 lines, one per 50 ms: {bytes} bytes, {rows:?}");
    let (copies, _) = of(&rows, "Copy");
    assert!(copies >= 10, "{rows:?}");
    assert_eq!(of(&rows, "Raw").0, 0, "{rows:?}");
    // Three seconds of steady scrolling (from line 24 on) is COPY, not a
    // video stream.
    let stats = viewer.viewer().stats();
    assert_eq!(stats.of("Video").messages, 0, "{rows:?}");
    assert_eq!(stats.of("VideoEnd").messages, 0, "{rows:?}");
}

/// Whether the xterm's last text line (24 lines of 13 rows from y = 3) is
/// the prompt `$ ` again: the paced loop is over. The prompt's `$` is the
/// only glyph at the left of a line whose second cell is empty.
fn painter_shows_prompt_after_loop(painter: &Painter) -> bool {
    let screen = painter.screen();
    // Find the lowest line with ink in its first cell.
    let ink = |line: usize, x0: usize, x1: usize| {
        (3 + line * 13..3 + line * 13 + 13)
            .any(|y| (x0..x1).any(|x| screen[y * 640 + x] != 0x00ff_ffff))
    };
    let Some(last) = (0..24).rev().find(|&l| ink(l, 3, 9)) else {
        return false;
    };
    // `$ ` then the cursor block: ink in cell 0, none in cell 1, cursor in
    // cell 2; and the line above it ends the loop's output (`line 80`).
    last > 0 && !ink(last, 9, 15) && ink(last, 15, 21) && ink(last - 1, 3, 9)
}

#[test]
fn moving_and_resizing_windows_under_openbox() {
    let xvfb = Xvfb::start();
    let display = xvfb.display();
    let painter = Painter::new(&display);
    painter.pattern();
    let _wm = App::spawn(&display, "openbox", &["--sm-disable"]);
    // Windows mapped while openbox starts may stay unmanaged: wait for it
    // to announce itself (EWMH `_NET_SUPPORTING_WM_CHECK` on the root).
    wait_for(|| painter.has_root_property("_NET_SUPPORTING_WM_CHECK"));
    let _xterm = App::spawn(
        &display,
        "xterm",
        &[
            "-geometry",
            "60x15+30+30",
            "+sb",
            "-e",
            "sh",
            "-c",
            "seq 1 15; exec sh",
        ],
    );
    let xterm = window_of(&display, "XTerm");
    let _clock = App::spawn(&display, "xclock", &["-geometry", "120x120+400+250"]);
    window_of(&display, "XClock");
    let addr = start_server(&xvfb, true);
    let mut viewer = connect(addr);
    assert_converges(&mut viewer, &painter);
    let full = viewer.viewer().stats().clone();
    eprintln!(
        "openbox full state: {} bytes, {:?}",
        full.bytes,
        delta(&Stats::default(), &full).0
    );

    // Move the xterm (openbox moves its frame): the hint becomes a COPY.
    for (x, y) in [(150, 120), (260, 60), (40, 200)] {
        let before = viewer.viewer().stats().clone();
        xdotool(
            &display,
            &[
                "windowmove",
                "--sync",
                &xterm,
                &x.to_string(),
                &y.to_string(),
            ],
        );
        assert_converges(&mut viewer, &painter);
        let (rows, bytes) = delta(&before, viewer.viewer().stats());
        eprintln!("move to ({x}, {y}): {bytes} bytes, {rows:?}");
        assert!(of(&rows, "Copy").0 >= 1, "{rows:?}");
    }
    // Resize it: repainted, and still pixel-exact.
    let before = viewer.viewer().stats().clone();
    xdotool(&display, &["windowsize", "--sync", &xterm, "300", "150"]);
    assert_converges(&mut viewer, &painter);
    let (rows, bytes) = delta(&before, viewer.viewer().stats());
    eprintln!("resize: {bytes} bytes, {rows:?}");
    // A late viewer gets the same screen.
    let mut late = connect(addr);
    assert_converges(&mut late, &painter);
}

/// SRSF end to end: a keystroke's update overtakes the queued pieces of a
/// large image. The viewer stops reading while a large noisy image is drawn
/// (its queue and socket fill), types a character, waits until xterm drew
/// it, then reads in small steps: the character shows up in its framebuffer
/// while the image is still incomplete.
#[test]
fn typed_character_overtakes_a_large_image() {
    let xvfb = Xvfb::start();
    let display = xvfb.display();
    let xterm = spawn_xterm(&display, &[]);
    let painter = Painter::new(&display);
    // A small queue and socket buffer, so most of the image waits in the
    // server (queue, then damage region) rather than in the kernel.
    let addr = start_server_with(&xvfb, true, |c| {
        c.queue_bytes = 64 * 1024;
        c.send_buffer = Some(16 * 1024);
    });
    let mut viewer = connect(addr);
    assert_converges(&mut viewer, &painter);
    let term = Rect::new(0, 0, 480, 300);
    let image = |p: &Painter| {
        p.image(0, 330, 640, 150, 11);
        p.image(490, 0, 150, 330, 12);
    };
    image(&painter);
    painter.sync();
    let before_key = region(&painter.screen(), term);
    viewer
        .send(&Message::Key(KeyRepr {
            keysym: 0x71,
            down: true,
        }))
        .unwrap();
    viewer
        .send(&Message::Key(KeyRepr {
            keysym: 0x71,
            down: false,
        }))
        .unwrap();
    // Until xterm drew the `q` (the X side, not the viewer).
    wait_for(|| region(&painter.screen(), term) != before_key);
    let want = painter.screen();
    viewer.set_read_size(2048);
    let deadline = Instant::now() + MAX;
    let got_char_while_image_incomplete = loop {
        assert!(Instant::now() < deadline, "the character never arrived");
        viewer.poll(Duration::from_millis(50)).unwrap();
        let fb = viewer.framebuffer().unwrap().pixels();
        if region(fb, term) == region(&want, term) {
            break fb != want.as_slice();
        }
    };
    assert_converges(&mut viewer, &painter);
    drop(xterm);
    assert!(
        got_char_while_image_incomplete,
        "the image was complete before the character: no overtaking"
    );
}

fn region(px: &[u32], r: Rect) -> Vec<u32> {
    let mut out = Vec::new();
    for y in r.y..r.y + r.h {
        let start = usize::from(y) * 640 + usize::from(r.x);
        out.extend_from_slice(&px[start..start + usize::from(r.w)]);
    }
    out
}
