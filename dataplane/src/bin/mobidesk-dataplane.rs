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
    /// Send one control request (a JSON object) to a running dataplane's
    /// control socket and print the answer, e.g.
    /// `mobidesk-dataplane ctl /run/mobidesk/dataplane.sock '{"op":"stats"}'`.
    Ctl {
        /// The control socket (`control` in the dataplane's configuration).
        socket: PathBuf,
        /// The request: {"op":"stats"}, {"op":"session_moved",...}, ...
        request: String,
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

/// Every VNIC reserves its socket buffers up front, but an idle connection
/// touches only a page or two of them. Buffers served by `mmap` cost
/// nothing until touched; glibc's default raises its mmap threshold after
/// the first large free and then serves them from the heap. Pin it.
///
/// The threshold alone is not enough: glibc carves a request of any size
/// from the top of the heap when the top has room for it, and calloc then
/// clears (touches) all of it. With the default top pad (128 KiB added to
/// every heap extension) the top often had room for a 128 KiB buffer: a
/// quarter of them came from the heap, 65 KiB per idle connection instead
/// of 11. No pad: the top stays too small, buffers go to `mmap`.
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes allocator parameters; called first thing
    // in main, before any other thread exists.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, 0) == 1
    };
    if !ok {
        eprintln!(
            "mobidesk-dataplane: could not set the mmap threshold; idle VNICs cost more memory"
        );
    }
}

fn main() -> ExitCode {
    pin_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (is_proxy, config, check_config) = match Cli::parse().mode {
        Mode::Ctl { socket, request } => return ctl(&socket, &request),
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
    raise_fd_limit();
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

/// One descriptor per relayed connection: take the soft limit up to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("mobidesk-dataplane: open files stay limited to {soft}: {e}");
            }
        }
        _ => {}
    }
}

/// One raw request line to a control socket; the answer on stdout. Exit 1
/// if the dataplane refused it, 2 if it could not be asked.
fn ctl(socket: &std::path::Path, request: &str) -> ExitCode {
    let value: serde_json::Value = match serde_json::from_str(request) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mobidesk-dataplane: the request is not JSON: {e}");
            return ExitCode::from(2);
        }
    };
    match mobidesk_dataplane::control::request(socket, &value) {
        Ok(response) => {
            match serde_json::to_string_pretty(&response) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("mobidesk-dataplane: {e}"),
            }
            if response.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mobidesk-dataplane: {}: {e}", socket.display());
            ExitCode::from(2)
        }
    }
}
