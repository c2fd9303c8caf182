//! Framing and parsing never panic on any bytes, and every message that
//! parses re-emits to bytes that parse to the same value (see
//! `mobidesk_display::fuzzing::decode_oracle`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mobidesk_display::fuzzing::decode_oracle(data);
});
