//! MobiDesk-rs viewers (DESIGN.md §3.1). So far the headless viewer: the
//! shared decoder of `mobidesk-display` applied to a framebuffer in memory,
//! which can be written as a PNG, with statistics as JSON.
//!
//! - [`Viewer`]: the client side of PROTOCOL.md, sans I/O — bytes in
//!   ([`Viewer::handle_bytes`]), framebuffer, events and statistics out.
//! - [`Connection`]: a blocking transport around a [`Viewer`], TLS 1.3
//!   ([`TlsClient`]) or plain TCP ([`Security::InsecurePlaintext`]), with [`Connection::run_until_idle`] for tests and
//!   benchmarks.
//! - [`write_png`]: a framebuffer as an RGB PNG.

mod connection;
mod image;
mod stats;
mod tls;
mod viewer;

pub use self::connection::{Connection, ConnectionError};
pub use self::image::{write_png, PngError};
pub use self::stats::{InputLatency, Stats, TypeStats};
pub use self::tls::{Security, TlsClient, TlsConfigError};
pub use self::viewer::keysyms_for;
pub use self::viewer::{Event, Viewer, ViewerConfig, ViewerError};
