//! Inside a session: only its own processes, host name, IPC objects, files
//! and addresses.

use std::process::Command;

use crate::support::{Fixture, ServerNet, PROBE};

#[test]
fn ps_shows_only_the_sessions_processes_with_small_pids() {
    let f = Fixture::new();
    let out = f.run(&["ps", "-e", "-o", "pid=,comm="]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<(u32, String)> = out
        .stdout
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().to_string(),
            )
        })
        .collect();
    // PID 1 is the reaper, PID 2 the command (ps): nothing else exists.
    assert_eq!(
        rows,
        vec![(1, "mobidesk-init".to_string()), (2, "ps".to_string())],
        "{}",
        out.stdout
    );
}

#[test]
fn hostname_is_the_sessions() {
    let f = Fixture::new();
    let host = sh_hostname();
    let mut profile = f.profile();
    profile.hostname = "desk-under-test".into();
    let out = f.run_spec(&f.spec(profile, &["hostname"]), None);
    assert_eq!(out.stdout.trim(), "desk-under-test");
    assert_eq!(sh_hostname(), host, "the host's name must not change");
}

fn sh_hostname() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap()
}

#[test]
fn ipc_objects_of_another_session_are_invisible() {
    let f = Fixture::new();
    let key = (std::process::id() % 100_000 + 700_000).to_string();
    // Session A makes a System V segment, finds it itself, and keeps its
    // IPC namespace alive until we close its stdin.
    let script = format!("{PROBE} shm-create {key} && {PROBE} shm-lookup {key} && cat");
    let mut a = f.hold(&["sh", "-c", &script]);
    assert_eq!(a.line(), "ok", "A creates the segment");
    assert_eq!(a.line(), "ok", "A sees its own segment");
    // Session B does not see it (ENOENT), nor does the host.
    assert_eq!(f.probe(&["shm-lookup", &key]), "errno 2 ENOENT");
    let host = Command::new("ipcs").args(["-m"]).output().unwrap();
    let k = format!("0x{:08x}", key.parse::<u32>().unwrap());
    assert!(
        !String::from_utf8_lossy(&host.stdout).contains(&k),
        "segment leaked to the host"
    );
    assert_eq!(a.finish().code, 0);
}

#[test]
fn another_sessions_files_are_unreachable() {
    let f = Fixture::new();
    let mut a = f.hold(&[
        "sh",
        "-c",
        "echo secret > /root/a-file && echo written && cat",
    ]);
    assert_eq!(a.line(), "written");
    let host_path = a.session.layer().join("root/a-file");
    assert!(host_path.exists(), "A's file is in A's layer on the host");
    // From B, by A's host path: not in B's mount tree at all.
    let line = f.probe(&["read", host_path.to_str().unwrap()]);
    assert_eq!(line, "errno 2 ENOENT");
    // And by the same path inside B: B's own /root is empty.
    assert_eq!(f.probe(&["read", "/root/a-file"]), "errno 2 ENOENT");
    a.finish();
}

#[test]
fn another_sessions_processes_are_unreachable() {
    let f = Fixture::new();
    let mut a = f.hold(&["sh", "-c", "echo up && cat"]);
    assert_eq!(a.line(), "up");
    let a_init = a.session.init_pid().unwrap().to_string();
    // A's PID 1, by its host pid, does not exist in B.
    assert_eq!(f.probe(&["kill0", &a_init]), "errno 3 ESRCH");
    assert_eq!(f.probe(&["ptrace", &a_init]), "errno 3 ESRCH");
    a.finish();
}

#[test]
fn another_sessions_addresses_are_unreachable() {
    let f = Fixture::new();
    let server = ServerNet::new();
    let name = format!("mdst-abstract-{}", std::process::id());
    // A listens on an abstract unix socket (like X11's) and on its own
    // loopback; B tries both.
    let script = format!("{PROBE} listen-tcp 127.0.0.1:7001 & {PROBE} listen-abstract {name}");
    let mut a = f.hold_spec(
        &f.spec(f.profile(), &["sh", "-c", &script]),
        Some((&server, "10.77.0.2")),
    );
    assert_eq!(a.line(), "listening");
    assert_eq!(a.line(), "listening");
    let spec = f.spec(
        f.profile(),
        &[
            "sh",
            "-c",
            &format!(
                "{PROBE} connect-abstract {name}; {PROBE} connect-tcp 127.0.0.1:7001; {PROBE} bind 10.77.0.2"
            ),
        ],
    );
    let out = f.run_spec(&spec, Some((&server, "10.77.0.3")));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "errno 111 ECONNREFUSED",
            "errno 111 ECONNREFUSED",
            "errno 99 EADDRNOTAVAIL"
        ],
        "{out:?}"
    );
    a.finish();
}

#[test]
fn session_root_is_not_host_root() {
    let f = Fixture::new();
    let base = f.profile().userns.unwrap().uid_base;
    let mut s = f.hold(&[
        "sh",
        "-c",
        &format!(
            "cat /proc/self/uid_map; {PROBE} read /etc/shadow; touch /root/made; echo done; cat"
        ),
    ]);
    let map: Vec<String> = s.line().split_whitespace().map(String::from).collect();
    assert_eq!(
        map,
        vec!["0".to_string(), base.to_string(), "65536".to_string()]
    );
    // Root inside is host uid `base`: a host file only host root may read
    // stays closed (without a user namespace this read would succeed).
    assert_eq!(s.line(), "errno 13 EACCES");
    assert_eq!(s.line(), "done");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(s.session.layer().join("root/made")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (base, base),
        "files of session root belong to the mapped uid"
    );
    s.finish();
}

#[test]
fn the_sessions_cgroups_are_its_cgroup_root() {
    let f = Fixture::new();
    let out = f.run(&["cat", "/proc/self/cgroup"]);
    // Every hierarchy's path is "/" inside: the host's cgroup tree (and the
    // session's place in it) stays hidden.
    let paths: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.rsplit_once(':').map(|(_, p)| p))
        .collect();
    assert!(!paths.is_empty(), "{out:?}");
    assert!(paths.iter().all(|p| *p == "/"), "{out:?}");
}
