//! The proxy box's dataplane as a service: configuration, start-up
//! (TUN device, steering, control socket), the run loop, and shutdown. The
//! `mobidesk-dataplane` binary is a thin wrapper around [`run_proxy`]; tests
//! run the same function on a thread inside a lab namespace.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::control::{self, Response, MAX_REQUEST_LINE};
use crate::io::steer::Steering;
use crate::io::tun::{Tun, TunConfig};
use crate::io::{run_proxybox, Shared};
use crate::proxybox::{ProxyConfig, ProxyEngine};
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
    #[error("runtime: {0}")]
    Runtime(io::Error),
    #[error("tun device failed: {0}")]
    Device(io::Error),
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
        }
    }
}

mod defaults {
    use std::path::PathBuf;
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
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub proxy: ProxyBoxConfig,
}

impl ConfigFile {
    pub fn from_toml(text: &str) -> Result<Self, DaemonError> {
        let c: ConfigFile = toml::from_str(text).map_err(|e| DaemonError::Config(e.to_string()))?;
        c.proxy.validate()?;
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
            connect_timeout_ms: defaults::connect_timeout_ms(),
            max_vnics: defaults::max_vnics(),
            max_handshakes_per_session: defaults::max_handshakes(),
            vnic: VnicTuning::default(),
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
        if self.vnic.max_burst == 0 || self.max_vnics == 0 || self.max_handshakes_per_session == 0 {
            return bad("vnic.max_burst, max_vnics, max_handshakes_per_session: at least 1".into());
        }
        if self.route_table == 0 || self.route_table >= 253 && self.route_table <= 255 {
            return bad(format!(
                "route_table {}: not 0 or a reserved table",
                self.route_table
            ));
        }
        Ok(())
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
            },
            max_vnics: self.max_vnics,
            max_handshakes_per_session: self.max_handshakes_per_session,
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
        tokio::task::spawn_local(control.serve(engine.clone()));
        tracing::info!(
            tun = %config.tun, steer_from = ?config.steer_from, offload = config.offload,
            control = %config.control.display(), "proxy box dataplane up"
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

    async fn serve(self, engine: Rc<RefCell<ProxyEngine>>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(serve_client(stream, engine.clone()));
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

async fn serve_client(stream: UnixStream, engine: Rc<RefCell<ProxyEngine>>) {
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
        let response = control::handle_line(&mut engine.borrow_mut(), line.trim_end());
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
        let defaults = ProxyBoxConfig::new(
            vec!["sub1".into(), "sub2".into()],
            "/run/mobidesk/dataplane.sock".into(),
        );
        assert_eq!(file.proxy, defaults);
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
    }
}
