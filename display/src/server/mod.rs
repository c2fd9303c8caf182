//! The display server (feature `server`): an X client of the session's Xvfb
//! that pushes the screen to its viewers (DESIGN.md §3.1, PROTOCOL.md).
//!
//! - [`x11`]: the X side — DAMAGE (with an XFIXES region, so every change is
//!   reported exactly once and after it was drawn), the pixels (Xvfb's
//!   `-fbdir` mapping in [`fbdir`], or `GetImage` into a shadow copy when no
//!   `-fbdir` is given), the XFIXES cursor image, and XTEST input. Blocking,
//!   on two threads of its own.
//! - [`net`]: the viewer side — TLS 1.3 over TCP ([`tls`]; plain TCP only
//!   when asked for with [`Security::InsecurePlaintext`]), the hellos, the full
//!   state on connect, then server push. Each viewer has its own damage
//!   [`Region`](crate::encode::Region) (with recent window moves as COPY
//!   hints), its own
//!   [`Encoder`](crate::encode::Encoder) (an image of what it has) and its
//!   own SRSF [`Scheduler`](crate::schedule::Scheduler) of at most
//!   `queue_bytes` (plus one update): damage is encoded, smallest area
//!   first, only while the queue has room, so while a slow viewer's socket
//!   is full new damage only grows its region (bounded, coalesced) and is
//!   encoded from the current screen when the viewer can take it. Memory per
//!   viewer is bounded.
//! - The first viewer is the owner (its input is injected); the others are
//!   view-only (their input is ignored, PROTOCOL.md §8). When the owner
//!   leaves, the next viewer to connect becomes the owner.

pub mod fbdir;
mod link;
pub mod net;
pub mod tls;
pub mod x11;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::encode::video::{VideoDetector, VideoParams};
use crate::encode::{Move, PixelView, Region};
use crate::protocol::{CursorShapeRepr, Rect};

pub use self::net::DisplayServer;

/// Why the display server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Connecting to the X server failed.
    #[error("cannot connect to X display {display}: {reason}")]
    Connect {
        /// The display name.
        display: String,
        /// What x11rb said.
        reason: String,
    },
    /// An X request failed or the connection to the X server broke.
    #[error("x11: {0}")]
    X11(String),
    /// The X server lacks something the display server needs.
    #[error("x11: unsupported: {0}")]
    Unsupported(String),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The `-fbdir` framebuffer file is missing or not what Xvfb writes.
    #[error("fbdir: {0}")]
    Fbdir(String),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ServerError {
    fn x11(e: impl std::fmt::Display) -> Self {
        ServerError::X11(e.to_string())
    }
}

/// How viewers' connections are protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS 1.3 with this configuration ([`tls::config_from_files`]).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP (`--insecure-plaintext`): for benches and tests on
    /// loopback only; never expose such a port.
    InsecurePlaintext,
}

/// What the display server is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// TLS (the default) or plain TCP.
    pub security: Security,
    /// The X display, e.g. `:5`.
    pub display: String,
    /// Xvfb's `-fbdir` directory: pixels are read from its mapping. Without
    /// it they are fetched with `GetImage` into a shadow copy.
    pub fbdir: Option<PathBuf>,
    /// Where viewers connect.
    pub listen: SocketAddr,
    /// Encoded bytes queued per viewer (its SRSF scheduler's limit); new
    /// damage is encoded only while the queue holds less.
    pub queue_bytes: usize,
    /// The bytes each viewer's socket may hold *unsent* in the kernel
    /// (`TCP_NOTSENT_LOWAT`): bytes in the kernel can no longer be
    /// overtaken by smaller updates, so few wait there; the send buffer
    /// itself autotunes, so bytes in flight can fill a long fat link (a
    /// fixed 128 KiB `SO_SNDBUF` held a 66 ms link to ~31 Mbit/s). `None`:
    /// no limit.
    pub send_buffer: Option<u32>,
    /// The most damage rectangles kept per viewer before they collapse into
    /// their bounding box.
    pub max_region_rects: usize,
    /// The zstd level of the stream a viewer that offers `ZSTD` gets its
    /// messages in (PROTOCOL.md §2.1); `None`: no zstd stream.
    pub zstd_level: Option<i32>,
    /// When an area is video, when its frame stands still, when it ends.
    pub video: VideoParams,
}

impl Config {
    /// Defaults for `display`, `listen` and `security`.
    pub fn new(display: impl Into<String>, listen: SocketAddr, security: Security) -> Self {
        Config {
            security,
            display: display.into(),
            fbdir: None,
            listen,
            queue_bytes: 256 * 1024,
            send_buffer: Some(128 * 1024),
            max_region_rects: 64,
            zstd_level: Some(crate::protocol::DEFAULT_ZSTD_LEVEL),
            video: VideoParams::default(),
        }
    }
}

/// Where the server reads the screen's pixels.
#[derive(Debug)]
pub(crate) enum Pixels {
    /// Xvfb's framebuffer file, mapped (no copy).
    Fbdir(fbdir::FbdirScreen),
    /// A copy kept up to date with `GetImage` on every damage (and
    /// reallocated when the screen's size changes).
    Shadow(RwLock<Shadow>),
}

/// The `GetImage` copy of the screen.
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) data: Vec<u8>,
}

impl Pixels {
    /// Runs `f` on a view of the top-left `size` of the screen as it is now
    /// (`None` when the mapping is not readable or smaller). Xvfb's RANDR
    /// keeps its framebuffer (size and stride) and only changes the screen's
    /// width and height, within the size it started with.
    fn with_view<R>(&self, size: (u16, u16), f: impl FnOnce(&PixelView<'_>) -> R) -> Option<R> {
        let whole = Rect::new(0, 0, size.0, size.1);
        match self {
            Pixels::Fbdir(screen) => screen
                .view()
                .ok()
                .and_then(|view| view.sub(whole))
                .map(|view| f(&view)),
            Pixels::Shadow(shadow) => {
                let shadow = shadow.read().unwrap_or_else(PoisonError::into_inner);
                PixelView::new(
                    &shadow.data,
                    usize::from(shadow.width) * 4,
                    shadow.width,
                    shadow.height,
                )
                .ok()
                .and_then(|view| view.sub(whole))
                .map(|view| f(&view))
            }
        }
    }
}

/// One injected input event, in screen coordinates and X terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inject {
    Key {
        keysym: u32,
        down: bool,
    },
    Motion {
        x: u16,
        y: u16,
    },
    Button {
        button: u8,
        down: bool,
    },
    /// The owner's clipboard: the server takes the X `CLIPBOARD` selection
    /// and serves this text.
    Clipboard(Arc<str>),
}

/// The cursor as the viewers should see it.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    pub(crate) shape: CursorShapeRepr<'static>,
    pub(crate) x: u16,
    pub(crate) y: u16,
}

/// What the X side and the viewers share.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) pixels: Pixels,
    /// The screen's size now (RANDR changes it).
    size: Mutex<(u16, u16)>,
    max_region_rects: usize,
    clients: Mutex<Vec<(u64, Arc<ClientShared>)>>,
    owner: Mutex<Option<u64>>,
    cursor: Mutex<Cursor>,
    /// The session's clipboard text as last seen (X side or a viewer).
    clipboard: Mutex<Option<Arc<str>>>,
    /// Which areas of the screen change like video (fed only while a
    /// viewer with `VIDEO` is connected: it hashes the rows of the damage).
    video: Mutex<VideoDetector>,
    /// Viewers with `VIDEO` in force ([`VideoViewer`] guards).
    video_viewers: AtomicUsize,
    next_id: AtomicU64,
    pub(crate) input: std::sync::mpsc::Sender<Inject>,
}

/// Damage not yet encoded for one viewer, and the window moves that came
/// with it (COPY hints; at most [`MAX_MOVES`], the oldest forgotten first).
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) region: Region,
    pub(crate) moves: Vec<Move>,
}

/// See [`Hub::video_viewer`].
pub(crate) struct VideoViewer<'a> {
    hub: &'a Hub,
}

impl Drop for VideoViewer<'_> {
    fn drop(&mut self) {
        if self.hub.video_viewers.fetch_sub(1, Ordering::AcqRel) == 1 {
            lock(&self.hub.video).clear();
        }
    }
}

/// The most move hints kept per viewer.
pub(crate) const MAX_MOVES: usize = 16;

/// One viewer's share of the hub.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub(crate) dirty: Mutex<Pending>,
    pub(crate) cursor_dirty: AtomicBool,
    /// The screen's size changed: a new `FramebufferSize` and full state.
    pub(crate) resized: AtomicBool,
    /// The clipboard changed since this viewer was last sent it.
    pub(crate) clipboard_dirty: AtomicBool,
    pub(crate) notify: tokio::sync::Notify,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub(crate) fn new(
        pixels: Pixels,
        (width, height): (u16, u16),
        (max_region_rects, video): (usize, VideoParams),
        input: std::sync::mpsc::Sender<Inject>,
    ) -> Self {
        Hub {
            pixels,
            size: Mutex::new((width, height)),
            max_region_rects,
            clients: Mutex::new(Vec::new()),
            owner: Mutex::new(None),
            cursor: Mutex::new(Cursor {
                shape: CursorShapeRepr::hidden(),
                x: 0,
                y: 0,
            }),
            clipboard: Mutex::new(None),
            video: Mutex::new(VideoDetector::new(video)),
            video_viewers: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            input,
        }
    }

    /// Registers a viewer; returns its id, its share and whether it is the
    /// owner.
    pub(crate) fn join(&self) -> (u64, Arc<ClientShared>, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (width, height) = self.size();
        let shared = Arc::new(ClientShared {
            dirty: Mutex::new(Pending {
                region: Region::new(width, height, self.max_region_rects),
                moves: Vec::new(),
            }),
            cursor_dirty: AtomicBool::new(false),
            resized: AtomicBool::new(false),
            clipboard_dirty: AtomicBool::new(lock(&self.clipboard).is_some()),
            notify: tokio::sync::Notify::new(),
        });
        lock(&self.clients).push((id, shared.clone()));
        let mut owner = lock(&self.owner);
        let is_owner = owner.is_none();
        if is_owner {
            *owner = Some(id);
        }
        (id, shared, is_owner)
    }

    /// A viewer with `VIDEO` in force, until the guard drops: the video
    /// detector is fed while there is one (and starts afresh after the
    /// last one left).
    pub(crate) fn video_viewer(&self) -> VideoViewer<'_> {
        self.video_viewers.fetch_add(1, Ordering::AcqRel);
        VideoViewer { hub: self }
    }

    /// Forgets a viewer (and frees the owner seat if it held it).
    pub(crate) fn leave(&self, id: u64) {
        lock(&self.clients).retain(|(i, _)| *i != id);
        let mut owner = lock(&self.owner);
        if *owner == Some(id) {
            *owner = None;
        }
    }

    /// The screen's size now.
    pub(crate) fn size(&self) -> (u16, u16) {
        *lock(&self.size)
    }

    /// Runs `f` on the screen's pixels as they are now, at its size now.
    pub(crate) fn with_view<R>(&self, f: impl FnOnce(&PixelView<'_>) -> R) -> Option<R> {
        self.pixels.with_view(self.size(), f)
    }

    /// The screen's size changed (RANDR): every viewer forgets its pending
    /// damage and gets a new `FramebufferSize` and the full state.
    pub(crate) fn resize(&self, width: u16, height: u16) {
        *lock(&self.size) = (width, height);
        lock(&self.video).clear();
        for (_, client) in lock(&self.clients).iter() {
            {
                let mut dirty = lock(&client.dirty);
                dirty.region = Region::new(width, height, self.max_region_rects);
                dirty.moves.clear();
            }
            client.resized.store(true, Ordering::Release);
            client.notify.notify_one();
        }
    }

    pub(crate) fn is_owner(&self, id: u64) -> bool {
        *lock(&self.owner) == Some(id)
    }

    pub(crate) fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Adds damage (and the window moves behind it) to every viewer's
    /// pending damage and wakes them.
    /// The video detector sees the damage first, on the screen as it is
    /// now (whether COPY explains it is the same for every viewer).
    pub(crate) fn damage(&self, rects: &[Rect], moves: &[Move]) {
        if self.video_viewers.load(Ordering::Acquire) > 0 {
            let now = std::time::Instant::now();
            let seen = self.with_view(|screen| {
                lock(&self.video).handle_damage(Some(screen), rects, moves, now);
            });
            if seen.is_none() {
                lock(&self.video).handle_damage(None, rects, moves, now);
            }
        }
        for (_, client) in lock(&self.clients).iter() {
            {
                let mut dirty = lock(&client.dirty);
                for r in rects {
                    dirty.region.add(*r);
                }
                for m in moves {
                    if dirty.moves.len() >= MAX_MOVES {
                        dirty.moves.remove(0);
                    }
                    dirty.moves.push(*m);
                }
            }
            client.notify.notify_one();
        }
    }

    pub(crate) fn set_cursor(&self, cursor: Cursor) {
        *lock(&self.cursor) = cursor;
        for (_, client) in lock(&self.clients).iter() {
            client.cursor_dirty.store(true, Ordering::Release);
            client.notify.notify_one();
        }
    }

    /// The clipboard changed (in X, or `from` a viewer, which is not sent
    /// its own text back).
    pub(crate) fn set_clipboard(&self, text: Arc<str>, from: Option<u64>) {
        *lock(&self.clipboard) = Some(text);
        for (id, client) in lock(&self.clients).iter() {
            if Some(*id) != from {
                client.clipboard_dirty.store(true, Ordering::Release);
                client.notify.notify_one();
            }
        }
    }

    /// The video streams now.
    pub(crate) fn video_streams(&self) -> Vec<crate::encode::video::Stream> {
        lock(&self.video).poll_streams(std::time::Instant::now())
    }

    /// Until when a frame over `area` is still being drawn (`None`: it is
    /// not), see [`VideoDetector::drawing_over`].
    pub(crate) fn video_drawing(&self, area: Rect) -> Option<std::time::Instant> {
        lock(&self.video).drawing_over(area, std::time::Instant::now())
    }

    /// When the first video stream stands still or ends unless it is
    /// updated.
    pub(crate) fn video_next_change(&self) -> Option<std::time::Instant> {
        lock(&self.video).next_change(std::time::Instant::now())
    }

    pub(crate) fn clipboard(&self) -> Option<Arc<str>> {
        lock(&self.clipboard).clone()
    }

    pub(crate) fn cursor(&self) -> Cursor {
        lock(&self.cursor).clone()
    }
}

/// Connects to the X server, starts the X threads and binds the listener.
pub async fn start(config: Config) -> Result<DisplayServer, ServerError> {
    DisplayServer::start(config).await
}

#[cfg(test)]
mod test {
    use super::*;

    /// A hub over an 8×8 black shadow screen.
    fn hub(video: VideoParams) -> Hub {
        let (tx, _rx) = std::sync::mpsc::channel();
        let pixels = Pixels::Shadow(RwLock::new(Shadow {
            width: 8,
            height: 8,
            data: vec![0; 8 * 8 * 4],
        }));
        Hub::new(pixels, (8, 8), (4, video), tx)
    }

    #[test]
    fn hub_owner_seat_and_damage() {
        let hub = hub(VideoParams::default());
        let (a, sa, owner_a) = hub.join();
        let (b, _sb, owner_b) = hub.join();
        assert!(owner_a && !owner_b);
        assert!(hub.is_owner(a) && !hub.is_owner(b));
        let mv = Move {
            dst: Rect::new(0, 0, 2, 2),
            dx: 1,
            dy: 0,
        };
        hub.damage(&[Rect::new(0, 0, 2, 2)], &[mv]);
        assert_eq!(lock(&sa.dirty).region.rects(), [Rect::new(0, 0, 2, 2)]);
        assert_eq!(lock(&sa.dirty).moves, [mv]);
        hub.leave(a);
        assert!(!hub.is_owner(b));
        let (c, _sc, owner_c) = hub.join();
        assert!(owner_c && hub.is_owner(c));
        assert_eq!(hub.client_count(), 2);
    }

    #[test]
    fn the_video_detector_is_fed_only_while_a_video_viewer_is_there() {
        let hub = hub(VideoParams {
            min_area: 4,
            ..VideoParams::default()
        });
        let whole = [Rect::new(0, 0, 8, 8)];
        hub.damage(&whole, &[]);
        assert!(!lock(&hub.video).watching());
        let first = hub.video_viewer();
        let second = hub.video_viewer();
        hub.damage(&whole, &[]);
        assert!(lock(&hub.video).watching());
        drop(first);
        assert!(lock(&hub.video).watching());
        drop(second);
        assert!(!lock(&hub.video).watching(), "forgotten with the last");
        hub.damage(&whole, &[]);
        assert!(!lock(&hub.video).watching());
    }
}
