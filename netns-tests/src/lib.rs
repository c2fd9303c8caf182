//! The MobiDesk lab: the deployment of DESIGN.md emulated on one machine with
//! network namespaces and veth pairs, for tests, benchmarks and the demo.
//!
//! - [`topology`]: the declarative description (TOML) and its validation;
//! - [`netns`]: one network namespace — create, configure, run code or
//!   processes inside it, delete it with everything in it;
//! - [`lab`]: a whole deployment built from a topology — proxy box, session
//!   servers, outside hosts, clients, and session namespaces that can be moved
//!   from one server to another without touching their TCP state;
//! - [`status`]: what is running now, read back from the kernel;
//! - [`dataplane`]: the project's dataplanes started in a lab and driven
//!   through their control sockets (tests, benchmarks, the demo);
//! - [`linkemu`]: a user-space link emulator (delay, rate, drop-tail queue)
//!   between two namespaces, for WAN-like client links (no netem here).
//!
//! Every object a lab creates lives inside a namespace whose name starts with
//! [`netns::NETNS_PREFIX`] and the lab's name, so labs never collide and
//! whatever a killed run left behind can be found and removed
//! ([`lab::Lab::down`], `mobidesk-lab down`). Nothing is created in the
//! host's own network namespace.

pub mod dataplane;
pub mod lab;
pub mod linkemu;
pub mod migrate;
pub mod netns;
pub mod status;
pub mod topology;

pub use lab::{Lab, Session};
pub use netns::Netns;
pub use topology::{Role, Topology, TopologyError};

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {netns}: {source}")]
    Enter {
        netns: String,
        source: std::io::Error,
    },
    #[error("lab {0:?} is already up (its namespaces exist); run `mobidesk-lab down {0}` first")]
    AlreadyUp(String),
    #[error("lab {0:?} is not up")]
    NotUp(String),
    #[error("no namespace {0:?} in this lab")]
    UnknownNamespace(String),
    #[error("no server {0:?} in this lab")]
    UnknownServer(String),
    #[error("no session {0:?} in this lab")]
    UnknownSession(String),
    #[error("session {0:?} already exists")]
    SessionExists(String),
    #[error("session {session:?} is already on server {server:?}")]
    SameServer { session: String, server: String },
    #[error("server {0:?} has no free address left in its session pool")]
    PoolExhausted(String),
    #[error("server {server:?} has no session pool; give the session an address")]
    NoPool { server: String },
    #[error("address {address} is already used on network {network:?}")]
    AddressInUse {
        address: std::net::Ipv4Addr,
        network: String,
    },
    #[error("address {address} is not on server {server:?}'s subnet {prefix}")]
    AddressOffSubnet {
        address: std::net::Ipv4Addr,
        server: String,
        prefix: ipnet::Ipv4Net,
    },
    #[error("interfaces {links} in {netns} did not come up")]
    LinkDown { netns: String, links: String },
    #[error("{0}")]
    Daemon(String),
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
