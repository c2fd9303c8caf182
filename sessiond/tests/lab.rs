//! sessiond in the lab: a session the daemon creates on lab server a is
//! attached to the server like the lab's own sessions (a `ses-*` veth the
//! server's dataplane steers), and what it opens to the outside goes through
//! the proxy box's dataplane: terminated in a VNIC and relayed, so the
//! outside host sees the proxy box. The whole path of DESIGN.md §3.3 with the
//! real daemons' code: sessiond, the server dataplane, the proxy box's.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener};

use mobidesk_lab::dataplane::Dataplanes;
use mobidesk_lab::Lab;
use serde_json::json;

use crate::daemon::TestDaemon;
use crate::support::require_root;

#[test]
fn a_session_sessiond_made_reaches_the_outside_through_the_proxy_boxs_dataplane() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let dps = Dataplanes::start(&lab).unwrap();
    let (_, server) = lab.server("a").unwrap();
    let web = lab.host("web").unwrap();
    let listener = web
        .run(|| TcpListener::bind("198.18.0.20:7640"))
        .unwrap()
        .unwrap();

    let mut d = TestDaemon::with_tables(
        "",
        &format!(
            "[network]\nuplink = \"eth0\"\npool = \"10.1.0.150-10.1.0.160\"\nnetns = \"{}\"\n",
            server.name()
        ),
    );
    d.start();
    let session = d
        .ok(json!({"op": "create", "id": "labbed", "profile": "probe.toml"}))
        .session
        .unwrap();
    assert_eq!(
        session.address,
        Some(Ipv4Addr::new(10, 1, 0, 150)),
        "{session:?}"
    );

    // From inside the session: bash's /dev/tcp, an ordinary socket.
    let (code, out, err) = d.exec(
        "labbed",
        &[
            "bash",
            "-c",
            "printf hello-from-a-sessiond-session >/dev/tcp/198.18.0.20/7640",
        ],
    );
    assert_eq!(code, 0, "{out} {err}");
    let (mut at_web, peer) = listener.accept().unwrap();
    let mut got = String::new();
    at_web.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello-from-a-sessiond-session");
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        "the outside sees the proxy box, not the session"
    );
    let proxy = dps.proxy.stats().unwrap();
    assert!(proxy.vnics_created >= 1, "{proxy:?}");
    let a = dps.server("a").unwrap().server_stats().unwrap();
    assert!(a.counters.offers_sent >= 1, "{a:?}");

    d.ok(json!({"op": "destroy", "id": "labbed"}));
}
