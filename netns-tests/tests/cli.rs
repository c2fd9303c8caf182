//! The `mobidesk-lab` binary as an operator uses it.

use std::process::{Command, Output};

use mobidesk_lab::lab::{namespaces_of, unique_lab_name};
use mobidesk_lab::Lab;

use crate::cleanup::host_links;
use crate::support::require_root;

fn lab_cmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mobidesk-lab"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = lab_cmd(args);
    assert!(
        out.status.success(),
        "mobidesk-lab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the lab even if an assertion fails half-way.
struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Lab::down(&self.0);
    }
}

#[test]
fn up_status_exec_session_down_leave_the_machine_as_it_was() {
    require_root();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab.toml");
    let name = unique_lab_name();
    let links_before = host_links();
    let _guard = Down(name.clone());

    let up = ok(&["up", "--config", config, "--name", &name]);
    assert!(up.contains(&format!("lab {name} is up")), "{up}");

    let again = lab_cmd(&["up", "--config", config, "--name", &name]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "a second `up` says why it refuses"
    );

    ok(&["session", "--lab", &name, "add", "s1", "--server", "a"]);
    let status: serde_json::Value =
        serde_json::from_str(&ok(&["status", &name, "--json"])).unwrap();
    let namespaces = status[0]["namespaces"].as_array().unwrap();
    assert_eq!(
        namespaces.len(),
        8,
        "fabric, proxy, 3 servers, 1 session, web, alice"
    );
    let proxy = namespaces.iter().find(|n| n["role"] == "proxy").unwrap();
    let mut proxy_addrs: Vec<String> = proxy["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {}",
                i["name"].as_str().unwrap(),
                i["addresses"][0].as_str().unwrap()
            )
        })
        .collect();
    proxy_addrs.sort();
    assert_eq!(
        proxy_addrs,
        ["ext 198.18.0.1/24", "sub1 10.1.0.1/24", "sub2 10.2.0.1/24"]
    );
    let session = namespaces.iter().find(|n| n["role"] == "session").unwrap();
    assert_eq!(session["name"], "s1");
    assert_eq!(session["interfaces"][0]["addresses"][0], "10.1.0.100/32");

    // exec runs inside the namespace and passes the exit status through.
    let addr = ok(&[
        "exec", "--lab", &name, "server-b", "--", "ip", "-br", "-4", "addr", "show", "eth0",
    ]);
    assert!(addr.contains("10.2.0.10/24"), "{addr}");
    let ping = ok(&[
        "exec",
        "--lab",
        &name,
        "s1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "198.18.0.20",
    ]);
    assert!(ping.contains("1 received"), "{ping}");
    assert_eq!(
        lab_cmd(&["exec", "--lab", &name, "proxy", "--", "false"])
            .status
            .code(),
        Some(1)
    );
    assert!(!lab_cmd(&["exec", "--lab", &name, "nosuch", "--", "true"])
        .status
        .success());

    // A session moved by the CLI is found again by the next command.
    let moved = ok(&[
        "session", "--lab", &name, "move", "s1", "--to", "b", "--route",
    ]);
    assert!(moved.contains("physical 10.2.0.100"), "{moved}");
    let list = ok(&["session", "--lab", &name, "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["server"], "b");
    assert_eq!(list[0]["virtual_addr"], "10.1.0.100");
    assert_eq!(list[0]["physical_addr"], "10.2.0.100");
    let ping = ok(&[
        "exec",
        "--lab",
        &name,
        "s1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "198.18.0.20",
    ]);
    assert!(ping.contains("1 received"), "{ping}");

    assert_eq!(ok(&["down", &name]).trim(), "removed 8 namespace(s)");
    assert!(namespaces_of(&name).unwrap().is_empty());
    assert_eq!(host_links(), links_before);
    assert!(!std::path::Path::new(&format!("/run/mobidesk-lab/{name}.toml")).exists());
}

#[test]
fn a_bad_topology_is_refused_with_its_reason() {
    require_root();
    let dir = std::env::temp_dir().join(unique_lab_name());
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/lab.toml"))
        .unwrap()
        .replace("address = \"10.2.0.10\"", "address = \"10.9.0.10\"");
    std::fs::write(&bad, text).unwrap();
    let out = lab_cmd(&[
        "up",
        "--config",
        bad.to_str().unwrap(),
        "--name",
        &unique_lab_name(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.9.0.10") && err.contains("sub2"), "{err}");
    let out = lab_cmd(&["up", "--config", "/nonexistent.toml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}
