//! MobiDesk-rs session servers: the session environment (DESIGN.md §3.2).
//!
//! - [`profile`]: what a session looks like (TOML): host name, read-only
//!   system directories, home, limits;
//! - [`environment`]: start a session — namespaces, root file system by
//!   `pivot_root`, minimal `/dev`, private `/tmp` and `/dev/shm`, home bind
//!   mount — and stop it with everything in it;
//! - [`init`]: the session's PID 1 (a reaper running the session's command);
//! - [`policy`]: the walls around privileged operations (seccomp and
//!   capabilities) as one table, in the paper's three classes;
//! - [`seccomp`]: the policy's system call rules compiled to one BPF
//!   program (sans I/O, with an interpreter for its tests);
//! - [`cgroup`]: per-session CPU, memory and pids limits on cgroup v1 or v2;
//! - [`ipam`]: the sessions' addresses from the server's pool (sans I/O);
//! - [`network`]: a session's veth, address and routes, proxy ARP and
//!   gratuitous ARP on the server;
//! - [`desktop`]: Xvfb, window manager, applications and the display server
//!   inside a session, from the profile's `[desktop]`;
//! - [`certs`]: each desktop session's own display certificate, issued
//!   from the display CA;
//! - [`daemon`]: the `--config` daemon: sessions managed through the
//!   control API ([`api`]), state persisted ([`state`]) so that sessions
//!   outlive a daemon restart, Prometheus metrics ([`metrics`]).
//!
//! All `unsafe` is in the private `sys` module.

pub mod api;
pub mod certs;
pub mod cgroup;
pub mod daemon;
pub mod desktop;
pub mod environment;
pub mod init;
pub mod ipam;
pub mod metrics;
pub mod network;
pub mod policy;
pub mod profile;
pub mod seccomp;
pub mod state;
mod sys;

pub use cgroup::{CgroupManager, SessionCgroup};
pub use environment::{ExternalMount, Launcher, Session, SessionError, SessionSpec, SessionStdio};
pub use profile::{Limits, Profile};
