//! Namespace tests of the session environment with real processes (need
//! root): namespaces, escape attempts, legitimate actions, resource limits,
//! descriptor hygiene. Each test makes its own sessions under unique names,
//! so they run in parallel; everything is removed on Drop, also on panic.

// Helpers of a test crate may unwrap: a panic is a failed test with a location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checkpoint;
mod cli;
mod daemon;
mod daemon_net;
mod desktop;
mod escapes;
mod fds;
mod lab;
mod legit;
mod limits;
mod namespaces;
mod network;
mod support;
