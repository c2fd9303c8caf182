//! The X side of the display server: one connection to the session's Xvfb
//! (x11rb's pure-Rust `RustConnection`), shared by the event thread (DAMAGE,
//! cursor) and the input thread (XTEST).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tracing::{debug, warn};
use x11rb::connection::{Connection, RequestConnection as _};
use x11rb::protocol::damage::{self, ConnectionExt as _};
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat, ImageOrder, Window};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::fbdir::FbdirScreen;
use super::{lock, Cursor, Hub, Inject, Pixels, ServerError, Shadow};
use crate::encode::Move;
use crate::protocol::{CursorShapeRepr, Payload, Rect, MAX_CURSOR_DIMENSION};

/// The session's X display, connected and set up.
pub(crate) struct XSession {
    conn: Arc<RustConnection>,
    root: Window,
    /// The screen's size now (RANDR changes it).
    size: Mutex<(u16, u16)>,
    damage: damage::Damage,
    parts: xfixes::Region,
    /// Outer geometry (border included) of the root's children, to turn
    /// their moves into COPY hints.
    windows: Mutex<HashMap<Window, xproto::Rectangle>>,
    /// The clipboard's X side.
    clip: Clip,
    /// Moves seen but not yet sent with damage (a ConfigureNotify can come
    /// before the damage of the moved pixels); at most 16.
    moves: Mutex<Vec<Move>>,
}

impl XSession {
    /// Connects to `display` and checks the extensions and the pixel format.
    pub(crate) fn connect(display: &str) -> Result<Self, ServerError> {
        let (conn, screen_num) =
            RustConnection::connect(Some(display)).map_err(|e| ServerError::Connect {
                display: display.to_owned(),
                reason: e.to_string(),
            })?;
        let setup = conn.setup();
        let screen = setup
            .roots
            .get(screen_num)
            .ok_or_else(|| ServerError::Unsupported("no screen".into()))?;
        let (root, width, height, depth) = (
            screen.root,
            screen.width_in_pixels,
            screen.height_in_pixels,
            screen.root_depth,
        );
        let bpp = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .map(|f| f.bits_per_pixel);
        if depth != 24 || bpp != Some(32) || setup.image_byte_order != ImageOrder::LSB_FIRST {
            return Err(ServerError::Unsupported(format!(
                "root depth {depth}, {bpp:?} bits per pixel: only depth 24 in 32-bit LSB-first pixels (BGRX)"
            )));
        }
        for (name, present) in [
            ("DAMAGE", damage::X11_EXTENSION_NAME),
            ("XFIXES", xfixes::X11_EXTENSION_NAME),
            ("XTEST", x11rb::protocol::xtest::X11_EXTENSION_NAME),
        ] {
            let info = conn
                .extension_information(present)
                .map_err(ServerError::x11)?;
            if info.is_none() {
                return Err(ServerError::Unsupported(format!("no {name} extension")));
            }
        }
        conn.damage_query_version(1, 1)
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        conn.xfixes_query_version(5, 0)
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        conn.xtest_get_version(2, 2)
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        // RANDR: size changes of the screen (without it, the size is fixed).
        let randr = conn
            .extension_information(randr::X11_EXTENSION_NAME)
            .map_err(ServerError::x11)?
            .is_some();
        if randr {
            conn.randr_query_version(1, 3)
                .map_err(ServerError::x11)?
                .reply()
                .map_err(ServerError::x11)?;
            conn.randr_select_input(root, randr::NotifyMask::SCREEN_CHANGE)
                .map_err(ServerError::x11)?
                .check()
                .map_err(ServerError::x11)?;
        }
        let damage = conn.generate_id().map_err(ServerError::x11)?;
        conn.damage_create(damage, root, damage::ReportLevel::NON_EMPTY)
            .map_err(ServerError::x11)?
            .check()
            .map_err(ServerError::x11)?;
        let parts = conn.generate_id().map_err(ServerError::x11)?;
        conn.xfixes_create_region(parts, &[])
            .map_err(ServerError::x11)?;
        conn.xfixes_select_cursor_input(root, xfixes::CursorNotifyMask::DISPLAY_CURSOR)
            .map_err(ServerError::x11)?
            .check()
            .map_err(ServerError::x11)?;
        // The viewers draw the cursor themselves (PROTOCOL.md §7): hide it on
        // the X screen, so Xvfb does not draw its sprite into the `-fbdir`
        // framebuffer (GetImage never shows it; XFIXES still reports the
        // shape). X shows it again when this connection ends.
        conn.xfixes_hide_cursor(root)
            .map_err(ServerError::x11)?
            .check()
            .map_err(ServerError::x11)?;
        // Top-level windows' moves (ConfigureNotify) are COPY hints.
        select_events(&conn, root, xproto::EventMask::SUBSTRUCTURE_NOTIFY)?;
        let clip = Clip::new(&conn, root)?;
        let mut windows = HashMap::new();
        let tree = conn
            .query_tree(root)
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        for child in tree.children {
            if let Ok(Ok(g)) = conn.get_geometry(child).map(|c| c.reply()) {
                windows.insert(child, outer(g.x, g.y, g.width, g.height, g.border_width));
            }
        }
        Ok(XSession {
            conn: Arc::new(conn),
            root,
            size: Mutex::new((width, height)),
            damage,
            parts,
            clip,
            windows: Mutex::new(windows),
            moves: Mutex::new(Vec::new()),
        })
    }

    /// The screen's size now.
    pub(crate) fn size(&self) -> (u16, u16) {
        *lock(&self.size)
    }

    /// Where the pixels come from: the `-fbdir` mapping (checked against the
    /// X screen's size) or a shadow copy filled now.
    pub(crate) fn pixels(&self, fbdir: Option<&Path>) -> Result<Pixels, ServerError> {
        let (width, height) = self.size();
        if let Some(dir) = fbdir {
            let screen = FbdirScreen::open(dir)?;
            let h = screen.header();
            // Xvfb's RANDR only shrinks the screen inside its framebuffer.
            if h.width < u32::from(width) || h.height < u32::from(height) {
                return Err(ServerError::Fbdir(format!(
                    "{}x{} in the file, {width}x{height} on the X screen: is it this display's -fbdir?",
                    h.width, h.height
                )));
            }
            return Ok(Pixels::Fbdir(screen));
        }
        let pixels = Pixels::Shadow(RwLock::new(Shadow {
            width,
            height,
            data: vec![0; usize::from(width) * usize::from(height) * 4],
        }));
        self.refresh_shadow(&pixels, &[Rect::new(0, 0, width, height)])?;
        Ok(pixels)
    }

    /// The screen's size changed to `size`: the shadow copy (if any) is
    /// reallocated and read whole, then the viewers are told.
    fn resize(&self, hub: &Hub, size: (u16, u16)) -> Result<(), ServerError> {
        *lock(&self.size) = size;
        if let Pixels::Fbdir(screen) = &hub.pixels {
            let h = screen.header();
            if h.width < u32::from(size.0) || h.height < u32::from(size.1) {
                return Err(ServerError::Fbdir(format!(
                    "the screen grew to {}x{}, beyond the {}x{} framebuffer file",
                    size.0, size.1, h.width, h.height
                )));
            }
        }
        if let Pixels::Shadow(shadow) = &hub.pixels {
            let mut shadow = shadow.write().unwrap_or_else(PoisonError::into_inner);
            *shadow = Shadow {
                width: size.0,
                height: size.1,
                data: vec![0; usize::from(size.0) * usize::from(size.1) * 4],
            };
        }
        self.refresh_shadow(&hub.pixels, &[Rect::new(0, 0, size.0, size.1)])?;
        hub.resize(size.0, size.1);
        Ok(())
    }

    /// Copies `rects` of the screen into the shadow copy (no-op for fbdir).
    fn refresh_shadow(&self, pixels: &Pixels, rects: &[Rect]) -> Result<(), ServerError> {
        let Pixels::Shadow(shadow) = pixels else {
            return Ok(());
        };
        for rect in rects {
            // Bands of 64 rows keep each reply small.
            let mut y = rect.y;
            let bottom = rect.y.saturating_add(rect.h);
            while y < bottom {
                let h = 64.min(bottom - y);
                let reply = self
                    .conn
                    .get_image(
                        ImageFormat::Z_PIXMAP,
                        self.root,
                        to_i16(rect.x),
                        to_i16(y),
                        rect.w,
                        h,
                        !0,
                    )
                    .map_err(ServerError::x11)?
                    .reply()
                    .map_err(ServerError::x11)?;
                let row = usize::from(rect.w) * 4;
                let mut shadow = shadow.write().unwrap_or_else(PoisonError::into_inner);
                let stride = usize::from(shadow.width) * 4;
                for (i, src) in reply
                    .data
                    .chunks_exact(row)
                    .take(usize::from(h))
                    .enumerate()
                {
                    let at = (usize::from(y) + i) * stride + usize::from(rect.x) * 4;
                    if let Some(dst) = shadow.data.get_mut(at..at + row) {
                        dst.copy_from_slice(src);
                    }
                }
                y += h;
            }
        }
        Ok(())
    }

    /// The cursor as XFIXES reports it.
    fn cursor(&self) -> Result<Cursor, ServerError> {
        let image = self
            .conn
            .xfixes_get_cursor_image()
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        Ok(cursor_from_image(
            image.width,
            image.height,
            image.xhot,
            image.yhot,
            &image.cursor_image,
            image.x,
            image.y,
        ))
    }

    /// Runs the event loop: DAMAGE → the hub's regions, cursor changes → the
    /// hub's cursor. Returns when the X connection fails.
    pub(crate) fn run_events(&self, hub: &Hub) -> ServerError {
        match self.cursor() {
            Ok(c) => hub.set_cursor(c),
            Err(e) => warn!(error = %e, "cursor image"),
        }
        loop {
            if let Err(e) = self.wait_and_handle(hub) {
                return e;
            }
        }
    }

    fn wait_and_handle(&self, hub: &Hub) -> Result<(), ServerError> {
        let first = self.conn.wait_for_event().map_err(ServerError::x11)?;
        let mut seen = Seen {
            moves: std::mem::take(&mut *lock(&self.moves)),
            ..Seen::default()
        };
        self.handle_event(first, &mut seen);
        self.drain_events(&mut seen)?;
        self.check_size(hub, &mut seen)?;
        while std::mem::take(&mut seen.damaged) {
            // Move the damage into `parts` and read it back: the round trip
            // orders every drawing reported here before our pixel reads, and
            // anything drawn later raises a new DamageNotify.
            self.conn
                .damage_subtract(self.damage, x11rb::NONE, self.parts)
                .map_err(ServerError::x11)?;
            let reply = self
                .conn
                .xfixes_fetch_region(self.parts)
                .map_err(ServerError::x11)?
                .reply()
                .map_err(ServerError::x11)?;
            // Events the X server sent before the reply: a window move's
            // ConfigureNotify can trail the damage of its pixels, and its
            // hint must travel with that damage.
            self.drain_events(&mut seen)?;
            // A size change seen with the damage applies before it.
            self.check_size(hub, &mut seen)?;
            let (width, height) = self.size();
            let rects: Vec<Rect> = reply
                .rectangles
                .iter()
                .filter_map(|r| clip_rect(r, width, height))
                .collect();
            self.refresh_shadow(&hub.pixels, &rects)?;
            hub.damage(&rects, &std::mem::take(&mut seen.moves));
        }
        if !seen.moves.is_empty() {
            // No damage yet: keep them for the damage to come.
            let keep = seen.moves.len().saturating_sub(16);
            *lock(&self.moves) = seen.moves.split_off(keep);
        }
        if seen.cursor {
            hub.set_cursor(self.cursor()?);
        }
        if std::mem::take(&mut seen.clipboard_owner) {
            // Another client owns CLIPBOARD now: ask it for the text.
            self.conn
                .convert_selection(
                    self.clip.window,
                    self.clip.atoms.clipboard,
                    self.clip.atoms.utf8_string,
                    self.clip.atoms.property,
                    x11rb::CURRENT_TIME,
                )
                .map_err(ServerError::x11)?;
            self.conn.flush().map_err(ServerError::x11)?;
        }
        if std::mem::take(&mut seen.clipboard_ready) {
            if let Some(text) = self.clip.read(&self.conn)? {
                hub.set_clipboard(text, None);
            }
        }
        if std::mem::take(&mut seen.clipboard_part) {
            if let Some(text) = self.clip.read_part(&self.conn)? {
                hub.set_clipboard(text, None);
            }
        }
        Ok(())
    }

    /// After a RANDR screen change: the root's size now, and when it
    /// changed, [`Self::resize`].
    fn check_size(&self, hub: &Hub, seen: &mut Seen) -> Result<(), ServerError> {
        if !std::mem::take(&mut seen.resized) {
            return Ok(());
        }
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        if (g.width, g.height) != self.size() {
            tracing::info!(width = g.width, height = g.height, "screen resized");
            self.resize(hub, (g.width, g.height))?;
        }
        Ok(())
    }

    /// Handles every event already received.
    fn drain_events(&self, seen: &mut Seen) -> Result<(), ServerError> {
        while let Some(ev) = self.conn.poll_for_event().map_err(ServerError::x11)? {
            self.handle_event(ev, seen);
        }
        Ok(())
    }

    fn handle_event(&self, ev: Event, seen: &mut Seen) {
        match ev {
            Event::DamageNotify(_) => seen.damaged = true,
            Event::XfixesCursorNotify(_) => seen.cursor = true,
            Event::RandrScreenChangeNotify(_) => seen.resized = true,
            Event::XfixesSelectionNotify(e) if e.selection == self.clip.atoms.clipboard => {
                if e.owner != self.clip.window {
                    // Ours no longer: the viewer's text is not served, and
                    // a transfer from an earlier owner is over.
                    *lock(&self.clip.owned) = None;
                    *lock(&self.clip.incoming) = None;
                    seen.clipboard_owner = e.owner != x11rb::NONE;
                }
            }
            Event::SelectionNotify(e) if e.requestor == self.clip.window => {
                seen.clipboard_ready = e.property != x11rb::NONE;
            }
            Event::PropertyNotify(e)
                if e.window == self.clip.window
                    && e.atom == self.clip.atoms.property
                    && e.state == xproto::Property::NEW_VALUE =>
            {
                seen.clipboard_part = true;
            }
            Event::SelectionRequest(e) => {
                if let Err(err) = self.clip.answer(&self.conn, &e) {
                    warn!(error = %err, "answering a selection request");
                }
            }
            Event::CreateNotify(e) if e.parent == self.root => {
                let g = outer(e.x, e.y, e.width, e.height, e.border_width);
                lock(&self.windows).insert(e.window, g);
            }
            Event::ConfigureNotify(e) if e.event == self.root => {
                let g = outer(e.x, e.y, e.width, e.height, e.border_width);
                let old = lock(&self.windows).insert(e.window, g);
                if let Some(old) = old {
                    let (width, height) = self.size();
                    seen.moves.extend(window_move(old, g, width, height));
                }
            }
            Event::ReparentNotify(e) if e.event == self.root => {
                if e.parent == self.root {
                    if let Ok(Ok(g)) = self.conn.get_geometry(e.window).map(|c| c.reply()) {
                        let g = outer(g.x, g.y, g.width, g.height, g.border_width);
                        lock(&self.windows).insert(e.window, g);
                    }
                } else {
                    lock(&self.windows).remove(&e.window);
                }
            }
            Event::DestroyNotify(e) => {
                lock(&self.windows).remove(&e.window);
            }
            Event::Error(e) => warn!(error = ?e, "x11 error"),
            other => debug!(event = ?other, "ignored x11 event"),
        }
    }

    /// A handle for the input thread.
    pub(crate) fn injector(&self) -> Result<Injector, ServerError> {
        Injector::new(self.conn.clone(), self.root, self.clip.clone())
    }
}

/// Asks X for `mask`'s events on `window`.
fn select_events(
    conn: &RustConnection,
    window: Window,
    mask: xproto::EventMask,
) -> Result<(), ServerError> {
    conn.change_window_attributes(
        window,
        &xproto::ChangeWindowAttributesAux::new().event_mask(mask),
    )
    .map_err(ServerError::x11)?
    .check()
    .map_err(ServerError::x11)
}

/// The atoms of the clipboard exchange.
#[derive(Debug, Clone, Copy)]
struct ClipAtoms {
    clipboard: xproto::Atom,
    utf8_string: xproto::Atom,
    targets: xproto::Atom,
    text: xproto::Atom,
    incr: xproto::Atom,
    /// Where the selection's owner puts the text for us.
    property: xproto::Atom,
}

/// The clipboard's X side (PROTOCOL.md §4.3): an unmapped window of ours
/// that owns `CLIPBOARD` with a viewer's text, and that asks another owner
/// for its text (UTF8_STRING) when XFIXES reports a new owner. Large text
/// comes in parts (ICCCM §2.7.2 INCR: GTK and Qt applications send that way
/// past a few hundred KiB). Text over `MAX_CLIPBOARD_LEN` bytes, or not
/// UTF-8, is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Clip {
    window: Window,
    atoms: ClipAtoms,
    /// The viewer's text we serve while we own `CLIPBOARD`.
    owned: Arc<Mutex<Option<Arc<str>>>>,
    /// An INCR transfer from another owner, while it lasts.
    incoming: Arc<Mutex<Option<Incoming>>>,
}

/// The parts of an INCR transfer received so far.
#[derive(Debug, Default)]
struct Incoming {
    data: Vec<u8>,
    /// Past `MAX_CLIPBOARD_LEN`: the rest is read (the owner waits for each
    /// part to be taken) and dropped.
    too_large: bool,
}

impl Clip {
    fn new(conn: &RustConnection, root: Window) -> Result<Self, ServerError> {
        let atom = |name: &[u8]| -> Result<xproto::Atom, ServerError> {
            Ok(conn
                .intern_atom(false, name)
                .map_err(ServerError::x11)?
                .reply()
                .map_err(ServerError::x11)?
                .atom)
        };
        let atoms = ClipAtoms {
            clipboard: atom(b"CLIPBOARD")?,
            utf8_string: atom(b"UTF8_STRING")?,
            targets: atom(b"TARGETS")?,
            text: atom(b"TEXT")?,
            incr: atom(b"INCR")?,
            property: atom(b"MOBIDESK_CLIPBOARD")?,
        };
        let window = conn.generate_id().map_err(ServerError::x11)?;
        conn.create_window(
            0,
            window,
            root,
            -1,
            -1,
            1,
            1,
            0,
            xproto::WindowClass::INPUT_ONLY,
            x11rb::COPY_FROM_PARENT,
            &xproto::CreateWindowAux::new(),
        )
        .map_err(ServerError::x11)?
        .check()
        .map_err(ServerError::x11)?;
        // PropertyNotify on our window: the parts of an INCR transfer.
        select_events(conn, window, xproto::EventMask::PROPERTY_CHANGE)?;
        conn.xfixes_select_selection_input(
            window,
            atoms.clipboard,
            xfixes::SelectionEventMask::SET_SELECTION_OWNER
                | xfixes::SelectionEventMask::SELECTION_WINDOW_DESTROY
                | xfixes::SelectionEventMask::SELECTION_CLIENT_CLOSE,
        )
        .map_err(ServerError::x11)?
        .check()
        .map_err(ServerError::x11)?;
        Ok(Clip {
            window,
            atoms,
            owned: Arc::new(Mutex::new(None)),
            incoming: Arc::new(Mutex::new(None)),
        })
    }

    /// Reads and deletes our window's property (at most `words` 32-bit
    /// units; deleted only when read whole).
    fn take(
        &self,
        conn: &RustConnection,
        words: u32,
    ) -> Result<xproto::GetPropertyReply, ServerError> {
        conn.get_property(
            true,
            self.window,
            self.atoms.property,
            xproto::AtomEnum::ANY,
            0,
            words,
        )
        .map_err(ServerError::x11)?
        .reply()
        .map_err(ServerError::x11)
    }

    /// The text another owner converted for us (and deletes it), or `None`
    /// when it is too large, not UTF-8, or comes in parts (INCR: deleting
    /// the property asks the owner for the first part, see
    /// [`Self::read_part`]).
    fn read(&self, conn: &RustConnection) -> Result<Option<Arc<str>>, ServerError> {
        let max = crate::protocol::MAX_CLIPBOARD_LEN;
        let reply = self.take(conn, u32::try_from(max / 4 + 1).unwrap_or(u32::MAX))?;
        if reply.type_ == self.atoms.incr {
            debug!("clipboard text comes in parts (INCR)");
            *lock(&self.incoming) = Some(Incoming::default());
            return Ok(None);
        }
        if reply.bytes_after > 0 || reply.value.len() > max {
            debug!("clipboard text too large: dropped");
            return Ok(None);
        }
        if reply.format != 8 {
            return Ok(None);
        }
        Ok(String::from_utf8(reply.value).ok().map(Arc::from))
    }

    /// The next part of an INCR transfer, after the owner wrote it: taken
    /// (deleting it asks for the next); the whole text after the empty last
    /// part, unless it was too large or not UTF-8.
    fn read_part(&self, conn: &RustConnection) -> Result<Option<Arc<str>>, ServerError> {
        let mut incoming = lock(&self.incoming);
        let Some(transfer) = incoming.as_mut() else {
            return Ok(None);
        };
        let max = crate::protocol::MAX_CLIPBOARD_LEN;
        let reply = self.take(conn, u32::MAX / 4)?;
        if reply.type_ == x11rb::NONE {
            // Taken already (a part read before its event was handled).
            return Ok(None);
        }
        if reply.value.is_empty() {
            let done = incoming.take().unwrap_or_default();
            if done.too_large {
                debug!("clipboard text (INCR) too large: dropped");
                return Ok(None);
            }
            return Ok(String::from_utf8(done.data).ok().map(Arc::from));
        }
        if reply.format != 8 || transfer.data.len() + reply.value.len() > max {
            transfer.too_large = true;
            transfer.data = Vec::new();
        }
        if !transfer.too_large {
            transfer.data.extend_from_slice(&reply.value);
        }
        conn.flush().map_err(ServerError::x11)?;
        Ok(None)
    }

    /// Answers a `SelectionRequest` for `CLIPBOARD` while we own it: the
    /// text as UTF8_STRING, STRING or TEXT, or the TARGETS list; anything
    /// else is refused (property None), as ICCCM §2.2 says.
    fn answer(
        &self,
        conn: &RustConnection,
        e: &xproto::SelectionRequestEvent,
    ) -> Result<(), ServerError> {
        let a = self.atoms;
        let owned = lock(&self.owned).clone();
        let property = if e.property == x11rb::NONE {
            e.target
        } else {
            e.property
        };
        let mut answered = x11rb::NONE;
        if let (true, Some(text)) = (e.selection == a.clipboard && e.owner == self.window, owned) {
            let string = xproto::Atom::from(xproto::AtomEnum::STRING);
            if e.target == a.targets {
                let list = [a.targets, a.utf8_string, string, a.text];
                conn.change_property32(
                    xproto::PropMode::REPLACE,
                    e.requestor,
                    property,
                    xproto::AtomEnum::ATOM,
                    &list,
                )
                .map_err(ServerError::x11)?;
                answered = property;
            } else if e.target == a.utf8_string || e.target == string || e.target == a.text {
                let type_ = if e.target == string {
                    string
                } else {
                    a.utf8_string
                };
                conn.change_property8(
                    xproto::PropMode::REPLACE,
                    e.requestor,
                    property,
                    type_,
                    text.as_bytes(),
                )
                .map_err(ServerError::x11)?;
                answered = property;
            }
        }
        let notify = xproto::SelectionNotifyEvent {
            response_type: xproto::SELECTION_NOTIFY_EVENT,
            sequence: 0,
            time: e.time,
            requestor: e.requestor,
            selection: e.selection,
            target: e.target,
            property: answered,
        };
        conn.send_event(false, e.requestor, xproto::EventMask::NO_EVENT, notify)
            .map_err(ServerError::x11)?;
        conn.flush().map_err(ServerError::x11)
    }
}

/// What a batch of X events asked for.
#[derive(Debug, Default)]
struct Seen {
    damaged: bool,
    cursor: bool,
    resized: bool,
    clipboard_owner: bool,
    clipboard_ready: bool,
    /// The owner wrote the next part of an INCR transfer.
    clipboard_part: bool,
    moves: Vec<Move>,
}

/// A window's outer rectangle (its border included).
fn outer(x: i16, y: i16, width: u16, height: u16, border: u16) -> xproto::Rectangle {
    xproto::Rectangle {
        x,
        y,
        width: width.saturating_add(border.saturating_mul(2)),
        height: height.saturating_add(border.saturating_mul(2)),
    }
}

/// The COPY hint of a window that went from `old` to `new` (same size,
/// another place), clipped to the screen.
fn window_move(
    old: xproto::Rectangle,
    new: xproto::Rectangle,
    width: u16,
    height: u16,
) -> Option<Move> {
    let (dx, dy) = (
        i32::from(new.x) - i32::from(old.x),
        i32::from(new.y) - i32::from(old.y),
    );
    if (dx, dy) == (0, 0) {
        return None;
    }
    // A resize that also moves still moves the top-left part.
    let kept = xproto::Rectangle {
        width: new.width.min(old.width),
        height: new.height.min(old.height),
        ..new
    };
    Some(Move {
        dst: clip_rect(&kept, width, height)?,
        dx,
        dy,
    })
}

fn to_i16(v: u16) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

fn clip_rect(r: &xproto::Rectangle, width: u16, height: u16) -> Option<Rect> {
    let x0 = i32::from(r.x).max(0);
    let y0 = i32::from(r.y).max(0);
    let x1 = (i32::from(r.x) + i32::from(r.width)).min(i32::from(width));
    let y1 = (i32::from(r.y) + i32::from(r.height)).min(i32::from(height));
    if x0 >= x1 || y0 >= y1 {
        return None;
    }
    Some(Rect::new(
        u16::try_from(x0).ok()?,
        u16::try_from(y0).ok()?,
        u16::try_from(x1 - x0).ok()?,
        u16::try_from(y1 - y0).ok()?,
    ))
}

/// An XFIXES cursor image (ARGB `u32`s, premultiplied) as a CURSOR shape;
/// larger than 256 pixels is cropped around the hotspot's corner.
pub(crate) fn cursor_from_image(
    width: u16,
    height: u16,
    xhot: u16,
    yhot: u16,
    argb: &[u32],
    x: i16,
    y: i16,
) -> Cursor {
    let (w, h) = (
        width.min(MAX_CURSOR_DIMENSION),
        height.min(MAX_CURSOR_DIMENSION),
    );
    let position = (
        u16::try_from(x.max(0)).unwrap_or(0),
        u16::try_from(y.max(0)).unwrap_or(0),
    );
    let shape = if w == 0 || h == 0 || argb.len() < usize::from(width) * usize::from(height) {
        CursorShapeRepr::hidden()
    } else {
        let mut bytes = Vec::with_capacity(usize::from(w) * usize::from(h) * 4);
        for row in argb.chunks_exact(usize::from(width)).take(usize::from(h)) {
            for p in row.iter().take(usize::from(w)) {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
        }
        CursorShapeRepr {
            w,
            h,
            hot_x: xhot.min(w - 1),
            hot_y: yhot.min(h - 1),
            pixels: Payload::compress(&bytes),
        }
    };
    Cursor {
        shape,
        x: position.0,
        y: position.1,
    }
}

/// Injects input through XTEST; keysyms are mapped to keycodes through the
/// keyboard mapping, adding a mapping on a free keycode when none exists.
pub(crate) struct Injector {
    conn: Arc<RustConnection>,
    root: Window,
    clip: Clip,
    min_keycode: u8,
    per_keycode: u8,
    keysyms: Vec<u32>,
}

impl Injector {
    fn new(conn: Arc<RustConnection>, root: Window, clip: Clip) -> Result<Self, ServerError> {
        let (min, max) = (conn.setup().min_keycode, conn.setup().max_keycode);
        let reply = conn
            .get_keyboard_mapping(min, max.saturating_sub(min).saturating_add(1))
            .map_err(ServerError::x11)?
            .reply()
            .map_err(ServerError::x11)?;
        Ok(Injector {
            conn,
            root,
            clip,
            min_keycode: min,
            per_keycode: reply.keysyms_per_keycode.max(1),
            keysyms: reply.keysyms,
        })
    }

    fn keycode(&mut self, keysym: u32) -> Option<u8> {
        let per = usize::from(self.per_keycode);
        let found = self
            .keysyms
            .chunks(per)
            .position(|syms| syms.contains(&keysym));
        if let Some(i) = found {
            return u8::try_from(i).ok()?.checked_add(self.min_keycode);
        }
        // A keycode with no symbols at all gets this keysym.
        let free = self
            .keysyms
            .chunks(per)
            .position(|s| s.iter().all(|&k| k == 0))?;
        let keycode = u8::try_from(free).ok()?.checked_add(self.min_keycode)?;
        let syms = vec![keysym; per];
        let changed = self
            .conn
            .change_keyboard_mapping(1, keycode, self.per_keycode, &syms)
            .ok()
            .and_then(|c| c.check().ok());
        changed?;
        if let Some(slot) = self.keysyms.get_mut(free * per..free * per + per) {
            slot.copy_from_slice(&syms);
        }
        Some(keycode)
    }

    fn inject(&mut self, event: Inject) -> Result<(), ServerError> {
        let (kind, detail, x, y) = match event {
            Inject::Clipboard(text) => {
                *lock(&self.clip.owned) = Some(text);
                self.conn
                    .set_selection_owner(
                        self.clip.window,
                        self.clip.atoms.clipboard,
                        x11rb::CURRENT_TIME,
                    )
                    .map_err(ServerError::x11)?;
                return self.conn.flush().map_err(ServerError::x11);
            }
            Inject::Key { keysym, down } => {
                let Some(keycode) = self.keycode(keysym) else {
                    debug!(keysym, "no keycode for keysym");
                    return Ok(());
                };
                let kind = if down {
                    xproto::KEY_PRESS_EVENT
                } else {
                    xproto::KEY_RELEASE_EVENT
                };
                (kind, keycode, 0, 0)
            }
            Inject::Motion { x, y } => (xproto::MOTION_NOTIFY_EVENT, 0, to_i16(x), to_i16(y)),
            Inject::Button { button, down } => {
                let kind = if down {
                    xproto::BUTTON_PRESS_EVENT
                } else {
                    xproto::BUTTON_RELEASE_EVENT
                };
                (kind, button, 0, 0)
            }
        };
        self.conn
            .xtest_fake_input(kind, detail, x11rb::CURRENT_TIME, self.root, x, y, 0)
            .map_err(ServerError::x11)?;
        self.conn.flush().map_err(ServerError::x11)
    }

    /// Injects events until every sender is gone or X fails.
    pub(crate) fn run(mut self, events: Receiver<Inject>) {
        for event in events {
            if let Err(e) = self.inject(event) {
                warn!(error = %e, "input injection failed; input stops");
                return;
            }
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn cursor_image_is_cropped_and_premultiplied_bytes_kept() {
        let c = cursor_from_image(2, 1, 5, 0, &[0x80ff_0000, 0x0000_0000], -3, 7);
        assert_eq!((c.shape.w, c.shape.h, c.shape.hot_x), (2, 1, 1));
        assert_eq!((c.x, c.y), (0, 7));
        let big = vec![0xffff_ffffu32; 300 * 2];
        let c = cursor_from_image(300, 2, 299, 1, &big, 0, 0);
        assert_eq!((c.shape.w, c.shape.h, c.shape.hot_x), (256, 2, 255));
        let c = cursor_from_image(0, 0, 0, 0, &[], 0, 0);
        assert!(c.shape.is_hidden());
    }

    #[test]
    fn window_moves_become_hints() {
        let old = outer(10, 20, 100, 50, 1);
        let new = outer(-30, 200, 100, 50, 1);
        assert_eq!(
            window_move(old, new, 640, 480),
            Some(Move {
                dst: Rect::new(0, 200, 72, 52),
                dx: -40,
                dy: 180
            })
        );
        assert_eq!(window_move(old, old, 640, 480), None);
    }

    #[test]
    fn clip_rect_to_screen() {
        let r = xproto::Rectangle {
            x: -5,
            y: 470,
            width: 20,
            height: 20,
        };
        assert_eq!(clip_rect(&r, 640, 480), Some(Rect::new(0, 470, 15, 10)));
        let r = xproto::Rectangle {
            x: 700,
            y: 0,
            width: 1,
            height: 1,
        };
        assert_eq!(clip_rect(&r, 640, 480), None);
    }
}
