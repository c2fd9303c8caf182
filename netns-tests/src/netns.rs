//! One named network namespace (`ip netns`): create it, configure it with
//! iproute2, run code or processes inside it, and delete it with everything
//! that runs in it.
//!
//! Code runs inside a namespace on a thread of its own that has entered it
//! (`setns` changes only the calling thread), so tests can make sockets in
//! several namespaces from one process. A process spawned from such a thread
//! starts in that namespace too.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{LabError, Result};

/// Every namespace made by a lab starts with this; `mobidesk-lab down --all`
/// removes exactly these.
pub const NETNS_PREFIX: &str = "mdlab-";

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. Dropping the handle does not delete it: the
/// [`crate::Lab`] that made it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes a new, empty namespace (`ip netns add`) with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        run_cmd(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns::existing(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on a namespace that already exists (not checked).
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace (for `nsenter --net=`, CRIU).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NAME ARGS...`; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n NAME -json ARGS...`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = run_cmd(
            Command::new("ip")
                .arg("-n")
                .arg(&self.name)
                .arg("-json")
                .args(args),
        )?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(vec![]));
        }
        serde_json::from_str(&out).map_err(|e| LabError::Parse {
            command: format!("ip -n {} -json {}", self.name, args.join(" ")),
            detail: e.to_string(),
        })
    }

    /// Several iproute2 commands in one process (`ip -n NAME -batch -`), one
    /// per line, stopping at the first that fails.
    pub fn ip_batch(&self, commands: &[String]) -> Result<()> {
        let script = commands.join("\n") + "\n";
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        run_cmd_stdin(&mut cmd, script.as_bytes()).map(drop)
    }

    /// Sets sysctls of this namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.command("sysctl");
        cmd.arg("-q").arg("-w");
        for (k, v) in settings {
            cmd.arg(format!("{k}={v}"));
        }
        run_cmd(&mut cmd).map(drop)
    }

    /// Reads one sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let mut cmd = self.command("sysctl");
        cmd.args(["-n", key]);
        Ok(run_cmd(&mut cmd)?.trim().to_string())
    }

    /// A command that runs `program` inside this namespace (through `nsenter
    /// --net`, which, unlike `ip netns exec`, leaves /sys alone).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it makes
    /// belong to the namespace (and stay there when handed to other threads).
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = File::open(self.path()).map_err(|source| LabError::Enter {
            netns: self.name.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Enter {
                    netns: self.name.clone(),
                    source: e.into(),
                })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts a long-lived thread inside this namespace (a daemon under
    /// test, say); the thread enters the namespace before `f` runs.
    pub fn spawn_thread<T, F>(&self, f: F) -> Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = File::open(self.path()).map_err(|source| LabError::Enter {
            netns: self.name.clone(),
            source,
        })?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
                    // Running `f` in the wrong namespace would be worse.
                    panic!("entering network namespace {name}: {e}");
                }
                f()
            })
            .map_err(|source| LabError::Spawn {
                command: "thread".into(),
                source,
            })
    }

    /// Spawns a process inside this namespace.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child> {
        let what = describe(cmd);
        self.run(|| cmd.spawn())?.map_err(|source| LabError::Spawn {
            command: what,
            source,
        })
    }

    /// Runs a process inside this namespace to completion.
    pub fn output(&self, cmd: &mut Command) -> Result<Output> {
        let what = describe(cmd);
        self.run(|| cmd.output())?
            .map_err(|source| LabError::Spawn {
                command: what,
                source,
            })
    }

    /// Waits until every named interface is operationally up. Until then
    /// the kernel has not activated its queue, and packets sent are dropped.
    pub fn wait_links_up(&self, names: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let links = self.ip_json(&["link", "show"])?;
            let down: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| {
                    !links.as_array().into_iter().flatten().any(|l| {
                        l["ifname"].as_str() == Some(n) && l["operstate"].as_str() == Some("UP")
                    })
                })
                .collect();
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::LinkDown {
                    netns: self.name.clone(),
                    links: down.join(", "),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every process whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        let out = run_cmd(Command::new("ip").args(["netns", "pids", &self.name]))?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .map(Pid::from_raw)
            .collect())
    }

    /// Kills every process in this namespace (never this process itself).
    pub fn kill_all(&self) -> Result<usize> {
        let me = Pid::this();
        let mut n = 0;
        for pid in self.pids()? {
            if pid != me && kill(pid, Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Kills everything inside and removes the namespace; its interfaces go
    /// with it (a veth whose peer is elsewhere takes the peer along).
    pub fn delete(&self) -> Result<()> {
        // A namespace whose name is gone has nothing left to kill.
        if !self.path().exists() {
            return Ok(());
        }
        self.kill_all()?;
        run_cmd(Command::new("ip").args(["netns", "del", &self.name])).map(drop)
    }
}

/// The names of all named network namespaces.
pub fn list() -> Result<Vec<String>> {
    let out = run_cmd(Command::new("ip").args(["netns", "list"]))?;
    // Lines look like `name` or `name (id: 3)`.
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion; an exit other than 0 is an error carrying its stderr.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<String> {
    run_cmd_stdin(cmd, &[])
}

fn run_cmd_stdin(cmd: &mut Command, input: &[u8]) -> Result<String> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: what.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|source| LabError::Spawn {
            command: what.clone(),
            source,
        })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: what.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: what,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
