//! Replays `tests/data/fuzz_regression/` through the fuzz oracles. File
//! names start with the target: `decode-*`, `apply-*` or `encode-*`; other
//! files go through all three.

use std::fs;
use std::path::Path;

use mobidesk_display::fuzzing::{apply_oracle, decode_oracle, encode_oracle};

#[test]
fn fuzz_regression() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz_regression");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        let target = ["decode-", "apply-", "encode-"]
            .into_iter()
            .find(|p| name.starts_with(p));
        let result = std::panic::catch_unwind(|| {
            if target.is_none_or(|t| t == "decode-") {
                decode_oracle(&data);
            }
            if target.is_none_or(|t| t == "apply-") {
                apply_oracle(&data);
            }
            if target.is_none_or(|t| t == "encode-") {
                encode_oracle(&data);
            }
        });
        assert!(result.is_ok(), "oracle failed on {}", path.display());
        replayed += 1;
    }
    assert!(
        replayed >= 5,
        "only {replayed} regression inputs in {}",
        dir.display()
    );
}
