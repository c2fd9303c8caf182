//! `mobidesk-sessiond`: session servers. `--config F` runs the daemon (the
//! control API, state, metrics: `mobidesk_sessiond::daemon`); `ctl` talks
//! to it; `run` is a developer front end to the session environment: start
//! a session from a profile and run one command in it; `policy` prints the
//! policy, `check-profile` checks a profile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mobidesk_sessiond::daemon;
use mobidesk_sessiond::environment::{helper_main, Launcher, SessionSpec, SessionStdio};
use mobidesk_sessiond::{policy, CgroupManager, Profile};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Parser)]
#[command(
    name = "mobidesk-sessiond",
    version,
    about = "MobiDesk session server: sessions in their own namespaces, root file system, seccomp/capability walls and cgroups",
    long_about = None
)]
struct Cli {
    /// Run the daemon with this configuration (TOML; see
    /// configs/sessiond.toml). Same as `daemon --config F`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: parse and validate the configuration, print it, exit.
    #[arg(long, requires = "config")]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: sessions managed through the control API, state
    /// persisted across restarts, metrics. Needs root. SIGTERM/SIGINT stop
    /// the daemon; the sessions keep running.
    Daemon {
        #[arg(long)]
        config: PathBuf,
        /// Parse and validate the configuration, print it, exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Talk to a running daemon (prints the JSON answer; exits 1 on an
    /// error answer). `exec` prints the command's output and exits with its
    /// status.
    Ctl {
        /// The daemon's API socket.
        #[arg(long, default_value = "/run/mobidesk/sessiond.sock")]
        socket: PathBuf,
        /// A file holding the API token.
        #[arg(long, default_value = "/etc/mobidesk/sessiond.token")]
        token_file: PathBuf,
        #[command(subcommand)]
        op: CtlOp,
    },
    /// Start a session and run one command in it; exits with its status
    /// (128 + signal when it was killed). Needs root.
    Run {
        /// Session profile (TOML); the built-in default when omitted.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Session id (names its cgroup and writable layer).
        #[arg(long)]
        id: Option<String>,
        /// Host directory (shared storage) mounted as the user's home.
        #[arg(long)]
        home: Option<PathBuf>,
        /// Where the sessions' writable layers live.
        #[arg(long, default_value = "/run/mobidesk/sessions")]
        runtime_dir: PathBuf,
        /// Do not create cgroups (limits of the profile are ignored).
        #[arg(long)]
        no_cgroups: bool,
        /// Keep the writable layer after the session ends.
        #[arg(long)]
        keep_layer: bool,
        /// Give the command the session's own /dev/null as stdin, stdout
        /// and stderr instead of ours (a session to checkpoint with CRIU
        /// must hold no descriptor from outside).
        #[arg(long)]
        null_stdio: bool,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Print the privileged-operation policy (classes a/b/c with reasons).
    Policy,
    /// Parse and validate a profile; print it as it will be used.
    CheckProfile { profile: PathBuf },
    /// Which cgroup version this host offers (detected as at start).
    Cgroups,
    /// Internal: the session helper (fd 3 is its control socket).
    #[command(name = "__spawn", hide = true)]
    Spawn,
    /// Internal: runs a command inside a session for the daemon's `exec`
    /// (fd 3 is its control socket).
    #[command(name = "__exec", hide = true)]
    Exec,
    /// Internal: the session's PID 1 (reaper) inside the session.
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CtlOp {
    /// Start a session; prints it (id, PID 1's host pid, ...).
    Create {
        #[arg(long)]
        id: Option<String>,
        /// A profile file inside the daemon's profiles_dir.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// A home directory inside the daemon's homes_dir.
        #[arg(long)]
        home: Option<PathBuf>,
        /// The session's address (reserved; default: the next of the
        /// daemon's pool).
        #[arg(long)]
        address: Option<std::net::Ipv4Addr>,
        /// What the session's PID 1 runs (default: sleep infinity).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Every session.
    List,
    /// One session with its counters.
    Inspect { id: String },
    /// Run a command in a session, like `docker exec`.
    Exec {
        id: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(required = true, last = true)]
        argv: Vec<String>,
    },
    /// Replace a session's limits (a limit not given is lifted).
    Resources {
        id: String,
        #[arg(long)]
        cpu_weight: Option<u64>,
        /// Bytes, or with a K/M/G suffix.
        #[arg(long)]
        memory_max: Option<String>,
        #[arg(long)]
        pids_max: Option<u64>,
    },
    /// End a session and remove everything of it.
    Destroy { id: String },
}

fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOBIDESK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `--config F` or `daemon --config F`.
fn daemon_main(config: &std::path::Path, check: bool) -> ExitCode {
    let config = match daemon::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mobidesk-sessiond: {e}");
            // EX_USAGE: a bad configuration.
            return ExitCode::from(64);
        }
    };
    if check {
        match toml::to_string_pretty(&config) {
            Ok(t) => {
                print!("{t}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("mobidesk-sessiond: {e}");
                return ExitCode::from(1);
            }
        }
    }
    init_logging("info");
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sessiond stopped");
            eprintln!("mobidesk-sessiond: {e}");
            ExitCode::from(1)
        }
    }
}

fn ctl(socket: &std::path::Path, token_file: &std::path::Path, op: CtlOp) -> Result<ExitCode> {
    use serde_json::json;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let (request, is_exec) = match op {
        CtlOp::Create {
            id,
            profile,
            home,
            address,
            command,
        } => {
            let mut m = json!({"op": "create"});
            if let Some(a) = address {
                m["address"] = json!(a);
            }
            if let Some(id) = id {
                m["id"] = json!(id);
            }
            if let Some(p) = profile {
                m["profile"] = json!(p);
            }
            if let Some(h) = home {
                m["home"] = json!(h);
            }
            if !command.is_empty() {
                m["command"] = json!(command);
            }
            (m, false)
        }
        CtlOp::List => (json!({"op": "list"}), false),
        CtlOp::Inspect { id } => (json!({"op": "inspect", "id": id}), false),
        CtlOp::Exec {
            id,
            env,
            cwd,
            timeout,
            argv,
        } => {
            let mut vars = serde_json::Map::new();
            for kv in env {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--env {kv:?}: KEY=VALUE");
                };
                vars.insert(k.into(), json!(v));
            }
            let mut m = json!({"op": "exec", "id": id, "argv": argv, "env": vars});
            if let Some(c) = cwd {
                m["cwd"] = json!(c);
            }
            if let Some(t) = timeout {
                m["timeout_s"] = json!(t);
            }
            (m, true)
        }
        CtlOp::Resources {
            id,
            cpu_weight,
            memory_max,
            pids_max,
        } => {
            let mut limits = serde_json::Map::new();
            if let Some(w) = cpu_weight {
                limits.insert("cpu_weight".into(), json!(w));
            }
            if let Some(m) = memory_max {
                limits.insert("memory_max".into(), json!(m));
            }
            if let Some(p) = pids_max {
                limits.insert("pids_max".into(), json!(p));
            }
            (
                json!({"op": "resources", "id": id, "limits": limits}),
                false,
            )
        }
        CtlOp::Destroy { id } => (json!({"op": "destroy", "id": id}), false),
    };
    let response = daemon::request(socket, token.trim(), &request, Duration::from_secs(3700))
        .with_context(|| format!("talking to {}", socket.display()))?;
    match (&response.exec, is_exec) {
        (Some(x), true) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(x.stdout.as_bytes());
            let _ = std::io::stderr().write_all(x.stderr.as_bytes());
            if x.stdout_truncated || x.stderr_truncated {
                eprintln!("mobidesk-sessiond: output truncated");
            }
            if x.timed_out {
                eprintln!("mobidesk-sessiond: killed at its timeout");
            }
            Ok(ExitCode::from(u8::try_from(x.exit_code).unwrap_or(255)))
        }
        _ => {
            use std::io::Write;
            // A closed stdout (`| head`) is not an error of the request.
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&response)?
            );
            Ok(if response.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.config) {
        (
            Some(Cmd::Daemon {
                config,
                check_config,
            }),
            None,
        ) => return daemon_main(&config, check_config),
        (None, Some(config)) => return daemon_main(&config, cli.check_config),
        (Some(_), Some(_)) => {
            eprintln!("mobidesk-sessiond: --config runs the daemon; give no subcommand with it");
            return ExitCode::from(64);
        }
        (None, None) => {
            eprintln!(
                "mobidesk-sessiond: give --config F (the daemon) or a subcommand; see --help"
            );
            return ExitCode::from(64);
        }
        (Some(c), None) => c,
    };
    match command {
        // Before anything else: these run inside the session and must not
        // start threads or write logs.
        Cmd::Spawn => helper_main(),
        Cmd::Exec => daemon::exec_helper_main(),
        Cmd::Ctl {
            socket,
            token_file,
            op,
        } => match ctl(&socket, &token_file, op) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("mobidesk-sessiond: {e:#}");
                ExitCode::from(1)
            }
        },
        Cmd::Init { command } => {
            let code = mobidesk_sessiond::init::reaper_main(&command);
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        other => {
            init_logging("warn");
            match run(other) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("mobidesk-sessiond: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Policy => {
            print!("{}", policy::table());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckProfile { profile } => {
            let p = Profile::load(&profile)?;
            print!("{}", toml::to_string_pretty(&p)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cgroups => {
            let m = CgroupManager::detect()?;
            println!("cgroup v{}: {:?}", m.version(), m.backend());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            profile,
            id,
            home,
            runtime_dir,
            no_cgroups,
            keep_layer,
            null_stdio,
            command,
        } => {
            let profile = match profile {
                Some(p) => Profile::load(&p)?,
                None => Profile::default(),
            };
            if profile.desktop.is_some() {
                bail!(
                    "the profile has a [desktop] table: desktop sessions (Xvfb, window manager, \
                     display server with its TLS) are made by the daemon: `mobidesk-sessiond ctl \
                     create --profile ...`; `run` runs one command in a session without [desktop]"
                );
            }
            let id = id.unwrap_or_else(|| format!("run-{}", std::process::id()));
            let exe = std::env::current_exe().context("locating the sessiond binary")?;
            let mut launcher = Launcher::new(exe, runtime_dir).keep_layer(keep_layer);
            if !no_cgroups {
                launcher = launcher.with_cgroups(CgroupManager::detect()?);
            }
            // SIGINT/SIGTERM end the session cleanly instead of leaving it.
            let mut mask = SigSet::empty();
            mask.add(Signal::SIGINT);
            mask.add(Signal::SIGTERM);
            mask.thread_block()?;
            let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK)?;
            let spec = SessionSpec {
                id,
                profile,
                home,
                command,
            };
            let stdio = if null_stdio {
                SessionStdio::default()
            } else {
                SessionStdio {
                    stdin: Some(std::process::Stdio::inherit()),
                    stdout: Some(std::process::Stdio::inherit()),
                    stderr: Some(std::process::Stdio::inherit()),
                }
            };
            let mut session = launcher.start(&spec, stdio)?;
            eprintln!(
                "mobidesk-sessiond: session {} started, PID 1 is host pid {}, layer {}",
                session.id(),
                session.init_pid().unwrap_or(0),
                session.layer().display()
            );
            let status = loop {
                if let Some(s) = session.wait_timeout(Duration::from_millis(200))? {
                    break s;
                }
                if let Ok(Some(sig)) = sfd.read_signal() {
                    eprintln!(
                        "mobidesk-sessiond: signal {}, stopping the session",
                        sig.ssi_signo
                    );
                    break session.kill()?;
                }
            };
            session.destroy()?;
            match status.code() {
                Some(c) => Ok(ExitCode::from(u8::try_from(c).unwrap_or(255))),
                None => bail!("session ended without a status: {status}"),
            }
        }
        Cmd::Spawn | Cmd::Init { .. } | Cmd::Exec | Cmd::Daemon { .. } | Cmd::Ctl { .. } => {
            bail!("internal: handled in main")
        }
    }
}
