//! A whole emulated deployment built from a [`Topology`].
//!
//! ```text
//!  client ns ─┐                        ┌─ server ns a ── session ns (eth0: V/32)
//!  outside ns ┼─ br-ext ─ proxy ns ─ br-sub1 ─ server ns a2
//!             │  (fabric ns)          └ br-sub2 ─ server ns b
//! ```
//!
//! - The *fabric* namespace holds one bridge per network; every other
//!   namespace has one veth port on it per network it is on.
//! - The *proxy box* has an interface on every network, named like the
//!   network, with the network's gateway address, and forwards between them.
//! - A *server* has `eth0` on its subnet, forwards for its sessions and
//!   answers ARP for them on the subnet (proxy ARP).
//! - A *session* has `eth0` with its virtual address as a /32 and a default
//!   route to 169.254.0.1, the server's end of the session's veth (named
//!   `ses-<session>` in the server). The server routes the session's virtual
//!   address (and its physical address, when they differ) into that veth.
//!
//! Moving a session re-plumbs only the server's end of its veth: the device
//! moves to the other server's namespace, so nothing inside the session —
//! its interface, addresses, routes, sockets, TCP state — is touched.
//!
//! A [`Lab`] removes everything it made when dropped (also while a test
//! unwinds from a panic), unless [`Lab::keep`] was called.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::netns::{self, Netns, NETNS_PREFIX};
use crate::topology::{check_name, Host, Network, Role, Topology, MAX_HOST_NAME};
use crate::{LabError, Result};

/// The address of the server's end of every session veth: the session's gateway.
pub const SESSION_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// How long a new veth may take to come up before the lab gives up.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a kept lab (`mobidesk-lab up`) leaves its topology for later commands.
pub const RUN_DIR: &str = "/run/mobidesk-lab";

/// Sysctls every lab namespace gets before its interfaces exist: no IPv6
/// chatter (router solicitations, DAD) in packet captures, and no reverse-path
/// filter (a session that moved sends from an address of another subnet).
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// A session namespace and where it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub name: String,
    /// The session's network namespace.
    pub netns: String,
    /// The server that hosts it now.
    pub server: String,
    /// The address its sockets see, for its whole life.
    pub virtual_addr: Ipv4Addr,
    /// Its address on the subnet of the server that hosts it now.
    pub physical_addr: Ipv4Addr,
}

impl Session {
    pub fn netns(&self) -> Netns {
        Netns::existing(&self.netns)
    }

    /// The name of the server's end of this session's veth.
    pub fn server_link(&self) -> String {
        server_link_name(&self.name)
    }
}

/// A running lab. See the module docs for its shape.
#[derive(Debug)]
pub struct Lab {
    topology: Topology,
    sessions: Mutex<BTreeMap<String, Session>>,
    next_port: AtomicU32,
    keep: AtomicBool,
}

impl Lab {
    /// Builds the lab. Fails if a lab of that name is up already; on any
    /// error, whatever was built is removed again.
    pub fn up(topology: Topology) -> Result<Lab> {
        topology.validate()?;
        if !namespaces_of(&topology.name)?.is_empty() {
            return Err(LabError::AlreadyUp(topology.name.clone()));
        }
        let lab = Lab {
            topology,
            sessions: Mutex::new(BTreeMap::new()),
            next_port: AtomicU32::new(0),
            keep: AtomicBool::new(false),
        };
        // On error `lab` is dropped here, which removes what was built.
        lab.build()?;
        tracing::info!(lab = %lab.topology.name, "lab up");
        Ok(lab)
    }

    /// The standard topology under a name no other lab on this machine has:
    /// what tests use, so they can run in parallel.
    pub fn for_test() -> Result<Lab> {
        Lab::up(Topology::standard(&unique_lab_name()))
    }

    /// Finds a lab that `mobidesk-lab up` left running, with its sessions.
    pub fn attach(name: &str) -> Result<Lab> {
        let path = topology_file(name);
        let text = std::fs::read_to_string(&path).map_err(|_| LabError::NotUp(name.into()))?;
        let topology = Topology::from_toml(&text)?;
        if namespaces_of(name)?.is_empty() {
            return Err(LabError::NotUp(name.into()));
        }
        let lab = Lab {
            topology,
            sessions: Mutex::new(BTreeMap::new()),
            next_port: AtomicU32::new(0),
            keep: AtomicBool::new(true),
        };
        let sessions = lab.discover_sessions()?;
        let ports = lab.fabric().ip_json(&["link", "show"])?;
        let highest = ports
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str()?.strip_prefix('p')?.parse::<u32>().ok())
            .max()
            .map_or(0, |n| n + 1);
        lab.next_port.store(highest, Ordering::Relaxed);
        *lock(&lab.sessions) = sessions;
        Ok(lab)
    }

    /// Leaves the lab running when this handle is dropped, and records its
    /// topology so later `mobidesk-lab` commands can find it.
    pub fn keep(&self) -> Result<()> {
        let path = topology_file(&self.topology.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LabError::Spawn {
                command: format!("mkdir {}", dir.display()),
                source,
            })?;
        }
        std::fs::write(&path, self.topology.to_toml()).map_err(|source| LabError::Spawn {
            command: format!("write {}", path.display()),
            source,
        })?;
        self.keep.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Removes every namespace of the lab `name` (and whatever runs in them).
    /// Works on what a killed run left behind: it needs nothing but the name.
    /// Returns how many namespaces were removed.
    pub fn down(name: &str) -> Result<usize> {
        let mut names = namespaces_of(name)?;
        // Sessions first: their veths reach into servers.
        names.sort_by_key(|n| !n.contains("-session-"));
        let mut first_error = None;
        for n in &names {
            if let Err(e) = Netns::existing(n).delete() {
                tracing::warn!(netns = %n, error = %e, "could not remove namespace");
                first_error.get_or_insert(e);
            }
        }
        let _ = std::fs::remove_file(topology_file(name));
        let _ = std::fs::remove_dir_all(PathBuf::from(RUN_DIR).join(name));
        match first_error {
            Some(e) => Err(e),
            None => Ok(names.len()),
        }
    }

    /// Removes every lab namespace on this machine (`mdlab-*`).
    pub fn down_all() -> Result<usize> {
        let mut n = 0;
        for lab in crate::status::labs()? {
            n += Lab::down(&lab)?;
        }
        Ok(n)
    }

    pub fn name(&self) -> &str {
        &self.topology.name
    }

    /// A directory of this lab's own (sockets, logs of daemons under test),
    /// removed with the lab.
    pub fn run_dir(&self) -> Result<PathBuf> {
        let dir = PathBuf::from(RUN_DIR).join(self.name());
        std::fs::create_dir_all(&dir).map_err(|source| LabError::Spawn {
            command: format!("mkdir {}", dir.display()),
            source,
        })?;
        Ok(dir)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The namespace that holds the bridges.
    pub fn fabric(&self) -> Netns {
        Netns::existing(&netns_name(self.name(), "fabric"))
    }

    /// The proxy box.
    pub fn proxy(&self) -> Netns {
        Netns::existing(&netns_name(self.name(), "proxy"))
    }

    /// A host (server, outside host or client) by name.
    pub fn host(&self, name: &str) -> Result<Netns> {
        let h = self
            .topology
            .host(name)
            .ok_or_else(|| LabError::UnknownNamespace(name.into()))?;
        Ok(host_netns(self.name(), h))
    }

    /// A server by name.
    pub fn server(&self, name: &str) -> Result<(&Host, Netns)> {
        match self.topology.host(name) {
            Some(h) if h.role == Role::Server => Ok((h, host_netns(self.name(), h))),
            _ => Err(LabError::UnknownServer(name.into())),
        }
    }

    /// Any namespace of the lab by short name: `proxy`, `fabric`, a host name,
    /// `session-<name>`, `<role>-<name>`, or the full namespace name.
    pub fn resolve(&self, short: &str) -> Result<Netns> {
        let prefix = lab_prefix(self.name());
        let full = if short.starts_with(&prefix) {
            short.to_string()
        } else if let Some(h) = self.topology.host(short) {
            host_netns(self.name(), h).name().to_string()
        } else if let Some(s) = lock(&self.sessions).get(short) {
            s.netns.clone()
        } else {
            format!("{prefix}{short}")
        };
        if namespaces_of(self.name())?.contains(&full) {
            Ok(Netns::existing(&full))
        } else {
            Err(LabError::UnknownNamespace(short.into()))
        }
    }

    /// A session by name.
    pub fn session(&self, name: &str) -> Result<Session> {
        lock(&self.sessions)
            .get(name)
            .cloned()
            .ok_or_else(|| LabError::UnknownSession(name.into()))
    }

    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.sessions).values().cloned().collect()
    }

    /// Starts a session namespace on `server` with the next free address of
    /// the server's session pool as its virtual (= first physical) address.
    pub fn add_session(&self, name: &str, server: &str) -> Result<Session> {
        self.add_session_inner(name, server, None)
    }

    /// Like [`Lab::add_session`] with a chosen address (which must be free on
    /// the server's subnet): how a test makes a new session reuse the address
    /// a migrated one had.
    pub fn add_session_at(&self, name: &str, server: &str, address: Ipv4Addr) -> Result<Session> {
        self.add_session_inner(name, server, Some(address))
    }

    fn add_session_inner(
        &self,
        name: &str,
        server: &str,
        address: Option<Ipv4Addr>,
    ) -> Result<Session> {
        check_name("session", name, MAX_HOST_NAME)?;
        let (host, server_ns) = self.server(server)?;
        let mut sessions = lock(&self.sessions);
        if sessions.contains_key(name) {
            return Err(LabError::SessionExists(name.into()));
        }
        let address = self.pick_address(&sessions, host, address)?;
        let ns = Netns::create(&netns_name(self.name(), &format!("session-{name}")))?;
        let session = Session {
            name: name.into(),
            netns: ns.name().into(),
            server: host.name.clone(),
            virtual_addr: address,
            physical_addr: address,
        };
        let plumbed = (|| {
            ns.sysctl(COMMON_SYSCTLS)?;
            let link = session.server_link();
            server_ns.ip(&[
                "link",
                "add",
                "name",
                &link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            ns.ip_batch(&[
                format!("addr add {address}/32 dev eth0"),
                "link set eth0 up".into(),
                format!("route add {SESSION_GATEWAY}/32 dev eth0 scope link"),
                format!("route add default via {SESSION_GATEWAY} dev eth0"),
            ])?;
            plumb_on_server(&server_ns, &session)?;
            ns.wait_links_up(&["eth0"], LINK_UP_TIMEOUT)
        })();
        if let Err(e) = plumbed {
            let _ = ns.delete();
            return Err(e);
        }
        tracing::info!(session = name, server, %address, "session added");
        sessions.insert(name.into(), session.clone());
        Ok(session)
    }

    /// Moves a session to another server: the server end of its veth goes to
    /// the new server's namespace, which routes the session's addresses into
    /// it. On the same subnet the session keeps its physical address; on
    /// another subnet it gets the next free one of the new server's pool.
    /// Nothing inside the session changes. Routes elsewhere (the proxy box)
    /// are not touched: that is the dataplane's job, or see
    /// [`Lab::route_on_proxy`].
    pub fn move_session(&self, name: &str, to_server: &str) -> Result<Session> {
        self.move_session_inner(name, to_server, None)
    }

    /// Like [`Lab::move_session`] with a chosen physical address on the new subnet.
    pub fn move_session_to(
        &self,
        name: &str,
        to_server: &str,
        physical: Ipv4Addr,
    ) -> Result<Session> {
        self.move_session_inner(name, to_server, Some(physical))
    }

    fn move_session_inner(
        &self,
        name: &str,
        to_server: &str,
        physical: Option<Ipv4Addr>,
    ) -> Result<Session> {
        let (to_host, to_ns) = self.server(to_server)?;
        let mut sessions = lock(&self.sessions);
        let old = sessions
            .get(name)
            .cloned()
            .ok_or_else(|| LabError::UnknownSession(name.into()))?;
        if old.server == to_server {
            return Err(LabError::SameServer {
                session: name.into(),
                server: to_server.into(),
            });
        }
        let (from_host, from_ns) = self.server(&old.server)?;
        let physical_addr = match physical {
            None if from_host.network == to_host.network => old.physical_addr,
            // The old address is still counted as used on the old subnet
            // until the session leaves; the new subnet is another network.
            p => {
                let mut others = sessions.clone();
                others.remove(name);
                self.pick_address(&others, to_host, p)?
            }
        };
        let moved = Session {
            server: to_host.name.clone(),
            physical_addr,
            ..old.clone()
        };
        let link = old.server_link();
        // Moving the device drops its addresses and routes in the old server.
        from_ns.ip(&["link", "set", "dev", &link, "netns", to_ns.name()])?;
        plumb_on_server(&to_ns, &moved)?;
        tracing::info!(
            session = name,
            from = %old.server,
            to = to_server,
            virtual_addr = %moved.virtual_addr,
            physical_addr = %moved.physical_addr,
            "session moved"
        );
        sessions.insert(name.into(), moved.clone());
        Ok(moved)
    }

    /// The kernel-routing stand-in for the dataplane after a cross-subnet
    /// move: a host route on the proxy box sends the session's virtual
    /// address to the server that hosts it now.
    pub fn route_on_proxy(&self, session: &Session) -> Result<()> {
        let (host, _) = self.server(&session.server)?;
        self.proxy().ip(&[
            "route",
            "replace",
            &format!("{}/32", session.virtual_addr),
            "via",
            &host.address.to_string(),
        ])?;
        Ok(())
    }

    /// Ends a session: its namespace, processes and veth are removed.
    pub fn remove_session(&self, name: &str) -> Result<()> {
        let mut sessions = lock(&self.sessions);
        let s = sessions
            .remove(name)
            .ok_or_else(|| LabError::UnknownSession(name.into()))?;
        // Cut the veth first: a namespace outlives its name while anything
        // (a socket of a test, say) still holds it, and would keep answering.
        if let Ok((_, server)) = self.server(&s.server) {
            let _ = server.ip(&["link", "del", &s.server_link()]);
        }
        s.netns().delete()
    }

    fn build(&self) -> Result<()> {
        let fabric = Netns::create(self.fabric().name())?;
        fabric.sysctl(COMMON_SYSCTLS)?;
        let mut bridges = Vec::new();
        for net in &self.topology.networks {
            bridges.push(format!(
                "link add name br-{} type bridge forward_delay 0 stp_state 0",
                net.name
            ));
            bridges.push(format!("link set br-{} up", net.name));
        }
        fabric.ip_batch(&bridges)?;

        let proxy = Netns::create(self.proxy().name())?;
        proxy.sysctl(COMMON_SYSCTLS)?;
        proxy.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ])?;
        for net in &self.topology.networks {
            self.connect(&proxy, &net.name, net, net.gateway)?;
        }

        for host in &self.topology.hosts {
            let ns = Netns::create(host_netns(self.name(), host).name())?;
            ns.sysctl(COMMON_SYSCTLS)?;
            let net = self
                .topology
                .network(&host.network)
                .ok_or_else(|| LabError::UnknownNamespace(host.network.clone()))?;
            self.connect(&ns, "eth0", net, host.address)?;
            ns.ip(&["route", "add", "default", "via", &net.gateway.to_string()])?;
            if host.role == Role::Server {
                ns.sysctl(&[
                    ("net.ipv4.ip_forward", "1"),
                    ("net.ipv4.conf.eth0.proxy_arp", "1"),
                    // Answer ARP for sessions at once, not after a random
                    // delay of up to 0.8 s (the kernel's default).
                    ("net.ipv4.neigh.eth0.proxy_delay", "0"),
                    ("net.ipv4.conf.all.send_redirects", "0"),
                ])?;
            }
        }
        Ok(())
    }

    /// Connects `ns` to `net`'s bridge with a veth whose end in `ns` is `ifname`.
    fn connect(&self, ns: &Netns, ifname: &str, net: &Network, address: Ipv4Addr) -> Result<()> {
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        let fabric = self.fabric();
        fabric.ip(&[
            "link",
            "add",
            "name",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            ns.name(),
        ])?;
        fabric.ip_batch(&[
            format!("link set {port} master br-{}", net.name),
            format!("link set {port} up"),
        ])?;
        ns.ip_batch(&[
            format!(
                "addr add {address}/{} dev {ifname}",
                net.prefix.prefix_len()
            ),
            format!("link set {ifname} up"),
        ])?;
        fabric.wait_links_up(&[&port], LINK_UP_TIMEOUT)?;
        ns.wait_links_up(&[ifname], LINK_UP_TIMEOUT)
    }

    /// A free address for a session on `host`'s subnet: `wanted` if given
    /// and free, else the lowest free one of the server's pool.
    fn pick_address(
        &self,
        sessions: &BTreeMap<String, Session>,
        host: &Host,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let net = self
            .topology
            .network(&host.network)
            .ok_or_else(|| LabError::UnknownServer(host.name.clone()))?;
        let used = |a: Ipv4Addr| {
            a == net.gateway
                || self.topology.hosts.iter().any(|h| h.address == a)
                || sessions.values().any(|s| {
                    s.physical_addr == a
                        && self
                            .topology
                            .host(&s.server)
                            .is_some_and(|h| h.network == net.name)
                })
        };
        match wanted {
            Some(a) if !net.prefix.contains(&a) => Err(LabError::AddressOffSubnet {
                address: a,
                server: host.name.clone(),
                prefix: net.prefix,
            }),
            Some(a) if used(a) => Err(LabError::AddressInUse {
                address: a,
                network: net.name.clone(),
            }),
            Some(a) => Ok(a),
            None => host
                .session_pool
                .ok_or_else(|| LabError::NoPool {
                    server: host.name.clone(),
                })?
                .iter()
                .find(|a| !used(*a))
                .ok_or_else(|| LabError::PoolExhausted(host.name.clone())),
        }
    }

    /// Rebuilds the session table of a kept lab from the kernel: a session
    /// is on the server whose namespace holds its `ses-<name>` link, its
    /// virtual address is on its eth0, its physical address is the other /32
    /// the server routes into the link (or the virtual one).
    fn discover_sessions(&self) -> Result<BTreeMap<String, Session>> {
        let prefix = netns_name(self.name(), "session-");
        let mut out = BTreeMap::new();
        for ns_name in namespaces_of(self.name())? {
            let Some(name) = ns_name.strip_prefix(&prefix) else {
                continue;
            };
            let ns = Netns::existing(&ns_name);
            let addrs = ns.ip_json(&["-4", "addr", "show", "dev", "eth0"])?;
            let virtual_addr = addrs[0]["addr_info"][0]["local"]
                .as_str()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| LabError::Parse {
                    command: format!("ip -n {ns_name} addr show dev eth0"),
                    detail: "session has no IPv4 address".into(),
                })?;
            let link = server_link_name(name);
            for server in self.topology.hosts_with_role(Role::Server) {
                let server_ns = host_netns(self.name(), server);
                let Ok(routes) = server_ns.ip_json(&["-4", "route", "show", "dev", &link]) else {
                    continue;
                };
                let physical_addr = routes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["dst"].as_str()?.parse::<Ipv4Addr>().ok())
                    .find(|a| *a != virtual_addr)
                    .unwrap_or(virtual_addr);
                out.insert(
                    name.to_string(),
                    Session {
                        name: name.to_string(),
                        netns: ns_name.clone(),
                        server: server.name.clone(),
                        virtual_addr,
                        physical_addr,
                    },
                );
                break;
            }
        }
        Ok(out)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep.load(Ordering::Relaxed) {
            return;
        }
        match Lab::down(&self.topology.name) {
            Ok(n) => tracing::debug!(lab = %self.topology.name, namespaces = n, "lab down"),
            Err(e) => {
                tracing::warn!(lab = %self.topology.name, error = %e, "lab teardown incomplete")
            }
        }
    }
}

/// The server's side of a session: its gateway address on the veth, the
/// session's addresses routed into it.
fn plumb_on_server(server: &Netns, session: &Session) -> Result<()> {
    let link = session.server_link();
    let mut cmds = vec![
        format!("addr add {SESSION_GATEWAY}/32 dev {link}"),
        format!("link set {link} up"),
        format!("route add {}/32 dev {link}", session.virtual_addr),
    ];
    if session.physical_addr != session.virtual_addr {
        cmds.push(format!("route add {}/32 dev {link}", session.physical_addr));
    }
    server.ip_batch(&cmds)?;
    server.wait_links_up(&[&link], LINK_UP_TIMEOUT)
}

fn server_link_name(session: &str) -> String {
    format!("ses-{session}")
}

fn lab_prefix(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}-")
}

/// The namespace name of one part of lab `lab`.
pub fn netns_name(lab: &str, part: &str) -> String {
    format!("{}{part}", lab_prefix(lab))
}

fn host_netns(lab: &str, host: &Host) -> Netns {
    Netns::existing(&netns_name(lab, &format!("{}-{}", host.role, host.name)))
}

fn topology_file(lab: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{lab}.toml"))
}

/// All namespaces of lab `lab` that exist now.
pub fn namespaces_of(lab: &str) -> Result<Vec<String>> {
    let prefix = lab_prefix(lab);
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

/// A lab name unique on this machine: process id and a per-process counter.
pub fn unique_lab_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{:x}n{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A poisoned lock only means another test thread panicked; the table is
/// still consistent (every update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
