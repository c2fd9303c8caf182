//! The packet paths a benchmark compares, and the testbed each one runs on.
//!
//! Every path uses the same lab topology ([`Topology::standard`]): a session
//! namespace `s1` on server `a` (subnet 1), the proxy box, and the outside
//! host `web` on the external network. Benchmarks only see a [`Testbed`]:
//! a client namespace (the session), a server namespace (`web`) and the
//! server's address; how packets get from one to the other is the path's
//! business.
//!
//! The candidates run the same lab with the project's dataplanes started
//! (`mobidesk_lab::dataplane`): on the proxy box and on every server.
//! [`Path::DataplaneMoved`] first migrates the session to server b on
//! subnet 2, so every packet is rewritten and labelled on both sides;
//! [`Path::DataplaneNoOffload`] turns the TUN offloads off.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{ensure, Context, Result};
use mobidesk_dataplane::daemon::ProxyBoxConfig;
use mobidesk_lab::dataplane::Dataplanes;
use mobidesk_lab::lab::{namespaces_of, unique_lab_name};
use mobidesk_lab::{Lab, Netns, Session, Topology};
use serde::{Deserialize, Serialize};

use crate::process::Daemon;

/// The outside host every benchmark talks to.
const OUTSIDE_HOST: &str = "web";
/// The server that hosts the benchmark session.
const SESSION_SERVER: &str = "a";
const SESSION_NAME: &str = "s1";

/// A way for packets to get from a session to an outside host.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Baseline: plain kernel IP forwarding (server a, then the proxy box).
    #[value(alias = "baseline")]
    KernelForwarding,
    /// Candidate: the user-space dataplane on the proxy box and the servers.
    #[value(alias = "candidate")]
    Dataplane,
    /// The dataplane after the session moved across subnets (to server b):
    /// virtual/physical rewriting and labels on every packet.
    DataplaneMoved,
    /// The dataplane with the TUN offloads (GSO/GRO) off.
    DataplaneNoOffload,
    /// As dataplane-moved, with the servers' kernel fast path (eBPF) off:
    /// the server's user-space engine labels and rewrites every packet.
    DataplaneMovedNoFastPath,
}

/// Whether a path is the reference or the thing measured against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Baseline,
    Candidate,
}

/// The result of setting a path up.
#[derive(Debug)]
pub enum PathSetup {
    Ready(Box<Testbed>),
    /// The path cannot run yet; the report shows this reason.
    NotImplemented {
        reason: &'static str,
    },
}

impl Path {
    /// The baseline first: the order paths run and are shown in.
    pub const ALL: [Path; 5] = [
        Path::KernelForwarding,
        Path::Dataplane,
        Path::DataplaneMoved,
        Path::DataplaneNoOffload,
        Path::DataplaneMovedNoFastPath,
    ];
    pub const BASELINE: Path = Path::KernelForwarding;

    pub fn name(self) -> &'static str {
        match self {
            Path::KernelForwarding => "kernel-forwarding",
            Path::Dataplane => "dataplane",
            Path::DataplaneMoved => "dataplane-moved",
            Path::DataplaneNoOffload => "dataplane-no-offload",
            Path::DataplaneMovedNoFastPath => "dataplane-moved-no-fast-path",
        }
    }

    pub fn role(self) -> Role {
        match self {
            Path::KernelForwarding => Role::Baseline,
            Path::Dataplane
            | Path::DataplaneMoved
            | Path::DataplaneNoOffload
            | Path::DataplaneMovedNoFastPath => Role::Candidate,
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Path::KernelForwarding => {
                "session s1 -> server a -> proxy box -> web, kernel IP forwarding on veth/bridges"
            }
            Path::Dataplane => {
                "session s1 -> server a -> proxy box -> web through the user-space dataplane"
            }
            Path::DataplaneMoved => {
                "as dataplane, after s1 moved to server b on subnet 2 (rewriting + labels)"
            }
            Path::DataplaneNoOffload => "as dataplane, with the TUN offloads (GSO/GRO) off",
            Path::DataplaneMovedNoFastPath => {
                "as dataplane-moved, servers' eBPF fast path off (labels in user space)"
            }
        }
    }

    /// Builds the path's testbed, or says why it cannot run yet. Its
    /// daemons are not pinned.
    pub fn setup(self) -> Result<PathSetup> {
        self.setup_pinned(None)
    }

    /// Builds the path's testbed with its daemons' threads pinned to
    /// `daemons_cpu` (if given), or says why it cannot run yet.
    pub fn setup_pinned(self, daemons_cpu: Option<usize>) -> Result<PathSetup> {
        let dataplane = |offload, moved, fast_path| -> Result<PathSetup> {
            Ok(PathSetup::Ready(Box::new(dataplane(
                self,
                Variant {
                    offload,
                    moved,
                    fast_path,
                },
                daemons_cpu,
            )?)))
        };
        match self {
            Path::KernelForwarding => Ok(PathSetup::Ready(Box::new(kernel_forwarding()?))),
            Path::Dataplane => dataplane(true, false, true),
            Path::DataplaneMoved => dataplane(true, true, true),
            Path::DataplaneNoOffload => dataplane(false, false, true),
            Path::DataplaneMovedNoFastPath => dataplane(true, true, false),
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Role::Baseline => "baseline",
            Role::Candidate => "candidate",
        })
    }
}

/// The baseline: the standard lab as it is, the kernel forwarding at server
/// a and at the proxy box.
fn kernel_forwarding() -> Result<Testbed> {
    let testbed = Testbed::standard(Path::KernelForwarding)?;
    let forwarding = testbed.lab.proxy().sysctl_get("net.ipv4.ip_forward")?;
    ensure!(
        forwarding == "1",
        "the proxy box does not forward (net.ipv4.ip_forward = {forwarding})"
    );
    testbed.check_reachable()?;
    // No daemons: the kernel is the whole path.
    Ok(testbed)
}

/// How a candidate differs from the plain dataplane.
#[derive(Debug, Clone, Copy)]
struct Variant {
    /// TUN offloads on.
    offload: bool,
    /// The session moved to server b first.
    moved: bool,
    /// The servers' kernel fast path on.
    fast_path: bool,
}

/// A candidate: the dataplanes of the proxy box and the servers running
/// (their threads pinned to `cpu` if given), as `variant` says.
fn dataplane(path: Path, variant: Variant, cpu: Option<usize>) -> Result<Testbed> {
    let Variant {
        offload,
        moved,
        fast_path,
    } = variant;
    let mut testbed = Testbed::standard(path)?;
    let lab = &testbed.lab;
    let mut proxy = ProxyBoxConfig::new(
        vec!["sub1".into(), "sub2".into()],
        lab.run_dir()?.join("dataplane-proxy.sock"),
    );
    proxy.offload = offload;
    // Threads inherit the affinity of the thread that spawns them.
    let dataplanes = with_affinity(cpu, || {
        Dataplanes::start_with(lab, proxy, |server| {
            server.offload = offload;
            server.fast_path = fast_path;
        })
    })?
    .context("starting the dataplanes")?;
    if moved {
        let session = dataplanes
            .migrate(lab, SESSION_NAME, "b")
            .context("moving the session to server b")?;
        ensure!(
            session.physical_addr != session.virtual_addr,
            "the session did not change subnets"
        );
        testbed.session = session;
    }
    testbed.dataplanes = Some(dataplanes);
    testbed.check_reachable()?;
    Ok(testbed)
}

/// Runs `f` with the calling thread pinned to `cpu` (if given), then puts
/// the thread's affinity back.
fn with_affinity<T>(cpu: Option<usize>, f: impl FnOnce() -> T) -> Result<T> {
    let Some(cpu) = cpu else { return Ok(f()) };
    let me = nix::unistd::Pid::from_raw(0);
    let before = nix::sched::sched_getaffinity(me).context("reading this thread's affinity")?;
    crate::process::pin_thread(Some(cpu))?;
    let result = f();
    nix::sched::sched_setaffinity(me, &before).context("restoring this thread's affinity")?;
    Ok(result)
}

/// A lab with one session, ready for a benchmark: traffic goes from
/// [`Testbed::client`] (the session) to [`Testbed::server_addr`] in
/// [`Testbed::server`] (the outside host).
#[derive(Debug)]
pub struct Testbed {
    pub path: Path,
    pub session: Session,
    /// Where benchmark clients run: the session's namespace.
    pub client: Netns,
    /// Where benchmark servers run: the outside host's namespace.
    pub server: Netns,
    /// The outside host's address, as the session dials it.
    pub server_addr: Ipv4Addr,
    // Dropped in this order: the path's daemons, the lab (which kills
    // anything left in its namespaces), then the registration.
    daemons: Vec<Daemon>,
    dataplanes: Option<Dataplanes>,
    lab: Lab,
    _live: LiveLab,
}

impl Testbed {
    /// The standard topology under a fresh name, with session s1 on server a.
    fn standard(path: Path) -> Result<Testbed> {
        let name = unique_lab_name();
        // Registered before it exists, so an interrupt during the build
        // still removes whatever was made.
        let live = LiveLab::register(&name);
        let lab = Lab::up(Topology::standard(&name)).context("building the lab")?;
        let session = lab
            .add_session(SESSION_NAME, SESSION_SERVER)
            .context("adding the benchmark session")?;
        let server = lab.host(OUTSIDE_HOST)?;
        let server_addr = lab
            .topology()
            .host(OUTSIDE_HOST)
            .map(|h| h.address)
            .context("the standard topology has no outside host web")?;
        Ok(Testbed {
            path,
            client: session.netns(),
            session,
            server,
            server_addr,
            daemons: Vec::new(),
            dataplanes: None,
            lab,
            _live: live,
        })
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn lab_name(&self) -> &str {
        self.lab.name()
    }

    /// Keeps a daemon of the path (e.g. the dataplane on the proxy box)
    /// running for the testbed's life; it is stopped before the lab goes down.
    #[allow(dead_code)] // For the candidate path, which is not implemented yet.
    pub(crate) fn add_daemon(&mut self, daemon: Daemon) {
        self.daemons.push(daemon);
    }

    /// Pings from the session to the outside host until one is answered
    /// (a few tries: right after a move the path may still settle).
    fn check_reachable(&self) -> Result<()> {
        let mut last = String::new();
        for _ in 0..5 {
            let out = self.client.output(Command::new("ping").args([
                "-c",
                "1",
                "-W",
                "2",
                "-n",
                &self.server_addr.to_string(),
            ]))?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        anyhow::bail!(
            "the session cannot reach {} on path {}: {last}",
            self.server_addr,
            self.path
        )
    }
}

/// Names of the labs this process has up now.
pub fn live_labs() -> Vec<String> {
    lock_live().iter().cloned().collect()
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stops the run as soon as possible (for a signal handler): kills every
/// process in the namespaces of the labs that are up — so the benchmark
/// waiting for one fails at once — and makes [`crate::run`] stop with an
/// error. The labs themselves are removed by the run as it unwinds.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    for lab in live_labs() {
        for ns in namespaces_of(&lab).unwrap_or_default() {
            let _ = Netns::existing(&ns).kill_all();
        }
    }
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn lock_live() -> MutexGuard<'static, BTreeSet<String>> {
    // A poisoned set is still a set of names.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct LiveLab(String);

impl LiveLab {
    fn register(name: &str) -> LiveLab {
        lock_live().insert(name.to_string());
        LiveLab(name.to_string())
    }
}

impl Drop for LiveLab {
    fn drop(&mut self) {
        lock_live().remove(&self.0);
    }
}
