//! MobiDesk-rs display virtualization (DESIGN.md §3.1, paper §3).
//!
//! - [`protocol`]: the wire protocol of `PROTOCOL.md`, sans I/O — a framing
//!   state machine and one `Repr` per message with `parse`/`emit`/
//!   `buffer_len`. Shared by the display server and every client.
//! - [`codec`]: what a client does with the display commands — a
//!   [`codec::Framebuffer`] that applies RAW, COPY, SFILL, BITMAP, PFILL and
//!   VIDEO, and the YUV 4:2:0 conversion and scaling of VIDEO.
//!
//! Both build without any feature and without I/O, for native and
//! WebAssembly clients alike. The display server itself (X11, tokio) will
//! come behind a `server` feature.

#![deny(unsafe_code)]

pub mod codec;
pub mod protocol;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
