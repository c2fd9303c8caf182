//! `mobidesk-client`: a MobiDesk viewer. So far only `--headless`.
//!
//! ```text
//! mobidesk-client --headless --connect 127.0.0.1:5905 --ca ca.pem --png out.png --stats stats.json
//! mobidesk-client --headless --connect 127.0.0.1:5905 --ca ca.pem --server-name desk.example \
//!     --viewport 800x600 --type 'ls -l\n' --stats stats.json
//! mobidesk-client --headless --connect 127.0.0.1:5905 --insecure-plaintext --stats stats.json
//! ```
//!
//! TLS 1.3 is the default: `--ca` names the CA certificates (PEM) the
//! server's certificate must chain to, `--server-name` the name it must
//! carry (default: the address of `--connect`).
//!
//! `--stats` is JSON: bytes in all, messages and bytes per message type
//! (every display command: `Raw`, `Copy`, `SFill`, `Bitmap`, `PFill`,
//! `Video`), display commands applied (`updates`), full states, and with
//! `--type` the time from each typed key press to the first display command
//! after it (`input`: samples, min, median, max in ms; unanswered events).

use std::fs::File;
use std::io::BufWriter;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use mobidesk_client::{write_png, Connection, Security, TlsClient, ViewerConfig};
use mobidesk_display::protocol::Capabilities;

/// Connects to a display server and keeps its framebuffer in memory.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Without a window: decode into memory (the only mode so far).
    #[arg(long)]
    headless: bool,
    /// The display server.
    #[arg(long)]
    connect: SocketAddr,
    /// CA certificates (PEM) that the server's certificate must chain to.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure_plaintext")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must carry (a DNS name or an IP
    /// address); default: the address of --connect.
    #[arg(long)]
    server_name: Option<String>,
    /// Plain TCP instead of TLS: benchmarks and tests only.
    #[arg(long)]
    insecure_plaintext: bool,
    /// The viewport, WIDTHxHEIGHT: a larger session is scaled down to fit
    /// by the server (PROTOCOL.md §9).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    viewport: Option<(u16, u16)>,
    /// Offer VIDEO: video-like areas come as YUV frames (PROTOCOL.md §6),
    /// H.264-compressed unless `--no-h264`.
    #[arg(long)]
    video: bool,
    /// With `--video`, do not offer H.264 (VIDEO codec 0x80, PROTOCOL.md
    /// §6.3): frames come as uncompressed I420 planes.
    #[arg(long)]
    no_h264: bool,
    /// Offer CLIPBOARD: the session's clipboard text is received (and kept
    /// in the statistics' message counts).
    #[arg(long)]
    clipboard: bool,
    /// Do not offer ZSTD: every message comes on its own, not in the zstd
    /// stream (PROTOCOL.md §2.1; a diagnostic).
    #[arg(long)]
    no_zstd: bool,
    /// Write the framebuffer here as PNG when done.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Write statistics here as JSON when done.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Run this long; without it, stop once the full state is complete and
    /// the stream has been idle for `--idle-ms`.
    #[arg(long)]
    seconds: Option<f64>,
    /// How long the stream must be quiet to count as idle.
    #[arg(long, default_value_t = 500)]
    idle_ms: u64,
    /// Give up waiting for idle after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// After the full state, type this text through KEY messages (`\n` is
    /// Return), one character at a time on an idle stream, timing each key
    /// press to the first update after it. Needs the owner seat (the first
    /// viewer).
    #[arg(long, value_name = "TEXT")]
    r#type: Option<String>,
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s.split_once('x').ok_or("expected WIDTHxHEIGHT")?;
    let dim = |v: &str| match v.parse::<u16>() {
        Ok(n) if (1..=mobidesk_display::protocol::MAX_DIMENSION).contains(&n) => Ok(n),
        _ => Err(format!("{v:?}: expected 1 ..= 8192")),
    };
    Ok((dim(w)?, dim(h)?))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !args.headless {
        bail!("only --headless exists so far");
    }
    let security = match (&args.ca, args.insecure_plaintext) {
        (Some(ca), false) => {
            let name = args
                .server_name
                .clone()
                .unwrap_or_else(|| args.connect.ip().to_string());
            Security::Tls(TlsClient::from_ca_file(ca, &name).context("--ca")?)
        }
        (None, true) => Security::InsecurePlaintext,
        _ => bail!("give --ca (TLS 1.3), or --insecure-plaintext"),
    };
    let mut config = ViewerConfig::default();
    for (on, capability) in [
        (args.video, Capabilities::VIDEO),
        (args.clipboard, Capabilities::CLIPBOARD),
    ] {
        if on {
            config.capabilities = Capabilities(config.capabilities.0 | capability.0);
        }
    }
    if args.no_h264 {
        config.codecs.clear();
    }
    if args.no_zstd {
        config.capabilities = Capabilities(config.capabilities.0 & !Capabilities::ZSTD.0);
    }
    if let Some((w, h)) = args.viewport {
        config.max_width = w;
        config.max_height = h;
    }
    let mut connection = Connection::connect(args.connect, &config, &security)
        .with_context(|| format!("connecting to {}", args.connect))?;
    let idle = Duration::from_millis(args.idle_ms);
    let timeout = Duration::try_from_secs_f64(args.timeout).context("--timeout")?;
    if let Some(text) = &args.r#type {
        connection
            .run_until_idle(idle, timeout)
            .context("receiving the full state")?;
        if connection
            .viewer()
            .server_hello()
            .is_some_and(|h| h.view_only)
        {
            bail!("--type: this viewer is view-only (another viewer owns the input)");
        }
        let text = text.replace("\\n", "\n");
        connection
            .type_text(&text, Duration::from_millis(100), Duration::from_secs(2))
            .context("typing")?;
    }
    match args.seconds {
        Some(s) => connection
            .run_for(Duration::try_from_secs_f64(s).context("--seconds")?)
            .context("receiving")?,
        None => connection
            .run_until_idle(idle, timeout)
            .context("receiving")?,
    }
    if let Some(path) = &args.png {
        let fb = connection
            .framebuffer()
            .context("no framebuffer received")?;
        let file = File::create(path).with_context(|| format!("{}", path.display()))?;
        write_png(fb, BufWriter::new(file)).with_context(|| format!("{}", path.display()))?;
    }
    let stats = connection.viewer().stats().to_json();
    match &args.stats {
        Some(path) => std::fs::write(path, stats).with_context(|| format!("{}", path.display()))?,
        None => println!("{stats}"),
    }
    Ok(())
}
