//! `mobidesk-bench display`: the display protocol against the VNC baselines
//! (issue 4) — bytes and time to pixel-exact for text pages, graphics
//! pages, scrolling and video, on the same X workload and the same lab link.
//!
//! Systems (one column each):
//! - `mobidesk` (candidate): `Xvfb -fbdir` + `mobidesk-display
//!   --insecure-plaintext`, viewed by the headless viewer's library
//!   (`mobidesk_client::Viewer`, in this process);
//! - `tigervnc` (baseline): `Xvnc` (TigerVNC's X server with its VNC server
//!   built in), viewed by [`rfb`];
//! - `x11vnc` (baseline): `x11vnc` attached to an `Xvfb`, viewed by [`rfb`].
//!
//! The testbed is the standard lab (`Path::KernelForwarding`): the X server
//! and the display/VNC server run in the session `s1` on server `a`, the
//! viewer in the client host `alice`; the path is alice → proxy box →
//! server a → s1 (kernel forwarding), for `wan` with alice's traffic through
//! the user-space link emulator (`Lab::slow_link`: 66 ms RTT, 100 Mbit/s).
//!
//! The workload ([`workload`]) is drawn by this process over X11. After
//! each change (and a round trip: the X server has drawn it) the screen is
//! a *target*: the viewer's thread compares its framebuffer with the open
//! targets after every update it applied, and records when it first
//! equals one (see [`Watch`]).

mod rfb;
mod workload;

use std::fmt;
use std::io::{Read, Write};

use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mobidesk_lab::linkemu::LinkConfig;
use mobidesk_lab::Netns;
use serde::{Deserialize, Serialize};

use crate::path::{Path, PathSetup, Role, Testbed};
use crate::process::Daemon;
use crate::report::{names_in_order, unit_column, write_table, Machine, Report, Subject};
use crate::Settings;

use self::workload::{Drawer, Rng};

/// The screen every system gets.
pub const WIDTH: u16 = 1024;
pub const HEIGHT: u16 = 768;
/// The video's frame rate.
pub const FPS: f64 = 24.0;
/// The WAN link: round trip and rate.
pub const WAN_RTT: Duration = Duration::from_millis(66);
pub const WAN_RATE_BPS: u64 = 100_000_000;
/// The client host the viewer runs in.
const VIEWER_HOST: &str = "alice";
/// How long a viewer may take to become pixel-exact with one target.
const EXACT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A display system (a column of the report).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Mobidesk,
    Tigervnc,
    X11vnc,
}

impl System {
    pub const ALL: [System; 3] = [System::Mobidesk, System::Tigervnc, System::X11vnc];

    pub fn name(self) -> &'static str {
        match self {
            System::Mobidesk => "mobidesk",
            System::Tigervnc => "tigervnc",
            System::X11vnc => "x11vnc",
        }
    }

    fn port(self) -> u16 {
        match self {
            System::Mobidesk => 5905,
            System::Tigervnc => 5901,
            System::X11vnc => 5902,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl Subject for System {
    fn role(self) -> Role {
        match self {
            System::Mobidesk => Role::Candidate,
            System::Tigervnc | System::X11vnc => Role::Baseline,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            System::Mobidesk => {
                "Xvfb -fbdir + mobidesk-display --insecure-plaintext; viewer: mobidesk_client::Viewer"
            }
            System::Tigervnc => {
                "Xvnc (TigerVNC, VNC built into the X server); viewer: RFB 3.8, ZRLE+CopyRect+Raw"
            }
            System::X11vnc => "Xvfb + x11vnc (polls the screen); viewer: RFB 3.8, ZRLE+CopyRect+Raw",
        }
    }

    fn pinning(_: &Settings) -> String {
        "not pinned: X server, display/VNC server, viewer and workload share the machine's CPUs"
            .into()
    }
}

/// The link between the viewer and the server.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Link {
    /// The lab path as it is (kernel forwarding over veths, no added delay).
    Lan,
    /// 66 ms RTT, 100 Mbit/s (the user-space link emulator).
    Wan,
    /// Both, LAN first.
    Both,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Lan => "lan",
            Link::Wan => "wan",
            Link::Both => "both",
        }
    }

    fn expand(self) -> Vec<Link> {
        match self {
            Link::Both => vec![Link::Lan, Link::Wan],
            l => vec![l],
        }
    }
}

/// The workloads.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Pages of random text, one after the other.
    TextPages,
    /// Photo-like full-screen pictures, one after the other.
    GraphicsPages,
    /// A page of text scrolled line by line.
    Scrolling,
    /// A panned, brightening photo at 24 fps, full screen.
    Video,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::TextPages,
        Workload::GraphicsPages,
        Workload::Scrolling,
        Workload::Video,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::TextPages => "text_pages",
            Workload::GraphicsPages => "graphics_pages",
            Workload::Scrolling => "scrolling",
            Workload::Video => "video",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DisplayOptions {
    pub settings: Settings,
    pub links: Vec<Link>,
    pub systems: Vec<System>,
    /// The workloads, in the order of [`Workload::ALL`].
    pub workloads: Vec<Workload>,
    /// The `mobidesk-display` binary.
    pub display_server: PathBuf,
    /// Extra arguments for `mobidesk-display` (a diagnostic: e.g.
    /// `--send-buffer=0`); none by default, so what ships is measured.
    pub display_server_args: Vec<String>,
    /// Whether the MobiDesk viewer offers VIDEO (default; off: a
    /// diagnostic, lossless only).
    pub video: bool,
    /// Whether it offers H.264 for VIDEO (default; off: a diagnostic,
    /// VIDEO as uncompressed I420).
    pub h264: bool,
}

impl DisplayOptions {
    /// Every system on both links; the display server from
    /// `$MOBIDESK_DISPLAY`, else next to this program.
    pub fn all(smoke: bool) -> DisplayOptions {
        let display_server = std::env::var_os("MOBIDESK_DISPLAY")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join("mobidesk-display")))
            })
            .unwrap_or_else(|| PathBuf::from("mobidesk-display"));
        DisplayOptions {
            settings: Settings {
                smoke,
                endpoints_cpu: None,
                daemons_cpu: None,
            },
            links: vec![Link::Lan, Link::Wan],
            systems: System::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            display_server,
            display_server_args: Vec::new(),
            video: true,
            h264: true,
        }
    }
}

/// How big each workload is.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    text_pages: usize,
    graphics_pages: usize,
    scroll_lines: usize,
    scroll_interval: Duration,
    video_frames: usize,
    /// Pause after a page is exact (or timed out) before the next.
    settle: Duration,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                text_pages: 2,
                graphics_pages: 1,
                scroll_lines: 10,
                scroll_interval: Duration::from_millis(25),
                video_frames: 30,
                settle: Duration::from_millis(50),
            }
        } else {
            Sizes {
                text_pages: 10,
                graphics_pages: 5,
                scroll_lines: 100,
                scroll_interval: Duration::from_millis(25),
                video_frames: 120,
                settle: Duration::from_millis(200),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Watching the viewer's framebuffer.

/// A screen the viewer must reach.
struct Target {
    pixels: Arc<Vec<u32>>,
    /// When the X server had drawn it.
    shown: Instant,
    /// When the viewer's framebuffer first equalled it.
    exact: Option<Instant>,
    /// Video frames: a lossy VIDEO frame counts as delivered when it is
    /// close (PSNR ≥ 30 dB); when that first happened.
    close: Option<Instant>,
    lossy_ok: bool,
}

/// The targets of a run, shared between the workload (which adds them) and
/// the viewer's thread (which checks its framebuffer against the open ones
/// after every update it applied).
#[derive(Default)]
pub(crate) struct Watch {
    targets: Mutex<Vec<Target>>,
    changed: Condvar,
    /// For error messages: how the viewer's framebuffer differed from the
    /// newest open target when last looked at (at most every 200 ms).
    last_diff: Mutex<Option<(Instant, String)>>,
    /// Targets added so far: a viewer that received nothing new still
    /// checks a new target (it may already show it).
    added: AtomicU64,
}

/// Open targets checked after each update: the newest few (a viewer that
/// lags may still show an older video frame; it can no longer show a page
/// that two later pages replaced).
const CHECK_DEPTH: usize = 4;

/// Pixels compared first (spread over the screen), before a full compare.
const SAMPLES: usize = 512;

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Vec<Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a target shown at `shown`; returns its index. `lossy_ok`: a
    /// video frame, also looked for with PSNR after VIDEO updates.
    fn add(&self, pixels: Arc<Vec<u32>>, shown: Instant, lossy_ok: bool) -> usize {
        let mut t = self.lock();
        t.push(Target {
            pixels,
            shown,
            exact: None,
            close: None,
            lossy_ok,
        });
        self.added.fetch_add(1, Ordering::SeqCst);
        t.len() - 1
    }

    /// Called by a viewer that received nothing for a while: checks its
    /// framebuffer (last changed at `applied`) if targets were added since
    /// it last looked (`seen`).
    fn check_new(&self, fb: &[u32], applied: Instant, seen: &mut u64, lossy: bool) {
        let added = self.added.load(Ordering::SeqCst);
        if added != *seen {
            *seen = added;
            self.check(fb, applied, lossy);
        }
    }

    /// Called by the viewer after it applied updates at `now` (its
    /// framebuffer has not changed since). A target that matches was exact
    /// from `now` on, or from its showing if that came later.
    /// `lossy`: the framebuffer holds lossy VIDEO pixels; video targets
    /// are then also compared by PSNR.
    fn check(&self, fb: &[u32], now: Instant, lossy: bool) {
        let open: Vec<(usize, Arc<Vec<u32>>, bool)> = {
            let t = self.lock();
            t.iter()
                .enumerate()
                .rev()
                .take(CHECK_DEPTH)
                .filter(|(_, t)| t.exact.is_none())
                .map(|(i, t)| (i, Arc::clone(&t.pixels), t.lossy_ok && t.close.is_none()))
                .collect()
        };
        if lossy {
            // Newest first; one frame at most is close.
            for (i, want, _) in open.iter().filter(|o| o.2) {
                if psnr(fb, want) >= CLOSE_PSNR_DB {
                    if let Some(target) = self.lock().get_mut(*i) {
                        target.close.get_or_insert(now.max(target.shown));
                    }
                    self.changed.notify_all();
                    break;
                }
            }
        }
        if let Some((_, want, _)) = open.first() {
            let mut d = self.last_diff.lock().unwrap_or_else(|e| e.into_inner());
            if d.as_ref()
                .is_none_or(|(at, _)| now.duration_since(*at) > Duration::from_millis(200))
            {
                *d = Some((now, describe_diff(fb, want)));
            }
        }
        for (i, want, _) in open {
            if equal(fb, &want) {
                let mut t = self.lock();
                if let Some(target) = t.get_mut(i) {
                    let at = now.max(target.shown);
                    target.exact.get_or_insert(at);
                }
                drop(t);
                self.changed.notify_all();
                return;
            }
        }
    }

    /// Waits until target `i` is exact, at most `timeout`.
    fn wait_exact(&self, i: usize, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut t = self.lock();
        loop {
            if let Some(at) = t.get(i).and_then(|t| t.exact) {
                return Some(at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || crate::interrupted() {
                return None;
            }
            t = self
                .changed
                .wait_timeout(t, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// How the viewer last differed from the newest open target.
    fn last_diff(&self) -> String {
        self.last_diff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or("the viewer applied no update".into(), |(_, d)| d.clone())
    }

    fn times(&self, i: usize) -> Option<(Instant, Option<Instant>)> {
        self.lock().get(i).map(|t| (t.shown, t.exact))
    }

    /// Shown, exact, close.
    fn frame_times(&self, i: usize) -> Option<(Instant, Option<Instant>, Option<Instant>)> {
        self.lock().get(i).map(|t| (t.shown, t.exact, t.close))
    }
}

/// How many pixels differ, and the first (for error messages).
fn describe_diff(fb: &[u32], want: &[u32]) -> String {
    if fb.len() != want.len() {
        return format!("{} pixels against {}", fb.len(), want.len());
    }
    let w = usize::from(WIDTH);
    let mut n = 0;
    let mut first = None;
    for (i, (&a, &b)) in fb.iter().zip(want).enumerate() {
        if (a ^ b) & 0x00ff_ffff != 0 {
            n += 1;
            first.get_or_insert((i % w, i / w, a, b));
        }
    }
    match first {
        Some((x, y, a, b)) => format!(
            "{n} pixels differ, the first at ({x}, {y}): viewer {a:#08x}, X server {b:#08x}"
        ),
        None => "equal".into(),
    }
}

/// PSNR over R, G, B of two `0x00RRGGBB` screens (the display crate's).
fn psnr(fb: &[u32], want: &[u32]) -> f64 {
    mobidesk_display::codec::yuv::psnr(fb, want)
}

use mobidesk_display::codec::yuv::CLOSE_PSNR_DB;

/// Whether two `0x00RRGGBB` screens are equal (the top byte ignored):
/// sampled pixels first, then all.
fn equal(fb: &[u32], want: &[u32]) -> bool {
    if fb.len() != want.len() {
        return false;
    }
    let step = (fb.len() / SAMPLES).max(1);
    let same = |a: u32, b: u32| (a ^ b) & 0x00ff_ffff == 0;
    if !(0..fb.len()).step_by(step).all(|i| same(fb[i], want[i])) {
        return false;
    }
    fb.iter().zip(want).all(|(&a, &b)| same(a, b))
}

// ---------------------------------------------------------------------------
// Viewers.

/// A viewer running on its own thread until stopped.
struct ViewerThread {
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    socket: TcpStream,
    thread: Option<JoinHandle<Result<String>>>,
}

impl ViewerThread {
    fn start(
        system: System,
        ns: &Netns,
        addr: SocketAddr,
        watch: Arc<Watch>,
        video: (bool, bool),
    ) -> Result<Self> {
        let socket = ns
            .run(|| connect(addr))?
            .with_context(|| format!("connecting the viewer to {addr}"))?;
        socket.set_nodelay(true)?;
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s, sock) = (Arc::clone(&bytes), Arc::clone(&stop), socket.try_clone()?);
        let thread = std::thread::Builder::new()
            .name(format!("viewer-{system}"))
            .spawn(move || {
                let r = match system {
                    System::Mobidesk => mobidesk_viewer(sock, &b, &watch, &s, video),
                    System::Tigervnc | System::X11vnc => vnc_viewer(sock, &b, &watch, &s),
                };
                // After a stop, the socket was shut down under the viewer:
                // its error is the stop.
                if s.load(Ordering::SeqCst) {
                    Ok(r.unwrap_or_else(|_| String::new()))
                } else {
                    r
                }
            })?;
        Ok(ViewerThread {
            bytes,
            stop,
            socket,
            thread: Some(thread),
        })
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Fails if the viewer's thread ended (a protocol error, the server
    /// closed).
    fn check_running(&mut self) -> Result<()> {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return match self.thread.take().map(|t| t.join()) {
                Some(Ok(Err(e))) => Err(e.context("the viewer stopped")),
                _ => bail!("the viewer stopped"),
            };
        }
        Ok(())
    }

    /// Stops the viewer; returns its summary (what it decoded).
    fn stop(mut self) -> Result<String> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the viewer's thread panicked"),
            None => Ok(String::new()),
        }
    }
}

impl Drop for ViewerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often an idle viewer looks at new targets.
const IDLE_CHECK: Duration = Duration::from_millis(10);
/// Longest a message may take to arrive once it started.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // A server that listens but whose route settles: retry shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The MobiDesk viewer: the headless viewer's sans-I/O `Viewer` on a plain
/// TCP socket, framebuffer checked after every read that applied commands.
fn mobidesk_viewer(
    mut socket: TcpStream,
    bytes: &AtomicU64,
    watch: &Watch,
    stop: &AtomicBool,
    (video, h264): (bool, bool),
) -> Result<String> {
    use mobidesk_client::{Event, Viewer, ViewerConfig};
    use mobidesk_display::protocol::{Capabilities, MessageType};
    // What a real viewer offers: it draws the cursor, takes VIDEO and the
    // zstd stream (`--display-server-arg=--no-zstd` turns that off).
    let config = ViewerConfig {
        capabilities: if video {
            Capabilities::CURSOR | Capabilities::ZSTD | Capabilities::VIDEO
        } else {
            Capabilities::CURSOR | Capabilities::ZSTD
        },
        codecs: if h264 {
            ViewerConfig::default().codecs
        } else {
            Vec::new()
        },
        ..ViewerConfig::default()
    };
    let mut viewer = Viewer::new(&config);
    // Whether the framebuffer holds lossy VIDEO pixels somewhere.
    let mut lossy = false;
    socket.write_all(&viewer.take_transmit())?;
    let mut buf = vec![0u8; 256 * 1024];
    socket.set_read_timeout(Some(IDLE_CHECK))?;
    let mut seen = 0;
    let mut applied = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => {
                if let Some(fb) = viewer.framebuffer() {
                    watch.check_new(fb.pixels(), applied, &mut seen, lossy);
                }
                continue;
            }
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) => return Err(e.into()),
        };
        if n == 0 && stop.load(Ordering::SeqCst) {
            break;
        }
        if n == 0 {
            bail!("the display server closed the connection");
        }
        let now = Instant::now();
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        let events = viewer
            .handle_bytes_at(&buf[..n], now)
            .context("mobidesk viewer")?;
        tracing::trace!(n, events = events.len(), "mobidesk viewer read");
        let out = viewer.take_transmit();
        if !out.is_empty() {
            socket.write_all(&out)?;
        }
        let video = events
            .iter()
            .any(|e| matches!(e, Event::Update(MessageType::Video)));
        lossy |= video;
        if events.iter().any(|e| matches!(e, Event::Update(_))) {
            if let Some(fb) = viewer.framebuffer() {
                applied = now;
                seen = watch.added.load(Ordering::SeqCst);
                // PSNR only after VIDEO (exact compares are cheap, PSNR is
                // not); lossy pixels stay until repainted, but then the
                // screen is exact again.
                watch.check(fb.pixels(), now, video);
            }
        }
    }
    let s = viewer.stats();
    Ok(s.by_type
        .iter()
        .map(|(k, v)| format!("{k} {}", v.messages))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The VNC viewer: framebuffer checked after every FramebufferUpdate.
fn vnc_viewer(
    socket: TcpStream,
    bytes: &Arc<AtomicU64>,
    watch: &Watch,
    stop: &AtomicBool,
) -> Result<String> {
    let out = std::io::BufWriter::new(socket.try_clone()?);
    let control = socket.try_clone()?;
    let mut rfb = rfb::Rfb::connect(socket, out, Arc::clone(bytes))?;
    ensure!(
        (rfb.width, rfb.height) == (usize::from(WIDTH), usize::from(HEIGHT)),
        "VNC framebuffer {}x{}",
        rfb.width,
        rfb.height
    );
    let mut seen = 0;
    let mut applied = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // Between messages, wake up now and then to check new targets.
        control.set_read_timeout(Some(IDLE_CHECK))?;
        let waiting = match rfb.message_waiting() {
            Err(_) if stop.load(Ordering::SeqCst) => break,
            r => r?,
        };
        if !waiting {
            watch.check_new(&rfb.pixels, applied, &mut seen, false);
            continue;
        }
        control.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
        let updated = match rfb.next_message() {
            Err(_) if stop.load(Ordering::SeqCst) => break,
            r => r?,
        };
        if !updated {
            continue;
        }
        applied = Instant::now();
        seen = watch.added.load(Ordering::SeqCst);
        watch.check(&rfb.pixels, applied, false);
    }
    Ok(format!(
        "rectangles Raw {}, CopyRect {}, ZRLE {}; continuous updates {}, {} fences answered",
        rfb.rects[0],
        rfb.rects[1],
        rfb.rects[2],
        if rfb.continuous { "on" } else { "off" },
        rfb.fences
    ))
}

// ---------------------------------------------------------------------------
// Servers.

/// An X server, stopped and reaped on drop: SIGTERM first, so that it
/// removes its lock file and socket, SIGKILL after 2 s; then whatever of
/// those two files it left (only when the lock names it).
struct Proc(Child, String, u32);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            // No event for a child's exit without a signal handler; bounded.
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let lock = format!("/tmp/.X{}-lock", self.2);
        let ours = std::fs::read_to_string(&lock)
            .is_ok_and(|l| l.trim().parse::<u32>().ok() == Some(self.0.id()));
        if ours {
            let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{}", self.2));
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// One system up in the session namespace: its X server, its display/VNC
/// server, the scratch directory.
struct Running {
    display: String,
    _server: Option<Daemon>,
    _x: Option<Proc>,
    fbdir: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The server first (it is an X client), then the X server.
        let server = self._server.take().map(|s| s.pid());
        self._x = None;
        // What the server shared with the X server and, killed, could not
        // remove (x11vnc's MIT-SHM segments).
        if let Some(pid) = server.and_then(|p| i32::try_from(p).ok()) {
            let removed = crate::shm::remove_created_by(pid);
            if removed > 0 {
                tracing::debug!(pid, removed, "shared memory segments removed");
            }
        }
        if let Some(d) = &self.fbdir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A display number with neither socket nor lock file.
fn free_display() -> Result<u32> {
    let base = 300 + (std::process::id() % 200) * 3;
    for n in base..base + 600 {
        if !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
            && !std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
        {
            return Ok(n);
        }
    }
    bail!("no free X display number")
}

/// Starts an X server command in `ns` and waits for its socket.
fn start_x(ns: &Netns, cmd: &mut Command, n: u32, what: &str) -> Result<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = ns
        .spawn(cmd)
        .with_context(|| format!("starting {what} (is it installed? scripts/setup installs it)"))?;
    let mut p = Proc(child, what.into(), n);
    let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    let deadline = Instant::now() + START_TIMEOUT;
    while !socket.exists() {
        if let Some(status) = p.0.try_wait()? {
            bail!("{} exited ({status}) before its socket appeared", p.1);
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not start within {START_TIMEOUT:?}"
        );
        // No event for "a socket file appeared"; bounded by the deadline.
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

fn start(system: System, ns: &Netns, addr: Ipv4Addr, o: &DisplayOptions) -> Result<Running> {
    let n = free_display()?;
    let display = format!(":{n}");
    let geometry = format!("{WIDTH}x{HEIGHT}");
    let port = system.port();
    Ok(match system {
        System::Mobidesk => {
            let fbdir =
                std::env::temp_dir().join(format!("mobidesk-bench-fb-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&fbdir)?;
            let mut x = Command::new("Xvfb");
            x.arg(&display)
                .args(["-screen", "0", &format!("{geometry}x24")])
                .args(["-nolisten", "tcp", "-noreset", "-fbdir"])
                .arg(&fbdir);
            let x = start_x(ns, &mut x, n, "Xvfb")?;
            let mut cmd = Command::new(&o.display_server);
            cmd.args(["--display", &display, "--listen", &format!("{addr}:{port}")])
                .arg("--insecure-plaintext")
                .arg("--fbdir")
                .arg(&fbdir)
                .args(&o.display_server_args)
                .env("RUST_LOG", "warn");
            let server = Daemon::start_listening(ns, &mut cmd, port, "mobidesk-display")
                .with_context(|| {
                    format!(
                        "{} (build it: cargo build --release -p mobidesk-display --features server)",
                        o.display_server.display()
                    )
                })?;
            Running {
                display,
                _server: Some(server),
                _x: Some(x),
                fbdir: Some(fbdir),
            }
        }
        System::Tigervnc => {
            let mut x = Command::new("Xvnc");
            x.arg(&display)
                .args(["-geometry", &geometry, "-depth", "24"])
                .args(["-rfbport", &port.to_string()])
                .args(["-SecurityTypes", "None", "-AlwaysShared"])
                .args(["-nolisten", "tcp", "-noreset"]);
            let x = start_x(ns, &mut x, n, "Xvnc (tigervnc-standalone-server)")?;
            // Xvnc listens itself: wait for its port like for a daemon.
            wait_port(ns, addr, port)?;
            Running {
                display,
                _server: None,
                _x: Some(x),
                fbdir: None,
            }
        }
        System::X11vnc => {
            let mut x = Command::new("Xvfb");
            x.arg(&display)
                .args(["-screen", "0", &format!("{geometry}x24")])
                .args(["-nolisten", "tcp", "-noreset"]);
            let x = start_x(ns, &mut x, n, "Xvfb")?;
            let mut cmd = Command::new("x11vnc");
            cmd.args(["-display", &display, "-rfbport", &port.to_string()])
                .args(["-forever", "-shared", "-nopw", "-noipv6", "-quiet"]);
            let server = Daemon::start_listening(ns, &mut cmd, port, "x11vnc")?;
            Running {
                display,
                _server: Some(server),
                _x: Some(x),
                fbdir: None,
            }
        }
    })
}

/// Waits until something accepts TCP connections on `addr:port` in `ns`.
fn wait_port(ns: &Netns, addr: Ipv4Addr, port: u16) -> Result<()> {
    let to = SocketAddr::from((addr, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if ns
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok())
            .unwrap_or(false)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nothing listens on {to} after {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Running the workloads.

/// What one workload measured on one system and link.
#[derive(Debug, Clone, Default)]
struct Figures {
    bytes: u64,
    /// Mean time from a change (the last of a sequence) to pixel-exact, ms.
    exact_ms: f64,
    /// Targets that never became exact within the timeout.
    missed: usize,
    targets: usize,
    /// Video: share of frames exact before the next was due, and ever.
    on_time: Option<f64>,
    delivered: Option<f64>,
    /// Video: the paper's video quality (§6.3, slow-motion benchmarking),
    /// see [`video_quality`].
    quality: Option<f64>,
    /// Video frames delivered only close (PSNR ≥ 30 dB), never exact.
    close_only: u32,
    seconds: f64,
}

/// Shows a target and returns its index.
fn show(watch: &Watch, drawer: &Drawer, pixels: Option<Arc<Vec<u32>>>) -> Result<usize> {
    let shown = Instant::now();
    let pixels = match pixels {
        Some(p) => p,
        None => Arc::new(drawer.screen()?),
    };
    Ok(watch.add(pixels, shown, false))
}

fn run_workload(
    w: Workload,
    sizes: &Sizes,
    drawer: &Drawer,
    viewer: &mut ViewerThread,
    watch: &Watch,
    assets: &Assets,
) -> Result<Figures> {
    // Start from the same screen everywhere: a white window, exact.
    drawer.text_page(&[])?;
    let start = show(watch, drawer, None)?;
    if watch.wait_exact(start, EXACT_TIMEOUT).is_none() {
        viewer.check_running()?;
        bail!(
            "the viewer did not reach the blank screen within {EXACT_TIMEOUT:?}: {}",
            watch.last_diff()
        );
    }
    std::thread::sleep(sizes.settle);
    let bytes0 = viewer.bytes();
    let began = Instant::now();
    let mut waits: Vec<Option<Duration>> = Vec::new();
    let mut rng = Rng::new(0x5eed_0000 + w as u64);
    let (rows, cols) = drawer.text_size();
    let mut f = Figures::default();
    // Time from the target's showing to exact, or None.
    let waited = |i: usize| -> Option<Duration> {
        let exact = watch.wait_exact(i, EXACT_TIMEOUT)?;
        let (shown, _) = watch.times(i)?;
        Some(exact.saturating_duration_since(shown))
    };
    match w {
        Workload::TextPages => {
            for _ in 0..sizes.text_pages {
                let lines: Vec<String> = (0..rows)
                    .map(|_| workload::text_line(&mut rng, cols))
                    .collect();
                drawer.text_page(&lines)?;
                let i = show(watch, drawer, None)?;
                waits.push(waited(i));
                std::thread::sleep(sizes.settle);
            }
        }
        Workload::GraphicsPages => {
            for img in assets.images.iter().take(sizes.graphics_pages) {
                drawer.image(img)?;
                let i = show(watch, drawer, Some(Arc::clone(img)))?;
                waits.push(waited(i));
                std::thread::sleep(sizes.settle);
            }
        }
        Workload::Scrolling => {
            let lines: Vec<String> = (0..rows)
                .map(|_| workload::text_line(&mut rng, cols))
                .collect();
            drawer.text_page(&lines)?;
            let i = show(watch, drawer, None)?;
            waits.push(waited(i));
            let mut next = Instant::now();
            for _ in 0..sizes.scroll_lines {
                next += sizes.scroll_interval;
                drawer.scroll_line(&workload::text_line(&mut rng, cols))?;
                sleep_until(next);
            }
            let i = show(watch, drawer, None)?;
            waits.push(waited(i));
        }
        Workload::Video => {
            let interval = Duration::from_secs_f64(1.0 / FPS);
            let mut frames = Vec::new();
            let t0 = Instant::now();
            for k in 0..sizes.video_frames {
                sleep_until(t0 + interval * k as u32);
                let frame = Arc::new(assets.video_frame(k));
                drawer.image(&frame)?;
                frames.push(watch.add(frame, Instant::now(), true));
            }
            let last = *frames.last().context("no video frames")?;
            waits.push(waited(last));
            let mut on_time = 0u32;
            let mut delivered = 0u32;
            let mut close_only = 0u32;
            let mut arrivals = Vec::new();
            for (k, &i) in frames.iter().enumerate() {
                let Some((shown, exact, close)) = watch.frame_times(i) else {
                    continue;
                };
                let exact = match (exact, close) {
                    (Some(e), Some(c)) => Some(e.min(c)),
                    (e, c) => e.or(c),
                };
                if exact.is_some() && watch.frame_times(i).is_some_and(|t| t.1.is_none()) {
                    close_only += 1;
                }
                let due = match frames.get(k + 1).and_then(|&j| watch.times(j)) {
                    Some((next_shown, _)) => next_shown,
                    None => shown + interval,
                };
                if let Some(e) = exact {
                    delivered += 1;
                    if e <= due {
                        on_time += 1;
                    }
                }
                if exact.is_none() {
                    tracing::debug!(frame = k, "video frame never shown");
                }
                arrivals.push((shown, exact));
            }
            let n = frames.len() as f64;
            f.on_time = Some(100.0 * f64::from(on_time) / n);
            f.delivered = Some(100.0 * f64::from(delivered) / n);
            f.quality = Some(video_quality(&arrivals));
            f.close_only = close_only;
        }
    }
    viewer.check_running()?;
    f.seconds = began.elapsed().as_secs_f64();
    f.bytes = viewer.bytes() - bytes0;
    f.targets = waits.len();
    f.missed = waits.iter().filter(|w| w.is_none()).count();
    let total: Duration = waits.iter().map(|w| w.unwrap_or(EXACT_TIMEOUT)).sum();
    f.exact_ms = total.as_secs_f64() * 1000.0 / waits.len().max(1) as f64;
    Ok(f)
}

/// The paper's video quality (§6.3, after slow-motion benchmarking): 100 %
/// when every frame was displayed at real-time speed. `frames`: per frame,
/// when it was drawn and when the viewer first showed it (exact, or close
/// as VIDEO), if ever. The share of frames shown, times how close to real
/// time they were played: the span between the first and last shown
/// frame's drawing over the span between their showing (at most 1). A
/// constant delay (the link's latency) costs nothing; drops and a
/// stretched playback do: half the frames, or all of them in twice the
/// time, is 50 %.
fn video_quality(frames: &[(Instant, Option<Instant>)]) -> f64 {
    let shown: Vec<(Instant, Instant)> = frames
        .iter()
        .filter_map(|&(drawn, seen)| Some((drawn, seen?)))
        .collect();
    if frames.is_empty() {
        return 0.0;
    }
    let share = shown.len() as f64 / frames.len() as f64;
    let speed = match (shown.first(), shown.last()) {
        (Some(first), Some(last)) if shown.len() > 1 => {
            let ideal = last.0.saturating_duration_since(first.0).as_secs_f64();
            let actual = last.1.saturating_duration_since(first.1).as_secs_f64();
            if actual > ideal && actual > 0.0 {
                ideal / actual
            } else {
                1.0
            }
        }
        _ => 1.0,
    };
    100.0 * share * speed
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The pictures, made once per run.
struct Assets {
    images: Vec<Arc<Vec<u32>>>,
    /// The video's source: frames are windows of it, panned diagonally,
    /// with the colour shifting a little each frame (every pixel changes).
    texture: Vec<u32>,
    texture_w: usize,
}

const PAN: (usize, usize) = (5, 3);

impl Assets {
    fn new(sizes: &Sizes) -> Assets {
        let (w, h) = (usize::from(WIDTH), usize::from(HEIGHT));
        let images = (0..sizes.graphics_pages)
            .map(|i| Arc::new(workload::photo(w, h, 1000 + i as u64)))
            .collect();
        let texture_w = w + PAN.0 * sizes.video_frames;
        let texture_h = h + PAN.1 * sizes.video_frames;
        Assets {
            images,
            texture: workload::photo(texture_w, texture_h, 7),
            texture_w,
        }
    }

    fn video_frame(&self, k: usize) -> Vec<u32> {
        let (w, h) = (usize::from(WIDTH), usize::from(HEIGHT));
        let (ox, oy) = (PAN.0 * k, PAN.1 * k);
        let shift = (k % 8) as u32;
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            let row = (oy + y) * self.texture_w + ox;
            out.extend(self.texture[row..row + w].iter().map(|&p| {
                // Brightness drifts by up to 7 levels (no channel overflows:
                // photo() keeps channels within 128 ± 124).
                p + shift * 0x010101
            }));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The report.

/// One figure of one system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayRow {
    /// `link.workload.metric`, e.g. `wan.text_pages.bytes`.
    pub name: String,
    pub link: String,
    pub workload: String,
    pub system: System,
    pub value: f64,
    pub unit: String,
    pub higher_is_better: bool,
    pub description: String,
    pub detail: String,
    /// mobidesk rows: this value divided by tigervnc's / x11vnc's.
    pub ratio_vs_tigervnc: Option<f64>,
    pub ratio_vs_x11vnc: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisplayReport {
    pub date: String,
    pub smoke: bool,
    pub machine: Machine,
    pub systems: Vec<System>,
    pub links: Vec<String>,
    /// The lab it ran on (removed again by the end of the run).
    pub lab: String,
    /// Extra arguments mobidesk-display ran with (none: as it ships).
    pub display_server_args: Vec<String>,
    /// Whether the MobiDesk viewer offered VIDEO.
    pub video: bool,
    /// Whether it offered H.264 for VIDEO (reports from before H.264 have
    /// none: false).
    #[serde(default)]
    pub h264: bool,
    pub results: Vec<DisplayRow>,
    pub notes: Vec<String>,
}

impl DisplayReport {
    pub fn get(&self, name: &str, system: System) -> Option<&DisplayRow> {
        self.results
            .iter()
            .find(|r| r.name == name && r.system == system)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn add(&mut self, link: Link, w: Workload, system: System, f: &Figures, summary: &str) {
        let mut push =
            |metric: &str, value: f64, unit: &str, hib: bool, desc: &str, detail: String| {
                self.results.push(DisplayRow {
                    name: format!("{}.{}.{metric}", link.name(), w.name()),
                    link: link.name().into(),
                    workload: w.name().into(),
                    system,
                    value,
                    unit: unit.into(),
                    higher_is_better: hib,
                    description: desc.into(),
                    detail,
                    ratio_vs_tigervnc: None,
                    ratio_vs_x11vnc: None,
                });
            };
        let missed = if f.missed > 0 {
            format!(
                "; {} of {} targets NEVER pixel-exact (counted as {:?})",
                f.missed, f.targets, EXACT_TIMEOUT
            )
        } else {
            String::new()
        };
        push(
            "bytes",
            f.bytes as f64 / 1e6,
            "MB",
            false,
            "bytes server -> viewer during the workload (TCP payload)",
            format!("{} bytes in {:.1} s; {summary}", f.bytes, f.seconds),
        );
        push(
            "to_exact",
            f.exact_ms,
            "ms",
            false,
            match w {
                Workload::TextPages | Workload::GraphicsPages => {
                    "mean over pages: page drawn -> viewer pixel-exact"
                }
                Workload::Scrolling => {
                    "mean of: first page drawn, last line scrolled -> viewer pixel-exact"
                }
                Workload::Video => "last frame drawn -> viewer pixel-exact",
            },
            format!("{} targets{missed}", f.targets),
        );
        if let Some(quality) = f.quality {
            push(
                "quality",
                quality,
                "%",
                true,
                "the paper's video quality: share of frames shown (exact, or close as VIDEO) times real-time speed (drawing span / showing span of the first and last shown frame, at most 1); a constant delay costs nothing",
                match f.delivered {
                    Some(d) if d > 0.0 => format!(
                        "{d:.1}% of frames shown, at {:.2}x real-time speed",
                        quality / d
                    ),
                    _ => "no frame shown".into(),
                },
            );
        }
        if let (Some(on_time), Some(delivered)) = (f.on_time, f.delivered) {
            push(
                "on_time",
                on_time,
                "% frames",
                true,
                "frames pixel-exact (or, as VIDEO, PSNR >= 30 dB) at the viewer before the next frame was drawn",
                format!(
                    "{delivered:.1}% of frames delivered at some time, {} of them only close (VIDEO)",
                    f.close_only
                ),
            );
        }
    }

    fn compute_ratios(&mut self) {
        let find = |rows: &[DisplayRow], name: &str, s: System| {
            rows.iter()
                .find(|r| r.name == name && r.system == s)
                .map(|r| r.value)
        };
        let rows = self.results.clone();
        for r in self
            .results
            .iter_mut()
            .filter(|r| r.system == System::Mobidesk)
        {
            let ratio = |b: Option<f64>| b.filter(|b| *b > 0.0).map(|b| r.value / b);
            r.ratio_vs_tigervnc = ratio(find(&rows, &r.name, System::Tigervnc));
            r.ratio_vs_x11vnc = ratio(find(&rows, &r.name, System::X11vnc));
        }
    }

    fn goal_notes(&mut self) {
        let mut met = Vec::new();
        let mut missed = Vec::new();
        for r in self.results.iter().filter(|r| r.system == System::Mobidesk) {
            for (b, ratio) in [
                ("tigervnc", r.ratio_vs_tigervnc),
                ("x11vnc", r.ratio_vs_x11vnc),
            ] {
                let Some(ratio) = ratio else { continue };
                let better = if r.higher_is_better {
                    ratio >= 1.0
                } else {
                    ratio < 1.0
                };
                let line = format!("{} vs {b} {ratio:.2}x", r.name);
                if better {
                    met.push(line);
                } else {
                    missed.push(line);
                }
            }
        }
        self.notes.push(format!(
            "goal (fewer bytes, less time, more frames on time than both): met on {} of {}",
            met.len(),
            met.len() + missed.len()
        ));
        if !missed.is_empty() {
            self.notes.push(format!("  not met: {}", missed.join("; ")));
        }
        if self.smoke {
            self.notes
                .push("(smoke run: the figures only show that the benchmark works)".into());
        }
    }

    /// Rows = link.workload.metric, columns = systems, then the ratios.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "MobiDesk display benchmark, {} ({}); kernel {}, {} CPUs ({}), {:.0}% busy before the run",
            self.date,
            if self.smoke {
                "SMOKE run: checks the benchmark works, too short to quote"
            } else {
                "full run"
            },
            self.machine.kernel,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.busy_before_run * 100.0
        );
        let _ = writeln!(out, "  {}", System::pinning(&Settings::new(self.smoke)));
        let _ = writeln!(
            out,
            "  links: lan = the lab path (kernel forwarding); wan = + {} ms RTT, {} Mbit/s (user-space link emulator)",
            WAN_RTT.as_millis(),
            WAN_RATE_BPS / 1_000_000
        );
        for s in &self.systems {
            let _ = writeln!(out, "  {:<9} {:<9} {}", s.role(), s, s.describe());
        }
        if !self.video {
            let _ = writeln!(out, "  DIAGNOSTIC: the mobidesk viewer did not offer VIDEO");
        } else if !self.h264 {
            let _ = writeln!(
                out,
                "  DIAGNOSTIC: the mobidesk viewer did not offer H.264 (VIDEO as I420)"
            );
        }
        if !self.display_server_args.is_empty() {
            let _ = writeln!(
                out,
                "  DIAGNOSTIC: mobidesk-display ran with {}",
                self.display_server_args.join(" ")
            );
        }
        out.push('\n');
        let mut rows = vec![{
            let mut h = vec!["metric".to_string(), "unit".to_string()];
            h.extend(self.systems.iter().map(|s| s.to_string()));
            h.push("mobidesk/tigervnc".into());
            h.push("mobidesk/x11vnc".into());
            h
        }];
        for name in names_in_order(self.results.iter().map(|r| r.name.as_str())) {
            let Some(first) = self.results.iter().find(|r| r.name == name) else {
                continue;
            };
            let mut row = vec![
                name.to_string(),
                unit_column(&first.unit, first.higher_is_better),
            ];
            for s in &self.systems {
                row.push(
                    self.get(name, *s)
                        .map_or("-".into(), |r| format_value(r.value)),
                );
            }
            let m = self.get(name, System::Mobidesk);
            for ratio in [
                m.and_then(|r| r.ratio_vs_tigervnc),
                m.and_then(|r| r.ratio_vs_x11vnc),
            ] {
                row.push(ratio.map_or("-".into(), |r| format!("{r:.2}x")));
            }
            rows.push(row);
        }
        write_table(&mut out, &rows);
        out.push('\n');
        for r in &self.results {
            let _ = writeln!(
                out,
                "  {} [{}]: {}; {}",
                r.name, r.system, r.description, r.detail
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs every workload on every system and link; the lab goes down at the
/// end, also on error.
pub fn run(o: &DisplayOptions) -> Result<DisplayReport> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: the benchmark builds a lab of network namespaces"
    );
    if o.systems.contains(&System::Mobidesk) {
        ensure!(
            o.display_server.is_file(),
            "{} not found (build it: cargo build --release -p mobidesk-display --features server, or give --display-server / $MOBIDESK_DISPLAY)",
            o.display_server.display()
        );
    }
    let base: Report<System> = Report::of(o.settings);
    let mut report = DisplayReport {
        date: base.date,
        smoke: o.settings.smoke,
        machine: base.machine,
        systems: o.systems.clone(),
        links: Vec::new(),
        lab: String::new(),
        display_server_args: o.display_server_args.clone(),
        video: o.video,
        h264: o.h264,
        results: Vec::new(),
        notes: Vec::new(),
    };
    let sizes = Sizes::new(o.settings.smoke);
    let assets = Assets::new(&sizes);
    let testbed = match Path::KernelForwarding.setup()? {
        PathSetup::Ready(t) => t,
        PathSetup::NotImplemented { reason } => bail!("the lab: {reason}"),
    };
    report.lab = testbed.lab_name().to_string();
    tracing::info!(lab = %report.lab, "lab up");
    let links: Vec<Link> = {
        let mut l: Vec<Link> = o.links.iter().flat_map(|l| l.expand()).collect();
        l.sort();
        l.dedup();
        l
    };
    for &link in &links {
        report.links.push(link.name().into());
        let _emulator = match link {
            Link::Wan => Some(
                testbed
                    .lab()
                    .slow_link(VIEWER_HOST, LinkConfig::wan(WAN_RTT, Some(WAN_RATE_BPS)))
                    .context("the WAN link emulator")?,
            ),
            _ => None,
        };
        for &system in &o.systems {
            if crate::interrupted() {
                bail!("interrupted");
            }
            tracing::info!(%system, link = link.name(), "starting");
            let measured = run_system(system, &testbed, o, &sizes, &assets)
                .with_context(|| format!("{system} on the {} link", link.name()))?;
            for (w, f, summary) in measured {
                report.add(link, w, system, &f, &summary);
            }
        }
    }
    drop(testbed);
    report.compute_ratios();
    report.goal_notes();
    Ok(report)
}

fn run_system(
    system: System,
    testbed: &Testbed,
    o: &DisplayOptions,
    sizes: &Sizes,
    assets: &Assets,
) -> Result<Vec<(Workload, Figures, String)>> {
    let server_ns = testbed.client.clone();
    let addr = testbed.session.virtual_addr;
    let viewer_ns = testbed.lab().host(VIEWER_HOST)?;
    let running = start(system, &server_ns, addr, o)?;
    let display = running.display.clone();
    let drawer = server_ns
        .run(|| Drawer::open(&display))?
        .context("the workload's X connection")?;
    ensure!(
        (drawer.width, drawer.height) == (WIDTH, HEIGHT),
        "{system}: screen {}x{}",
        drawer.width,
        drawer.height
    );
    let watch = Arc::new(Watch::default());
    let mut viewer = ViewerThread::start(
        system,
        &viewer_ns,
        SocketAddr::from((addr, system.port())),
        Arc::clone(&watch),
        (o.video, o.h264),
    )?;
    let mut out = Vec::new();
    for &w in &o.workloads {
        let started = Instant::now();
        let f = run_workload(w, sizes, &drawer, &mut viewer, &watch, assets)
            .with_context(|| format!("workload {}", w.name()))?;
        tracing::info!(%system, workload = w.name(), bytes = f.bytes, exact_ms = f.exact_ms,
            seconds = started.elapsed().as_secs_f64(), "done");
        out.push((w, f, String::new()));
    }
    let summary = viewer.stop()?;
    // The decoder's totals over the whole connection, on every row.
    for (_, _, s) in &mut out {
        s.clone_from(&summary);
    }
    drop(drawer);
    drop(running);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn video_quality_counts_drops_and_slow_playback_but_not_delay() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        // 4 frames 40 ms apart, each shown 100 ms after (a WAN delay): 100 %.
        let delayed: Vec<_> = (0..4)
            .map(|k| (ms(40 * k), Some(ms(40 * k + 100))))
            .collect();
        assert_eq!(video_quality(&delayed), 100.0);
        // Half of them never shown: 50 %.
        let dropped: Vec<_> = (0..4)
            .map(|k| (ms(40 * k), (k % 2 == 0).then(|| ms(40 * k + 5))))
            .collect();
        assert!((video_quality(&dropped) - 50.0).abs() < 1e-9);
        // All shown, at half speed: 50 %.
        let slow: Vec<_> = (0..4).map(|k| (ms(40 * k), Some(ms(80 * k + 5)))).collect();
        assert!((video_quality(&slow) - 50.0).abs() < 1e-9);
        assert_eq!(video_quality(&[]), 0.0);
        assert_eq!(video_quality(&[(ms(0), None)]), 0.0);
    }

    #[test]
    fn a_target_is_exact_from_the_later_of_its_showing_and_the_update() {
        let w = Watch::default();
        let t0 = Instant::now();
        let page = Arc::new(vec![0x00ff_ffff; 100]);
        // The viewer's pixels carry garbage in the top byte: ignored.
        let fb = vec![0xff00_0000 | 0x00ff_ffff; 100];
        let i = w.add(Arc::clone(&page), t0 + Duration::from_millis(5), false);
        // The viewer already had it (last update before the showing).
        w.check(&fb, t0, false);
        assert_eq!(w.times(i).unwrap().1, Some(t0 + Duration::from_millis(5)));
        // A later target, reached by a later update.
        let j = w.add(Arc::new(vec![1; 100]), t0 + Duration::from_millis(6), false);
        let mut other = vec![1; 100];
        other[99] = 2;
        w.check(&other, t0 + Duration::from_millis(7), false);
        assert_eq!(w.times(j).unwrap().1, None);
        let diff = describe_diff(&other, &[1; 100]);
        assert!(
            diff.starts_with("1 pixels differ, the first at (99, 0)"),
            "{diff}"
        );
        assert!(!w.last_diff().is_empty());
        let mut seen = 0;
        w.check_new(
            &vec![1; 100],
            t0 + Duration::from_millis(8),
            &mut seen,
            false,
        );
        assert_eq!(w.times(j).unwrap().1, Some(t0 + Duration::from_millis(8)));
        assert_eq!(
            w.wait_exact(j, Duration::ZERO),
            Some(t0 + Duration::from_millis(8))
        );
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_video_frame_is_close_by_psnr_only_after_video_updates() {
        let w = Watch::default();
        let t0 = Instant::now();
        let frame: Vec<u32> = (0..1000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) & 0x00ff_ffff)
            .collect();
        let i = w.add(Arc::new(frame.clone()), t0, true);
        // Off by one level everywhere: about 48 dB.
        let near: Vec<u32> = frame.iter().map(|p| p ^ 1).collect();
        w.check(&near, t0, false);
        assert_eq!(w.frame_times(i).unwrap().2, None, "no PSNR without VIDEO");
        w.check(&near, t0 + Duration::from_millis(3), true);
        let (_, exact, close) = w.frame_times(i).unwrap();
        assert_eq!((exact, close), (None, Some(t0 + Duration::from_millis(3))));
        // A different frame is not close.
        let j = w.add(Arc::new(vec![0; 1000]), t0, true);
        w.check(&near, t0, true);
        assert_eq!(w.frame_times(j).unwrap().2, None);
    }

    #[test]
    fn ratios_are_mobidesk_over_each_baseline_and_the_goal_is_judged() {
        let base: Report<System> = Report::of(Settings::new(false));
        let mut r = DisplayReport {
            date: base.date,
            smoke: false,
            machine: base.machine,
            systems: System::ALL.to_vec(),
            links: vec!["lan".into()],
            lab: "x".into(),
            display_server_args: Vec::new(),
            video: true,
            h264: true,
            results: Vec::new(),
            notes: Vec::new(),
        };
        let figures = |bytes: u64, exact_ms: f64, on_time: f64| Figures {
            bytes,
            exact_ms,
            targets: 1,
            on_time: Some(on_time),
            delivered: Some(on_time),
            ..Figures::default()
        };
        r.add(
            Link::Lan,
            Workload::Video,
            System::Mobidesk,
            &figures(2_000_000, 10.0, 90.0),
            "",
        );
        r.add(
            Link::Lan,
            Workload::Video,
            System::Tigervnc,
            &figures(1_000_000, 40.0, 30.0),
            "",
        );
        r.add(
            Link::Lan,
            Workload::Video,
            System::X11vnc,
            &figures(4_000_000, 20.0, 0.0),
            "",
        );
        r.compute_ratios();
        r.goal_notes();
        let m = r.get("lan.video.bytes", System::Mobidesk).unwrap();
        assert_eq!(m.value, 2.0);
        assert_eq!(m.ratio_vs_tigervnc, Some(2.0));
        assert_eq!(m.ratio_vs_x11vnc, Some(0.5));
        let t = r.get("lan.video.to_exact", System::Mobidesk).unwrap();
        assert_eq!(
            (t.ratio_vs_tigervnc, t.ratio_vs_x11vnc),
            (Some(0.25), Some(0.5))
        );
        // A baseline of 0 gives no ratio.
        let o = r.get("lan.video.on_time", System::Mobidesk).unwrap();
        assert_eq!((o.ratio_vs_tigervnc, o.ratio_vs_x11vnc), (Some(3.0), None));
        assert!(r
            .get("lan.video.bytes", System::Tigervnc)
            .unwrap()
            .ratio_vs_tigervnc
            .is_none());
        // Met: bytes vs x11vnc, both times, on time vs tigervnc; not: bytes vs tigervnc.
        assert!(r.notes[0].contains("met on 4 of 5"), "{:?}", r.notes);
        assert!(r.notes[1].contains("lan.video.bytes vs tigervnc 2.00x"));
        let table = r.table();
        assert!(table.contains("mobidesk/x11vnc"), "{table}");
        assert!(table.contains("lan.video.on_time"), "{table}");
    }
}
