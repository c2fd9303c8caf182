//! Rewriting, label insertion and stripping never panic, and round-trip on
//! valid packets (see `mobidesk_dataplane::fuzzing::rewrite_oracle`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mobidesk_dataplane::fuzzing::rewrite_oracle(data);
});
