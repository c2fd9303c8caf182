//! The MobiDesk-rs dataplane: the user-space packet path between the proxy box
//! and the session servers (DESIGN.md §3.3, paper §5).
//!
//! The crate is layered like smoltcp, and the layers here are sans-I/O: they
//! work on caller-owned byte buffers, never block, and never panic on any input.
//!
//! - [`wire`]: zero-copy packet views and validated representations
//!   (`Ipv4Packet`/`Ipv4Repr`), the packet classifier [`wire::parse_ipv4`],
//!   checksums, and the candidate wire format of connection labels
//!   ([`wire::label`]).
//! - [`rewrite`]: in-place virtual <-> physical address rewriting with
//!   incremental (RFC 1624) checksum updates.
//!
//! Later layers (per-connection VNICs on smoltcp, the TUN device) build on
//! these; only the TUN layer will be allowed `unsafe` code.

pub mod control;
pub mod daemon;
pub mod io;
pub mod metrics;
pub mod proxybox;
pub mod rewrite;
pub mod server;
pub mod vnic;
pub mod wire;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(test)]
mod testutil;
