//! RANDR (issue 4, item 2): the server follows the screen's size changes
//! with a `FramebufferSize` and a full state; full-size and scaled viewers
//! end pixel-exact at the new size. Xvfb's RANDR only shrinks the screen
//! inside the size it started with (and grows it back), and `xrandr --fb`
//! cannot change its one mode, so the test creates a mode and sets it with
//! x11rb, as `xrandr --newmode/--addmode/--output --mode --fb` would in one
//! connection.

use mobidesk_client::{Connection, Security, ViewerConfig};
use mobidesk_display::encode::scale::fit;
use x11rb::connection::Connection as _;
use x11rb::protocol::randr::{self, ConnectionExt as _};

use super::scale::assert_scaled;
use super::xvfb::Xvfb;
use super::{assert_catches_up, start_server, Painter};

/// Sets the screen to `w × h` through RANDR 1.2 (a mode of that size on the
/// one output, then the screen size; in the other order when growing).
fn set_screen_size(p: &Painter, w: u16, h: u16) {
    let conn = &p.conn;
    conn.randr_query_version(1, 3).unwrap().reply().unwrap();
    let res = conn
        .randr_get_screen_resources(p.root)
        .unwrap()
        .reply()
        .unwrap();
    let (crtc, output) = (res.crtcs[0], res.outputs[0]);
    let mode = match res.modes.iter().find(|m| m.width == w && m.height == h) {
        Some(m) => m.id,
        None => {
            let name = format!("{w}x{h}");
            let info = randr::ModeInfo {
                id: 0,
                width: w,
                height: h,
                dot_clock: u32::from(w) * u32::from(h) * 60,
                hsync_start: w,
                hsync_end: w,
                htotal: w,
                hskew: 0,
                vsync_start: h,
                vsync_end: h,
                vtotal: h,
                name_len: name.len() as u16,
                mode_flags: randr::ModeFlag::default(),
            };
            let mode = conn
                .randr_create_mode(p.root, info, name.as_bytes())
                .unwrap()
                .reply()
                .unwrap()
                .mode;
            conn.randr_add_output_mode(output, mode)
                .unwrap()
                .check()
                .unwrap();
            mode
        }
    };
    let (cw, ch) = p.size();
    let grow = w > cw || h > ch;
    let screen_size = || {
        conn.randr_set_screen_size(p.root, w, h, u32::from(w) / 4, u32::from(h) / 4)
            .unwrap()
            .check()
            .unwrap();
    };
    if grow {
        screen_size();
    }
    let reply = conn
        .randr_set_crtc_config(
            crtc,
            x11rb::CURRENT_TIME,
            res.config_timestamp,
            0,
            0,
            mode,
            randr::Rotation::ROTATE0,
            &[output],
        )
        .unwrap()
        .reply()
        .unwrap();
    assert_eq!(reply.status, randr::SetConfig::SUCCESS);
    if !grow {
        screen_size();
    }
    conn.flush().unwrap();
    assert_eq!(p.size(), (w, h));
}

fn follows_screen_size_changes(fbdir: bool) {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, fbdir);
    let connect = |w, h| {
        let config = ViewerConfig {
            max_width: w,
            max_height: h,
            ..ViewerConfig::default()
        };
        Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap()
    };
    let mut full = connect(8192, 8192);
    assert_catches_up(&mut full, &painter);
    let mut small = connect(320, 320);
    assert_scaled(&mut small, &painter, (320, 240));

    for (w, h, seed) in [(480, 360, 1), (400, 300, 2), (640, 480, 3)] {
        set_screen_size(&painter, w, h);
        painter.text(0x00ff_0000, 0, 10, 20, &format!("now {w}x{h}"));
        painter.image(50, 50, 100, 80, seed);
        painter.sync();
        assert_catches_up(&mut full, &painter);
        assert_scaled(&mut small, &painter, fit((w, h), (320, 320)));
        let fb = full.framebuffer().unwrap();
        assert_eq!((fb.width(), fb.height()), (w, h));
    }
    let stats = full.viewer().stats();
    eprintln!("full viewer after 3 resizes: {}", stats.to_json());
    assert_eq!(stats.full_states, 4);
    assert_eq!(small.viewer().stats().full_states, 4);
}

#[test]
fn randr_resize_with_fbdir_mapping() {
    follows_screen_size_changes(true);
}

#[test]
fn randr_resize_with_get_image() {
    follows_screen_size_changes(false);
}
