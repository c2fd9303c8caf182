//! Random display commands on a small framebuffer never panic and match a
//! naive per-pixel model (see `mobidesk_display::fuzzing::apply_oracle`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mobidesk_display::fuzzing::apply_oracle(data);
});
