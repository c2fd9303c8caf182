//! `mobidesk-sessiond`: session servers. For now a developer front end to
//! the session environment: start a session from a profile and run one
//! command in it, print the policy, check a profile.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
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
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// Internal: the session's PID 1 (reaper) inside the session.
    #[command(name = "__init", hide = true)]
    Init {
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Before anything else: these run inside the session and must not
        // start threads or write logs.
        Cmd::Spawn => helper_main(),
        Cmd::Init { command } => {
            let code = mobidesk_sessiond::init::reaper_main(&command);
            ExitCode::from(u8::try_from(code).unwrap_or(255))
        }
        other => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("MOBIDESK_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .init();
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
        Cmd::Spawn | Cmd::Init { .. } => unreachable!("handled in main"),
    }
}
