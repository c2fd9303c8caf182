//! The classifier never panics on any bytes, and what it accepts is
//! consistent (see `mobidesk_dataplane::fuzzing::parse_oracle`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mobidesk_dataplane::fuzzing::parse_oracle(data);
});
