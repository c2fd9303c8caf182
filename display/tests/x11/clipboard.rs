//! Clipboard text both ways (issue 4, item 1; PROTOCOL.md §4.3): the owner
//! viewer's text becomes the X `CLIPBOARD` selection (the server owns it and
//! serves it), a new X owner's text goes to every viewer with `CLIPBOARD` in
//! force (also when it comes in parts, INCR); a view-only viewer's text is
//! ignored, text over 1 MiB is not sent.
//! xclip/xsel are not installed here, so the X side is x11rb.

use std::time::{Duration, Instant};

use mobidesk_client::{Connection, Security, ViewerConfig};
use mobidesk_display::protocol::{Capabilities, ClipboardRepr, Message};
use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::xvfb::Xvfb;
use super::{start_server, Painter, IDLE, MAX};

struct Atoms {
    clipboard: u32,
    utf8: u32,
    prop: u32,
}

fn x_client(display: &str) -> (RustConnection, u32, Atoms) {
    let (conn, screen) = RustConnection::connect(Some(display)).unwrap();
    let root = conn.setup().roots[screen].root;
    let window = conn.generate_id().unwrap();
    conn.create_window(
        0,
        window,
        root,
        0,
        0,
        1,
        1,
        0,
        xproto::WindowClass::INPUT_ONLY,
        0,
        &xproto::CreateWindowAux::new(),
    )
    .unwrap()
    .check()
    .unwrap();
    let atom = |n: &str| {
        conn.intern_atom(false, n.as_bytes())
            .unwrap()
            .reply()
            .unwrap()
            .atom
    };
    let atoms = Atoms {
        clipboard: atom("CLIPBOARD"),
        utf8: atom("UTF8_STRING"),
        prop: atom("TEST_CLIP"),
    };
    (conn, window, atoms)
}

/// What an X application pasting now would get (None: nobody owns it).
fn x_paste(display: &str) -> Option<String> {
    let (conn, window, a) = x_client(display);
    conn.convert_selection(window, a.clipboard, a.utf8, a.prop, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match conn.poll_for_event().unwrap() {
            Some(Event::SelectionNotify(e)) => {
                if e.property == x11rb::NONE {
                    return None;
                }
                let reply = conn
                    .get_property(true, window, a.prop, xproto::AtomEnum::ANY, 0, u32::MAX / 4)
                    .unwrap()
                    .reply()
                    .unwrap();
                return Some(String::from_utf8(reply.value).unwrap());
            }
            Some(_) => {}
            None => {
                assert!(Instant::now() < deadline, "no SelectionNotify");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The owner's answer to `e`: the text is in `property` (NONE: refused).
fn notify(conn: &RustConnection, e: &xproto::SelectionRequestEvent, property: u32) {
    let notify = xproto::SelectionNotifyEvent {
        response_type: xproto::SELECTION_NOTIFY_EVENT,
        sequence: 0,
        time: e.time,
        requestor: e.requestor,
        selection: e.selection,
        target: e.target,
        property,
    };
    conn.send_event(false, e.requestor, xproto::EventMask::NO_EVENT, notify)
        .unwrap();
    conn.flush().unwrap();
}

/// An X application that copies `text`: owns CLIPBOARD and serves it until
/// it loses the selection or X goes away.
fn x_copy(display: &str, text: String) {
    let (conn, window, a) = x_client(display);
    conn.set_selection_owner(window, a.clipboard, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    std::thread::spawn(move || loop {
        let Ok(event) = conn.wait_for_event() else {
            return;
        };
        match event {
            Event::SelectionRequest(e) => {
                let property = if e.target == a.utf8 {
                    conn.change_property8(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        e.property,
                        a.utf8,
                        text.as_bytes(),
                    )
                    .unwrap();
                    e.property
                } else {
                    x11rb::NONE
                };
                notify(&conn, &e, property);
            }
            Event::SelectionClear(_) => return,
            _ => {}
        }
    });
}

/// An X application that copies `text` and sends it in parts of `part`
/// bytes (ICCCM §2.7.2 INCR), as GTK and Qt do for large text: the
/// requestor gets a property of type INCR, then one part each time it
/// deletes the last, then an empty part.
fn x_copy_incr(display: &str, text: String, part: usize) {
    let (conn, window, a) = x_client(display);
    let incr = conn
        .intern_atom(false, b"INCR")
        .unwrap()
        .reply()
        .unwrap()
        .atom;
    conn.set_selection_owner(window, a.clipboard, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    std::thread::spawn(move || {
        // The transfer in progress: requestor, property, bytes sent.
        let mut sending: Option<(u32, u32, usize)> = None;
        loop {
            let Ok(event) = conn.wait_for_event() else {
                return;
            };
            match event {
                Event::SelectionRequest(e) if e.target == a.utf8 => {
                    conn.change_window_attributes(
                        e.requestor,
                        &xproto::ChangeWindowAttributesAux::new()
                            .event_mask(xproto::EventMask::PROPERTY_CHANGE),
                    )
                    .unwrap();
                    conn.change_property32(
                        xproto::PropMode::REPLACE,
                        e.requestor,
                        e.property,
                        incr,
                        &[text.len() as u32],
                    )
                    .unwrap();
                    notify(&conn, &e, e.property);
                    sending = Some((e.requestor, e.property, 0));
                }
                Event::PropertyNotify(e) if e.state == xproto::Property::DELETE => {
                    let Some((requestor, property, sent)) = sending else {
                        continue;
                    };
                    if (e.window, e.atom) != (requestor, property) {
                        continue;
                    }
                    let end = (sent + part).min(text.len());
                    conn.change_property8(
                        xproto::PropMode::REPLACE,
                        requestor,
                        property,
                        a.utf8,
                        &text.as_bytes()[sent..end],
                    )
                    .unwrap();
                    conn.flush().unwrap();
                    // The empty part was the last.
                    sending = (sent < text.len()).then_some((requestor, property, end));
                }
                Event::SelectionClear(_) => return,
                _ => {}
            }
        }
    });
}

fn viewer(addr: std::net::SocketAddr, capabilities: Capabilities) -> Connection {
    let config = ViewerConfig {
        capabilities,
        ..ViewerConfig::default()
    };
    let mut c = Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap();
    c.run_until_idle(IDLE, MAX).unwrap();
    c
}

fn wait_clipboard(viewer: &mut Connection, want: &str) {
    let deadline = Instant::now() + MAX;
    while viewer.viewer().clipboard() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "clipboard is {:?}",
            viewer
                .viewer()
                .clipboard()
                .map(|t| t.chars().take(40).collect::<String>())
        );
        viewer.poll(Duration::from_millis(20)).unwrap();
    }
}

fn send_clipboard(viewer: &mut Connection, text: &str) {
    viewer
        .send(&Message::Clipboard(ClipboardRepr { text: text.into() }))
        .unwrap();
}

#[test]
fn clipboard_text_both_ways() {
    let xvfb = Xvfb::start();
    let display = xvfb.display();
    let painter = Painter::new(&display);
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let both = Capabilities(Capabilities::CURSOR.0 | Capabilities::CLIPBOARD.0);
    let mut owner = viewer(addr, both);
    let mut watcher = viewer(addr, both);
    let mut without = viewer(addr, Capabilities::CURSOR);
    assert!(watcher.viewer().server_hello().unwrap().view_only);

    // Viewer -> X: an X application pastes the owner's text; the other
    // viewer with CLIPBOARD gets it too.
    let text = "copied in the viewer: héllo ✓";
    send_clipboard(&mut owner, text);
    let deadline = Instant::now() + MAX;
    while x_paste(&display).as_deref() != Some(text) {
        assert!(
            Instant::now() < deadline,
            "X does not paste the viewer's text"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_clipboard(&mut watcher, text);

    // A view-only viewer's clipboard is ignored.
    send_clipboard(&mut watcher, "from a view-only viewer");
    watcher.run_until_idle(IDLE, MAX).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(x_paste(&display).as_deref(), Some(text));

    // X -> viewers: an X application copies.
    let from_x = "copied in X: 日本語, line 1\nline 2";
    x_copy(&display, from_x.to_owned());
    wait_clipboard(&mut owner, from_x);
    wait_clipboard(&mut watcher, from_x);

    // More than 1 MiB is not sent; the next small text is.
    x_copy(&display, "x".repeat(1024 * 1024 + 1));
    owner.run_for(Duration::from_millis(700)).unwrap();
    assert_eq!(owner.viewer().clipboard(), Some(from_x));
    let exactly_max = "y".repeat(1024 * 1024);
    x_copy(&display, exactly_max.clone());
    wait_clipboard(&mut owner, &exactly_max);

    // Large text in parts (INCR), as GTK and Qt send it: all of it, in
    // order; past 1 MiB dropped, and the next transfer works again.
    let large: String = (0..40_000).map(|i| format!("{i:>9}\n")).collect();
    x_copy_incr(&display, large.clone(), 64 * 1024);
    wait_clipboard(&mut owner, &large);
    x_copy_incr(&display, "z".repeat(1024 * 1024 + 10), 256 * 1024);
    owner.run_for(Duration::from_millis(700)).unwrap();
    assert_eq!(owner.viewer().clipboard(), Some(large.as_str()));
    x_copy_incr(&display, "after: ok".into(), 4);
    wait_clipboard(&mut owner, "after: ok");

    // A viewer without CLIPBOARD got none of it.
    without.run_until_idle(IDLE, MAX).unwrap();
    assert_eq!(without.viewer().stats().of("Clipboard").messages, 0);
    eprintln!(
        "owner: {} Clipboard messages, {} bytes",
        owner.viewer().stats().of("Clipboard").messages,
        owner.viewer().stats().of("Clipboard").bytes
    );
}
