//! `mobidesk-display`: the display server of one session (DESIGN.md §3.1).
//!
//! ```text
//! mobidesk-display --display :5 --listen 127.0.0.1:5905 [--fbdir DIR]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mobidesk_display::server::{self, Config};

/// Serves a session's X display (Xvfb) to MobiDesk viewers over TCP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The X display to serve, e.g. `:5`.
    #[arg(long)]
    display: String,
    /// Where viewers connect (plain TCP for now; TLS comes later).
    #[arg(long)]
    listen: SocketAddr,
    /// Xvfb's `-fbdir` directory: read pixels from its memory-mapped
    /// framebuffer instead of `GetImage`.
    #[arg(long)]
    fbdir: Option<PathBuf>,
    /// Encoded bytes queued per viewer (the SRSF queue's bound).
    #[arg(long, default_value_t = 256 * 1024)]
    queue_bytes: usize,
    /// Kernel send buffer per viewer socket in bytes (0: kernel autotuning).
    /// Bytes in the kernel can no longer be overtaken by smaller updates.
    #[arg(long, default_value_t = 128 * 1024)]
    send_buffer: u32,
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
    let mut config = Config::new(args.display, args.listen);
    config.fbdir = args.fbdir;
    config.queue_bytes = args.queue_bytes;
    config.send_buffer = (args.send_buffer > 0).then_some(args.send_buffer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let server = server::start(config).await.context("starting")?;
        tokio::select! {
            result = server.run() => result.context("display server"),
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for SIGINT")?;
                tracing::info!("interrupted");
                Ok(())
            }
        }
    })
}
