//! The project's dataplanes running in a lab: the proxy box's and every
//! server's, each on a thread inside its namespace (the same `run_proxy` /
//! `run_server` the `mobidesk-dataplane` binary runs), driven through their
//! control sockets. Used by the namespace tests, the benchmarks and the demo.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mobidesk_dataplane::control::{
    self, ProxyRequest, ProxyStats, Response, ServerRequest, ServerStats,
};
use mobidesk_dataplane::daemon::{
    run_proxy, run_server, DaemonError, ProxyBoxConfig, ServerConfig,
};

use crate::lab::{Lab, Session};
use crate::netns::Netns;
use crate::topology::{NetworkKind, Role};
use crate::{LabError, Result};

/// One dataplane on a thread inside a lab namespace. Dropping it stops it
/// (its steering and control socket are removed); [`Dataplane::stop`] also
/// says how it ended.
pub struct Dataplane {
    name: String,
    control: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::result::Result<(), DaemonError>>>,
}

type Run = Box<
    dyn FnOnce(tokio::sync::oneshot::Receiver<()>) -> std::result::Result<(), DaemonError> + Send,
>;

fn daemon_error(what: impl Into<String>) -> LabError {
    LabError::Daemon(what.into())
}

impl Dataplane {
    fn start(name: String, ns: Netns, control: PathBuf, run: Run) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn_thread(move || run(stopped))?;
        let mut dp = Dataplane {
            name,
            control,
            stop: Some(stop),
            thread: Some(thread),
        };
        // Up when its control socket answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while control::request(&dp.control, &ProxyRequest::Stats {}).is_err() {
            if dp.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let why = dp.stop_inner();
                return Err(daemon_error(format!(
                    "{} stopped at start: {why:?}",
                    dp.name
                )));
            }
            if Instant::now() > deadline {
                return Err(daemon_error(format!("{} did not come up", dp.name)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(dp)
    }

    /// The proxy box's dataplane, steering from every server subnet.
    pub fn proxy(lab: &Lab) -> Result<Self> {
        Self::proxy_with(lab, Self::proxy_config(lab)?)
    }

    /// The configuration [`Dataplane::proxy`] uses: steering from every
    /// server subnet, the control socket in the lab's run directory, the
    /// rest defaults (for callers that change a key or two).
    pub fn proxy_config(lab: &Lab) -> Result<ProxyBoxConfig> {
        let control = lab.run_dir()?.join("dataplane-proxy.sock");
        let subnets = lab
            .topology()
            .networks
            .iter()
            .filter(|n| n.kind == NetworkKind::Server)
            .map(|n| n.name.clone())
            .collect();
        Ok(ProxyBoxConfig::new(subnets, control))
    }

    /// The proxy box's dataplane with a configuration of the caller's.
    pub fn proxy_with(lab: &Lab, config: ProxyBoxConfig) -> Result<Self> {
        let control = config.control.clone();
        Dataplane::start(
            "proxy box dataplane".into(),
            lab.proxy(),
            control,
            Box::new(move |stopped| {
                run_proxy(config, async {
                    let _ = stopped.await;
                })
            }),
        )
    }

    /// A session server's dataplane.
    pub fn server(lab: &Lab, server: &str) -> Result<Self> {
        Self::server_with(lab, server, true)
    }

    /// A session server's dataplane, with or without TUN offloads.
    pub fn server_with(lab: &Lab, server: &str, offload: bool) -> Result<Self> {
        let mut config = Self::server_config(lab, server)?;
        config.offload = offload;
        Self::server_with_config(lab, server, config)
    }

    /// The configuration [`Dataplane::server`] uses: uplink `eth0`, the
    /// control socket in the lab's run directory, the rest defaults.
    pub fn server_config(lab: &Lab, server: &str) -> Result<ServerConfig> {
        let control = lab
            .run_dir()?
            .join(format!("dataplane-server-{server}.sock"));
        Ok(ServerConfig::new("eth0", control))
    }

    /// A session server's dataplane with a configuration of the caller's.
    pub fn server_with_config(lab: &Lab, server: &str, config: ServerConfig) -> Result<Self> {
        let control = config.control.clone();
        let (_, ns) = lab.server(server)?;
        Dataplane::start(
            format!("dataplane of server {server}"),
            ns,
            control,
            Box::new(move |stopped| {
                run_server(config, async {
                    let _ = stopped.await;
                })
            }),
        )
    }

    /// One control request; a refused one is an error with its reason.
    pub fn request<R: serde::Serialize>(&self, request: &R) -> Result<Response> {
        let r = control::request(&self.control, request).map_err(|e| {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                daemon_error(format!("{} has stopped ({e}); stop() says why", self.name))
            } else {
                daemon_error(format!("{}: control request failed: {e}", self.name))
            }
        })?;
        if !r.ok {
            return Err(daemon_error(format!(
                "{} refused a request: {}",
                self.name,
                r.error.unwrap_or_default()
            )));
        }
        Ok(r)
    }

    /// The proxy box's counters.
    pub fn stats(&self) -> Result<ProxyStats> {
        self.request(&ProxyRequest::Stats {})?
            .stats
            .ok_or_else(|| daemon_error("stats missing from the response"))
    }

    /// A server's counters.
    pub fn server_stats(&self) -> Result<ServerStats> {
        self.request(&ServerRequest::Stats {})?
            .server_stats
            .ok_or_else(|| daemon_error("server stats missing from the response"))
    }

    /// Waits (up to 20 s) until `f` holds for the proxy box's counters.
    pub fn wait_stats(&self, what: &str, f: impl Fn(&ProxyStats) -> bool) -> Result<ProxyStats> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stats()?;
            if f(&s) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(daemon_error(format!("timed out waiting for {what}: {s:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_inner(&mut self) -> std::result::Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.to_string()),
            Some(Err(_)) => Err("its thread panicked".into()),
        }
    }

    /// Stops it and says how it ended: an error if it had stopped on its own
    /// (a device failure) or failed to shut down.
    pub fn stop(mut self) -> Result<()> {
        let name = self.name.clone();
        self.stop_inner()
            .map_err(|e| daemon_error(format!("{name} ended with: {e}")))
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("name", &self.name)
            .field("control", &self.control)
            .finish()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            tracing::error!(dataplane = %self.name, error = %e, "dataplane ended badly");
        }
    }
}

/// Every dataplane of a lab: the proxy box's and each server's.
#[derive(Debug)]
pub struct Dataplanes {
    pub proxy: Dataplane,
    servers: Vec<(String, Dataplane)>,
}

impl Dataplanes {
    pub fn start(lab: &Lab) -> Result<Self> {
        let mut servers = Vec::new();
        for h in lab.topology().hosts_with_role(Role::Server) {
            servers.push((h.name.clone(), Dataplane::server(lab, &h.name)?));
        }
        Ok(Dataplanes {
            proxy: Dataplane::proxy(lab)?,
            servers,
        })
    }

    /// With the proxy box's configuration given, and each server's
    /// ([`Dataplane::server_config`]) changed by `server`.
    pub fn start_with(
        lab: &Lab,
        proxy: ProxyBoxConfig,
        server: impl Fn(&mut ServerConfig),
    ) -> Result<Self> {
        let mut servers = Vec::new();
        for h in lab.topology().hosts_with_role(Role::Server) {
            let mut config = Dataplane::server_config(lab, &h.name)?;
            server(&mut config);
            servers.push((
                h.name.clone(),
                Dataplane::server_with_config(lab, &h.name, config)?,
            ));
        }
        Ok(Dataplanes {
            proxy: Dataplane::proxy_with(lab, proxy)?,
            servers,
        })
    }

    pub fn server(&self, name: &str) -> Result<&Dataplane> {
        self.servers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .ok_or_else(|| LabError::UnknownServer(name.into()))
    }

    /// Migrates a session the way sessiond does: its connection labels go
    /// from the old server's dataplane to the new one's, the namespace
    /// moves, the new server announces it (gratuitous ARP), and, across
    /// subnets, the proxy box learns the new physical address.
    pub fn migrate(&self, lab: &Lab, session: &str, to: &str) -> Result<Session> {
        crate::migrate::migrate_via(lab, session, to, &self.proxy.control, &|s| {
            Ok(self.server(s)?.control.clone())
        })
    }

    /// Stops them all; the first bad ending is the error.
    pub fn stop(self) -> Result<()> {
        let mut result = self.proxy.stop();
        for (_, d) in self.servers {
            let r = d.stop();
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}
