//! The daemon with a `[network]` (and a desktop): sessions created through
//! the API get their address from the daemon's pool and a `ses-*` veth in a
//! per-test server namespace, the peer on the subnet reaches them, destroy
//! frees the address, a restart after SIGKILL keeps them (re-plumbing what
//! was lost meanwhile), a failed attach leaves nothing behind, and a desktop
//! profile comes up seen pixel-exact by the headless viewer.
//!
//! ```text
//!  peer ns  eth0 10.1.0.1/24 ══ eth0 10.1.0.10/24  server ns  ses-* ══ eth0 (session)
//! ```

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

use mobidesk_sessiond::api::{ErrorKind, SessionInfo};
use mobidesk_sessiond::desktop::framebuffer_file;
use mobidesk_sessiond::state::{is_alive, ProcStat};
use serde_json::json;

use crate::daemon::TestDaemon;
use crate::desktop::{binaries, session_processes, viewer_sees_the_desktop};
use crate::network::{fnv, payload, spawn_in, Lan, PEER};
use crate::support::{require_root, sh, unique, TempDir, DEADLINE};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A daemon whose `[network]` is the server namespace of `lan`, with
/// `pool`, and `extra` tables after it.
fn daemon_on(lan: &Lan, pool: &str, extra: &str) -> TestDaemon {
    let tables = format!(
        "[network]\nuplink = \"eth0\"\npool = \"{pool}\"\nexclude = [\"10.1.0.1\", \"10.1.0.10\"]\nnetns = \"{}\"\n{extra}",
        lan.server
    );
    TestDaemon::with_tables("", &tables)
}

/// The server's links (names).
fn links(lan: &Lan) -> Vec<String> {
    sh(Command::new("ip").args(["-n", &lan.server, "-o", "link", "show"]))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The peer pings `address` (one echo, answered within 10 s).
fn peer_pings(lan: &Lan, address: Ipv4Addr) {
    sh(Lan::run_in(&lan.peer, "ping").args(["-c", "1", "-W", "10", &address.to_string()]));
}

/// Leases of the daemon's state file: (address, session).
fn leases(d: &TestDaemon) -> Vec<(Ipv4Addr, String)> {
    d.state()
        .ipam
        .map(|i| i.leases().map(|(a, s)| (a, s.to_string())).collect())
        .unwrap_or_default()
}

/// `mobidesk_sessiond_addresses_free` of a scrape (which `promtool check
/// metrics` passes, when `/usr/bin/promtool` exists).
fn addresses_free(d: &TestDaemon) -> u64 {
    let text = d.scrape();
    let promtool = Path::new("/usr/bin/promtool");
    if promtool.exists() {
        let mut p = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "promtool: {out:?}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("mobidesk_sessiond_addresses_free "))
        .unwrap_or_else(|| panic!("addresses_free missing in\n{text}"))
        .parse()
        .unwrap()
}

/// The session's cgroup directories named after `id` that exist (v1: one
/// per hierarchy, v2: one).
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join("mobidesk").join(id)];
    for e in std::fs::read_dir(root).unwrap().flatten() {
        candidates.push(e.path().join("mobidesk").join(id));
    }
    for c in candidates {
        if c.exists() {
            v.push(c);
        }
    }
    v
}

fn create(d: &TestDaemon, id: &str) -> SessionInfo {
    d.ok(json!({"op": "create", "id": id, "profile": "probe.toml"}))
        .session
        .unwrap()
}

/// The name on the display servers' certificate (viewers check it with
/// `--server-name`; every session's display server has the same one).
const DISPLAY_NAME: &str = "display.mobidesk.test";

/// A CA and a server certificate for `name` signed by it, made with the
/// `openssl` command: (CA file, certificate, key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    sh(Command::new("openssl")
        .args(["req", "-x509"])
        .args(ec)
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem"))
        .args(["-days", "2", "-subj", "/CN=mobidesk test CA"]));
    sh(Command::new("openssl")
        .arg("req")
        .args(ec)
        .arg("-keyout")
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("req.csr"))
        .args(["-subj", &format!("/CN={name}")]));
    std::fs::write(
        p("ext.cnf"),
        format!(
            "subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    sh(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(p("req.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-out")
        .arg(p("cert.pem"))
        .args(["-days", "2", "-extfile"])
        .arg(p("ext.cnf")));
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// Inside the session: fetch the peer's payload on port 7001 and print its
/// length and checksum (FNV-1a 64, as [`fnv`]).
const FETCH: &str = r#"
import socket, sys
h = 0xcbf29ce484222325
n = 0
c = socket.create_connection((sys.argv[1], 7001), timeout=60)
while True:
    b = c.recv(65536)
    if not b:
        break
    n += len(b)
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xffffffffffffffff
print("got %d %x" % (n, h))
"#;

#[test]
fn network_sessions_get_addresses_lose_them_on_destroy_and_keep_them_across_a_restart() {
    require_root();
    let lan = Lan::new();
    // Three addresses: exhaustion and reuse are reachable.
    let mut d = daemon_on(&lan, "10.1.0.100-10.1.0.102", "");
    d.start();
    assert_eq!(addresses_free(&d), 3);

    // The peer serves each session a payload that depends on its address.
    let (tx, rx) = mpsc::channel();
    let server = spawn_in(&lan.peer, move || {
        let l = TcpListener::bind((PEER, 7001)).unwrap();
        tx.send(()).unwrap();
        for _ in 0..2 {
            let (mut c, from) = l.accept().unwrap();
            let SocketAddr::V4(from) = from else { panic!() };
            c.write_all(&payload(from.ip().octets()[3], 256 << 10))
                .unwrap();
        }
    });
    rx.recv_timeout(DEADLINE).unwrap();

    let ids: Vec<String> = (0..3).map(|_| unique("dn-")).collect();
    let a = create(&d, &ids[0]);
    let b = create(&d, &ids[1]);
    assert_eq!(
        (a.address, b.address),
        (Some(ip("10.1.0.100")), Some(ip("10.1.0.101"))),
        "each its own address from the pool"
    );
    assert_eq!(a.physical_address, a.address, "virtual = physical at first");
    let link_a = a.link.clone().unwrap();
    assert!(links(&lan).contains(&link_a), "{:?}", links(&lan));
    // Outbound TCP through the server: the session gets its own payload.
    for s in [&a, &b] {
        let (code, out, err) = d.exec(&s.id, &["/usr/bin/python3", "-c", FETCH, "10.1.0.1"]);
        assert_eq!(code, 0, "{err}");
        let want = payload(s.address.unwrap().octets()[3], 256 << 10);
        assert_eq!(out.trim(), format!("got {} {:x}", want.len(), fnv(&want)));
        // Inbound: the peer reaches the session's address.
        peer_pings(&lan, s.address.unwrap());
    }
    server.join().unwrap();
    let i = d.ok(json!({"op": "inspect", "id": a.id})).session.unwrap();
    assert_eq!(
        (i.address, i.link.as_deref()),
        (a.address, Some(link_a.as_str()))
    );
    // The record of `a` (records are not in creation order: by id, and
    // "dn-P-10" sorts before "dn-P-9").
    let rec = d.state();
    let rec_a = rec.sessions.iter().find(|r| r.id == a.id).unwrap();
    assert_eq!(rec_a.network.as_ref().unwrap().address, ip("10.1.0.100"));
    assert_eq!(leases(&d).len(), 2);

    // A desktop on a daemon that chose neither TLS nor plain text: a clear
    // error, nothing made.
    std::fs::write(
        d.dir.path().join("profiles/desk.toml"),
        "[desktop]\ndisplay_server = \"/usr/bin/true\"\n",
    )
    .unwrap();
    let r = d.call(json!({"op": "create", "profile": "desk.toml"}));
    let e = r.error.unwrap();
    assert!(
        e.message.contains("tls_ca_cert") && e.message.contains("insecure_plaintext"),
        "{e:?}"
    );
    assert_eq!(leases(&d).len(), 2);

    // The last address, then none left: a clear error, nothing made.
    let c = create(&d, &ids[2]);
    assert_eq!(c.address, Some(ip("10.1.0.102")));
    assert_eq!(addresses_free(&d), 0);
    let full = unique("dn-");
    let r = d.call(json!({"op": "create", "id": full, "profile": "probe.toml"}));
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Limit);
    assert!(e.message.contains("exhausted"), "{e:?}");
    assert!(!d.layer_dir(&full).exists() && cgroups_named(&full).is_empty());

    // Destroy frees the address and removes the link and its route.
    d.ok(json!({"op": "destroy", "id": a.id}));
    assert!(!links(&lan).contains(&link_a));
    let routes = sh(Command::new("ip").args(["-n", &lan.server, "route", "show"]));
    assert!(!routes.contains("10.1.0.100 "), "{routes}");
    assert_eq!(addresses_free(&d), 1);
    let again = create(&d, &full);
    assert_eq!(again.address, Some(ip("10.1.0.100")), "the freed address");
    peer_pings(&lan, ip("10.1.0.100"));

    // SIGKILL of the daemon. Meanwhile: c's PID 1 dies, b's link is
    // deleted (both ends), `again` loses its route.
    d.kill9();
    let b_init = b.init_pid.unwrap();
    let b_start = ProcStat::read(b_init).unwrap().start_time;
    let c_init = c.init_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c_init as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(mobidesk_sessiond::environment::wait_for_exit(c_init, DEADLINE).unwrap());
    sh(Command::new("ip").args(["-n", &lan.server, "link", "del", b.link.as_deref().unwrap()]));
    sh(Command::new("ip").args(["-n", &lan.server, "route", "del", "10.1.0.100/32"]));

    d.start();
    let list = d.ok(json!({"op": "list"})).sessions.unwrap();
    let mut listed: Vec<(String, Option<Ipv4Addr>, bool)> = list
        .iter()
        .map(|s| (s.id.clone(), s.address, s.adopted))
        .collect();
    listed.sort();
    let mut want = vec![
        (b.id.clone(), b.address, true),
        (again.id.clone(), again.address, true),
    ];
    want.sort();
    assert_eq!(listed, want);
    assert!(is_alive(b_init, b_start), "b kept its PID 1");
    // Both answer again: b's link attached anew, the route re-plumbed.
    peer_pings(&lan, b.address.unwrap());
    peer_pings(&lan, again.address.unwrap());
    // c's link and lease are gone; its address is the one left.
    assert!(!links(&lan).contains(c.link.as_ref().unwrap()));
    let mut held: Vec<Ipv4Addr> = leases(&d).into_iter().map(|(a, _)| a).collect();
    held.sort();
    assert_eq!(held, [ip("10.1.0.100"), ip("10.1.0.101")]);
    assert_eq!(addresses_free(&d), 1);
    let last = create(&d, &unique("dn-"));
    assert_eq!(last.address, c.address);
    peer_pings(&lan, ip("10.1.0.102"));

    for s in [&b, &again, &last] {
        d.ok(json!({"op": "destroy", "id": s.id}));
    }
    let left: Vec<String> = links(&lan)
        .into_iter()
        .filter(|l| l.starts_with("ses-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(leases(&d).is_empty());
    assert_eq!(addresses_free(&d), 3);
}

#[test]
fn a_create_that_fails_leaves_nothing_and_a_requested_address_is_reserved() {
    require_root();
    let lan = Lan::new();
    let mut d = daemon_on(
        &lan,
        "10.1.0.100-10.1.0.101",
        "[desktop]\ninsecure_plaintext = true\n",
    );
    d.start();
    // A link of the session's name exists in the server: attach fails.
    let id = unique("dq-");
    let link = mobidesk_sessiond::network::link_name(&id);
    lan.add_veth(&link, "squatter");
    let r = d.call(json!({"op": "create", "id": id, "profile": "probe.toml"}));
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Failed);
    assert!(
        e.message.contains("network set-up failed") && e.message.contains("exists"),
        "{e:?}"
    );
    // No record, no lease, no layer, no cgroup; the squatter's link is
    // left alone and no other link was made.
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    assert!(d.state().sessions.is_empty());
    assert!(leases(&d).is_empty());
    assert!(!d.layer_dir(&id).exists());
    assert_eq!(cgroups_named(&id), Vec::<PathBuf>::new());
    let mut l = links(&lan);
    l.sort();
    let mut want = vec![
        "eth0".to_string(),
        "lo".into(),
        link.clone(),
        "squatter".into(),
    ];
    want.sort();
    assert_eq!(l, want);
    assert_eq!(addresses_free(&d), 2);

    // A failure after the attach (the desktop never comes up: its script
    // finds no program, the session ends) removes the veth too.
    std::fs::write(
        d.dir.path().join("profiles/broken-desktop.toml"),
        "env = [[\"PATH\", \"/nonexistent\"]]\n[desktop]\ndisplay_server = \"/usr/bin/true\"\n",
    )
    .unwrap();
    let id = unique("dq-");
    let r = d.call(json!({"op": "create", "id": id, "profile": "broken-desktop.toml"}));
    let e = r.error.unwrap();
    assert!(e.message.contains("the desktop did not come up"), "{e:?}");
    assert!(d.state().sessions.is_empty() && leases(&d).is_empty());
    assert!(!d.layer_dir(&id).exists());
    assert_eq!(cgroups_named(&id), Vec::<PathBuf>::new());
    let mut l = links(&lan);
    l.sort();
    assert_eq!(l, want, "the session's veth was removed");

    // A requested address (outside the pool: one a migrating session
    // brings) is reserved and routed; asking for it again is a conflict,
    // an excluded one a bad request.
    let s = d
        .ok(
            json!({"op": "create", "id": unique("dq-"), "profile": "probe.toml",
                   "address": "10.1.0.150"}),
        )
        .session
        .unwrap();
    assert_eq!(s.address, Some(ip("10.1.0.150")));
    peer_pings(&lan, ip("10.1.0.150"));
    assert_eq!(
        d.err(json!({"op": "create", "id": unique("dq-"), "address": "10.1.0.150"})),
        ErrorKind::Conflict
    );
    assert_eq!(
        d.err(json!({"op": "create", "id": unique("dq-"), "address": "10.1.0.10"})),
        ErrorKind::BadRequest
    );
    assert_eq!(addresses_free(&d), 2, "the pool is untouched");
    d.ok(json!({"op": "destroy", "id": s.id}));
    assert!(leases(&d).is_empty());
}

#[test]
fn a_desktop_profile_through_the_api_is_seen_pixel_exact_from_the_subnet() {
    require_root();
    let (display_server, client) = binaries().clone();
    let lan = Lan::new();
    let pki = TempDir::new();
    let (ca, cert, key) = certificates(pki.path(), DISPLAY_NAME);
    let extra = format!(
        "[desktop]\ndisplay_server = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        display_server.display(),
        cert.display(),
        key.display()
    );
    let mut d = daemon_on(&lan, "10.1.0.100-10.1.0.109", &extra);
    let profiles = d.dir.path().join("profiles");
    std::fs::write(
        profiles.join("desktop.toml"),
        "hostname = \"apidesk\"\n[desktop]\n",
    )
    .unwrap();
    std::fs::write(
        profiles.join("desktop-missing.toml"),
        "[desktop]\ndisplay_server = \"/nonexistent/mobidesk-display\"\n",
    )
    .unwrap();
    d.start();

    // A display server that is not there: a clear error, nothing made.
    let id = unique("dd-");
    let r = d.call(json!({"op": "create", "id": id, "profile": "desktop-missing.toml"}));
    let e = r.error.unwrap();
    assert!(
        e.message.contains("/nonexistent/mobidesk-display") && e.message.contains("cargo build"),
        "{e:?}"
    );
    assert!(leases(&d).is_empty() && !d.layer_dir(&id).exists());
    // A desktop runs its desktop, not a command.
    assert_eq!(
        d.err(json!({"op": "create", "profile": "desktop.toml", "command": ["true"]})),
        ErrorKind::BadRequest
    );

    let s = d
        .ok(json!({"op": "create", "id": unique("dd-"), "profile": "desktop.toml"}))
        .session
        .unwrap();
    let (address, port) = (s.address.unwrap(), s.display_port.unwrap());
    assert_eq!(port, 5901);
    let pid = s.init_pid.unwrap();
    let out = TempDir::new();
    let fb = framebuffer_file(&s.layer);
    let (rounds, viewer, screen, _) = viewer_sees_the_desktop(
        &lan,
        &client,
        (address, port),
        &fb,
        out.path(),
        Some((&ca, DISPLAY_NAME)),
        &|| format!("processes {:?}", session_processes(pid)),
    );
    assert_eq!(viewer, screen);
    assert_eq!((viewer.0, viewer.1), (1024, 768));
    let procs = session_processes(pid);
    for p in ["Xvfb", "openbox", "xterm", "mobidesk-displa"] {
        assert!(
            procs.iter().any(|n| n == p),
            "{p} in the session: {procs:?}"
        );
    }
    // The session's own copy of the key: readable by its root only
    // (host uid 100000 in its user namespace).
    let copy = std::fs::metadata(d.layer_dir(&s.id).join("display-key.pem")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((copy.mode() & 0o777, copy.uid()), (0o400, 100_000));
    // An exec finds the display; the session's own /etc/hosts names it at
    // its address.
    let (code, _, err) = d.exec(&s.id, &["xprop", "-root", "_NET_CLIENT_LIST"]);
    assert_eq!(code, 0, "{err}");
    let (_, hosts, _) = d.exec(&s.id, &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{address}\tapidesk")), "{hosts}");
    eprintln!(
        "desktop through the API at {address}:{port}: pixel-exact after {rounds} viewer run(s)"
    );

    d.ok(json!({"op": "destroy", "id": s.id}));
    assert!(mobidesk_sessiond::environment::wait_for_exit(pid, DEADLINE).unwrap());
    assert!(!links(&lan).contains(s.link.as_ref().unwrap()));
    assert!(!d.layer_dir(&s.id).exists());
    assert!(leases(&d).is_empty());
}

#[test]
fn every_desktop_session_gets_a_display_certificate_of_its_own() {
    require_root();
    let (display_server, client) = binaries().clone();
    let lan = Lan::new();
    let pki = TempDir::new();
    let (ca, _, _) = certificates(pki.path(), DISPLAY_NAME);
    let ca_key = pki.path().join("ca.key");
    let extra = format!(
        "[desktop]\ndisplay_server = \"{}\"\ntls_ca_cert = \"{}\"\ntls_ca_key = \"{}\"\ntls_domain = \"desktops.test\"\n",
        display_server.display(),
        ca.display(),
        ca_key.display()
    );
    let mut d = daemon_on(&lan, "10.1.0.100-10.1.0.109", &extra);
    std::fs::write(
        d.dir.path().join("profiles").join("desktop.toml"),
        "hostname = \"ownkey\"\n[desktop]\n",
    )
    .unwrap();
    d.start();
    let create_desktop = |d: &TestDaemon| {
        d.ok(json!({"op": "create", "id": unique("dk-"), "profile": "desktop.toml"}))
            .session
            .unwrap()
    };
    let (a, b) = (create_desktop(&d), create_desktop(&d));
    let (name_a, name_b) = (
        a.display_name.clone().unwrap(),
        b.display_name.clone().unwrap(),
    );
    assert_ne!(name_a, name_b);
    for (s, n) in [(&a, &name_a), (&b, &name_b)] {
        assert!(
            n.starts_with(&format!("{}-", s.id)) && n.ends_with(".desktops.test"),
            "{n}"
        );
    }
    // A viewer that checks session a's name sees a's desktop.
    let port = a.display_port.unwrap();
    let out = TempDir::new();
    let (_, viewer, screen, _) = viewer_sees_the_desktop(
        &lan,
        &client,
        (a.address.unwrap(), port),
        &framebuffer_file(&a.layer),
        out.path(),
        Some((&ca, &name_a)),
        &|| format!("processes {:?}", session_processes(a.init_pid.unwrap())),
    );
    assert_eq!(viewer, screen);
    // Session b's display server, signed by the same CA, does not pass
    // for session a: its key is not a's.
    let st = Lan::run_in(&lan.peer, client.to_str().unwrap())
        .arg("--ca")
        .arg(&ca)
        .args(["--server-name", &name_a, "--headless", "--timeout", "30"])
        .args(["--connect", &format!("{}:{port}", b.address.unwrap())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "b passed for a: {err}");
    assert!(
        err.contains("handshake") || err.contains("certificate"),
        "{err}"
    );
    // Each session has its own key, readable by its root; the CA's key is
    // in neither.
    let ca_key_pem = std::fs::read_to_string(&ca_key).unwrap();
    let key = |s: &SessionInfo| {
        std::fs::read_to_string(d.layer_dir(&s.id).join("display-key.pem")).unwrap()
    };
    assert_ne!(key(&a), key(&b));
    for s in [&a, &b] {
        let (code, inside, err) = d.exec(&s.id, &["cat", "/.mobidesk/display-key.pem"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(inside, key(s));
        for f in std::fs::read_dir(d.layer_dir(&s.id)).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
                assert!(
                    !text.contains(ca_key_pem.trim()),
                    "the CA key in {}",
                    f.display()
                );
            }
        }
    }
    for s in [a, b] {
        d.ok(json!({"op": "destroy", "id": s.id}));
    }
    assert!(leases(&d).is_empty());
}

#[test]
fn a_server_network_that_cannot_be_prepared_stops_the_daemon_before_it_serves() {
    require_root();
    let lan = Lan::new();
    let d = TestDaemon::with_tables(
        "",
        &format!(
            "[network]\nuplink = \"bogus0\"\npool = \"10.1.0.100-10.1.0.101\"\nnetns = \"{}\"\n",
            lan.server
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mobidesk-sessiond"))
        .arg("--config")
        .arg(&d.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("network") && err.contains("bogus0"), "{err}");
    assert!(!d.socket.exists());
}

#[test]
fn a_start_cut_short_by_a_crash_is_cleaned_up_with_its_link_and_lease() {
    use mobidesk_sessiond::ipam::Ipam;
    use mobidesk_sessiond::network::{link_name, Attachment};
    use mobidesk_sessiond::state::{SessionRecord, State, VERSION};
    require_root();
    let lan = Lan::new();
    let mut d = daemon_on(&lan, "10.1.0.100-10.1.0.101", "");
    // What a daemon killed between attach and "running" leaves: a record
    // without PID 1 but with its attachment, the lease, the link and the
    // layer.
    let id = unique("dc-");
    let link = link_name(&id);
    let mut ipam = Ipam::new(
        "10.1.0.100-10.1.0.101".parse().unwrap(),
        [ip("10.1.0.1"), ip("10.1.0.10")],
    );
    let address = ipam.allocate(&id).unwrap();
    let state = State {
        version: VERSION,
        sessions: vec![SessionRecord {
            id: id.clone(),
            init_pid: None,
            init_start_time: None,
            created: 0,
            profile: mobidesk_sessiond::Profile::default(),
            home: None,
            command: vec!["sleep".into(), "infinity".into()],
            limits: mobidesk_sessiond::Limits::default(),
            cgroups: Vec::new(),
            session_dir: d.layer_dir(&id),
            destroying: false,
            network: Some(Attachment {
                session: id.clone(),
                link: link.clone(),
                address,
                physical: None,
            }),
            display_port: None,
            display_name: None,
        }],
        ipam: Some(ipam),
    };
    d.leave_state(&state);
    lan.add_veth(&link, "half");
    d.start();
    assert!(d.ok(json!({"op": "list"})).sessions.unwrap().is_empty());
    assert!(!links(&lan).contains(&link), "{:?}", links(&lan));
    assert!(!d.layer_dir(&id).exists());
    assert!(d.state().sessions.is_empty() && leases(&d).is_empty());
    assert_eq!(addresses_free(&d), 2);
    // Next fit survives the restart (.101 first), then the crashed
    // start's address is handed out again.
    let s1 = create(&d, &unique("dc-"));
    let s2 = create(&d, &unique("dc-"));
    assert_eq!(
        (s1.address, s2.address),
        (Some(ip("10.1.0.101")), Some(address))
    );
    for s in [s1, s2] {
        d.ok(json!({"op": "destroy", "id": s.id}));
    }
}
