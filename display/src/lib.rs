//! MobiDesk-rs display virtualization (DESIGN.md §3.1, paper §3).
//!
//! - [`protocol`]: the wire protocol of `PROTOCOL.md`, sans I/O — a framing
//!   state machine and one `Repr` per message with `parse`/`emit`/
//!   `buffer_len`. Shared by the display server and every client.
//! - [`codec`]: what a client does with the display commands — a
//!   [`codec::Framebuffer`] that applies RAW, COPY, SFILL, BITMAP, PFILL and
//!   VIDEO, and the YUV 4:2:0 conversion and scaling of VIDEO.
//!
//! - [`encode`]: what the server does to pixels — a damaged area of the
//!   screen into COPY, SFILL, BITMAP, PFILL and RAW commands against an image
//!   of what the client has, and the bounded damage [`encode::Region`] of a
//!   client.
//! - [`schedule`]: the per-client queue of commands, Shortest-Remaining-Size-
//!   First, preemptive between commands, bounded in bytes.
//! - `server` (feature `server`): the display server — an X client of the
//!   session's Xvfb (x11rb) and server push over TCP (tokio).
//!
//! `protocol`, `codec`, `encode` and `schedule` build without any feature and without
//! I/O, for native and WebAssembly clients alike.

#![deny(unsafe_code)]

pub mod codec;
pub mod encode;
pub mod protocol;
pub mod schedule;

#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
