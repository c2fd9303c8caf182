//! The `mobidesk-sessiond` binary: help, exit status passed through, bad
//! profiles refused.

use std::process::Command;

use crate::support::{require_root, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_mobidesk-sessiond");

#[test]
fn help_lists_the_subcommands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in ["run", "policy", "check-profile", "cgroups"] {
        assert!(text.contains(sub), "{text}");
    }
    assert!(
        !text.contains("__spawn"),
        "internal subcommands stay hidden"
    );
}

#[test]
fn run_passes_the_commands_exit_status_through_and_cleans_up() {
    require_root();
    let dir = TempDir::new();
    let id = format!("cli-{}", std::process::id());
    let out = Command::new(BIN)
        .args(["run", "--id", &id, "--runtime-dir"])
        .arg(dir.path())
        .args(["--", "sh", "-c", "hostname; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mobidesk\n");
    assert!(!dir.path().join(&id).exists(), "layer removed");
    // v1 (one hierarchy per controller) or v2 (one group).
    for c in ["pids/", "memory/", "cpu/", ""] {
        let p = format!("/sys/fs/cgroup/{c}mobidesk/{id}");
        assert!(!std::path::Path::new(&p).exists(), "{p} removed");
    }
}

#[test]
fn run_refuses_a_desktop_profile_and_names_the_daemon() {
    let dir = TempDir::new();
    let p = dir.path().join("desk.toml");
    std::fs::write(&p, "[desktop]\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--runtime-dir"])
        .arg(dir.path())
        .arg("--profile")
        .arg(&p)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[desktop]") && err.contains("ctl"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing made"
    );
}

#[test]
fn a_bad_profile_is_refused_with_a_clear_message() {
    let dir = TempDir::new();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "hostname = \"ok\"\n[limits]\npids_maxx = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-profile")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pids_maxx"), "{err}");
}

#[test]
fn the_example_profile_is_valid() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/desktop.toml");
    let profile = mobidesk_sessiond::Profile::load(std::path::Path::new(p)).unwrap();
    assert_eq!(profile.hostname, "desk");
    assert_eq!(profile.limits.memory_max, Some(2 << 30));
    let out = Command::new(BIN)
        .arg("check-profile")
        .arg(p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
