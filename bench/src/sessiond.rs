//! The sessiond benchmarks (issue 5, the paper's Table 2 and §6.1): what a
//! session costs compared with the bare server, in the same run.
//!
//! - **Table 2 micro-benchmarks**: `mobidesk-syscall-bench` (getpid,
//!   FIONREAD ioctl, shmget+shmctl, semget+semctl, fork+exit, fork+sh) on
//!   the bare server and inside a session (`mobidesk-sessiond run`),
//!   alternating bare and session rounds so that drift (other work on the
//!   machine, CPU frequency) falls on both alike. Every round is a fresh
//!   process (a fresh session), pinned to one CPU.
//! - **Application workload**: a parallel build (`make -j2` with `gcc -O2`
//!   of generated C files, then a link), the paper's "Make" workload in
//!   small: process creation, exec, file I/O and page faults, where the
//!   session's walls (seccomp on every system call, the user namespace, its
//!   memory cgroup) would show. Same sources, same file system (the
//!   session's home is a host directory next to the bare build's), timed
//!   inside (the session's start is not counted).
//! - **Idle desktop sessions**: K sessions, each Xvfb + openbox + xterm,
//!   left to settle, then memory (PSS of the session's processes and its
//!   memory cgroup's usage) and CPU (the run time of its tasks over an idle
//!   window) per session, and how many such sessions a core holds.
//!
//! Sessions are started by the real binary (`mobidesk-sessiond run
//! --profile P -- CMD`), with the profiles in `bench/profiles/` extended by
//! a read-only bind of this benchmark's binaries at [`BIN_DIR`].

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::path::Role;
use crate::report::{median, Measurement, Metric, Report, Subject};
use crate::Settings;

/// Where the benchmark's own binaries appear inside a session.
pub const BIN_DIR: &str = "/bench/bin";

/// The Table 2 session's profile (no limits that could throttle).
const TABLE2_PROFILE: &str = include_str!("../profiles/table2.toml");
/// The idle desktop sessions' profile (a desktop session's limits).
const DESKTOP_PROFILE: &str = include_str!("../profiles/desktop-idle.toml");

/// Where a sessiond benchmark ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    /// Baseline: a plain process on the server, in the benchmark's own
    /// cgroups, no namespaces, no seccomp.
    BareServer,
    /// Candidate: inside a session (`mobidesk-sessiond run`).
    Session,
    /// Diagnostic: a session without its cgroups (`run --no-cgroups`):
    /// what the session's cgroups add.
    SessionNoCgroups,
    /// Diagnostic: the session's namespaces only (`unshare --user
    /// --map-root-user --pid --fork --mount --ipc --uts --net`), no
    /// seccomp, no dropped capabilities, no cgroups, no new root: what the
    /// namespaces alone cost.
    NamespacesOnly,
    /// Diagnostic: the bare server under a one-instruction
    /// allow-everything seccomp filter (`mobidesk-syscall-bench
    /// --under-seccomp-floor`): what *any* seccomp filter costs on this
    /// kernel, the floor under the session's figures.
    SeccompFloor,
}

/// How many sides there are.
const SIDES: usize = Where::ALL.len();

impl Where {
    /// Every subject, the baseline first: the order of the report's columns.
    pub const ALL: [Where; 5] = [
        Where::BareServer,
        Where::Session,
        Where::SessionNoCgroups,
        Where::NamespacesOnly,
        Where::SeccompFloor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Where::BareServer => "bare-server",
            Where::Session => "session",
            Where::SessionNoCgroups => "session-no-cgroups",
            Where::NamespacesOnly => "namespaces-only",
            Where::SeccompFloor => "seccomp-floor",
        }
    }

    fn index(self) -> usize {
        match self {
            Where::BareServer => 0,
            Where::Session => 1,
            Where::SessionNoCgroups => 2,
            Where::NamespacesOnly => 3,
            Where::SeccompFloor => 4,
        }
    }
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl Subject for Where {
    fn role(self) -> Role {
        match self {
            Where::BareServer => Role::Baseline,
            Where::Session
            | Where::SessionNoCgroups
            | Where::NamespacesOnly
            | Where::SeccompFloor => Role::Candidate,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Where::BareServer => "a plain process on the server (no namespaces, no seccomp, no session cgroups)",
            Where::Session => {
                "inside a session: mobidesk-sessiond run (user/pid/mount/ipc/uts/net/cgroup namespaces, seccomp, dropped capabilities, its own cgroups)"
            }
            Where::SessionNoCgroups => {
                "diagnostic: a session without its own cgroups (mobidesk-sessiond run --no-cgroups)"
            }
            Where::NamespacesOnly => {
                "diagnostic: the namespaces only (unshare -U -r -p -f -m -i -u -n): no seccomp, capabilities, cgroups or new root"
            }
            Where::SeccompFloor => {
                "diagnostic: the bare server under a one-instruction allow-everything seccomp filter: what any seccomp filter costs on this kernel"
            }
        }
    }

    fn pinning(settings: &Settings) -> String {
        match settings.endpoints_cpu {
            Some(cpu) => format!(
                "every benchmarked process (and the session around it) pinned to CPU {cpu}; the sides' rounds alternate"
            ),
            None => "not pinned; the sides' rounds alternate".into(),
        }
    }
}

/// A part of the sessiond benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The Table 2 micro-benchmarks.
    Table2,
    /// The application workload (a parallel build).
    Build,
    /// Idle desktop sessions: memory and CPU per session.
    Idle,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Table2, Part::Build, Part::Idle];
}

/// What to run, and with which binaries.
#[derive(Debug, Clone)]
pub struct SessiondOptions {
    pub parts: Vec<Part>,
    /// `smoke` and the CPU to pin to (`endpoints_cpu`).
    pub settings: Settings,
    /// The `mobidesk-sessiond` binary.
    pub sessiond: PathBuf,
    /// The `mobidesk-syscall-bench` binary.
    pub syscall_bench: PathBuf,
    /// Rounds per side (bare and session alternate); None: 5, smoke 1.
    pub rounds: Option<usize>,
    /// Idle desktop sessions to start; None: 5, smoke 1.
    pub sessions: Option<usize>,
    /// The display server (`mobidesk-display`) to run in each idle desktop
    /// session, as a real desktop session has one; None: without.
    pub display_server: Option<PathBuf>,
}

impl SessiondOptions {
    /// Every part, pinned to the first allowed CPU, the binaries found next
    /// to this program (see [`find_binary`]).
    pub fn all(smoke: bool) -> Result<SessiondOptions> {
        Ok(SessiondOptions {
            parts: Part::ALL.to_vec(),
            settings: Settings::new(smoke),
            sessiond: find_binary("mobidesk-sessiond", "MOBIDESK_SESSIOND")?,
            syscall_bench: find_binary("mobidesk-syscall-bench", "MOBIDESK_SYSCALL_BENCH")?,
            rounds: None,
            sessions: None,
            display_server: find_binary("mobidesk-display", "MOBIDESK_DISPLAY").ok(),
        })
    }
}

/// `name`: from the environment variable `env`, else next to this program
/// (or one directory up, for test binaries in `target/*/deps`).
pub fn find_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "{env}={} is not a file", p.display());
        return Ok(p);
    }
    let me = std::env::current_exe().context("locating this program")?;
    let mut dir = me.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    bail!(
        "{name} not found next to {} (build it: `cargo build --release -p {}`, or set {env})",
        me.display(),
        if name == "mobidesk-sessiond" {
            "mobidesk-sessiond"
        } else {
            "mobidesk-bench"
        }
    )
}

// ---------------------------------------------------------------------------
// Metrics

macro_rules! op_metric {
    ($id:ident, $name:literal, $desc:literal) => {
        pub static $id: Metric = Metric {
            name: $name,
            unit: "ns/op",
            higher_is_better: false,
            description: $desc,
        };
    };
}

op_metric!(GETPID, "table2.getpid", "getpid, the raw system call");
op_metric!(
    FIONREAD,
    "table2.fionread",
    "ioctl(FIONREAD) on an empty pipe"
);
op_metric!(
    SHM,
    "table2.shmget_shmctl",
    "shmget(IPC_PRIVATE) of an int-sized segment + shmctl(IPC_RMID)"
);
op_metric!(
    SEM,
    "table2.semget_semctl",
    "semget(IPC_PRIVATE) of one semaphore + semctl(IPC_RMID)"
);
op_metric!(
    FORK_EXIT,
    "table2.fork_exit",
    "fork, the child _exits at once, waitpid"
);
op_metric!(
    FORK_SH,
    "table2.fork_sh",
    "fork, the child execs /bin/sh -c true, waitpid"
);

/// The micro-benchmarks in `mobidesk-syscall-bench`'s names.
const OPS: [(&str, &Metric); 6] = [
    ("getpid", &GETPID),
    ("fionread", &FIONREAD),
    ("shmget_shmctl", &SHM),
    ("semget_semctl", &SEM),
    ("fork_exit", &FORK_EXIT),
    ("fork_sh", &FORK_SH),
];

pub static BUILD: Metric = Metric {
    name: "app.build",
    unit: "s",
    higher_is_better: false,
    description: "parallel build: make -j2, gcc -O2 of generated C files and a link, one CPU",
};

pub static IDLE_PSS: Metric = Metric {
    name: "idle_desktop.memory_pss",
    unit: "MiB/session",
    higher_is_better: false,
    description: "idle desktop session (Xvfb + openbox + xterm [+ mobidesk-display]): PSS of all its processes",
};

pub static IDLE_CGROUP: Metric = Metric {
    name: "idle_desktop.memory_cgroup",
    unit: "MiB/session",
    higher_is_better: false,
    description:
        "idle desktop session: its memory cgroup's usage (incl. page cache it was charged)",
};

pub static IDLE_CPU: Metric = Metric {
    name: "idle_desktop.cpu",
    unit: "%/session",
    higher_is_better: false,
    description: "idle desktop session: CPU time of its tasks over the idle window, % of one CPU",
};

pub static IDLE_PER_CORE: Metric = Metric {
    name: "idle_desktop.sessions_per_core",
    unit: "sessions",
    higher_is_better: true,
    description: "idle desktop sessions one core holds: min(100% / CPU per session, memory / PSS per session / cores)",
};

pub static METRICS: &[&Metric] = &[
    &GETPID,
    &FIONREAD,
    &SHM,
    &SEM,
    &FORK_EXIT,
    &FORK_SH,
    &BUILD,
    &IDLE_PSS,
    &IDLE_CGROUP,
    &IDLE_CPU,
    &IDLE_PER_CORE,
];

/// The overhead goal of issue 5 for every Table 2 figure: session ≤ 1.03 ×
/// bare.
pub const OVERHEAD_GOAL: f64 = 1.03;
/// The density goal of issue 5: idle desktop sessions per core.
pub const SESSIONS_PER_CORE_GOAL: f64 = 25.0;

// ---------------------------------------------------------------------------
// The run

/// Runs the selected parts; the report has a `bare-server` and a `session`
/// column and the ratio session / bare, plus notes on the goals.
pub fn run(o: &SessiondOptions) -> Result<Report<Where>> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: sessions need namespaces and cgroups"
    );
    for (what, p) in [
        ("sessiond", &o.sessiond),
        ("syscall bench", &o.syscall_bench),
    ] {
        ensure!(
            p.is_file(),
            "the {what} binary {} does not exist",
            p.display()
        );
    }
    let smoke = o.settings.smoke;
    let rounds = o.rounds.unwrap_or(if smoke { 1 } else { 5 }).clamp(1, 100);
    let work = WorkDir::new()?;
    let bin = work.path.join("bin");
    std::fs::create_dir_all(&bin)?;
    // A copy, so that the bind's source stays the same file while cargo
    // rebuilds the original.
    let bench_copy = bin.join("mobidesk-syscall-bench");
    std::fs::copy(&o.syscall_bench, &bench_copy).context("copying the syscall bench")?;
    if let Some(ds) = &o.display_server {
        std::fs::copy(ds, bin.join("mobidesk-display"))
            .with_context(|| format!("copying the display server {}", ds.display()))?;
    }
    let runner = Runner {
        sessiond: o.sessiond.clone(),
        cpu: o.settings.endpoints_cpu,
        work: work.path.clone(),
        bin_dir: bin,
        display_server: o.display_server.clone(),
    };
    let mut report = Report::of(o.settings);
    for side in Where::ALL {
        report.add_subject(side, None);
    }
    // Per metric, the fastest round of each side.
    let mut fastest: Vec<(&'static Metric, [f64; SIDES])> = Vec::new();
    if o.parts.contains(&Part::Table2) {
        stop_if_interrupted()?;
        let (measured, mins) = table2(&runner, rounds, smoke)?;
        for (side, m) in Where::ALL.into_iter().zip(measured) {
            report.add_measurements(side, m);
        }
        fastest.extend(mins);
    }
    if o.parts.contains(&Part::Build) {
        stop_if_interrupted()?;
        let (measured, mins) = build(&runner, rounds.min(3), smoke)?;
        for (side, m) in Where::ALL.into_iter().zip(measured) {
            report.add_measurements(side, vec![m]);
        }
        fastest.push((&BUILD, mins));
    }
    if o.parts.contains(&Part::Idle) {
        stop_if_interrupted()?;
        let k = o
            .sessions
            .unwrap_or(if smoke { 1 } else { 5 })
            .clamp(1, 200);
        report.add_measurements(Where::Session, idle_desktops(&runner, k, smoke)?);
    }
    for r in &report.results {
        if let Some(v) = r.value {
            // An idle session may truly use no CPU in the window.
            let zero_ok = r.name == IDLE_CPU.name;
            ensure!(
                v.is_finite() && (v > 0.0 || (zero_ok && v == 0.0)),
                "{} [{}] measured {v} {}: not a sane figure ({})",
                r.name,
                r.path,
                r.unit,
                r.detail
            );
        }
    }
    report.compute_ratios();
    report.notes = goal_notes(&report);
    if !fastest.is_empty() {
        // Other work on the machine only ever slows a round down: the
        // fastest rounds are the least disturbed.
        let line = |side: Where| {
            fastest
                .iter()
                .map(|(m, v)| {
                    let (b, x) = (v[Where::BareServer.index()], v[side.index()]);
                    format!("{} {:.2}x", m.name, x / b)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        report.notes.insert(
            0,
            format!(
                "fastest round of each side (least disturbed by other load), session / bare: {}",
                line(Where::Session)
            ),
        );
        report.notes.insert(
            1,
            format!(
                "  the same, session-no-cgroups / bare: {}; namespaces-only / bare: {}; seccomp-floor / bare: {}",
                line(Where::SessionNoCgroups),
                line(Where::NamespacesOnly),
                line(Where::SeccompFloor)
            ),
        );
    }
    Ok(report)
}

/// One line per goal: met or missed, with the figure.
fn goal_notes(report: &Report<Where>) -> Vec<String> {
    let mut notes = Vec::new();
    let over: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.path == Where::Session)
        .filter_map(|r| Some((r, r.ratio_vs_baseline?)))
        .map(|(r, ratio)| {
            let floor = report
                .get(&r.name, Where::SeccompFloor)
                .and_then(|f| f.ratio_vs_baseline)
                .map(|f| format!(" (any seccomp filter: {:+.1}%)", (f - 1.0) * 100.0))
                .unwrap_or_default();
            format!(
                "{} {:+.1}% {}{floor}",
                r.name,
                (ratio - 1.0) * 100.0,
                if ratio <= OVERHEAD_GOAL { "ok" } else { "OVER" }
            )
        })
        .collect();
    if !over.is_empty() {
        notes.push(format!(
            "goal: session overhead <= {:.0}% on each: {}",
            (OVERHEAD_GOAL - 1.0) * 100.0,
            over.join(", ")
        ));
    }
    if let Some(v) = report
        .get(IDLE_PER_CORE.name, Where::Session)
        .and_then(|r| r.value)
    {
        notes.push(format!(
            "goal: >= {SESSIONS_PER_CORE_GOAL:.0} idle desktop sessions per core: {v:.0} ({})",
            if v >= SESSIONS_PER_CORE_GOAL {
                "met"
            } else {
                "MISSED"
            }
        ));
    }
    if report.settings.smoke {
        notes.push("(smoke run: the figures only show that the benchmarks work)".into());
    }
    notes
}

/// The order of the sides in round `round`: rotated by one each round, so
/// that every side runs first, second, ... equally often.
fn order(round: usize) -> [Where; SIDES] {
    let mut sides = Where::ALL;
    sides.rotate_left(round % Where::ALL.len());
    sides
}

/// Runs `command` (host paths for the bare server and the namespaces,
/// session paths in a session) on `side` to its end; its stdout.
fn on_side(
    r: &Runner,
    side: Where,
    profile: &FsPath,
    home: Option<&FsPath>,
    command: &[String],
    limit: Duration,
) -> Result<String> {
    let what = format!("`{}` ({side})", command.join(" "));
    match side {
        Where::BareServer => {
            let mut cmd = r.pinned(FsPath::new(&command[0]));
            cmd.args(&command[1..]);
            r.output(cmd, limit, &what)
        }
        Where::NamespacesOnly => {
            let mut cmd = r.pinned(FsPath::new("unshare"));
            cmd.args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--mount",
                "--ipc",
                "--uts",
                "--net",
                "--",
            ])
            .args(command);
            r.output(cmd, limit, &what)
        }
        Where::SeccompFloor => {
            let mut cmd = r.pinned(&r.bin_dir.join("mobidesk-syscall-bench"));
            cmd.arg("--under-seccomp-floor").args(command);
            r.output(cmd, limit, &what)
        }
        Where::Session => r.in_session(profile, home, command, limit, true),
        Where::SessionNoCgroups => r.in_session(profile, home, command, limit, false),
    }
}

/// The Table 2 micro-benchmarks: `rounds` invocations per side, the sides
/// alternating ([`order`]); each invocation runs every op for 3 rounds (1
/// in smoke mode). The figure is the median over all rounds of a side.
#[allow(clippy::type_complexity)]
fn table2(
    r: &Runner,
    rounds: usize,
    smoke: bool,
) -> Result<(
    [Vec<Measurement>; SIDES],
    Vec<(&'static Metric, [f64; SIDES])>,
)> {
    let mut args: Vec<String> = vec!["--rounds".into(), if smoke { "1" } else { "3" }.into()];
    if smoke {
        args.extend(["--scale".into(), "0.01".into()]);
    }
    if let Some(cpu) = r.cpu {
        args.extend(["--cpu".into(), cpu.to_string()]);
    }
    let profile = r.profile(TABLE2_PROFILE, "table2")?;
    // Per side and op: every round's ns/op.
    let mut samples: [Vec<Vec<f64>>; SIDES] = std::array::from_fn(|_| vec![Vec::new(); OPS.len()]);
    let limit = Duration::from_secs(if smoke { 60 } else { 300 });
    for round in 0..rounds {
        for side in order(round) {
            stop_if_interrupted()?;
            tracing::info!(round, %side, "table2 micro-benchmarks");
            let program = match side {
                Where::BareServer | Where::NamespacesOnly | Where::SeccompFloor => r
                    .bin_dir
                    .join("mobidesk-syscall-bench")
                    .display()
                    .to_string(),
                Where::Session | Where::SessionNoCgroups => {
                    format!("{BIN_DIR}/mobidesk-syscall-bench")
                }
            };
            let mut cmd = vec![program];
            cmd.extend(args.iter().cloned());
            let out = on_side(r, side, &profile, None, &cmd, limit)?;
            let parsed = parse_syscall_bench(&out)
                .with_context(|| format!("mobidesk-syscall-bench output ({side})"))?;
            for (i, (name, _)) in OPS.iter().enumerate() {
                let rounds = parsed
                    .iter()
                    .find(|o| o.name == *name)
                    .with_context(|| format!("no {name} in the output ({side})"))?;
                samples[side.index()][i].extend(&rounds.rounds_ns_per_op);
            }
        }
    }
    let measure = |side: usize| -> Vec<Measurement> {
        OPS.iter()
            .zip(&samples[side])
            .map(|((_, metric), s)| {
                Measurement::new(
                    metric,
                    median(s),
                    format!(
                        "median of {} rounds ({} per side, alternating), range {:.0}-{:.0} ns",
                        s.len(),
                        rounds,
                        s.iter().copied().fold(f64::INFINITY, f64::min),
                        s.iter().copied().fold(0.0, f64::max)
                    ),
                )
            })
            .collect()
    };
    let mins = OPS
        .iter()
        .enumerate()
        .map(|(i, (_, metric))| (*metric, std::array::from_fn(|side| min(&samples[side][i]))))
        .collect();
    Ok((std::array::from_fn(measure), mins))
}

/// One op of `mobidesk-syscall-bench`'s JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct OpResult {
    pub(crate) name: String,
    pub(crate) ns_per_op: f64,
    pub(crate) rounds_ns_per_op: Vec<f64>,
}

/// Reads the JSON object `mobidesk-syscall-bench` prints (the last line of
/// `out` that starts with `{`: sessiond may print its own lines).
pub(crate) fn parse_syscall_bench(out: &str) -> Result<Vec<OpResult>> {
    #[derive(Deserialize)]
    struct Output {
        ops: Vec<OpResult>,
    }
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON in {:?}", out.trim()))?;
    let parsed: Output = serde_json::from_str(line).context("parsing the JSON")?;
    for op in &parsed.ops {
        ensure!(
            !op.rounds_ns_per_op.is_empty()
                && op
                    .rounds_ns_per_op
                    .iter()
                    .all(|v| v.is_finite() && *v > 0.0),
            "{}: no sane rounds in {:?}",
            op.name,
            op.rounds_ns_per_op
        );
    }
    Ok(parsed.ops)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

// ---------------------------------------------------------------------------
// The application workload

/// Generated C files (full run; smoke: 4).
const BUILD_FILES: usize = 40;
/// Functions per file.
const BUILD_FUNCTIONS: usize = 12;

/// The parallel build, `rounds` per side, alternating; each side builds in
/// a tree of its own (copies of the same sources) on the same file system;
/// the figure is the median build time.
fn build(r: &Runner, rounds: usize, smoke: bool) -> Result<([Measurement; SIDES], [f64; SIDES])> {
    for tool in ["make", "gcc"] {
        ensure!(
            which(tool),
            "the build workload needs `{tool}` (Debian: build-essential)"
        );
    }
    let files = if smoke { 4 } else { BUILD_FILES };
    let bare_dir = r.work.join("build-bare");
    let ns_dir = r.work.join("build-ns");
    let home = r.work.join("home");
    // The session's root (host uid 100000 with the user namespace) owns its
    // home, as on shared storage. Both sessions build there, in turn.
    write_build_tree(&bare_dir, files)?;
    write_build_tree(&ns_dir, files)?;
    write_build_tree(&home.join("build"), files)?;
    chown_tree(&home, 100_000, 100_000)?;
    let profile = r.profile(TABLE2_PROFILE, "build")?;
    // Timed inside, the `make clean` before each build left out.
    let script = |dir: &str| -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "cd {dir} && make -s clean && s=$(date +%s%N) && make -s -j2 >/dev/null && e=$(date +%s%N) && echo \"build_ns $((e - s))\""
            ),
        ]
    };
    let limit = Duration::from_secs(if smoke { 60 } else { 300 });
    let mut times: [Vec<f64>; SIDES] = Default::default();
    // One untimed build per side first: page cache, gcc's files.
    for warm in [true, false] {
        let n = if warm { 1 } else { rounds };
        for round in 0..n {
            for side in order(round) {
                stop_if_interrupted()?;
                tracing::info!(round, %side, warm, "build");
                let (command, home) = match side {
                    Where::BareServer | Where::SeccompFloor => {
                        (script(&bare_dir.display().to_string()), None)
                    }
                    Where::NamespacesOnly => (script(&ns_dir.display().to_string()), None),
                    Where::Session | Where::SessionNoCgroups => {
                        (script("/home/user/build"), Some(home.as_path()))
                    }
                };
                let out = on_side(r, side, &profile, home, &command, limit)?;
                let ns: f64 = out
                    .lines()
                    .find_map(|l| l.strip_prefix("build_ns "))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("no build time in {:?} ({side})", out.trim()))?;
                if !warm {
                    times[side.index()].push(ns / 1e9);
                }
            }
        }
    }
    let m = |side: usize| {
        let t = &times[side];
        Measurement::new(
            &BUILD,
            median(t),
            format!(
                "{files} files x {BUILD_FUNCTIONS} functions + link, median of {} builds (alternating, after one warm-up each), range {:.2}-{:.2} s",
                t.len(),
                t.iter().copied().fold(f64::INFINITY, f64::min),
                t.iter().copied().fold(0.0, f64::max)
            ),
        )
    };
    Ok((
        std::array::from_fn(m),
        std::array::from_fn(|side| min(&times[side])),
    ))
}

/// Writes `files` generated C files, a `main.c` and a Makefile into `dir`.
fn write_build_tree(dir: &FsPath, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for i in 0..files {
        let mut c = String::from("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n");
        for j in 0..BUILD_FUNCTIONS {
            c.push_str(&format!(
                r#"
static int cmp_{j}(const void *a, const void *b) {{ return *(const int *)a - *(const int *)b; }}
long f{i}_{j}(int n) {{
    int *v = malloc((size_t)n * sizeof *v);
    long acc = {j};
    char buf[64];
    if (!v) return -1;
    for (int k = 0; k < n; k++) v[k] = (k * {m}) % {d};
    qsort(v, (size_t)n, sizeof *v, cmp_{j});
    for (int k = 0; k < n; k++) {{
        switch (v[k] % 4) {{
        case 0: acc += v[k]; break;
        case 1: acc ^= (long)v[k] << 3; break;
        case 2: acc -= k; break;
        default: snprintf(buf, sizeof buf, "%d", v[k]); acc += (long)strlen(buf);
        }}
    }}
    free(v);
    return acc;
}}
"#,
                m = i + 7,
                d = j + 13
            ));
        }
        std::fs::write(dir.join(format!("f{i}.c")), c)?;
    }
    std::fs::write(dir.join("main.c"), "int main(void) { return 0; }\n")?;
    std::fs::write(
        dir.join("Makefile"),
        "SRCS := $(sort $(wildcard f*.c)) main.c\nOBJS := $(SRCS:.c=.o)\n\
         prog: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n\
         %.o: %.c\n\t$(CC) -O2 -c -o $@ $<\n\
         clean:\n\trm -f prog $(OBJS)\n",
    )?;
    Ok(())
}

fn chown_tree(dir: &FsPath, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            chown_tree(&p, uid, gid)?;
        } else {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

// ---------------------------------------------------------------------------
// Idle desktop sessions

/// What runs in each idle desktop session, as sessiond's own desktop
/// (`sessiond/src/desktop.rs`) starts it: Xvfb with its framebuffer in a
/// file (`-fbdir`), which writes its display number to a FIFO once it
/// accepts connections (`-displayfd`; EOF if it dies); then openbox, an
/// xterm and, when given (`@DS@`), the display server `mobidesk-display`;
/// `ready` once all were started, then the script waits.
const DESKTOP_SCRIPT: &str = r#"mkdir -p /run/mobidesk/fb && mkfifo /tmp/.xready || exit 1
Xvfb :1 -screen 0 1024x768x24 -nolisten tcp -noreset -fbdir /run/mobidesk/fb -displayfd 3 3>/tmp/.xready &
read d </tmp/.xready
rm -f /tmp/.xready
[ "$d" = 1 ] || { echo "Xvfb did not start"; exit 1; }
export DISPLAY=:1
openbox >/dev/null 2>&1 &
xterm >/dev/null 2>&1 &
ds='@DS@'
if [ -n "$ds" ]; then
  "$ds" --display :1 --listen 0.0.0.0:5901 --fbdir /run/mobidesk/fb --insecure-plaintext >/dev/null 2>&1 &
fi
echo ready
wait
"#;

/// Starts `k` idle desktop sessions, waits until each says ready, lets them
/// settle, then measures memory and CPU per session.
fn idle_desktops(r: &Runner, k: usize, smoke: bool) -> Result<Vec<Measurement>> {
    for tool in ["Xvfb", "openbox", "xterm"] {
        ensure!(
            which(tool),
            "the idle desktop benchmark needs `{tool}` (Debian: xvfb, openbox, xterm)"
        );
    }
    let cgroups = Cgroups::detect()?;
    let profile = r.profile(DESKTOP_PROFILE, "desktop")?;
    let (settle, window) = if smoke {
        (Duration::from_secs(1), Duration::from_secs(1))
    } else {
        (Duration::from_secs(10), Duration::from_secs(10))
    };
    let script = match &r.display_server {
        Some(_) => DESKTOP_SCRIPT.replace("@DS@", &format!("{BIN_DIR}/mobidesk-display")),
        None => DESKTOP_SCRIPT.replace("@DS@", ""),
    };
    let what = if r.display_server.is_some() {
        "Xvfb + openbox + xterm + mobidesk-display"
    } else {
        "Xvfb + openbox + xterm, no display server"
    };
    let mut sessions = Vec::new();
    for i in 0..k {
        stop_if_interrupted()?;
        let id = unique_id(&format!("idle{i}"));
        tracing::info!(session = %id, "starting an idle desktop session");
        let mut s = r.start_session(&profile, &id, &["sh".into(), "-c".into(), script.clone()])?;
        s.wait_for_line("ready", Duration::from_secs(30))?;
        sessions.push(s);
    }
    tracing::info!(sessions = k, ?settle, "settling");
    sleep_unless_interrupted(settle)?;
    let groups: Vec<SessionGroups> = sessions
        .iter()
        .map(|s| SessionGroups::of(&cgroups, &s.id))
        .collect();
    // Memory: after settling.
    let mut pss = Vec::new();
    let mut charged = Vec::new();
    let mut procs = Vec::new();
    for g in &groups {
        let pids = g.pids()?;
        ensure!(
            pids.len() >= 4,
            "session {}: only {} processes",
            g.id,
            pids.len()
        );
        procs.push(pids.len());
        pss.push(pids.iter().map(|p| pss_kib(*p)).sum::<u64>() as f64 / 1024.0);
        charged.push(g.memory_bytes()? as f64 / (1024.0 * 1024.0));
    }
    // CPU: run time of every task of the session over the window.
    let before: Vec<u64> = groups.iter().map(|g| g.cpu_ns()).collect::<Result<_>>()?;
    let started = Instant::now();
    sleep_unless_interrupted(window)?;
    let after: Vec<u64> = groups.iter().map(|g| g.cpu_ns()).collect::<Result<_>>()?;
    let elapsed = started.elapsed().as_nanos() as f64;
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / elapsed * 100.0)
        .collect();
    for mut s in sessions {
        s.stop()?;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (pss_mean, charged_mean, cpu_mean) = (mean(&pss), mean(&charged), mean(&cpu));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mem_mib = mem_total_mib()?;
    // An idle desktop may use no CPU at all over the window (nothing in
    // Xvfb, openbox, xterm or the display server wakes up by itself): then
    // only memory bounds the density.
    let by_cpu = if cpu_mean > 0.0 {
        100.0 / cpu_mean
    } else {
        f64::INFINITY
    };
    let by_mem = mem_mib / pss_mean / cores;
    let cpu_bound = if by_cpu.is_finite() {
        format!("{by_cpu:.0} (100% / {cpu_mean:.4}%)")
    } else {
        "no bound (no CPU time at all in the window)".into()
    };
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Ok(vec![
        Measurement::new(
            &IDLE_PSS,
            pss_mean,
            format!(
                "{what}; mean of {k} sessions after {settle:?} settling ({} MiB each; {} processes each)",
                list(&pss, 1),
                procs
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        Measurement::new(
            &IDLE_CGROUP,
            charged_mean,
            format!(
                "mean of {k} sessions ({} MiB each; shared files are charged to the first session that read them)",
                list(&charged, 1)
            ),
        ),
        Measurement::new(
            &IDLE_CPU,
            cpu_mean,
            format!(
                "mean of {k} sessions over a {window:?} idle window ({} % each)",
                list(&cpu, 4)
            ),
        ),
        Measurement::new(
            &IDLE_PER_CORE,
            by_cpu.min(by_mem),
            format!(
                "by CPU {cpu_bound}, by memory {by_mem:.0} ({mem_mib:.0} MiB / {pss_mean:.1} MiB / {cores:.0} cores)"
            ),
        ),
    ])
}

/// The group sessiond puts every session's groups under
/// (`mobidesk_sessiond::cgroup::PARENT`; sessiond's README: `mobidesk/<id>`).
const CGROUP_PARENT: &str = "mobidesk";

/// Where the cgroup hierarchies are, as sessiond decides it (its README):
/// v2 when a cgroup2 mount offers `memory` and `pids`, else the v1
/// `memory` and `pids` hierarchies.
enum Cgroups {
    V2 { root: PathBuf },
    V1 { memory: PathBuf, pids: PathBuf },
}

impl Cgroups {
    fn detect() -> Result<Cgroups> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        let (mut memory, mut pids) = (None, None);
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4).map(PathBuf::from) else {
                continue;
            };
            let mut r = right.split(' ');
            match (r.next(), r.nth(1)) {
                (Some("cgroup2"), _) => {
                    let ctl = std::fs::read_to_string(mount.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
                    if has("memory") && has("pids") {
                        return Ok(Cgroups::V2 { root: mount });
                    }
                }
                (Some("cgroup"), Some(options)) => {
                    for o in options.split(',') {
                        match o {
                            "memory" if memory.is_none() => memory = Some(mount.clone()),
                            "pids" if pids.is_none() => pids = Some(mount.clone()),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        match (memory, pids) {
            (Some(memory), Some(pids)) => Ok(Cgroups::V1 { memory, pids }),
            _ => bail!("no cgroup memory and pids controllers (v1 or v2) on this host"),
        }
    }
}

/// The cgroup directories of one session (v1: memory and pids hierarchies;
/// v2: one group).
struct SessionGroups {
    id: String,
    memory: PathBuf,
    pids: PathBuf,
    v2: bool,
}

impl SessionGroups {
    fn of(m: &Cgroups, id: &str) -> SessionGroups {
        match m {
            Cgroups::V2 { root } => {
                let g = root.join(CGROUP_PARENT).join(id);
                SessionGroups {
                    id: id.into(),
                    memory: g.clone(),
                    pids: g,
                    v2: true,
                }
            }
            Cgroups::V1 { memory, pids } => SessionGroups {
                id: id.into(),
                memory: memory.join(CGROUP_PARENT).join(id),
                pids: pids.join(CGROUP_PARENT).join(id),
                v2: false,
            },
        }
    }

    fn pids(&self) -> Result<Vec<u32>> {
        let f = self.pids.join("cgroup.procs");
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn memory_bytes(&self) -> Result<u64> {
        let f = self.memory.join(if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        });
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", f.display()))
    }

    /// The CPU time of every task (thread) of the session's processes, from
    /// `/proc/PID/task/TID/schedstat` (ns on the CPU). The v1 `cpu`
    /// hierarchy has no usage counter here (`cpuacct` is mounted apart and
    /// sessiond does not use it).
    fn cpu_ns(&self) -> Result<u64> {
        let mut total = 0;
        for pid in self.pids()? {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue; // gone since the listing
            };
            for t in tasks.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    total += s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
        Ok(total)
    }
}

/// `Pss:` of `/proc/PID/smaps_rollup` in KiB (0 for a process that is gone).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mem_total_mib() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(kib / 1024.0)
}

// ---------------------------------------------------------------------------
// Running things on the server and in sessions

struct Runner {
    sessiond: PathBuf,
    cpu: Option<usize>,
    /// The run's scratch directory.
    work: PathBuf,
    /// Bound read-only at [`BIN_DIR`] in every session.
    bin_dir: PathBuf,
    /// Whether `mobidesk-display` is in `bin_dir`.
    display_server: Option<PathBuf>,
}

impl Runner {
    /// `profile_text` with the benchmark's binaries bound at [`BIN_DIR`],
    /// written to the scratch directory as `<name>.toml`.
    /// sessiond checks the result when it loads it.
    fn profile(&self, profile_text: &str, name: &str) -> Result<PathBuf> {
        let mut p: toml::Table =
            toml::from_str(profile_text).with_context(|| format!("profile {name}"))?;
        let root = p
            .entry("root")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(root) = root else {
            bail!("profile {name}: [root] is not a table");
        };
        let binds = root
            .entry("binds")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(binds) = binds else {
            bail!("profile {name}: root.binds is not an array");
        };
        let mut bind = toml::Table::new();
        bind.insert("source".into(), self.bin_dir.display().to_string().into());
        bind.insert("target".into(), BIN_DIR.into());
        binds.push(toml::Value::Table(bind));
        let file = self.work.join(format!("{name}.toml"));
        std::fs::write(&file, toml::to_string(&p).context("writing the profile")?)?;
        Ok(file)
    }

    /// `program`, pinned (taskset execs it: the pid stays the program's).
    fn pinned(&self, program: &FsPath) -> Command {
        match self.cpu {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(cpu.to_string()).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `mobidesk-sessiond run ...` for `command`, pinned.
    fn session_command(
        &self,
        profile: &FsPath,
        id: &str,
        home: Option<&FsPath>,
        command: &[String],
        cgroups: bool,
    ) -> Command {
        let mut cmd = self.pinned(&self.sessiond);
        cmd.arg("run");
        if !cgroups {
            cmd.arg("--no-cgroups");
        }
        cmd.arg("--profile").arg(profile).arg("--id").arg(id);
        if let Some(h) = home {
            cmd.arg("--home").arg(h);
        }
        cmd.arg("--").args(command);
        cmd
    }

    /// Runs `command` in a fresh session to its end; its stdout.
    fn in_session(
        &self,
        profile: &FsPath,
        home: Option<&FsPath>,
        command: &[String],
        limit: Duration,
        cgroups: bool,
    ) -> Result<String> {
        let id = unique_id("t2");
        let cmd = self.session_command(profile, &id, home, command, cgroups);
        self.output(
            cmd,
            limit,
            &format!("`{}` in session {id}", command.join(" ")),
        )
    }

    /// Runs `cmd` to its end within `limit` (then TERM, which a sessiond
    /// run passes on by stopping its session, then KILL); its stdout, or
    /// an error with its stderr when it failed.
    fn output(&self, mut cmd: Command, limit: Duration, what: &str) -> Result<String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Tracked::spawn(&mut cmd).with_context(|| format!("starting {what}"))?;
        let (stdout, stderr) = (child.0.stdout.take(), child.0.stderr.take());
        let out = read_all_thread(stdout);
        let err = read_all_thread(stderr);
        let status = child.wait_within(limit)?;
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(out),
            Some(s) => bail!("{what} failed ({s}): {}{}", err.trim(), out.trim()),
            None => bail!("{what} did not finish within {limit:?} and was stopped"),
        }
    }

    /// Starts a long-running session; its stdout lines can be awaited.
    fn start_session(&self, profile: &FsPath, id: &str, command: &[String]) -> Result<LiveSession> {
        let mut cmd = self.session_command(profile, id, None, command, true);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            Tracked::spawn(&mut cmd).with_context(|| format!("starting session {id}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.0.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.0.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(format!("stderr: {line}"));
                }
            });
        }
        Ok(LiveSession {
            id: id.into(),
            child,
            lines,
        })
    }
}

/// A `mobidesk-sessiond run` that keeps running (an idle desktop session).
struct LiveSession {
    id: String,
    child: Tracked,
    lines: mpsc::Receiver<String>,
}

impl LiveSession {
    /// Waits for the line `want` on the session command's stdout.
    fn wait_for_line(&mut self, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            stop_if_interrupted()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "session {}: no {want:?} within {timeout:?}; it said: {}",
                    self.id,
                    seen.join(" | ")
                );
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.trim() == want => return Ok(()),
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.0.wait()?;
                    bail!(
                        "session {} ended ({status}) before {want:?}: {}",
                        self.id,
                        seen.join(" | ")
                    );
                }
            }
        }
    }

    /// Stops the session (SIGTERM to its `run`, which ends it and removes
    /// its cgroups and layer).
    fn stop(&mut self) -> Result<()> {
        self.child.terminate();
        match self.child.wait_within(Duration::from_secs(20))? {
            Some(_) => Ok(()),
            None => bail!("session {} did not stop within 20 s; killed", self.id),
        }
    }
}

/// A child process registered for [`interrupt`], terminated when dropped.
struct Tracked(Child);

impl Tracked {
    fn spawn(cmd: &mut Command) -> std::io::Result<Tracked> {
        let child = cmd.spawn()?;
        lock_children().push(child.id());
        Ok(Tracked(child))
    }

    fn terminate(&self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Its status, or None when it had to be stopped after `limit` (TERM,
    /// then KILL 10 s later).
    fn wait_within(&mut self, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                self.terminate();
                let kill_at = Instant::now() + Duration::from_secs(10);
                while Instant::now() < kill_at {
                    if self.0.try_wait()?.is_some() {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = self.0.kill();
                let _ = self.0.wait();
                return Ok(None);
            }
            // No pidfd in std's Child: poll, bounded by the deadline.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.wait_within(Duration::ZERO);
        }
        let pid = self.0.id();
        lock_children().retain(|p| *p != pid);
    }
}

fn read_all_thread(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock_children() -> MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// For a signal handler: SIGTERM to every process this benchmark started
/// (a `mobidesk-sessiond run` then stops its session and cleans up), so
/// that the run fails at once and unwinds.
pub fn interrupt() {
    for pid in lock_children().iter() {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn stop_if_interrupted() -> Result<()> {
    if crate::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` (a measurement window or a settling time, not a wait for an
/// event), in slices so that an interrupt stops it.
fn sleep_unless_interrupted(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        stop_if_interrupted()?;
        std::thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    Ok(())
}

/// A session id no other run uses: `bench-<pid>-<what>-<n>`.
fn unique_id(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bench-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The run's scratch directory (profiles, the binary's copy, the build
/// trees), removed at the end. On the disk, not in /tmp: the build writes
/// to it on both sides alike.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new() -> Result<WorkDir> {
        let path = PathBuf::from(format!("/var/tmp/mobidesk-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // Sessions (host uid 100000) must reach the binaries below it.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_syscall_benchs_json_after_other_lines() {
        let out = "mobidesk-sessiond: session x started\n{\"pid\":2,\"rounds\":2,\"ops\":[{\"name\":\"getpid\",\"iters\":10,\"ns_per_op\":120.5,\"rounds_ns_per_op\":[120.0,121.0]}]}\n";
        let ops = parse_syscall_bench(out).unwrap();
        assert_eq!(
            ops,
            vec![OpResult {
                name: "getpid".into(),
                ns_per_op: 120.5,
                rounds_ns_per_op: vec![120.0, 121.0]
            }]
        );
        assert!(parse_syscall_bench("nothing").is_err());
        assert!(parse_syscall_bench(
            "{\"ops\":[{\"name\":\"getpid\",\"ns_per_op\":0,\"rounds_ns_per_op\":[0.0]}]}"
        )
        .is_err());
    }

    #[test]
    fn medians_and_goal_notes() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut r: Report<Where> = Report::of(Settings::new(false));
        r.add_subject(Where::BareServer, None);
        r.add_subject(Where::Session, None);
        r.add_measurements(
            Where::BareServer,
            vec![Measurement::new(&GETPID, 100.0, "d")],
        );
        r.add_measurements(Where::Session, vec![Measurement::new(&GETPID, 102.0, "d")]);
        r.add_measurements(
            Where::BareServer,
            vec![Measurement::new(&FIONREAD, 100.0, "d")],
        );
        r.add_measurements(
            Where::Session,
            vec![Measurement::new(&FIONREAD, 140.0, "d")],
        );
        r.add_measurements(
            Where::Session,
            vec![Measurement::new(&IDLE_PER_CORE, 30.0, "d")],
        );
        r.compute_ratios();
        let notes = goal_notes(&r).join("\n");
        assert!(notes.contains("table2.getpid +2.0% ok"), "{notes}");
        assert!(notes.contains("table2.fionread +40.0% OVER"), "{notes}");
        assert!(notes.contains("30 (met)"), "{notes}");
        r.notes = goal_notes(&r);
        let table = r.table();
        assert!(table.contains("session / baseline"), "{table}");
        assert!(table.contains("1.40x"), "{table}");
        let back: Report<Where> = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }
}
