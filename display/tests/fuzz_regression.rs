//! Replays `tests/data/fuzz_regression/` through the fuzz oracles. File
//! names start with the target: `decode-*` or `apply-*`; other files go
//! through both.

use std::fs;
use std::path::Path;

use mobidesk_display::fuzzing::{apply_oracle, decode_oracle};

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
        let result = std::panic::catch_unwind(|| {
            if !name.starts_with("apply-") {
                decode_oracle(&data);
            }
            if !name.starts_with("decode-") {
                apply_oracle(&data);
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
