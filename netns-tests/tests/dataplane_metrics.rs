//! The dataplanes' Prometheus endpoint in the lab: scraped over plain HTTP
//! from inside their namespaces, the exposition checked by `promtool`, and
//! bad requests refused while it keeps serving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use mobidesk_lab::dataplane::Dataplane;
use mobidesk_lab::{Lab, Netns};

use crate::support::{connect, listen, require_root, transfer};

/// Where both dataplanes serve metrics, each on its own namespace's loopback.
const METRICS: &str = "127.0.0.1:9464";

/// One HTTP exchange from inside `ns`: the status code, the head and the
/// body of the answer.
fn http(ns: &Netns, request: &[u8]) -> (u16, String, String) {
    try_http(ns, request).unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

fn try_http(ns: &Netns, request: &[u8]) -> Result<(u16, String, String), String> {
    let addr: SocketAddr = METRICS.parse().unwrap();
    let answer = ns
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            s.set_write_timeout(Some(Duration::from_secs(15)))?;
            s.write_all(request)?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)?;
            std::io::Result::Ok(answer)
        })
        .unwrap()
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8(answer).map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

fn get(ns: &Netns, path: &str) -> (u16, String, String) {
    http(
        ns,
        format!("GET {path} HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").as_bytes(),
    )
}

/// `/metrics` of the dataplane in `ns`, checked for status and type.
fn scrape(ns: &Netns) -> String {
    let (status, head, body) = get(ns, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    body
}

/// The value of one series (`name{labels}` exactly as exposed).
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
        .parse()
        .unwrap()
}

/// `promtool check metrics` (exposition format and naming lints) on `text`.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus, installed by scripts/setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

#[test]
fn both_dataplanes_count_a_relayed_connection_and_pass_promtool() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let s1 = lab.add_session("s1", "a").unwrap();
    let metrics = Some(METRICS.parse().unwrap());
    let mut server_config = Dataplane::server_config(&lab, "a").unwrap();
    server_config.metrics = metrics;
    let server = Dataplane::server_with_config(&lab, "a", server_config).unwrap();
    let mut proxy_config = Dataplane::proxy_config(&lab).unwrap();
    proxy_config.metrics = metrics;
    let proxy = Dataplane::proxy_with(&lab, proxy_config).unwrap();
    let (proxy_ns, (_, server_ns)) = (lab.proxy(), lab.server("a").unwrap());

    let before = scrape(&proxy_ns);
    assert_eq!(sample(&before, "mobidesk_dataplane_vnics_created_total"), 0);
    assert_eq!(sample(&before, "mobidesk_dataplane_vnics"), 0);
    assert!(before.contains(r#"mobidesk_dataplane_build_info{mode="proxy","#));
    promtool_check(&before);

    let web = lab.host("web").unwrap();
    let listener = listen(&web, "198.18.0.20:7700");
    let mut at_session = connect(&s1.netns(), "198.18.0.20:7700".parse().unwrap());
    let (mut at_web, _) = listener.accept().unwrap();
    transfer(&mut at_session, &mut at_web, 1 << 20, 70);
    transfer(&mut at_web, &mut at_session, 1 << 20, 71);

    let after = scrape(&proxy_ns);
    promtool_check(&after);
    assert!(sample(&after, "mobidesk_dataplane_vnics_created_total") >= 1);
    assert_eq!(sample(&after, "mobidesk_dataplane_vnics"), 1);
    for direction in ["in", "out"] {
        let packets = format!(r#"mobidesk_dataplane_packets_total{{direction="{direction}"}}"#);
        let bytes = format!(r#"mobidesk_dataplane_bytes_total{{direction="{direction}"}}"#);
        assert!(sample(&after, &packets) > 10, "{packets}");
        assert!(sample(&after, &bytes) > 1 << 20, "{bytes}");
    }
    assert_eq!(sample(&after, "mobidesk_dataplane_labels_in_use"), 0);
    // The same numbers the control socket reports.
    let stats = proxy.stats().unwrap();
    assert_eq!(
        sample(&after, "mobidesk_dataplane_vnics_created_total"),
        stats.vnics_created
    );

    // The server offered its label on the session's SYN, and took the
    // proxy box's from the SYN-ACK.
    let at_server = scrape(&server_ns);
    promtool_check(&at_server);
    assert!(at_server.contains(r#"mobidesk_dataplane_build_info{mode="server","#));
    assert_eq!(
        sample(
            &at_server,
            r#"mobidesk_dataplane_label_offers_total{direction="sent"}"#
        ),
        1
    );
    assert_eq!(
        sample(
            &at_server,
            r#"mobidesk_dataplane_label_offers_total{direction="received"}"#
        ),
        1
    );
    assert_eq!(sample(&at_server, "mobidesk_dataplane_connections"), 1);
    assert!(
        sample(
            &at_server,
            r#"mobidesk_dataplane_packets_total{direction="in"}"#
        ) >= 2
    );
    assert!(
        !at_server.contains("vnics"),
        "no proxy box metrics on a server"
    );

    drop(at_session);
    drop(at_web);
    proxy
        .wait_stats("the vnic to be reclaimed", |s| s.vnics == 0)
        .unwrap();
    let closed = scrape(&proxy_ns);
    assert_eq!(sample(&closed, "mobidesk_dataplane_vnics"), 0);
    assert!(sample(&closed, "mobidesk_dataplane_vnics_reclaimed_total") >= 1);
    proxy.stop().unwrap();
    server.stop().unwrap();
}

#[test]
fn the_metrics_endpoint_refuses_bad_requests_and_keeps_serving() {
    require_root();
    let lab = Lab::for_test().unwrap();
    let mut config = Dataplane::proxy_config(&lab).unwrap();
    config.metrics = Some(METRICS.parse().unwrap());
    let proxy = Dataplane::proxy_with(&lab, config).unwrap();
    let ns = lab.proxy();

    let (status, _, body) = get(&ns, "/live");
    assert_eq!((status, body.as_str()), (200, "live\n"));
    assert_eq!(get(&ns, "/ready").0, 200);
    assert_eq!(get(&ns, "/nope").0, 404);
    assert_eq!(get(&ns, "/metrics/").0, 404);
    let (status, head, _) = http(&ns, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, 405);
    assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
    let (status, head, body) = http(&ns, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
    assert_eq!(http(&ns, b"GET /metrics HTTP/3\r\n\r\n").0, 505);

    // What Prometheus itself asks for.
    let (status, head, body) = http(
        &ns,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        head.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
        ),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");

    // An oversized head, garbage, and a TLS hello get an error answer.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(32 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http(&ns, &big).0, 431);
    assert_eq!(http(&ns, b"\x00\xff\xfe garbage\r\n\r\n").0, 400);
    assert_eq!(
        http(&ns, b"GET /metrics HTTP/1.1\r\nbroken header\r\n\r\n").0,
        400
    );
    assert_eq!(
        http(&ns, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00\n\n").0,
        400
    );

    // Idle connections beyond the limit are closed; once they go, it serves.
    let addr: SocketAddr = METRICS.parse().unwrap();
    let idle: Vec<TcpStream> = ns
        .run(|| {
            (0..40)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap())
                .collect()
        })
        .unwrap();
    drop(idle);

    // Still serving (as soon as the idle ones are gone), and the dataplane
    // itself is unharmed.
    let text = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match try_http(&ns, b"GET /metrics HTTP/1.1\r\n\r\n") {
                Ok((200, _, body)) => break body,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "not serving: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    promtool_check(&text);
    assert_eq!(proxy.stats().unwrap().vnics, 0);
    proxy.stop().unwrap();
}
