//! `mobidesk-display`: the display server of one session (DESIGN.md §3.1).
//!
//! ```text
//! mobidesk-display --display :5 --listen 127.0.0.1:5905 [--fbdir DIR] \
//!     --tls-cert cert.pem --tls-key key.pem
//! mobidesk-display --display :5 --listen 127.0.0.1:5905 --insecure-plaintext
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Parser;
use mobidesk_display::server::{self, Config, Security};

/// Serves a session's X display (Xvfb) to MobiDesk viewers over TLS 1.3.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The X display to serve, e.g. `:5`.
    #[arg(long)]
    display: String,
    /// Where viewers connect (TLS 1.3 unless --insecure-plaintext).
    #[arg(long)]
    listen: SocketAddr,
    /// The server's certificate chain (PEM: its certificate first).
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls_key",
        conflicts_with = "insecure_plaintext"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain TCP instead of TLS: for benchmarks and tests on loopback only.
    #[arg(long, conflicts_with = "tls_key")]
    insecure_plaintext: bool,
    /// Xvfb's `-fbdir` directory: read pixels from its memory-mapped
    /// framebuffer instead of `GetImage`.
    #[arg(long)]
    fbdir: Option<PathBuf>,
    /// Encoded bytes queued per viewer (the SRSF queue's bound).
    #[arg(long, default_value_t = 256 * 1024)]
    queue_bytes: usize,
    /// Bytes each viewer's socket may hold unsent in the kernel
    /// (TCP_NOTSENT_LOWAT; 0: no limit). Bytes in the kernel can no longer be
    /// overtaken by smaller updates; the send buffer itself autotunes.
    #[arg(long, default_value_t = 128 * 1024)]
    send_buffer: u32,
    /// The zstd level of the stream viewers that offer ZSTD get their
    /// messages in (negative: faster, larger).
    #[arg(long, default_value_t = mobidesk_display::protocol::DEFAULT_ZSTD_LEVEL,
          allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-7..=19))]
    zstd_level: i32,
    /// No zstd stream, even for viewers that offer ZSTD (a diagnostic).
    #[arg(long)]
    no_zstd: bool,
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
    let security = match (&args.tls_cert, &args.tls_key, args.insecure_plaintext) {
        (Some(cert), Some(key), false) => {
            Security::Tls(server::tls::config_from_files(cert, key).context("TLS")?)
        }
        (None, None, true) => Security::InsecurePlaintext,
        _ => bail!("give --tls-cert and --tls-key (TLS 1.3), or --insecure-plaintext"),
    };
    let mut config = Config::new(args.display, args.listen, security);
    config.fbdir = args.fbdir;
    config.queue_bytes = args.queue_bytes;
    config.send_buffer = (args.send_buffer > 0).then_some(args.send_buffer);
    config.zstd_level = (!args.no_zstd).then_some(args.zstd_level);
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
