//! The declarative description of a lab: networks, the hosts on them, and the
//! proxy box that joins them. Pure data: parsing and validation only, no I/O.
//!
//! ```toml
//! name = "demo"
//!
//! [[network]]
//! name = "ext"            # the proxy box's interface on it has this name
//! kind = "external"       # clients and outside hosts live here
//! prefix = "198.18.0.0/24"
//! gateway = "198.18.0.1"  # the proxy box's address on this network
//!
//! [[network]]
//! name = "sub1"
//! kind = "server"         # a server subnet
//! prefix = "10.1.0.0/24"
//! gateway = "10.1.0.1"
//!
//! [[host]]
//! name = "a"
//! role = "server"
//! network = "sub1"
//! address = "10.1.0.10"
//! session_pool = "10.1.0.100-10.1.0.199"  # physical addresses for sessions
//! ```
//!
//! Every network is an Ethernet segment (a bridge), so two servers on the same
//! network share a subnet — what same-subnet migration needs.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Longest network name: it becomes `br-<name>` in the fabric (IFNAMSIZ - 1 = 15).
pub const MAX_NETWORK_NAME: usize = 12;
/// Longest host or session name: sessions become `ses-<name>` on their server.
pub const MAX_HOST_NAME: usize = 11;
/// Longest lab name (it prefixes every namespace name).
pub const MAX_LAB_NAME: usize = 20;

/// Why a topology was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("topology is not valid TOML: {0}")]
    Toml(String),
    #[error("lab name {0:?} must be 1..={MAX_LAB_NAME} lowercase letters or digits")]
    LabName(String),
    #[error("{what} name {name:?} must be 1..={max} characters of a-z, 0-9 and '-', starting with a letter")]
    Name {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("duplicate {what} name {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("network {network:?}: gateway {gateway} is not a host address of {prefix}")]
    Gateway {
        network: String,
        gateway: Ipv4Addr,
        prefix: Ipv4Net,
    },
    #[error("networks {a:?} and {b:?} overlap ({pa} and {pb})")]
    Overlap {
        a: String,
        b: String,
        pa: Ipv4Net,
        pb: Ipv4Net,
    },
    #[error("host {host:?}: unknown network {network:?}")]
    UnknownNetwork { host: String, network: String },
    #[error("host {host:?}: a {role} must be on a {want} network, {network:?} is {kind}")]
    WrongNetworkKind {
        host: String,
        role: Role,
        network: String,
        want: NetworkKind,
        kind: NetworkKind,
    },
    #[error(
        "host {host:?}: address {address} is not a host address of network {network:?} ({prefix})"
    )]
    Address {
        host: String,
        address: Ipv4Addr,
        network: String,
        prefix: Ipv4Net,
    },
    #[error("address {address} is used twice ({a:?} and {b:?})")]
    AddressTwice {
        address: Ipv4Addr,
        a: String,
        b: String,
    },
    #[error("host {host:?}: session pool {pool} is not inside network {network:?} ({prefix})")]
    Pool {
        host: String,
        pool: AddressRange,
        network: String,
        prefix: Ipv4Net,
    },
    #[error("host {host:?}: only servers have a session pool")]
    PoolOnNonServer { host: String },
    #[error("the topology needs at least one {0}")]
    Missing(&'static str),
    #[error("bad address range {0:?}: expected FIRST-LAST, e.g. 10.1.0.100-10.1.0.199")]
    Range(String),
}

/// What a network is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// Clients and outside hosts.
    External,
    /// A subnet of session servers.
    Server,
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkKind::External => "external",
            NetworkKind::Server => "server",
        })
    }
}

/// What a host namespace plays in the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A session server: hosts session namespaces, routes for them.
    Server,
    /// A host outside the cluster (web, echo, iperf3 servers in tests).
    Outside,
    /// A user's machine running a viewer.
    Client,
}

impl Role {
    /// The word used for this role in namespace names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Outside => "outside",
            Role::Client => "client",
        }
    }

    fn network_kind(self) -> NetworkKind {
        match self {
            Role::Server => NetworkKind::Server,
            Role::Outside | Role::Client => NetworkKind::External,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of IPv4 addresses, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddressRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddressRange {
    /// The addresses of the range, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(a))
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for AddressRange {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TopologyError::Range(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let last: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        if u32::from(first) > u32::from(last) {
            return Err(bad());
        }
        Ok(AddressRange { first, last })
    }
}

impl TryFrom<String> for AddressRange {
    type Error = TopologyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AddressRange> for String {
    fn from(r: AddressRange) -> String {
        r.to_string()
    }
}

/// An Ethernet segment with an IPv4 subnet; the proxy box is on every one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
    pub prefix: Ipv4Net,
    /// The proxy box's address on this network (the hosts' default gateway).
    pub gateway: Ipv4Addr,
}

/// A host namespace with one interface (`eth0`) on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub network: String,
    pub address: Ipv4Addr,
    /// Servers only: the physical addresses handed to sessions on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pool: Option<AddressRange>,
}

/// A whole lab: its name (prefix of every object it creates), networks, hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub name: String,
    #[serde(rename = "network")]
    pub networks: Vec<Network>,
    #[serde(rename = "host", default)]
    pub hosts: Vec<Host>,
}

impl Topology {
    /// Parses and validates a TOML description.
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        let t: Topology = toml::from_str(text).map_err(|e| TopologyError::Toml(e.to_string()))?;
        t.validate()?;
        Ok(t)
    }

    pub fn to_toml(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The default deployment: an external network with one client and one
    /// outside host, and two server subnets with one server each, plus a
    /// second server on subnet 1 for same-subnet moves.
    pub fn standard(name: &str) -> Self {
        let net = |name: &str, kind, prefix: &str, gateway: [u8; 4]| Network {
            name: name.into(),
            kind,
            prefix: prefix.parse().unwrap_or_default(),
            gateway: gateway.into(),
        };
        let host = |name: &str, role, network: &str, address: [u8; 4], pool: Option<&str>| Host {
            name: name.into(),
            role,
            network: network.into(),
            address: address.into(),
            session_pool: pool.and_then(|p| p.parse().ok()),
        };
        Topology {
            name: name.into(),
            networks: vec![
                net(
                    "ext",
                    NetworkKind::External,
                    "198.18.0.0/24",
                    [198, 18, 0, 1],
                ),
                net("sub1", NetworkKind::Server, "10.1.0.0/24", [10, 1, 0, 1]),
                net("sub2", NetworkKind::Server, "10.2.0.0/24", [10, 2, 0, 1]),
            ],
            hosts: vec![
                host(
                    "a",
                    Role::Server,
                    "sub1",
                    [10, 1, 0, 10],
                    Some("10.1.0.100-10.1.0.199"),
                ),
                host(
                    "a2",
                    Role::Server,
                    "sub1",
                    [10, 1, 0, 11],
                    Some("10.1.0.200-10.1.0.249"),
                ),
                host(
                    "b",
                    Role::Server,
                    "sub2",
                    [10, 2, 0, 10],
                    Some("10.2.0.100-10.2.0.199"),
                ),
                host("web", Role::Outside, "ext", [198, 18, 0, 20], None),
                host("alice", Role::Client, "ext", [198, 18, 0, 30], None),
            ],
        }
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn hosts_with_role(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.role == role)
    }

    /// Checks every rule a lab needs to be built; the first broken one is reported.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.name.is_empty()
            || self.name.len() > MAX_LAB_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(TopologyError::LabName(self.name.clone()));
        }
        if !self
            .networks
            .iter()
            .any(|n| n.kind == NetworkKind::External)
        {
            return Err(TopologyError::Missing("external network"));
        }
        if !self.networks.iter().any(|n| n.kind == NetworkKind::Server) {
            return Err(TopologyError::Missing("server network"));
        }

        let mut names = HashSet::new();
        for n in &self.networks {
            check_name("network", &n.name, MAX_NETWORK_NAME)?;
            if !names.insert(n.name.as_str()) {
                return Err(TopologyError::Duplicate {
                    what: "network",
                    name: n.name.clone(),
                });
            }
            if !is_host_address(n.prefix, n.gateway) {
                return Err(TopologyError::Gateway {
                    network: n.name.clone(),
                    gateway: n.gateway,
                    prefix: n.prefix,
                });
            }
        }
        for (i, a) in self.networks.iter().enumerate() {
            for b in &self.networks[i + 1..] {
                if a.prefix.contains(&b.prefix) || b.prefix.contains(&a.prefix) {
                    return Err(TopologyError::Overlap {
                        a: a.name.clone(),
                        b: b.name.clone(),
                        pa: a.prefix,
                        pb: b.prefix,
                    });
                }
            }
        }

        let mut host_names = HashSet::new();
        // address -> owner, to catch duplicates (gateways included).
        let mut owners: Vec<(Ipv4Addr, String)> = self
            .networks
            .iter()
            .map(|n| (n.gateway, format!("proxy box on {}", n.name)))
            .collect();
        for h in &self.hosts {
            check_name("host", &h.name, MAX_HOST_NAME)?;
            if !host_names.insert(h.name.as_str()) {
                return Err(TopologyError::Duplicate {
                    what: "host",
                    name: h.name.clone(),
                });
            }
            let net = self
                .network(&h.network)
                .ok_or_else(|| TopologyError::UnknownNetwork {
                    host: h.name.clone(),
                    network: h.network.clone(),
                })?;
            if net.kind != h.role.network_kind() {
                return Err(TopologyError::WrongNetworkKind {
                    host: h.name.clone(),
                    role: h.role,
                    network: net.name.clone(),
                    want: h.role.network_kind(),
                    kind: net.kind,
                });
            }
            if !is_host_address(net.prefix, h.address) {
                return Err(TopologyError::Address {
                    host: h.name.clone(),
                    address: h.address,
                    network: net.name.clone(),
                    prefix: net.prefix,
                });
            }
            if let Some((_, other)) = owners.iter().find(|(a, _)| *a == h.address) {
                return Err(TopologyError::AddressTwice {
                    address: h.address,
                    a: other.clone(),
                    b: h.name.clone(),
                });
            }
            owners.push((h.address, h.name.clone()));
            if let Some(pool) = h.session_pool {
                if h.role != Role::Server {
                    return Err(TopologyError::PoolOnNonServer {
                        host: h.name.clone(),
                    });
                }
                if !is_host_address(net.prefix, pool.first)
                    || !is_host_address(net.prefix, pool.last)
                {
                    return Err(TopologyError::Pool {
                        host: h.name.clone(),
                        pool,
                        network: net.name.clone(),
                        prefix: net.prefix,
                    });
                }
            }
        }
        // Pools may not hand out an address a host or gateway already has.
        for h in &self.hosts {
            if let Some(pool) = h.session_pool {
                if let Some((a, other)) = owners.iter().find(|(a, _)| pool.contains(*a)) {
                    return Err(TopologyError::AddressTwice {
                        address: *a,
                        a: other.clone(),
                        b: format!("session pool of {}", h.name),
                    });
                }
            }
        }
        for (i, a) in self.hosts.iter().enumerate() {
            for b in &self.hosts[i + 1..] {
                if let (Some(pa), Some(pb)) = (a.session_pool, b.session_pool) {
                    if pa.contains(pb.first) || pb.contains(pa.first) {
                        return Err(TopologyError::AddressTwice {
                            address: if pa.contains(pb.first) {
                                pb.first
                            } else {
                                pa.first
                            },
                            a: format!("session pool of {}", a.name),
                            b: format!("session pool of {}", b.name),
                        });
                    }
                }
            }
        }
        if !self.hosts.iter().any(|h| h.role == Role::Server) {
            return Err(TopologyError::Missing("server"));
        }
        Ok(())
    }
}

/// Names become parts of namespace and interface names: keep them plain.
pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TopologyError::Name {
            what,
            name: name.to_string(),
            max,
        })
    }
}

/// An address that a host may have on `net`: not the network or broadcast address.
fn is_host_address(net: Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(&a) && (net.prefix_len() >= 31 || (a != net.network() && a != net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_topology_is_valid_and_round_trips_through_toml() {
        let t = Topology::standard("demo");
        t.validate().unwrap();
        let back = Topology::from_toml(&t.to_toml()).unwrap();
        assert_eq!(back, t);
        assert_eq!(t.hosts_with_role(Role::Server).count(), 3);
    }

    #[test]
    fn shipped_config_is_the_standard_topology() {
        let text = include_str!("../../configs/lab.toml");
        assert_eq!(
            Topology::from_toml(text).unwrap(),
            Topology::standard("demo")
        );
    }

    fn with(f: impl FnOnce(&mut Topology)) -> Result<(), TopologyError> {
        let mut t = Topology::standard("x");
        f(&mut t);
        t.validate()
    }

    #[test]
    fn refuses_broken_topologies_with_a_precise_reason() {
        assert!(matches!(
            with(|t| t.name = "Bad-Name".into()),
            Err(TopologyError::LabName(_))
        ));
        assert!(matches!(
            with(|t| t.networks[1].name = "a-very-long-name".into()),
            Err(TopologyError::Name { .. })
        ));
        assert!(matches!(
            with(|t| t.networks[2].prefix = "10.1.0.0/16".parse().unwrap()),
            Err(TopologyError::Gateway { .. } | TopologyError::Overlap { .. })
        ));
        assert!(matches!(
            with(|t| t.networks[1].gateway = [10, 1, 0, 0].into()),
            Err(TopologyError::Gateway { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[0].network = "nope".into()),
            Err(TopologyError::UnknownNetwork { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[0].network = "ext".into()),
            Err(TopologyError::WrongNetworkKind { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[0].address = [10, 2, 0, 50].into()),
            Err(TopologyError::Address { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[1].address = [10, 1, 0, 10].into()),
            Err(TopologyError::AddressTwice { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[0].address = [10, 1, 0, 1].into()),
            Err(TopologyError::AddressTwice { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[1].session_pool = "10.1.0.150-10.1.0.160".parse().ok()),
            Err(TopologyError::AddressTwice { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts[3].session_pool = "198.18.0.100-198.18.0.110".parse().ok()),
            Err(TopologyError::PoolOnNonServer { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts.push(t.hosts[0].clone())),
            Err(TopologyError::Duplicate { .. })
        ));
        assert!(matches!(
            with(|t| t.hosts.retain(|h| h.role != Role::Server)),
            Err(TopologyError::Missing("server"))
        ));
    }

    #[test]
    fn bad_toml_is_an_error_not_a_panic() {
        assert!(matches!(
            Topology::from_toml("name = 3"),
            Err(TopologyError::Toml(_))
        ));
        assert!(matches!(
            Topology::from_toml("name = \"x\"\nbogus = 1\n[[network]]\n"),
            Err(TopologyError::Toml(_))
        ));
        let bad_range = Topology::standard("x")
            .to_toml()
            .replace("10.1.0.100-10.1.0.199", "10.1.0.199-10.1.0.100");
        assert!(Topology::from_toml(&bad_range).is_err());
    }

    #[test]
    fn address_range_parses_and_iterates() {
        let r: AddressRange = "10.0.0.1-10.0.0.3".parse().unwrap();
        assert_eq!(r.iter().count(), 3);
        assert!(r.contains([10, 0, 0, 2].into()));
        assert!(!r.contains([10, 0, 0, 4].into()));
        assert!("10.0.0.1".parse::<AddressRange>().is_err());
    }
}
