//! `mobidesk-dataplane`: the user-space packet path of the proxy box.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mobidesk_dataplane::daemon::{run_proxy, run_server, ConfigFile};

/// The MobiDesk dataplane. `proxy` runs on the proxy box: every TCP
/// connection a session opens is terminated in a VNIC of its own and
/// relayed to its destination. `server` runs on each session server: it
/// exchanges connection labels with the proxy box and, for sessions that
/// migrated across subnets, rewrites virtual <-> physical addresses.
///
/// Needs root (TUN device, policy routing). Logs go to stderr; set
/// RUST_LOG=debug for one line per connection.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the proxy box's dataplane ([proxy] section of the file).
    Proxy {
        /// Configuration file (TOML); see configs/dataplane-proxy.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Only check the configuration, then exit (64 if it is bad).
        #[arg(long)]
        check_config: bool,
    },
    /// Run a session server's dataplane ([server] section of the file).
    Server {
        /// Configuration file (TOML); see configs/dataplane-server.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Only check the configuration, then exit (64 if it is bad).
        #[arg(long)]
        check_config: bool,
    },
}

/// Exit status for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (is_proxy, config, check_config) = match Cli::parse().mode {
        Mode::Proxy {
            config,
            check_config,
        } => (true, config, check_config),
        Mode::Server {
            config,
            check_config,
        } => (false, config, check_config),
    };
    let file = match std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))
        .and_then(|text| {
            ConfigFile::from_toml(&text).with_context(|| format!("in {}", config.display()))
        }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mobidesk-dataplane: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let section = if is_proxy { "[proxy]" } else { "[server]" };
    if (is_proxy && file.proxy.is_none()) || (!is_proxy && file.server.is_none()) {
        eprintln!(
            "mobidesk-dataplane: {} has no {section} section",
            config.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if check_config {
        println!("{}: ok", config.display());
        return ExitCode::SUCCESS;
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = match (file.proxy, file.server) {
        (Some(proxy), _) if is_proxy => run_proxy(proxy, shutdown),
        (_, Some(server)) => run_server(server, shutdown),
        _ => return ExitCode::from(EXIT_CONFIG),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mobidesk-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}
