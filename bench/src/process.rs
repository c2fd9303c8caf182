//! The external programs a benchmark runs: long-running servers (killed and
//! reaped when their handle drops, also on error paths) and clients run to
//! completion under a hard time limit.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mobidesk_lab::Netns;

/// How long a server may take to start listening.
pub(crate) const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a daemon's output is kept for error messages.
const TAIL_BYTES: usize = 4096;

/// A process running in a lab namespace for as long as the handle lives.
#[derive(Debug)]
pub(crate) struct Daemon {
    child: Child,
    what: String,
    /// The last bytes it wrote (stdout and stderr), read continuously so
    /// that it never blocks on a full pipe.
    output: Tail,
    /// One message per output pipe that reached its end.
    pipes_closed: Receiver<()>,
}

impl Daemon {
    /// Spawns `cmd` inside `ns` and waits until it listens on TCP `port`.
    pub(crate) fn start_listening(
        ns: &Netns,
        cmd: &mut Command,
        port: u16,
        what: &str,
    ) -> Result<Daemon> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ns
            .spawn(cmd)
            .with_context(|| format!("starting {what} in {}", ns.name()))?;
        let output = Tail::default();
        let (closed, pipes_closed) = mpsc::channel();
        if let Some(pipe) = child.stdout.take() {
            output.drain(pipe, closed.clone());
        }
        if let Some(pipe) = child.stderr.take() {
            output.drain(pipe, closed);
        }
        let mut daemon = Daemon {
            child,
            what: what.to_string(),
            output,
            pipes_closed,
        };
        daemon.wait_listening(port, LISTEN_TIMEOUT)?;
        Ok(daemon)
    }

    /// Waits until the process itself holds a socket listening on `port`
    /// (see [`listens_on`]), fails at once if it exits first.
    fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if listens_on(self.child.id(), port) {
                return Ok(());
            }
            if let Some(exit) = self.exited()? {
                bail!("{} {exit} before listening on port {port}", self.what);
            }
            if crate::interrupted() {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on port {port} within {timeout:?}; its output: {}",
                    self.what,
                    self.output.text()
                );
            }
            // The kernel has no notification for "a socket started
            // listening"; look again shortly (bounded by the deadline).
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Fails (with the daemon's last output) if it has exited: a server that
    /// died during a benchmark makes the figure meaningless.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.exited()? {
            Some(exit) => bail!("{} {exit}", self.what),
            None => Ok(()),
        }
    }

    /// `exited (status): output` once the process has exited.
    fn exited(&mut self) -> Result<Option<String>> {
        let Some(status) = self.child.try_wait()? else {
            return Ok(None);
        };
        // Let the readers take in what was left in the pipes (they end when
        // the process's pipes close; bounded, in case a descendant holds one).
        let until = Instant::now() + Duration::from_secs(1);
        for _ in 0..2 {
            let left = until.saturating_duration_since(Instant::now());
            if self.pipes_closed.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(Some(format!(
            "exited ({status}); its output: {}",
            self.output.text()
        )))
    }
}

impl Daemon {
    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Killing a process that already exited is harmless; waiting reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last [`TAIL_BYTES`] a process wrote.
#[derive(Debug, Clone, Default)]
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    /// Reads `pipe` to its end on a thread of its own, keeping the tail;
    /// sends on `closed` when done.
    fn drain(&self, mut pipe: impl Read + Send + 'static, closed: mpsc::Sender<()>) {
        let tail = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let mut kept = tail.lock();
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(TAIL_BYTES);
                kept.drain(..excess);
            }
            let _ = closed.send(());
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.lock()).trim().to_string();
        if text.is_empty() {
            "(none)".into()
        } else {
            text
        }
    }
}

/// A command that runs `program`, pinned to `cpu` if given (`taskset`
/// execs it: the process id stays the program's).
pub(crate) fn tool(program: &str, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Pins the calling thread to `cpu` (no-op for None).
pub(crate) fn pin_thread(cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .with_context(|| format!("pinning a thread to CPU {cpu}"))?;
    }
    Ok(())
}

/// Runs `program args...` inside `ns` (pinned to `cpu` if given) to
/// completion, killed after `limit` (by `timeout(1)`, so no child outlives
/// its benchmark). The caller judges the exit status: some tools explain
/// failures on stdout.
pub(crate) fn run_client(
    ns: &Netns,
    cpu: Option<usize>,
    program: &str,
    args: &[String],
    limit: Duration,
) -> Result<Output> {
    let secs = limit.as_secs().max(1);
    let mut cmd = Command::new("timeout");
    cmd.arg("--signal=KILL").arg(format!("{secs}s"));
    if let Some(cpu) = cpu {
        cmd.args(["taskset", "-c", &cpu.to_string()]);
    }
    cmd.arg(program).args(args).stdin(Stdio::null());
    let out = ns
        .output(&mut cmd)
        .with_context(|| format!("running {program} in {}", ns.name()))?;
    // timeout(1) exits 124 on timeout, or 128+9 when the signal was KILL.
    if matches!(out.status.code(), Some(124 | 137)) {
        bail!(
            "`{program} {}` did not finish within {secs} s and was killed",
            args.join(" ")
        );
    }
    Ok(out)
}

/// Whether process `pid` itself holds a TCP socket listening on `port`
/// (IPv4 or IPv6): the listening sockets of its namespace on that port, from
/// /proc/PID/net/tcp{,6}, matched by inode against its open files. Another
/// process listening on the port does not count.
fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        // Missing: no IPv6 in the namespace, or the process is gone (the
        // caller notices that next).
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            inodes.extend(listener_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

/// The inodes of the listening sockets on `port` in a /proc/net/tcp table:
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
/// inode ...`; the port is hex after the colon, state 0A is LISTEN.
fn listener_inodes(table: &str, port: u16) -> Vec<u64> {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            (local_port == want && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_in_a_proc_net_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 140012C6:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48213 1 0000 100 0 0 10 0\n   \
            1: 6400010A:B4F2 140012C6:2B67 01 00000000:00000000 00:00000000 00000000     0        0 48214 1 0000 20 4 30 10 -1\n";
        assert_eq!(listener_inodes(table, 5201), vec![48213]);
        // 0x2B67 = 11111 appears only as a remote port of an established socket.
        assert!(listener_inodes(table, 11111).is_empty());
        assert!(listener_inodes("", 5201).is_empty());
    }
}
