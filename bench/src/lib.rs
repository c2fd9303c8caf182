//! The MobiDesk benchmark harness.
//!
//! Every benchmark runs on every selected [`Path`] — the *baseline* (kernel
//! IP forwarding through the lab) and the *candidate* (the user-space
//! dataplane) — on the same lab topology in the same run, and the
//! [`Report`] gives both figures and their ratio. A path that cannot run yet
//! says so in the report ("not implemented") instead of showing a number.
//!
//! The benchmarks (each a module):
//! - [`throughput`]: bulk TCP, one iperf3 stream, session → outside host and back;
//! - [`latency`]: sockperf TCP ping-pong with 64-byte messages, p50/p99;
//! - [`connect_rate`]: new TCP connections per second, session → outside host.
//!
//! [`display`] compares the display protocol with the VNC baselines
//! (TigerVNC, x11vnc) on the same X workload and lab link (issue 4).
//!
//! [`sessiond`] is of another kind: it compares a session with the bare
//! server (the paper's Table 2, a build, idle desktop sessions) and needs no
//! lab.
//!
//! Everything needs root: each path builds its own lab of network namespaces
//! ([`mobidesk_lab::Lab`]), which is removed again when the path is done —
//! also when a benchmark fails. The binary additionally removes the labs of
//! [`live_labs`] when it is interrupted by a signal.

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

pub mod connect_rate;
pub mod display;
pub mod latency;
pub mod path;
mod process;
pub mod report;
pub mod sessiond;
pub mod shm;
pub mod throughput;

pub use path::{interrupt, interrupted, live_labs, Path, PathSetup, Role, Testbed};
pub use report::{Measurement, Metric, Report, ResultRow, Status};

/// One benchmark (a subcommand of `mobidesk-bench`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Benchmark {
    Throughput,
    Latency,
    ConnectRate,
}

impl Benchmark {
    pub const ALL: [Benchmark; 3] = [
        Benchmark::Throughput,
        Benchmark::Latency,
        Benchmark::ConnectRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Throughput => "throughput",
            Benchmark::Latency => "latency",
            Benchmark::ConnectRate => "connect-rate",
        }
    }

    /// What the benchmark reports, whether or not a path can run it.
    pub fn metrics(self) -> &'static [&'static Metric] {
        match self {
            Benchmark::Throughput => throughput::METRICS,
            Benchmark::Latency => latency::METRICS,
            Benchmark::ConnectRate => connect_rate::METRICS,
        }
    }

    /// Runs the benchmark on a ready testbed.
    pub fn run(self, testbed: &Testbed, settings: &Settings) -> Result<Vec<Measurement>> {
        match self {
            Benchmark::Throughput => throughput::run(testbed, settings),
            Benchmark::Latency => latency::run(testbed, settings),
            Benchmark::ConnectRate => connect_rate::run(testbed, settings),
        }
    }
}

/// How every benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// A very short run of each benchmark: proves it works, gives no
    /// figure worth quoting.
    pub smoke: bool,
    /// The CPU that both ends of every benchmark (clients and servers:
    /// iperf3, sockperf, the connect-rate threads) are pinned to; None lets
    /// the scheduler place them.
    ///
    /// Pinned by default: on a small VM, where the scheduler happens to put
    /// the two ends decides the figure (same CPU or not: p50 latency 10.6
    /// or 33 µs, bulk TCP 8 to 17 Gbit/s between runs), which would make
    /// the candidate/baseline ratio luck.
    pub endpoints_cpu: Option<usize>,
    /// The CPU the path's own daemons (the dataplanes' threads) are pinned
    /// to; None lets the scheduler place them.
    ///
    /// By default the endpoints' CPU: the same one CPU the baseline has (the
    /// kernel forwards in the sender's softirq, on the endpoints' CPU). On
    /// another CPU a daemon has a CPU of its own, but every packet wakes a
    /// thread across CPUs, which costs about 20 µs on a small VM whose idle
    /// CPUs halt; unpinned, the scheduler picks either from run to run.
    #[serde(default)]
    pub daemons_cpu: Option<usize>,
}

impl Settings {
    /// Full or smoke run, endpoints and daemons on the first CPU this
    /// process may use.
    pub fn new(smoke: bool) -> Settings {
        let cpu = first_allowed_cpu();
        Settings {
            smoke,
            endpoints_cpu: cpu,
            daemons_cpu: cpu,
        }
    }
}

/// The lowest-numbered CPU this process may run on.
pub fn first_allowed_cpu() -> Option<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub benchmarks: Vec<Benchmark>,
    /// In this order; the baseline should come first (see [`Path::ALL`]).
    pub paths: Vec<Path>,
    pub settings: Settings,
}

impl Options {
    /// Every benchmark on every path, endpoints pinned.
    pub fn all(smoke: bool) -> Options {
        Options {
            benchmarks: Benchmark::ALL.to_vec(),
            paths: Path::ALL.to_vec(),
            settings: Settings::new(smoke),
        }
    }
}

/// Runs the selected benchmarks on every selected path, one path (one lab)
/// at a time, and returns the report with ratios filled in. A path that is
/// not implemented yet gets rows that say so; a benchmark that fails on a
/// path that is implemented fails the whole run.
pub fn run(options: &Options) -> Result<Report> {
    // The dataplanes run as threads of this process: with the allocator
    // settings of the mobidesk-dataplane binary, so that what is measured
    // is what ships (without them every VNIC's buffers are cleared in full).
    if !mobidesk_dataplane::io::tune_allocator() {
        tracing::warn!("could not tune the allocator; the dataplane's connection rate will be low");
    }
    let mut report = Report::new(options.settings);
    for &path in &options.paths {
        stop_if_interrupted()?;
        let setup = path
            .setup_pinned(options.settings.daemons_cpu)
            .with_context(|| format!("setting up path {path}"))?;
        let testbed = match setup {
            PathSetup::NotImplemented { reason } => {
                tracing::info!(%path, reason, "path not implemented");
                report.add_unavailable(path, reason, &options.benchmarks);
                continue;
            }
            PathSetup::Ready(testbed) => testbed,
        };
        tracing::info!(%path, lab = testbed.lab_name(), "testbed up");
        report.add_path(path, testbed.lab_name());
        for &benchmark in &options.benchmarks {
            stop_if_interrupted()?;
            let started = Instant::now();
            tracing::info!(%path, benchmark = benchmark.name(), "running");
            let measured = match benchmark.run(&testbed, &options.settings) {
                Ok(m) => m,
                // Its processes were killed under it: not the benchmark's fault.
                Err(_) if interrupted() => bail!("interrupted"),
                Err(e) => {
                    return Err(e.context(format!("benchmark {} on path {path}", benchmark.name())))
                }
            };
            for m in &measured {
                ensure!(
                    m.value.is_finite() && m.value > 0.0,
                    "{} on path {path} measured {} {}: not a sane figure ({})",
                    m.metric.name,
                    m.value,
                    m.metric.unit,
                    m.detail
                );
            }
            tracing::info!(
                %path,
                benchmark = benchmark.name(),
                seconds = started.elapsed().as_secs_f64(),
                "done"
            );
            report.add_measurements(path, measured);
        }
        // The lab goes down here, before the next path builds its own.
        drop(testbed);
    }
    report.compute_ratios();
    Ok(report)
}

fn stop_if_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
