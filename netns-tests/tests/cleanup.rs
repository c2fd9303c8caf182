//! Labs clean up after themselves: on drop, while a panicking test unwinds,
//! and (by name) after a run that was killed before it could.

use std::process::Command;

use mobidesk_lab::lab::{namespaces_of, unique_lab_name};
use mobidesk_lab::{Lab, Topology};

use crate::support::{ping, require_root};

/// The host's own interfaces (name and kind): labs must never add one.
pub(crate) fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut links: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    links.sort();
    links
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie is dead; it only waits for its parent to reap it.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    require_root();
    let links_before = host_links();
    let name = unique_lab_name();
    let mut child = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::up(Topology::standard(&name)).unwrap();
        lab.add_session("s1", "a").unwrap();
        lab.move_session("s1", "b").unwrap();
        child = Some(
            lab.host("web")
                .unwrap()
                .spawn(Command::new("sleep").arg("600"))
                .unwrap(),
        );
        assert!(!namespaces_of(&name).unwrap().is_empty());
        panic!("this test panics with its lab up");
    }));
    assert!(result.is_err());
    assert_eq!(namespaces_of(&name).unwrap(), Vec::<String>::new());
    assert_eq!(
        host_links(),
        links_before,
        "no interface left in the host namespace"
    );
    let mut child = child.unwrap();
    assert!(
        process_gone(child.id()),
        "a process started in the lab still runs"
    );
    child.wait().unwrap();
}

#[test]
fn down_removes_what_a_killed_run_left_behind() {
    require_root();
    let name = unique_lab_name();
    let lab = Lab::up(Topology::standard(&name)).unwrap();
    lab.add_session("s1", "a").unwrap();
    let mut child = lab
        .session("s1")
        .unwrap()
        .netns()
        .spawn(Command::new("sleep").arg("600"))
        .unwrap();
    // A killed run never drops its lab.
    std::mem::forget(lab);
    assert_eq!(namespaces_of(&name).unwrap().len(), 8);

    let out = Command::new(env!("CARGO_BIN_EXE_mobidesk-lab"))
        .args(["down", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "removed 8 namespace(s)"
    );
    assert!(namespaces_of(&name).unwrap().is_empty());
    assert!(process_gone(child.id()));
    child.wait().unwrap();
}

#[test]
fn parallel_labs_do_not_collide() {
    require_root();
    // The same topology, session names and addresses in three labs at once.
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let lab = Lab::for_test().unwrap();
                    let s1 = lab.add_session("s1", "a").unwrap();
                    assert_eq!(s1.virtual_addr.to_string(), "10.1.0.100");
                    assert_eq!(ping(&s1.netns(), "198.18.0.20"), Some(62));
                    lab.move_session("s1", "b").unwrap();
                    lab.route_on_proxy(&lab.session("s1").unwrap()).unwrap();
                    assert_eq!(ping(&s1.netns(), "198.18.0.20"), Some(62));
                    lab.name().to_string()
                })
            })
            .collect();
        let mut names: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 3);
        for n in names {
            assert!(
                namespaces_of(&n).unwrap().is_empty(),
                "lab {n} left namespaces"
            );
        }
    });
}
