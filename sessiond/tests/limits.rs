//! Per-session cgroups: a fork bomb stops at pids.max, a memory hog is
//! OOM-killed in its own group, limits change at run time; the host and
//! other sessions carry on.

use std::process::Command;

use crate::support::{Fixture, PROBE};

#[test]
fn a_fork_bomb_hits_pids_max_and_others_carry_on() {
    let f = Fixture::new();
    let mut profile = f.profile();
    profile.limits.pids_max = Some(40);
    let mut bomb = f.hold_spec(&f.spec(profile, &[PROBE, "forkbomb"]), None);
    let line = bomb.line();
    // "forks N errno 11 EAGAIN": the helper, PID 1 and the probe itself
    // count too, so N stays below 40.
    let (n, errno) = line
        .strip_prefix("forks ")
        .and_then(|r| r.split_once(" errno "))
        .unwrap_or_else(|| panic!("{line}"));
    let n: u32 = n.parse().unwrap();
    assert_eq!(errno, "11 EAGAIN", "{line}");
    assert!((30..40).contains(&n), "{line}");
    let cg = bomb.session.cgroup().unwrap();
    assert!(cg.pids_refused().unwrap() >= 1);
    assert_eq!(cg.pids_current().unwrap(), 40);
    // While the bomb holds: the host forks, another session runs.
    assert!(Command::new("true").status().unwrap().success());
    let other = f.run(&["sh", "-c", "echo alive"]);
    assert_eq!(other.stdout, "alive\n", "{other:?}");
    bomb.finish();
}

#[test]
fn a_memory_hog_is_oom_killed_inside_its_own_cgroup() {
    let f = Fixture::new();
    let mut profile = f.profile();
    profile.limits.memory_max = Some(64 << 20);
    let mut hog = f.hold_spec(&f.spec(profile, &[PROBE, "hog", "1024"]), None);
    let out = hog.finish();
    assert_eq!(out.code, 128 + 9, "killed by SIGKILL: {out:?}");
    assert!(!out.stdout.contains("survived"), "{out:?}");
    assert!(hog.session.cgroup().unwrap().oom_kills().unwrap() >= 1);
    // The host and another session carry on.
    let other = f.run(&["sh", "-c", "echo alive"]);
    assert_eq!(other.stdout, "alive\n");
}

#[test]
fn limits_change_at_run_time() {
    let f = Fixture::new();
    let mut profile = f.profile();
    profile.limits.pids_max = Some(100);
    profile.limits.memory_max = Some(256 << 20);
    // After `cat` ends (stdin closed), the shell forks once more.
    let script = "echo up; cat; /bin/true && echo forked";
    let mut s = f.hold_spec(&f.spec(profile, &["sh", "-c", script]), None);
    assert_eq!(s.line(), "up");
    let cg = s.session.cgroup().unwrap();
    let read = |file: &str| -> String {
        cg.paths()
            .iter()
            .map(|p| p.join(file))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string())
            .unwrap()
    };
    assert_eq!(read("pids.max"), "100");
    let lower = mobidesk_sessiond::Limits {
        pids_max: Some(3),
        memory_max: Some(128 << 20),
        cpu_weight: Some(50),
        ..Default::default()
    };
    cg.update(&lower).unwrap();
    assert_eq!(read("pids.max"), "3");
    if cg.version() == 1 {
        assert_eq!(read("memory.limit_in_bytes"), (128u64 << 20).to_string());
        assert_eq!(read("cpu.shares"), "512");
    } else {
        assert_eq!(read("memory.max"), (128u64 << 20).to_string());
        assert_eq!(read("cpu.weight"), "50");
    }
    // The new limit holds at once: helper + PID 1 + sh = 3, so the shell
    // cannot start one more process.
    let out = s.finish();
    // dash gives up on a failed fork with status 2.
    assert_eq!(out.stdout, "up\n", "{out:?}");
    assert!(out.stderr.contains("Cannot fork"), "{out:?}");
    assert_eq!(out.code, 2, "{out:?}");
    let paths = s.session.cgroup().unwrap().paths();
    drop(s);
    for p in paths {
        assert!(
            !p.exists(),
            "cgroup {} removed with the session",
            p.display()
        );
    }
}
