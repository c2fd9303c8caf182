//! Prometheus metrics of the daemon (`GET /metrics` on the `metrics`
//! address of its configuration, Prometheus text format 0.0.4, encoded with
//! `prometheus-client`):
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `mobidesk_sessiond_sessions` | gauge | |
//! | `mobidesk_sessiond_session_processes` | gauge | `session` |
//! | `mobidesk_sessiond_session_memory_bytes` | gauge | `session` |
//! | `mobidesk_sessiond_session_cpu_seconds_total` | counter | `session` |
//! | `mobidesk_sessiond_api_requests_total` | counter | `op`, `result` |
//! | `mobidesk_sessiond_auth_failures_total` | counter | |
//! | `mobidesk_sessiond_addresses_free` | gauge | (with a `[network]`) |
//!
//! Per-session numbers come from the session's cgroups at each scrape
//! (see [`crate::daemon`] for where); API counters are kept by the daemon.
//! The HTTP side serves one connection at a time: a request head of at most
//! [`MAX_REQUEST_HEAD`] bytes within [`HEAD_TIMEOUT`], `GET` or `HEAD` of
//! `/metrics`, `/live` or `/ready`; anything else gets a 4xx answer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric's name starts with this (and `_`).
pub const PREFIX: &str = "mobidesk_sessiond";
/// Longest request head accepted.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The request head must arrive within this (and the answer be written).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The API ops, exported at 0 from the start (with result `ok`).
pub const OPS: &[&str] = &["create", "list", "inspect", "exec", "resources", "destroy"];

/// One session's numbers at a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSample {
    pub id: String,
    pub processes: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

/// Everything one scrape exports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub sessions: Vec<SessionSample>,
    /// Requests by (op, result); result is `ok` or the error kind. Requests
    /// that never got an op (unparsable, unauthorized) count as op `none`.
    pub api_requests: BTreeMap<(String, String), u64>,
    pub auth_failures: u64,
    /// Addresses of the server's pool still free (with a `[network]`).
    pub addresses_free: Option<u64>,
}

type Labels = Vec<(String, String)>;

/// Encodes a snapshot in the Prometheus text format.
pub fn encode(s: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix(PREFIX);
    let sessions: Gauge = Gauge::default();
    sessions.set(i64::try_from(s.sessions.len()).unwrap_or(i64::MAX));
    reg.register("sessions", "Sessions on this server", sessions);
    let processes = Family::<Labels, Gauge>::default();
    let memory = Family::<Labels, Gauge>::default();
    let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    for x in &s.sessions {
        let l = vec![("session".to_string(), x.id.clone())];
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(p) = x.processes {
            processes.get_or_create(&l).set(i(p));
        }
        if let Some(m) = x.memory_bytes {
            memory.get_or_create(&l).set(i(m));
        }
        if let Some(c) = x.cpu_seconds {
            cpu.get_or_create(&l).inc_by(c);
        }
    }
    reg.register(
        "session_processes",
        "Processes in the session (its pids cgroup)",
        processes,
    );
    reg.register(
        "session_memory_bytes",
        "Memory the session uses (its memory cgroup)",
        memory,
    );
    reg.register(
        "session_cpu_seconds",
        "CPU time the session's processes used",
        cpu,
    );
    let api = Family::<Labels, Counter>::default();
    for op in OPS {
        let _ = api.get_or_create(&vec![
            ("op".to_string(), op.to_string()),
            ("result".to_string(), "ok".to_string()),
        ]);
    }
    for ((op, result), n) in &s.api_requests {
        api.get_or_create(&vec![
            ("op".to_string(), op.clone()),
            ("result".to_string(), result.clone()),
        ])
        .inc_by(*n);
    }
    reg.register(
        "api_requests",
        "Control API requests by op and result (ok or the error kind)",
        api,
    );
    let auth: Counter = Counter::default();
    auth.inc_by(s.auth_failures);
    reg.register(
        "auth_failures",
        "Control API requests refused for a missing or wrong token",
        auth,
    );
    if let Some(free) = s.addresses_free {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(free).unwrap_or(i64::MAX));
        reg.register(
            "addresses_free",
            "Addresses of the server's pool not leased to a session",
            g,
        );
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &reg)?;
    Ok(out)
}

/// Answers one request head.
fn answer(head: &[u8], metrics: &dyn Fn() -> Option<String>) -> (u16, &'static str, String) {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (400, "Bad Request", "bad request\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "Bad Request", "bad request\n".into());
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !["/metrics", "/live", "/ready"].contains(&path) {
        return (404, "Not Found", "not found: try /metrics\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return (405, "Method Not Allowed", "only GET and HEAD\n".into());
    }
    match path {
        "/metrics" => match metrics() {
            Some(body) => (200, "OK", body),
            None => (503, "Service Unavailable", "metrics unavailable\n".into()),
        },
        "/live" => (200, "OK", "live\n".into()),
        _ => (200, "OK", "ready\n".into()),
    }
}

fn serve_one(mut stream: TcpStream, metrics: &dyn Fn() -> Option<String>) {
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HEAD_TIMEOUT));
    let deadline = std::time::Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let complete = loop {
        if std::time::Instant::now() >= deadline {
            break false;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_REQUEST_HEAD {
            break false;
        }
    };
    let (code, reason, body) = if complete {
        answer(&head, metrics)
    } else if head.is_empty() {
        return;
    } else {
        (400, "Bad Request", "bad request\n".into())
    };
    let content_type = if code == 200 && head.starts_with(b"GET /metrics") {
        prometheus_text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let head_only = head.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Serves the endpoint on `listener` until the process ends (one
/// connection at a time). `metrics` encodes a fresh snapshot.
pub fn serve(listener: TcpListener, metrics: impl Fn() -> Option<String>) {
    for stream in listener.incoming() {
        match stream {
            Ok(s) => serve_one(s, &metrics),
            Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_labels() {
        let mut s = Snapshot {
            sessions: vec![SessionSample {
                id: "a-1".into(),
                processes: Some(3),
                memory_bytes: Some(4096),
                cpu_seconds: Some(1.5),
            }],
            auth_failures: 2,
            addresses_free: Some(98),
            ..Snapshot::default()
        };
        s.api_requests
            .insert(("exec".into(), "unknown_session".into()), 4);
        let text = encode(&s).unwrap();
        for line in [
            "mobidesk_sessiond_sessions 1",
            r#"mobidesk_sessiond_session_processes{session="a-1"} 3"#,
            r#"mobidesk_sessiond_session_memory_bytes{session="a-1"} 4096"#,
            r#"mobidesk_sessiond_session_cpu_seconds_total{session="a-1"} 1.5"#,
            r#"mobidesk_sessiond_api_requests_total{op="exec",result="unknown_session"} 4"#,
            r#"mobidesk_sessiond_api_requests_total{op="create",result="ok"} 0"#,
            "mobidesk_sessiond_auth_failures_total 2",
            "mobidesk_sessiond_addresses_free 98",
            "# TYPE mobidesk_sessiond_session_cpu_seconds_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn http_answers() {
        let m = || Some("x 1\n".to_string());
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\n\r\n", &m).0, 200);
        assert_eq!(answer(b"GET /live HTTP/1.0\r\n\r\n", &m).0, 200);
        assert_eq!(answer(b"GET /nope HTTP/1.1\r\n\r\n", &m).0, 404);
        assert_eq!(answer(b"POST /metrics HTTP/1.1\r\n\r\n", &m).0, 405);
        assert_eq!(answer(b"GET /metrics\r\n\r\n", &m).0, 400);
        assert_eq!(answer(b"\xff\xfe", &m).0, 400);
    }
}
