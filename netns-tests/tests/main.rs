//! Namespace tests of the lab itself (need root). One test binary, one module
//! per concern; every test builds its own lab under a unique name, so they
//! run in parallel.

// Helpers of a test crate may unwrap: a panic is a failed test with a location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cleanup;
mod cli;
mod dataplane;
mod dataplane_metrics;
mod dataplane_scale;
mod dataplane_udp;
mod linkemu;
mod routing;
mod session_move;
mod support;
