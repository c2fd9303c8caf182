//! `mobidesk-lab`: bring the emulated deployment up and down, look inside it,
//! and move sessions around by hand.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mobidesk_lab::{status, Lab, Topology};

/// The MobiDesk lab: proxy box, session servers, sessions, outside hosts and
/// clients as network namespaces on this machine (needs root).
///
/// Every namespace is named mdlab-<lab>-<part>; `ip netns list` shows them,
/// `mobidesk-lab exec <part> -- CMD` runs a command inside one.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab from a topology file and leave it running.
    Up {
        /// Topology (TOML); see configs/lab.toml.
        #[arg(long, short, default_value = "configs/lab.toml")]
        config: PathBuf,
        /// Take the lab name from here instead of the file.
        #[arg(long)]
        name: Option<String>,
        /// Tear down a lab of the same name first, if one is up.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a lab (or, with --all, every lab namespace on this machine),
    /// including whatever a killed run left behind.
    Down {
        /// The lab's name (default: demo).
        #[arg(default_value = "demo", conflicts_with = "all")]
        lab: String,
        #[arg(long)]
        all: bool,
    },
    /// Show namespaces, interfaces, addresses and routes of running labs.
    Status {
        /// Only this lab.
        lab: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab namespace: proxy, fabric, a host name
    /// (a, b, web, alice), a session name, or a full namespace name.
    Exec {
        #[arg(long, default_value = "demo")]
        lab: String,
        netns: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a small test server here (use with `exec` to put it in a
    /// namespace): prints "listening on ADDR" once it accepts.
    Serve {
        #[arg(value_enum)]
        kind: ServeKind,
        /// Address and port to listen on.
        listen: std::net::SocketAddr,
    },
    /// Add, move and remove session namespaces of a running lab.
    Session {
        #[arg(long, default_value = "demo")]
        lab: String,
        #[command(subcommand)]
        action: SessionAction,
    },
    /// Put an emulated WAN link (delay, rate limit, drop-tail queue) into a
    /// running lab, in the foreground until Ctrl-C. With one host (a
    /// client): its traffic to and through the proxy box takes the link.
    /// With two namespaces: a link between them (198.19.255.1 in A,
    /// .2 in B), and --route-a/--route-b send more prefixes through it.
    Link(LinkArgs),
}

#[derive(clap::Args)]
struct LinkArgs {
    #[arg(long, default_value = "demo")]
    lab: String,
    /// Round-trip time the link adds, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Rate limit each direction, Mbit/s (default: unlimited).
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// Drop-tail queue each direction, kB (default: one bandwidth-delay
    /// product, at least 64 KiB).
    #[arg(long)]
    queue_kb: Option<usize>,
    /// A host of the lab, or (with B) any lab namespace.
    a: String,
    /// The other end; without it, the proxy box as the host's gateway.
    b: Option<String>,
    /// With B: prefixes A routes into the link.
    #[arg(long, requires = "b")]
    route_a: Vec<ipnet::Ipv4Net>,
    /// With B: prefixes B routes into the link.
    #[arg(long, requires = "b")]
    route_b: Vec<ipnet::Ipv4Net>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ServeKind {
    /// TCP echo: every byte comes back.
    Echo,
    /// TCP discard: bytes are read and dropped; connections are held open
    /// until the peer closes (for many concurrent connections).
    Hold,
}

#[derive(Subcommand)]
enum SessionAction {
    /// Start a session namespace on a server.
    Add {
        name: String,
        #[arg(long)]
        server: String,
        /// Its virtual address (default: the next free one of the server's pool).
        #[arg(long)]
        address: Option<std::net::Ipv4Addr>,
    },
    /// Move a session to another server (its TCP state is not touched).
    Move {
        name: String,
        #[arg(long)]
        to: String,
        /// Also route its virtual address on the proxy box through the new
        /// server with a kernel host route (the stand-in for the dataplane).
        #[arg(long, conflicts_with = "dataplane")]
        route: bool,
        /// The lab runs the dataplanes (scripts/demo starts them): move the
        /// session's connection labels with it and tell the proxy box.
        #[arg(long)]
        dataplane: bool,
    },
    /// Remove a session namespace and everything in it.
    Remove { name: String },
    /// List sessions.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mobidesk-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // Serving needs no root and no lab.
    if let Command::Serve { kind, listen } = cli.command {
        return serve(kind, listen);
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("needs root (it creates network namespaces)");
    }
    run_lab(cli.command)
}

fn run_lab(command: Command) -> Result<()> {
    match command {
        Command::Up {
            config,
            name,
            replace,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading topology {}", config.display()))?;
            let mut topology = Topology::from_toml(&text)
                .with_context(|| format!("topology {}", config.display()))?;
            if let Some(name) = name {
                topology.name = name;
                topology.validate()?;
            }
            if replace {
                Lab::down(&topology.name)?;
            }
            let lab = Lab::up(topology)?;
            lab.keep()?;
            print!("{}", status::collect(lab.name())?.render());
            println!(
                "\nlab {0} is up. Look inside:\n  mobidesk-lab exec --lab {0} proxy -- ip addr\n  mobidesk-lab session --lab {0} add s1 --server a\n  mobidesk-lab status {0} --json\nRemove it: mobidesk-lab down {0}",
                lab.name()
            );
        }
        Command::Down { lab, all } => {
            let n = if all {
                Lab::down_all()?
            } else {
                Lab::down(&lab)?
            };
            println!("removed {n} namespace(s)");
        }
        Command::Status { lab, json } => {
            let labs = match lab {
                Some(l) => vec![l],
                None => status::labs()?,
            };
            let all = labs
                .iter()
                .map(|l| status::collect(l))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no lab is up");
            } else {
                for s in all {
                    print!("{}", s.render());
                }
            }
        }
        Command::Exec {
            lab,
            netns,
            command,
        } => {
            let lab = Lab::attach(&lab)?;
            let ns = lab.resolve(&netns)?;
            let (program, args) = command.split_first().context("no command given")?;
            let mut cmd = ns.command(program);
            cmd.args(args);
            // exec replaces this process: the command's exit status is ours.
            let err = cmd.exec();
            bail!("could not run {program} in {}: {err}", ns.name());
        }
        Command::Serve { kind, listen } => serve(kind, listen)?,
        Command::Session { lab, action } => {
            let lab = Lab::attach(&lab)?;
            match action {
                SessionAction::Add {
                    name,
                    server,
                    address,
                } => {
                    let s = match address {
                        Some(a) => lab.add_session_at(&name, &server, a)?,
                        None => lab.add_session(&name, &server)?,
                    };
                    println!(
                        "session {} on server {}: virtual {} (netns {})",
                        s.name, s.server, s.virtual_addr, s.netns
                    );
                }
                SessionAction::Move {
                    name,
                    to,
                    route,
                    dataplane,
                } => {
                    let s = if dataplane {
                        mobidesk_lab::migrate::migrate_session(&lab, &name, &to)?
                    } else {
                        lab.move_session(&name, &to)?
                    };
                    if route {
                        lab.route_on_proxy(&s)?;
                    }
                    println!(
                        "session {} now on server {}: virtual {}, physical {}",
                        s.name, s.server, s.virtual_addr, s.physical_addr
                    );
                }
                SessionAction::Remove { name } => {
                    lab.remove_session(&name)?;
                    println!("session {name} removed");
                }
                SessionAction::List { json } => {
                    let sessions = lab.sessions();
                    if json {
                        println!("{}", serde_json::to_string_pretty(&sessions)?);
                    } else {
                        for s in sessions {
                            println!(
                                "{:<12} server {:<6} virtual {:<15} physical {}",
                                s.name, s.server, s.virtual_addr, s.physical_addr
                            );
                        }
                    }
                }
            }
        }
        Command::Link(args) => link(args)?,
    }
    Ok(())
}

/// `mobidesk-lab link`: the emulator runs on this process's threads until
/// SIGINT, SIGTERM or SIGHUP; dropping it takes the link down.
fn link(
    LinkArgs {
        lab,
        rtt_ms,
        rate_mbit,
        queue_kb,
        a,
        b,
        route_a,
        route_b,
    }: LinkArgs,
) -> Result<()> {
    use mobidesk_lab::linkemu::{LinkConfig, LinkEmulator, Side};
    use nix::sys::signal::{SigSet, Signal};

    let rtt = std::time::Duration::try_from_secs_f64(rtt_ms / 1000.0)
        .with_context(|| format!("--rtt-ms {rtt_ms}"))?;
    let rate_bps = match rate_mbit {
        Some(m) if !(m.is_finite() && m > 0.0) => bail!("--rate-mbit must be above 0"),
        // Rounded to whole bits per second.
        Some(m) => Some((m * 1e6).round() as u64),
        None => None,
    };
    let config = LinkConfig {
        queue_bytes: queue_kb.map(|k| k.saturating_mul(1000)),
        ..LinkConfig::wan(rtt, rate_bps)
    };
    let lab = Lab::attach(&lab)?;
    // Blocked before the emulator's threads start, so they inherit the
    // mask and the signals wait for `wait` below.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block()?;
    let emu = match b {
        None => {
            let emu = lab.slow_link(&a, config)?;
            println!(
                "{a} <-> proxy: {} in {}, {} in the proxy box",
                emu.ifname(Side::A),
                emu.netns(Side::A).name(),
                emu.ifname(Side::B)
            );
            emu
        }
        Some(b) => {
            let emu = LinkEmulator::between(&lab.resolve(&a)?, &lab.resolve(&b)?, config)?;
            for (side, prefixes) in [(Side::A, &route_a), (Side::B, &route_b)] {
                for p in prefixes.iter() {
                    emu.route(side, *p, None)?;
                }
            }
            if let Some((x, y)) = emu.config().addresses {
                println!(
                    "{a} ({x} on {}) <-> {b} ({y} on {})",
                    emu.ifname(Side::A),
                    emu.ifname(Side::B)
                );
            }
            emu
        }
    };
    println!(
        "link up: rtt {rtt:?}, rate {}, queue {} bytes each way; Ctrl-C to take it down",
        rate_bps.map_or("unlimited".into(), |r| format!("{r} bit/s")),
        emu.config().queue_limit()
    );
    std::io::Write::flush(&mut std::io::stdout())?;
    let signal = signals.wait()?;
    let stats = emu.stats();
    drop(emu);
    println!("{signal}: link down");
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

/// A thread per connection: fine for tests (thousands of mostly idle
/// connections need small stacks, not an event loop).
fn serve(kind: ServeKind, listen: std::net::SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    raise_fd_limit();
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    println!("listening on {listen}");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mobidesk-lab serve: accept: {e}");
                continue;
            }
        };
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if matches!(kind, ServeKind::Echo)
                                && stream.write_all(&buf[..n]).is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("mobidesk-lab serve: no thread for a connection: {e}");
        }
    }
    Ok(())
}

/// Many connections need many descriptors: take the soft limit up to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
