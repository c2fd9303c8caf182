//! Integration tests of `mobidesk-display`: one test binary (`autotests =
//! false`), one module per subject.
//!
//! - `round_trip`: every message type, random values from a seeded PRNG:
//!   emit then parse gives the value back, `buffer_len` is what `emit` wrote,
//!   and a stream of them decodes the same in chunks of any size;
//! - `framing`: truncated input, huge lengths, unknown and unexpected types;
//! - `framebuffer`: COPY overlap, BITMAP, PFILL tile origin, bounds, and
//!   random commands against the naive model of `mobidesk_display::fuzzing`;
//! - `video`: YUV 4:2:0 conversion and scaling against the "close" bound;
//! - `spec`: the tables of PROTOCOL.md agree with the code;
//! - `fuzz_regression`: replays `tests/data/fuzz_regression/` through the
//!   fuzz oracles (the `fuzzing` feature is on for tests through the crate's
//!   dev-dependency on itself).

// Test helpers outside `#[test]` functions may unwrap too: a panic there is a
// failed test with a location (clippy.toml allows it in tests proper).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod framebuffer;
mod framing;
mod fuzz_regression;
mod rng;
mod round_trip;
mod spec;
mod video;
