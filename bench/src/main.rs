//! `mobidesk-bench`: run the benchmarks on the baseline and candidate paths
//! and report both figures and their ratio (needs root: it builds labs of
//! network namespaces).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mobidesk_bench::sessiond::SessiondOptions;
use mobidesk_bench::{live_labs, Benchmark, Options, Path, Settings};
use mobidesk_lab::Lab;
use nix::sys::signal::{SigSet, Signal};

/// MobiDesk benchmarks. Each runs on the baseline (kernel IP forwarding
/// through the lab: session on server a -> proxy box -> outside host web)
/// and on the candidate (the user-space dataplane) in the same run, on the
/// same lab topology, and reports both and candidate/baseline.
///
/// Run as root from a release build:
/// `cargo run --release -p mobidesk-bench -- all`.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A very short run of each benchmark: checks that it works; the
    /// figures are not worth quoting.
    #[arg(long, global = true)]
    smoke: bool,
    /// Measure only this path (repeatable; `baseline` and `candidate` are
    /// aliases). Default: every path, baseline first.
    #[arg(long = "path", value_enum, global = true)]
    paths: Vec<Path>,
    /// Let the scheduler place the benchmark clients and servers instead of
    /// pinning them all to one CPU (figures then vary a lot between runs
    /// on small machines).
    #[arg(long, global = true, conflicts_with = "cpu")]
    no_pin: bool,
    /// Pin the benchmark clients and servers to this CPU (default: the
    /// first CPU this process may use).
    #[arg(long, global = true)]
    cpu: Option<usize>,
    /// Pin the path's daemons (the dataplanes' threads) to this CPU
    /// (default: the clients' and servers' CPU, the one CPU the baseline
    /// uses).
    #[arg(long, global = true, conflicts_with = "daemons_unpinned")]
    daemons_cpu: Option<usize>,
    /// Let the scheduler place the path's daemons.
    #[arg(long, global = true)]
    daemons_unpinned: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// Bulk TCP, one iperf3 stream, session -> outside host and back (Gbit/s).
    Throughput,
    /// sockperf TCP ping-pong, 64-byte messages: p50/p99 half round trip (µs).
    Latency,
    /// New TCP connections per second, session -> outside host.
    ConnectRate,
    /// Every packet-path benchmark above, one after the other.
    All,
    /// The display protocol against TigerVNC (Xvnc) and x11vnc: bytes and
    /// time to pixel-exact for text pages, graphics pages, scrolling and
    /// video, same X workload, same lab link (0 ms and 66 ms/100 Mbit/s);
    /// `--path` does not apply.
    Display {
        /// The link(s) between viewer and server.
        #[arg(long, value_enum, default_value = "both")]
        link: mobidesk_bench::display::Link,
        /// Run only this system (repeatable). Default: all three.
        #[arg(long = "system", value_enum)]
        systems: Vec<mobidesk_bench::display::System>,
        /// Run only this workload (repeatable). Default: all four.
        #[arg(long = "workload", value_enum)]
        workloads: Vec<mobidesk_bench::display::Workload>,
        /// The mobidesk-display binary (default: $MOBIDESK_DISPLAY, else
        /// next to this program).
        #[arg(long, value_name = "PATH")]
        display_server: Option<PathBuf>,
        /// An extra argument for mobidesk-display (repeatable; a
        /// diagnostic, e.g. `--display-server-arg=--send-buffer=0`).
        #[arg(
            long = "display-server-arg",
            value_name = "ARG",
            allow_hyphen_values = true
        )]
        display_server_args: Vec<String>,
        /// The MobiDesk viewer does not offer VIDEO (a diagnostic).
        #[arg(long)]
        no_video: bool,
        /// The MobiDesk viewer does not offer H.264: VIDEO as I420 (a
        /// diagnostic, and the baseline of the H.264 figures).
        #[arg(long)]
        no_h264: bool,
    },
    /// A session against the bare server, same run: the paper's Table 2
    /// micro-benchmarks, a parallel build, and the memory and CPU of idle
    /// desktop sessions (no lab; `--path` does not apply).
    #[command(alias = "table2")]
    Sessiond {
        /// Run only this part (repeatable). Default: all of them.
        #[arg(long = "part", value_enum)]
        parts: Vec<mobidesk_bench::sessiond::Part>,
        /// Rounds per side, bare and session alternating (default 5, the
        /// build at most 3; smoke 1).
        #[arg(long)]
        rounds: Option<usize>,
        /// Idle desktop sessions to start (default 5; smoke 1).
        #[arg(long)]
        sessions: Option<usize>,
        /// The mobidesk-sessiond binary (default: $MOBIDESK_SESSIOND, else
        /// next to this program).
        #[arg(long, value_name = "PATH")]
        sessiond: Option<PathBuf>,
        /// The display server run in each idle desktop session (default:
        /// $MOBIDESK_DISPLAY, else mobidesk-display next to this program if
        /// it was built).
        #[arg(long, value_name = "PATH", conflicts_with = "no_display_server")]
        display_server: Option<PathBuf>,
        /// Idle desktop sessions without a display server.
        #[arg(long)]
        no_display_server: bool,
    },
}

/// The signal that interrupted the run (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How long an interrupted run may take to unwind (kill its processes,
/// remove its labs) before the signal thread removes the labs itself.
const UNWIND_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,mobidesk_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = run(Cli::parse());
    let signal = SIGNAL.load(Ordering::SeqCst);
    if signal != 0 {
        // The run has unwound: its labs are down.
        eprintln!("mobidesk-bench: interrupted by signal {signal}; labs removed");
        return ExitCode::from(u8::try_from(128 + signal).unwrap_or(1));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mobidesk-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("needs root: every benchmark builds a lab of network namespaces");
    }
    remove_labs_on_signal()?;
    let benchmarks = match cli.command {
        Command::Throughput => vec![Benchmark::Throughput],
        Command::Latency => vec![Benchmark::Latency],
        Command::ConnectRate => vec![Benchmark::ConnectRate],
        Command::All => Benchmark::ALL.to_vec(),
        Command::Display {
            link,
            ref systems,
            ref workloads,
            ref display_server,
            ref display_server_args,
            no_video,
            no_h264,
        } => {
            let mut o = mobidesk_bench::display::DisplayOptions::all(cli.smoke);
            o.links = vec![link];
            if !systems.is_empty() {
                o.systems = systems.clone();
                o.systems.sort();
                o.systems.dedup();
            }
            if !workloads.is_empty() {
                o.workloads = workloads.clone();
                o.workloads.sort();
                o.workloads.dedup();
            }
            if let Some(p) = display_server {
                o.display_server = p.clone();
            }
            o.display_server_args = display_server_args.clone();
            o.video = !no_video;
            o.h264 = !no_h264;
            let report = mobidesk_bench::display::run(&o)?;
            print!("{}", report.table());
            if let Some(file) = &cli.json {
                std::fs::write(file, report.to_json() + "\n")
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            return Ok(());
        }
        Command::Sessiond {
            ref parts,
            rounds,
            sessions,
            ref sessiond,
            ref display_server,
            no_display_server,
        } => {
            let mut o = SessiondOptions::all(cli.smoke)?;
            if !parts.is_empty() {
                o.parts = parts.clone();
            }
            if let Some(p) = sessiond {
                o.sessiond = p.clone();
            }
            if no_display_server {
                o.display_server = None;
            } else if let Some(p) = display_server {
                o.display_server = Some(p.clone());
            }
            o.rounds = rounds;
            o.sessions = sessions;
            if cli.no_pin {
                o.settings.endpoints_cpu = None;
            } else if cli.cpu.is_some() {
                o.settings.endpoints_cpu = cli.cpu;
            }
            o.settings.daemons_cpu = None;
            let report = mobidesk_bench::sessiond::run(&o)?;
            print!("{}", report.table());
            if let Some(file) = &cli.json {
                std::fs::write(file, report.to_json() + "\n")
                    .with_context(|| format!("writing {}", file.display()))?;
            }
            return Ok(());
        }
    };
    let mut paths = if cli.paths.is_empty() {
        Path::ALL.to_vec()
    } else {
        cli.paths
    };
    // Baseline first, each path once.
    paths.sort();
    paths.dedup();
    let mut settings = Settings::new(cli.smoke);
    if cli.no_pin {
        settings.endpoints_cpu = None;
    } else if cli.cpu.is_some() {
        settings.endpoints_cpu = cli.cpu;
    }
    settings.daemons_cpu = if cli.daemons_unpinned {
        None
    } else {
        cli.daemons_cpu.or(settings.endpoints_cpu)
    };
    let report = mobidesk_bench::run(&Options {
        benchmarks,
        paths,
        settings,
    })?;
    print!("{}", report.table());
    if let Some(file) = &cli.json {
        std::fs::write(file, report.to_json() + "\n")
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// On SIGINT, SIGTERM or SIGHUP: stop the run (its processes are killed,
/// the benchmark fails, the labs are removed as the run unwinds) instead of
/// leaving namespaces behind. If unwinding takes longer than
/// [`UNWIND_TIMEOUT`], or a second signal comes, the labs are removed from
/// here and the process exits.
///
/// The signals are blocked in every thread and taken by one thread that
/// waits for them; child processes start with an empty mask (std resets it).
fn remove_labs_on_signal() -> Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(signal) = set.wait() else { return };
            SIGNAL.store(signal as i32, Ordering::SeqCst);
            mobidesk_bench::interrupt();
            mobidesk_bench::sessiond::interrupt();
            std::thread::spawn(move || {
                // A watchdog: normally the process has exited before it fires.
                std::thread::sleep(UNWIND_TIMEOUT);
                force_exit(signal);
            });
            if set.wait().is_ok() {
                force_exit(signal);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Removes the labs that are still up and exits.
fn force_exit(signal: Signal) -> ! {
    for lab in live_labs() {
        if let Err(e) = Lab::down(&lab) {
            eprintln!("mobidesk-bench: removing lab {lab}: {e} (run `mobidesk-lab down {lab}`)");
        }
    }
    eprintln!("mobidesk-bench: interrupted by {signal}; labs removed");
    std::process::exit(128 + signal as i32);
}
