//! Random screen edits encoded per viewer, scheduled SRSF and applied by a
//! client always end pixel-exact (see
//! `mobidesk_display::fuzzing::encode_oracle`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mobidesk_display::fuzzing::encode_oracle(data);
});
