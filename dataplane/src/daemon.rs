//! The proxy box's dataplane as a service: configuration, start-up
//! (TUN device, steering, control socket), the run loop, and shutdown. The
//! `mobidesk-dataplane` binary is a thin wrapper around [`run_proxy`]; tests
//! run the same function on a thread inside a lab namespace.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::control::{self, Response, MAX_REQUEST_LINE};
use crate::io::fastpath::FastPath;
use crate::io::publish::Publisher;
use crate::io::steer::{ServerSteering, ServerSteeringConfig, Steering};
use crate::io::tun::{Tun, TunConfig};
use crate::io::{run_proxybox, run_server as run_server_loop, Shared};
use crate::metrics::{AdminServer, Source};
use crate::proxybox::icmp::MAX_OUTSTANDING_LIMIT;
use crate::proxybox::{EchoConfig, ProxyConfig, ProxyEngine, UdpConfig};
use crate::server::ServerEngine;
use crate::vnic::VnicConfig;

/// Why the dataplane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("opening tun device {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error("installing steering rules: {0}")]
    Steering(io::Error),
    #[error("control socket {path}: {source}")]
    Control { path: PathBuf, source: io::Error },
    #[error("metrics endpoint {addr}: {source}")]
    Metrics { addr: SocketAddr, source: io::Error },
    #[error("runtime: {0}")]
    Runtime(io::Error),
    #[error("tun device failed: {0}")]
    Device(io::Error),
    #[error("server fast path (eBPF; set fast_path = false to run without): {0}")]
    FastPath(#[from] crate::io::fastpath::FastPathError),
}

/// `[proxy]` of the dataplane's configuration file (see
/// `configs/dataplane-proxy.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyBoxConfig {
    /// Name of the TUN device the dataplane reads from.
    #[serde(default = "defaults::tun")]
    pub tun: String,
    /// MTU of the TUN device.
    #[serde(default = "defaults::mtu")]
    pub mtu: u16,
    /// Linux TUN offloads (GSO/GRO through the virtio-net header).
    #[serde(default = "defaults::yes")]
    pub offload: bool,
    /// Interfaces facing the server subnets: what arrives there (and is not
    /// for the proxy box itself) goes through the dataplane.
    pub steer_from: Vec<String>,
    /// Routing table (and rule priority) used for steering.
    #[serde(default = "defaults::route_table")]
    pub route_table: u32,
    /// Unix socket of the control interface.
    #[serde(default = "defaults::control")]
    pub control: PathBuf,
    /// Address of the Prometheus endpoint (`/metrics`, `/live`, `/ready`
    /// over HTTP); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// How long a relay waits for the real destination to accept.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// At most this many VNICs (terminated connections) at once.
    #[serde(default = "defaults::max_vnics")]
    pub max_vnics: usize,
    /// At most this many connections in handshake per session address.
    #[serde(default = "defaults::max_handshakes")]
    pub max_handshakes_per_session: usize,
    #[serde(default)]
    pub vnic: VnicTuning,
    #[serde(default)]
    pub udp: UdpTuning,
    #[serde(default)]
    pub icmp: IcmpTuning,
    /// The address sessions see as the peer of connections the proxy box
    /// opens to their services (published services). Not an address of the
    /// proxy box itself: sessions route it back through their servers, and
    /// the steering brings it to the dataplane.
    #[serde(default = "defaults::publish_source")]
    pub publish_source: std::net::Ipv4Addr,
    /// At most this many published services at once.
    #[serde(default = "defaults::max_published")]
    pub max_published: usize,
}

/// `[proxy.vnic]`: the tuning of every VNIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VnicTuning {
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    pub mtu: usize,
    pub max_burst: usize,
    pub keep_alive_secs: u64,
    pub idle_timeout_secs: u64,
    pub memory_budget: usize,
    pub min_buffer: usize,
}

impl Default for VnicTuning {
    fn default() -> Self {
        let d = VnicConfig::default();
        VnicTuning {
            rx_buffer: d.rx_buffer,
            tx_buffer: d.tx_buffer,
            mtu: d.mtu,
            max_burst: d.max_burst,
            keep_alive_secs: d.keep_alive.map_or(0, |k| k.as_secs()),
            idle_timeout_secs: d.idle_timeout.as_secs(),
            memory_budget: d.memory_budget,
            min_buffer: d.min_buffer,
        }
    }
}

/// `[proxy.udp]`: the UDP relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpTuning {
    /// UDP flows (session port -> destination) at once.
    pub max_flows: usize,
    /// A flow silent both ways this long is closed.
    pub idle_timeout_secs: u64,
    /// Datagrams per flow waiting for its socket; more are dropped.
    pub queue: usize,
}

impl Default for UdpTuning {
    fn default() -> Self {
        let d = UdpConfig::default();
        UdpTuning {
            max_flows: d.max_flows,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            queue: d.queue,
        }
    }
}

/// `[proxy.icmp]`: the ICMP echo relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IcmpTuning {
    /// Echo requests awaiting a reply at once.
    pub max_echoes: usize,
    /// An echo request unanswered this long is forgotten.
    pub timeout_secs: u64,
}

impl Default for IcmpTuning {
    fn default() -> Self {
        let d = EchoConfig::default();
        IcmpTuning {
            max_echoes: d.max_outstanding,
            timeout_secs: d.timeout.as_secs(),
        }
    }
}

mod defaults {
    use std::path::PathBuf;
    pub(super) fn publish_source() -> std::net::Ipv4Addr {
        // RFC 6598 shared address space: never a session's or the
        // Internet's address.
        std::net::Ipv4Addr::new(100, 64, 0, 1)
    }
    pub(super) fn max_published() -> usize {
        256
    }
    pub(super) fn tun() -> String {
        "mdp0".into()
    }
    pub(super) fn mtu() -> u16 {
        1500
    }
    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn route_table() -> u32 {
        100
    }
    pub(super) fn control() -> PathBuf {
        "/run/mobidesk/dataplane.sock".into()
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        5000
    }
    pub(super) fn max_vnics() -> usize {
        16_384
    }
    pub(super) fn max_handshakes() -> usize {
        256
    }
    pub(super) fn session_tun() -> String {
        "mds0".into()
    }
    pub(super) fn uplink_tun() -> String {
        "mdu0".into()
    }
    pub(super) fn session_links() -> String {
        "ses-*".into()
    }
    pub(super) fn session_table() -> u32 {
        101
    }
    pub(super) fn uplink_table() -> u32 {
        102
    }
    pub(super) fn server_control() -> PathBuf {
        "/run/mobidesk/dataplane-server.sock".into()
    }
    pub(super) fn max_connections() -> usize {
        65_536
    }
}

/// `[server]` of the dataplane's configuration file (see
/// `configs/dataplane-server.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// TUN device for packets from the sessions.
    #[serde(default = "defaults::session_tun")]
    pub session_tun: String,
    /// TUN device for packets from the uplink.
    #[serde(default = "defaults::uplink_tun")]
    pub uplink_tun: String,
    #[serde(default = "defaults::mtu")]
    pub mtu: u16,
    #[serde(default = "defaults::yes")]
    pub offload: bool,
    /// The server's interface on its subnet.
    pub uplink: String,
    /// The sessions' veths, as an nftables interface pattern.
    #[serde(default = "defaults::session_links")]
    pub session_links: String,
    /// Routing tables (also rule priorities and packet marks).
    #[serde(default = "defaults::session_table")]
    pub session_table: u32,
    #[serde(default = "defaults::uplink_table")]
    pub uplink_table: u32,
    #[serde(default = "defaults::server_control")]
    pub control: PathBuf,
    /// Address of the Prometheus endpoint; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Connections whose labels are kept; the oldest go beyond.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Label and rewrite labelled sessions' established TCP segments in the
    /// kernel (eBPF on the uplink, `bpf/server_fastpath.c`) instead of in
    /// this process. Off: every packet of a labelled session takes the
    /// user-space path.
    #[serde(default = "defaults::yes")]
    pub fast_path: bool,
}

/// The packet mark of what the fast path handled on the uplink's ingress
/// ("MDFP"): the steering leaves such packets alone.
pub const FAST_PATH_MARK: u32 = 0x4d44_4650;

impl ServerConfig {
    pub fn new(uplink: &str, control: PathBuf) -> Self {
        ServerConfig {
            session_tun: defaults::session_tun(),
            uplink_tun: defaults::uplink_tun(),
            mtu: defaults::mtu(),
            offload: true,
            uplink: uplink.into(),
            session_links: defaults::session_links(),
            session_table: defaults::session_table(),
            uplink_table: defaults::uplink_table(),
            control,
            metrics: None,
            max_connections: defaults::max_connections(),
            fast_path: true,
        }
    }

    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        for (key, name) in [
            ("session_tun", &self.session_tun),
            ("uplink_tun", &self.uplink_tun),
            ("uplink", &self.uplink),
        ] {
            if name.is_empty() || name.len() > 15 {
                return bad(format!("{key} {name:?}: 1..=15 characters"));
            }
        }
        if self.session_tun == self.uplink_tun {
            return bad("session_tun and uplink_tun must differ".into());
        }
        if self.session_links.is_empty()
            || !self
                .session_links
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_*.".contains(&b))
        {
            return bad(format!(
                "session_links {:?}: an interface pattern like \"ses-*\"",
                self.session_links
            ));
        }
        for (key, t) in [
            ("session_table", self.session_table),
            ("uplink_table", self.uplink_table),
        ] {
            if t == 0 || (253..=255).contains(&t) {
                return bad(format!("{key} {t}: not 0 or a reserved table"));
            }
        }
        if self.session_table == self.uplink_table {
            return bad("session_table and uplink_table must differ".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections: at least 1".into());
        }
        validate_metrics(self.metrics)
    }
}

/// The metrics endpoint needs a fixed port: Prometheus is told where to
/// scrape.
fn validate_metrics(addr: Option<SocketAddr>) -> Result<(), DaemonError> {
    match addr {
        Some(a) if a.port() == 0 => Err(DaemonError::Config(format!(
            "metrics {a}: a fixed port, like \"127.0.0.1:9464\""
        ))),
        _ => Ok(()),
    }
}

/// Starts the metrics endpoint, if configured, on the dataplane's
/// `LocalSet`; it reads `source` at each scrape.
async fn start_metrics(addr: Option<SocketAddr>, source: Source) -> Result<(), DaemonError> {
    let Some(addr) = addr else { return Ok(()) };
    let server = AdminServer::bind(addr, source)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    tokio::task::spawn_local(server.serve());
    Ok(())
}

/// The whole configuration file: a `[proxy]` or a `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub proxy: Option<ProxyBoxConfig>,
    pub server: Option<ServerConfig>,
}

impl ConfigFile {
    pub fn from_toml(text: &str) -> Result<Self, DaemonError> {
        let c: ConfigFile = toml::from_str(text).map_err(|e| DaemonError::Config(e.to_string()))?;
        if let Some(p) = &c.proxy {
            p.validate()?;
        }
        if let Some(s) = &c.server {
            s.validate()?;
        }
        if c.proxy.is_none() && c.server.is_none() {
            return Err(DaemonError::Config("no [proxy] or [server] section".into()));
        }
        Ok(c)
    }
}

impl ProxyBoxConfig {
    /// A configuration with defaults, steering from the given interfaces.
    pub fn new(steer_from: Vec<String>, control: PathBuf) -> Self {
        ProxyBoxConfig {
            tun: defaults::tun(),
            mtu: defaults::mtu(),
            offload: true,
            steer_from,
            route_table: defaults::route_table(),
            control,
            metrics: None,
            connect_timeout_ms: defaults::connect_timeout_ms(),
            max_vnics: defaults::max_vnics(),
            max_handshakes_per_session: defaults::max_handshakes(),
            vnic: VnicTuning::default(),
            udp: UdpTuning::default(),
            icmp: IcmpTuning::default(),
            publish_source: defaults::publish_source(),
            max_published: defaults::max_published(),
        }
    }

    pub fn validate(&self) -> Result<(), DaemonError> {
        let bad = |m: String| Err(DaemonError::Config(m));
        if self.tun.is_empty() || self.tun.len() > 15 {
            return bad(format!("tun {:?}: 1..=15 characters", self.tun));
        }
        if self.steer_from.is_empty() {
            return bad("steer_from: name at least one interface facing a server subnet".into());
        }
        let p = self.publish_source;
        if p.is_unspecified() || p.is_loopback() || p.is_multicast() || p.is_broadcast() {
            return bad(format!(
                "publish_source {p}: a unicast address (e.g. 100.64.0.1)"
            ));
        }
        if !(1..=65_536).contains(&self.max_published) {
            return bad(format!("max_published {}: 1..=65536", self.max_published));
        }
        if !(576..=65535).contains(&usize::from(self.mtu)) {
            return bad(format!("mtu {}: 576..=65535", self.mtu));
        }
        if !(576..=usize::from(self.mtu)).contains(&self.vnic.mtu) {
            return bad(format!(
                "vnic.mtu {}: 576..=mtu ({}); leave 8 bytes for labels",
                self.vnic.mtu, self.mtu
            ));
        }
        if self.vnic.rx_buffer < 4096 || self.vnic.tx_buffer < 4096 {
            return bad("vnic buffers: at least 4096 bytes".into());
        }
        let v = &self.vnic;
        if v.min_buffer < 4096 || v.min_buffer > v.rx_buffer.min(v.tx_buffer) {
            return bad(format!(
                "vnic.min_buffer {}: 4096..=the smaller of rx_buffer and tx_buffer",
                v.min_buffer
            ));
        }
        if v.memory_budget < v.rx_buffer + v.tx_buffer {
            return bad(format!(
                "vnic.memory_budget {}: at least rx_buffer + tx_buffer ({})",
                v.memory_budget,
                v.rx_buffer + v.tx_buffer
            ));
        }
        if self.vnic.max_burst == 0 || self.max_vnics == 0 || self.max_handshakes_per_session == 0 {
            return bad("vnic.max_burst, max_vnics, max_handshakes_per_session: at least 1".into());
        }
        if self.route_table == 0 || self.route_table >= 253 && self.route_table <= 255 {
            return bad(format!(
                "route_table {}: not 0 or a reserved table",
                self.route_table
            ));
        }
        let udp = &self.udp;
        if udp.max_flows == 0 || udp.queue == 0 {
            return bad("udp.max_flows, udp.queue: at least 1".into());
        }
        if !(1..=86_400).contains(&udp.idle_timeout_secs) {
            return bad(format!(
                "udp.idle_timeout_secs {}: 1..=86400",
                udp.idle_timeout_secs
            ));
        }
        if !(1..=MAX_OUTSTANDING_LIMIT).contains(&self.icmp.max_echoes) {
            return bad(format!(
                "icmp.max_echoes {}: 1..={MAX_OUTSTANDING_LIMIT}",
                self.icmp.max_echoes
            ));
        }
        if !(1..=300).contains(&self.icmp.timeout_secs) {
            return bad(format!(
                "icmp.timeout_secs {}: 1..=300",
                self.icmp.timeout_secs
            ));
        }
        validate_metrics(self.metrics)
    }

    fn engine_config(&self) -> ProxyConfig {
        ProxyConfig {
            vnic: VnicConfig {
                rx_buffer: self.vnic.rx_buffer,
                tx_buffer: self.vnic.tx_buffer,
                mtu: self.vnic.mtu,
                max_burst: self.vnic.max_burst,
                keep_alive: (self.vnic.keep_alive_secs > 0)
                    .then(|| Duration::from_secs(self.vnic.keep_alive_secs)),
                idle_timeout: Duration::from_secs(self.vnic.idle_timeout_secs.max(1)),
                memory_budget: self.vnic.memory_budget,
                min_buffer: self.vnic.min_buffer,
            },
            max_vnics: self.max_vnics,
            max_handshakes_per_session: self.max_handshakes_per_session,
            udp: UdpConfig {
                max_flows: self.udp.max_flows,
                idle_timeout: Duration::from_secs(self.udp.idle_timeout_secs),
                queue: self.udp.queue,
            },
            echo: EchoConfig {
                max_outstanding: self.icmp.max_echoes,
                timeout: Duration::from_secs(self.icmp.timeout_secs),
            },
            reassembly: Default::default(),
        }
    }
}

/// Runs the proxy box's dataplane on the calling thread (in its network
/// namespace) until `shutdown` completes or the device fails. Everything it
/// installed (steering rules, control socket) is removed on return.
pub fn run_proxy(
    config: ProxyBoxConfig,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), DaemonError> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let tun = Tun::open(&TunConfig {
            name: config.tun.clone(),
            mtu: config.mtu,
            offload: config.offload,
        })
        .map_err(|source| DaemonError::Tun {
            name: config.tun.clone(),
            source,
        })?;
        let _steering = Steering::install(&config.tun, &config.steer_from, config.route_table)
            .map_err(DaemonError::Steering)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let engine = Rc::new(RefCell::new(ProxyEngine::new(config.engine_config(), seed)));
        let shared = Shared::new(Duration::from_millis(config.connect_timeout_ms));
        let control = ControlSocket::bind(&config.control)?;
        let publisher = Publisher::new(
            engine.clone(),
            shared.clone(),
            config.publish_source,
            config.max_published,
        );
        let handler_engine = engine.clone();
        tokio::task::spawn_local(control.serve(Rc::new(move |line: &str| {
            control::handle_line(&mut handler_engine.borrow_mut(), Some(&publisher), line)
        })));
        // Last: a scrape of /ready means everything above is up.
        start_metrics(config.metrics, Source::Proxy(engine.clone())).await?;
        tracing::info!(
            tun = %config.tun, steer_from = ?config.steer_from, offload = config.offload,
            control = %config.control.display(), metrics = ?config.metrics,
            "proxy box dataplane up"
        );
        tokio::select! {
            r = run_proxybox(tun, engine, shared) => r.map_err(DaemonError::Device),
            () = shutdown => {
                tracing::info!("proxy box dataplane shutting down");
                Ok(())
            }
        }
    })
}

/// Runs a session server's dataplane on the calling thread (in the server's
/// network namespace) until `shutdown` completes or a device fails.
/// Steering (nftables table, rules) and the control socket are removed on
/// return.
pub fn run_server(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + 'static,
) -> Result<(), DaemonError> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let open = |name: &String| {
            Tun::open(&TunConfig {
                name: name.clone(),
                mtu: config.mtu,
                offload: config.offload,
            })
            .map_err(|source| DaemonError::Tun {
                name: name.clone(),
                source,
            })
        };
        let session_tun = open(&config.session_tun)?;
        let uplink_tun = open(&config.uplink_tun)?;
        let steering = Rc::new(
            ServerSteering::install(&ServerSteeringConfig {
                session_tun: config.session_tun.clone(),
                uplink_tun: config.uplink_tun.clone(),
                uplink: config.uplink.clone(),
                session_links: config.session_links.clone(),
                session_table: config.session_table,
                uplink_table: config.uplink_table,
                fast_path_mark: config.fast_path.then_some(FAST_PATH_MARK),
            })
            .map_err(DaemonError::Steering)?,
        );
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let mut engine = ServerEngine::new(config.max_connections, seed);
        let fast_path = if config.fast_path {
            engine.enable_fast_path();
            let fp = FastPath::attach(
                &config.uplink,
                &config.session_tun,
                &config.uplink_tun,
                FAST_PATH_MARK,
            )
            .map_err(DaemonError::FastPath)?;
            Some(Rc::new(RefCell::new(fp)))
        } else {
            None
        };
        let engine = Rc::new(RefCell::new(engine));
        let kick = Rc::new(tokio::sync::Notify::new());
        let control = ControlSocket::bind(&config.control)?;
        let (handler_engine, handler_fast, handler_kick, uplink) = (
            engine.clone(),
            fast_path.clone(),
            kick.clone(),
            config.uplink.clone(),
        );
        tokio::task::spawn_local(control.serve(Rc::new(move |line: &str| {
            let (response, announce) = control::handle_server_line(
                &mut handler_engine.borrow_mut(),
                handler_fast.as_ref().map(|f| f.borrow()).as_deref(),
                line,
            );
            if let Some(address) = announce {
                announce_address(&uplink, address);
            }
            // Steering may have changed: the loop applies it.
            handler_kick.notify_one();
            response
        })));
        start_metrics(
            config.metrics,
            Source::Server(engine.clone(), fast_path.clone()),
        )
        .await?;
        tracing::info!(
            uplink = %config.uplink, session_links = %config.session_links,
            control = %config.control.display(), metrics = ?config.metrics,
            "server dataplane up"
        );
        tokio::select! {
            r = run_server_loop(session_tun, uplink_tun, engine, steering, fast_path, kick) => {
                r.map_err(DaemonError::Device)
            }
            () = shutdown => {
                tracing::info!("server dataplane shutting down");
                Ok(())
            }
        }
    })
}

/// Tells the subnet that `address` is here now: a gratuitous ARP from the
/// uplink (so the proxy box need not wait for its ARP entry to expire).
fn announce_address(uplink: &str, address: std::net::Ipv4Addr) {
    let a = address.to_string();
    match tokio::process::Command::new("arping")
        .args(["-q", "-U", "-c", "2", "-i", uplink, "-S", &a, &a])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tracing::info!(%address, %uplink, "announcing address (gratuitous ARP)");
            tokio::task::spawn_local(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => tracing::warn!(%address, error = %e, "could not send gratuitous ARP"),
    }
}

/// The control socket; its file is removed when dropped.
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    fn bind(path: &Path) -> Result<Self, DaemonError> {
        let err = |source| DaemonError::Control {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // A socket file left by a killed run would make bind fail.
        if path.exists() {
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    async fn serve(self, handler: Rc<dyn Fn(&str) -> Response>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(serve_client(stream, handler.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_client(stream: UnixStream, handler: Rc<dyn Fn(&str) -> Response>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        // Bounded: a line longer than MAX_REQUEST_LINE ends the connection.
        let mut limited = (&mut lines).take(MAX_REQUEST_LINE as u64 + 1);
        match limited.read_line(&mut line).await {
            Ok(0) => return,
            Ok(n) if n > MAX_REQUEST_LINE => {
                let _ = write
                    .write_all(
                        Response::error("request line too long")
                            .to_line()
                            .as_bytes(),
                    )
                    .await;
                tracing::warn!("control client sent an over-long line; closing it");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = write
                    .write_all(
                        Response::error(format!("bad request: {e}"))
                            .to_line()
                            .as_bytes(),
                    )
                    .await;
                return;
            }
        }
        let response = handler(line.trim_end());
        if !response.ok {
            tracing::warn!(error = ?response.error, "control request refused");
        }
        if write
            .write_all(response.to_line().as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_spells_out_the_defaults() {
        let text = include_str!("../../configs/dataplane-proxy.toml");
        let file = ConfigFile::from_toml(text).unwrap();
        let metrics = Some(SocketAddr::from(([127, 0, 0, 1], 9464)));
        let defaults = ProxyBoxConfig {
            metrics,
            ..ProxyBoxConfig::new(
                vec!["sub1".into(), "sub2".into()],
                "/run/mobidesk/dataplane.sock".into(),
            )
        };
        assert_eq!(file.proxy, Some(defaults));
        let text = include_str!("../../configs/dataplane-server.toml");
        let file = ConfigFile::from_toml(text).unwrap();
        let defaults = ServerConfig {
            metrics,
            ..ServerConfig::new("eth0", "/run/mobidesk/dataplane-server.sock".into())
        };
        assert_eq!(file.server, Some(defaults));
    }

    #[test]
    fn bad_configs_are_refused_with_the_key_named() {
        let err = |text: &str| ConfigFile::from_toml(text).unwrap_err().to_string();
        assert!(err("[proxy]\nsteer_from = []\n").contains("steer_from"));
        assert!(err("[proxy]\nsteer_from = [\"a\"]\ntypo = 1\n").contains("typo"));
        assert!(err("[proxy]\nsteer_from = [\"a\"]\nmtu = 100\n").contains("mtu"));
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.vnic]\nmtu = 1600\n").contains("vnic.mtu")
        );
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\ntun = \"a-very-long-tun-name\"\n").contains("tun")
        );
        assert!(err("not toml").contains("invalid configuration"));
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.udp]\nidle_timeout_secs = 0\n")
                .contains("udp.idle_timeout_secs")
        );
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.udp]\nmax_flows = 0\n")
                .contains("udp.max_flows")
        );
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.udp]\nqueue = 0\n").contains("udp.queue")
        );
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.icmp]\nmax_echoes = 40000\n")
                .contains("icmp.max_echoes")
        );
        assert!(
            err("[proxy]\nsteer_from = [\"a\"]\n[proxy.icmp]\ntimeout_secs = 0\n")
                .contains("icmp.timeout_secs")
        );
        assert!(err("[proxy]\nsteer_from = [\"a\"]\n[proxy.udp]\nflows = 1\n").contains("flows"));
    }

    #[test]
    fn the_metrics_address_is_optional_and_checked() {
        let parse = |text: &str| ConfigFile::from_toml(text);
        let file = parse("[proxy]\nsteer_from = [\"a\"]\n").unwrap();
        assert_eq!(file.proxy.unwrap().metrics, None, "absent: off");
        let file = parse("[server]\nuplink = \"eth0\"\nmetrics = \"0.0.0.0:9100\"\n").unwrap();
        assert_eq!(
            file.server.unwrap().metrics,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        for (section, key) in [
            ("proxy", "steer_from = [\"a\"]"),
            ("server", "uplink = \"eth0\""),
        ] {
            for bad in [
                "\"127.0.0.1\"",
                "\"localhost:9464\"",
                "\"127.0.0.1:99999\"",
                "9464",
                "\"127.0.0.1:0\"",
            ] {
                let text = format!("[{section}]\n{key}\nmetrics = {bad}\n");
                let e = parse(&text).unwrap_err().to_string();
                assert!(e.contains("metrics"), "{text}: {e}");
            }
        }
    }
}
