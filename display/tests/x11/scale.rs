//! Viewport scaling (issue 4, item 5; PROTOCOL.md §9): a viewer whose
//! viewport is smaller than the screen gets the screen downscaled on the
//! server (the box filter of `encode::scale`), pixel-exact against that
//! downscale of the X framebuffer, for fewer bytes.

use mobidesk_client::{Connection, Security, ViewerConfig};
use mobidesk_display::encode::scale::downscale;
use mobidesk_display::encode::PixelView;
use mobidesk_display::protocol::{Buttons, Message, PointerRepr, ViewportRequestRepr};

use super::xvfb::Xvfb;
use super::{assert_catches_up, start_server, wait_for, Painter, IDLE, MAX};

fn viewer(addr: std::net::SocketAddr, w: u16, h: u16) -> Connection {
    let config = ViewerConfig {
        max_width: w,
        max_height: h,
        ..ViewerConfig::default()
    };
    Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap()
}

/// The X screen downscaled to `size` (the reference).
pub(crate) fn expected(painter: &Painter, size: (u16, u16)) -> Vec<u32> {
    let (w, h) = painter.size();
    let bytes = painter.screen_bytes();
    let view = PixelView::new(&bytes, usize::from(w) * 4, w, h).unwrap();
    downscale(&view, size)
}

/// Polls until the viewer's framebuffer is `size` and equals the X screen
/// downscaled to it.
pub(crate) fn assert_scaled(viewer: &mut Connection, painter: &Painter, size: (u16, u16)) {
    let deadline = std::time::Instant::now() + MAX;
    loop {
        viewer.run_until_idle(IDLE, MAX).unwrap();
        let fb = viewer.framebuffer().unwrap();
        let want = expected(painter, size);
        if (fb.width(), fb.height()) == size && fb.pixels() == want.as_slice() {
            return;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!((fb.width(), fb.height()), size);
            let diff = fb
                .pixels()
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "scaled framebuffer differs at ({}, {}): viewer {:#08x}, expected {:#08x}",
                diff % usize::from(size.0),
                diff / usize::from(size.0),
                fb.pixels()[diff],
                want[diff]
            );
        }
    }
}

#[test]
fn half_size_viewer_gets_the_exact_downscale_for_a_quarter_of_the_bytes() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    // The half-size viewer connects first: it owns the input.
    let mut half = viewer(addr, 320, 240);
    assert_scaled(&mut half, &painter, (320, 240));
    let mut full = viewer(addr, 640, 480);
    assert_catches_up(&mut full, &painter);
    let size = half.viewer().stats().clone();
    eprintln!(
        "full state: full {} bytes, half {} bytes",
        full.viewer().stats().bytes,
        size.bytes
    );

    // A photo-like update of the whole screen.
    let (half_before, full_before) = (half.viewer().stats().bytes, full.viewer().stats().bytes);
    painter.image(0, 0, 640, 480, 42);
    painter.sync();
    assert_catches_up(&mut full, &painter);
    assert_scaled(&mut half, &painter, (320, 240));
    let half_bytes = half.viewer().stats().bytes - half_before;
    let full_bytes = full.viewer().stats().bytes - full_before;
    let ratio = half_bytes as f64 / full_bytes as f64;
    eprintln!("photo-like 640x480 update: full {full_bytes} bytes, half {half_bytes} bytes, ratio {ratio:.3}");
    assert!((0.2..=0.3).contains(&ratio), "ratio {ratio}");

    // Smaller updates (text, fills) stay exact in scaled space.
    painter.fill(0x00ff_ff00, 101, 99, 301, 51);
    painter.text(0x00ff_0000, 0, 110, 120, "scaled");
    painter.sync();
    assert_catches_up(&mut full, &painter);
    assert_scaled(&mut half, &painter, (320, 240));

    // Input maps back to the screen: the centre of the pixel's box.
    half.send(&Message::Pointer(PointerRepr {
        x: 100,
        y: 50,
        buttons: Buttons(0),
    }))
    .unwrap();
    wait_for(|| painter.pointer() == (200, 100));

    // A new viewport: full size, then one with an uneven ratio.
    half.send(&Message::ViewportRequest(ViewportRequestRepr {
        max_width: 8192,
        max_height: 8192,
    }))
    .unwrap();
    assert_catches_up(&mut half, &painter);
    half.send(&Message::ViewportRequest(ViewportRequestRepr {
        max_width: 200,
        max_height: 200,
    }))
    .unwrap();
    assert_scaled(&mut half, &painter, (200, 150));
    painter.image(33, 17, 101, 77, 5);
    painter.sync();
    assert_scaled(&mut half, &painter, (200, 150));
    assert_eq!(half.viewer().stats().full_states, 3);
}
