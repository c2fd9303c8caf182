//! Prometheus metrics of the dataplane and its admin endpoint (DESIGN.md §3.4
//! "/metrics", STYLE.md item 11): `GET /metrics`, `/live` and `/ready` on the
//! address of the `metrics` key of `[proxy]` or `[server]`.
//!
//! The engines keep their counters as plain integers in their own state, so
//! the packet path pays nothing for metrics. A scrape copies them in one
//! brief borrow of the engine ([`Source::snapshot`]; never held across an
//! await) and encodes the copy with `prometheus-client`: the copy is the
//! [`Collector`] of a registry made for that scrape, and every metric is one
//! row of the table (`proxy_table`, `server_table`, and the two rows both
//! share in `Snapshot::table`).
//!
//! The HTTP side is HTTP/1.1, one request per connection, for three paths:
//! the request head is bounded ([`MAX_REQUEST_HEAD`]) and must arrive within
//! [`HEAD_TIMEOUT`]; anything else gets a 4xx/5xx answer and the connection
//! is closed. At most [`MAX_CONNECTIONS`] are served at once.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control::{ProxyStats, ServerStats};
use crate::io::fastpath::FastPath;
use crate::io::tun::READ_ERRORS;
use crate::proxybox::ProxyEngine;
use crate::server::ServerEngine;

/// Every metric's name starts with this (and `_`).
pub const PREFIX: &str = "mobidesk_dataplane";

/// Longest request head (request line and headers) accepted.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the answer must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// After answering, what the client still sends is read and thrown away
/// (so that closing does not reset the connection before the client read
/// the answer), up to this much and this long.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Drop reasons of the proxy box's engine: each is exported from the start
/// (at 0), so that a rate over it exists before the first drop. A reason
/// counted but missing here is exported too, once counted (and a unit test
/// reads the engines' sources to keep this list complete).
pub const PROXY_DROP_REASONS: &[&str] = &[
    // The classifier (`WireError::reason`).
    "truncated",
    "bad_version",
    "bad_header_length",
    "bad_total_length",
    "bad_header_checksum",
    "bad_option",
    "bad_label",
    "zero_label",
    "fragment",
    "unsupported_protocol",
    "truncated_transport",
    "bad_tcp_data_offset",
    "bad_udp_length",
    "bad_transport_checksum",
    // TCP: VNIC lookup, labels, limits.
    "port_zero",
    "unknown_label",
    "forged_label",
    "rewrite_failed",
    "no_connection",
    "bad_syn",
    "vnic_limit",
    "handshake_limit",
    "offer_mismatch",
    "memory_limit",
    // UDP and ICMP echo relays, and their replies to sessions.
    "unexpected_label",
    "bad_destination",
    "udp_flow_limit",
    "udp_no_flow",
    "udp_queue_full",
    "udp_queue_expired",
    "udp_send_failed",
    "udp_receive_error",
    "udp_socket_failed",
    "icmp_not_echo_request",
    "echo_unavailable",
    "echo_limit",
    "echo_unmatched",
    "echo_send_failed",
    "reply_too_big",
    "reply_queue_full",
    // Reassembly of fragmented UDP/ICMP datagrams from sessions.
    "fragment_malformed",
    "fragment_overlap",
    "fragment_too_big",
    "fragment_limit",
    "fragment_timeout",
];

/// Drop reasons of a session server's engine (see [`PROXY_DROP_REASONS`]).
/// The `import_*` ones count connection labels refused by an import, not
/// packets.
pub const SERVER_DROP_REASONS: &[&str] = &[
    "truncated",
    "bad_version",
    "bad_header_length",
    "bad_total_length",
    "bad_header_checksum",
    "bad_option",
    "bad_label",
    "zero_label",
    "fragment",
    "unsupported_protocol",
    "truncated_transport",
    "bad_tcp_data_offset",
    "bad_udp_length",
    "bad_transport_checksum",
    "label_from_session",
    "offer_for_unknown_connection",
    "forged_label",
    "migrated_without_label",
    "rewrite_failed",
    "label_insert_failed",
    "import_bad_label",
    "import_label_collision",
];

/// States of the ICMP echo relay's socket (`ProxyStats::echo_socket`).
const ECHO_SOCKET_STATES: [&str; 4] = ["datagram", "raw", "opening", "unavailable"];

/// The engine a scrape reads.
#[derive(Clone)]
pub enum Source {
    Proxy(Rc<RefCell<ProxyEngine>>),
    /// A server's engine, and its kernel fast path when that is on.
    Server(Rc<RefCell<ServerEngine>>, Option<Rc<RefCell<FastPath>>>),
}

impl Source {
    /// A copy of the engine's counters, or None if the engine is borrowed
    /// now (it never is between awaits, where a scrape runs).
    pub fn snapshot(&self) -> Option<Snapshot> {
        match self {
            Source::Proxy(e) => e.try_borrow().ok().map(|e| Snapshot::of_proxy(&e)),
            Source::Server(e, fast) => {
                let fast = match fast {
                    Some(f) => Some(f.try_borrow().ok()?.counters()),
                    None => None,
                };
                e.try_borrow().ok().map(|e| Snapshot {
                    engine: EngineStats::Server(ServerStats::of(&e).with_fast_path(fast)),
                    ..Snapshot::of_server(&e)
                })
            }
        }
    }
}

/// The numbers of one scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub engine: EngineStats,
    /// TUN reads that failed on one packet (process-wide).
    pub tun_read_errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStats {
    Proxy(ProxyStats),
    Server(ServerStats),
}

impl Snapshot {
    pub fn of_proxy(engine: &ProxyEngine) -> Self {
        Snapshot {
            engine: EngineStats::Proxy(ProxyStats::of(engine)),
            tun_read_errors: READ_ERRORS.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn of_server(engine: &ServerEngine) -> Self {
        Snapshot {
            engine: EngineStats::Server(ServerStats::of(engine)),
            tun_read_errors: READ_ERRORS.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Every metric, one row each; names get [`PREFIX`] in front and
    /// counters `_total` behind.
    fn table(&self) -> Vec<Metric> {
        let (mode, mut rows) = match &self.engine {
            EngineStats::Proxy(s) => ("proxy", proxy_table(s)),
            EngineStats::Server(s) => ("server", server_table(s)),
        };
        rows.insert(
            0,
            Metric::info(
                "build",
                "The dataplane's mode (proxy box or session server) and version",
                [("mode", mode), ("version", env!("CARGO_PKG_VERSION"))],
            ),
        );
        rows.push(
            counter(
                "tun_read_errors",
                "TUN device reads that failed on one packet, which was dropped",
            )
            .value(self.tun_read_errors),
        );
        rows
    }
}

/// The proxy box's metrics (its engine's counters, `ProxyStats`).
#[rustfmt::skip]
fn proxy_table(s: &ProxyStats) -> Vec<Metric> {
    vec![
        counter("packets", "IPv4 packets the engine read from the TUN device (in) and wrote to it (out)")
            .by("direction", [("in", s.packets_in), ("out", s.packets_out)]),
        counter("bytes", "Bytes of those packets (IP headers included)")
            .by("direction", [("in", s.bytes_in), ("out", s.bytes_out)]),
        counter("dropped_packets", "Packets dropped by the engine, by reason")
            .by("reason", drops(PROXY_DROP_REASONS, &s.dropped)),
        gauge("vnics", "VNICs alive: TCP connections terminated by the proxy box")
            .value(s.vnics),
        counter("vnics_created", "VNICs created (one per TCP connection a session opened)")
            .value(s.vnics_created),
        counter("vnics_reclaimed", "VNICs reclaimed (closed, reset, refused or timed out)")
            .value(s.vnics_reclaimed),
        gauge("vnic_buffer_bytes", "Socket buffer bytes of the live VNICs, both directions (bounded by vnic.memory_budget)")
            .value(s.vnic_buffer_bytes),
        counter("vnics_reduced", "VNICs made with vnic.min_buffer buffers because the memory budget was short")
            .value(s.vnics_reduced),
        counter("datagrams_reassembled", "UDP and ICMP datagrams reassembled from a session's fragments")
            .value(s.datagrams_reassembled),
        counter("icmp_errors_to_session", "ICMP destination-unreachable messages passed on to sessions (their UDP flows' destinations)")
            .value(s.icmp_errors_to_session),
        gauge("labels_in_use", "Connections of migrated sessions, found by their label")
            .value(s.labels_in_use),
        counter("rewrites", "Packets whose address was rewritten virtual <-> physical, either direction")
            .value(s.rewrites),
        counter("labelled_packets", "Packets that carried a connection label, either direction")
            .value(s.labelled_packets),
        counter("idle_polls", "VNIC polls that sent nothing though the VNIC asked to be polled at once")
            .value(s.idle_polls),
        gauge("udp_flows", "UDP flows open (session port -> destination)")
            .value(s.udp_flows),
        counter("udp_flows_created", "UDP flows opened")
            .value(s.udp_flows_created),
        counter("udp_flows_expired", "UDP flows closed after their idle timeout")
            .value(s.udp_flows_expired),
        counter("udp_datagrams", "UDP datagrams relayed to the outside and back to sessions")
            .by("direction", [("to_outside", s.udp_datagrams_to_outside), ("to_session", s.udp_datagrams_to_session)]),
        counter("icmp_echo_requests", "ICMP echo requests relayed for sessions")
            .value(s.echo_requests),
        counter("icmp_echo_replies", "ICMP echo replies delivered to sessions")
            .value(s.echo_replies),
        counter("icmp_echo_timeouts", "ICMP echo requests forgotten unanswered")
            .value(s.echo_timeouts),
        gauge("icmp_echoes_outstanding", "ICMP echo requests awaiting a reply")
            .value(s.echoes_outstanding),
        gauge("icmp_echo_socket", "The echo relay's ICMP socket: 1 for its state now")
            .by("state", ECHO_SOCKET_STATES.map(|k| (k, u64::from(s.echo_socket == k)))),
    ]
}

/// A session server's metrics (its engine's counters, `ServerStats`).
#[rustfmt::skip]
fn server_table(s: &ServerStats) -> Vec<Metric> {
    let c = &s.counters;
    let mut rows = vec![
        // The server engine counts what it reads, from both TUN devices.
        counter("packets", "IPv4 packets the engine read from its TUN devices")
            .by("direction", [("in", c.packets)]),
        counter("bytes", "Bytes of those packets (IP headers included)")
            .by("direction", [("in", c.bytes)]),
        counter("dropped_packets", "Packets dropped by the engine (and imported labels refused), by reason")
            .by("reason", drops(SERVER_DROP_REASONS, &c.dropped)),
        counter("label_offers", "Connection label offers sent (on SYNs from sessions) and received (from the proxy box)")
            .by("direction", [("sent", c.offers_sent), ("received", c.offers_received)]),
        counter("labelled_packets", "Packets that carried a connection label: checked and stripped (in), inserted (out)")
            .by("direction", [("in", c.labelled_in), ("out", c.labelled_out)]),
        counter("rewrites", "Packets whose address was rewritten virtual <-> physical, either direction")
            .value(c.rewrites),
        gauge("connections", "Connections whose labels are kept")
            .value(s.connections),
        gauge("labelled_sessions", "Sessions placed here whose packets carry labels (they migrated across subnets)")
            .value(s.labelled_sessions),
        counter("connections_evicted", "Connections whose labels were dropped to make room (the table was full)")
            .value(c.evicted),
    ];
    if let Some(f) = &s.fast_path {
        rows.extend([
            counter("fast_path_packets", "Segments the kernel fast path labelled and rewrote (out) or checked, stripped and rewrote (in)")
                .by("direction", [("in", f.in_packets), ("out", f.out_packets)]),
            counter("fast_path_bytes", "Bytes of those segments (IP headers included)")
                .by("direction", [("in", f.in_bytes), ("out", f.out_bytes)]),
            counter("fast_path_to_engine_packets", "Packets of labelled sessions the fast path handed to the engine")
                .value(f.to_engine),
            counter("fast_path_adjust_failures", "Headers the kernel refused to grow or shrink for the fast path")
                .value(f.adjust_failed),
        ]);
    }
    rows
}

/// Every known reason (at 0 until counted), then any other counted one.
fn drops(known: &[&'static str], counted: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: BTreeMap<String, u64> = known.iter().map(|r| (r.to_string(), 0)).collect();
    all.extend(counted.iter().map(|(r, n)| (r.clone(), *n)));
    all.into_iter().collect()
}

/// One metric: its name without prefix (and a counter's without `_total`),
/// kind, help (one line, no final period) and samples.
#[derive(Debug)]
struct Metric {
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    labels: Vec<(&'static str, Cow<'static, str>)>,
    value: u64,
}

fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: MetricType::Counter,
        help,
        samples: Vec::new(),
    }
}

fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        kind: MetricType::Gauge,
        ..counter(name, help)
    }
}

impl Metric {
    fn info<const N: usize>(
        name: &'static str,
        help: &'static str,
        labels: [(&'static str, &'static str); N],
    ) -> Metric {
        Metric {
            name,
            kind: MetricType::Info,
            help,
            samples: vec![Sample {
                labels: labels.map(|(k, v)| (k, Cow::Borrowed(v))).to_vec(),
                value: 1,
            }],
        }
    }

    /// One sample without labels.
    fn value<V: TryInto<u64>>(mut self, value: V) -> Metric {
        self.samples.push(Sample {
            labels: Vec::new(),
            value: value.try_into().unwrap_or(u64::MAX),
        });
        self
    }

    /// One sample per value of the label `label`.
    fn by<L: Into<Cow<'static, str>>>(
        mut self,
        label: &'static str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> Metric {
        self.samples
            .extend(samples.into_iter().map(|(v, value)| Sample {
                labels: vec![(label, v.into())],
                value,
            }));
        self
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        for s in &self.samples {
            if self.kind == MetricType::Info {
                metric.encode_info(&s.labels)?;
                continue;
            }
            if s.labels.is_empty() {
                self.encode_value(&mut metric, s.value)?;
            } else {
                self.encode_value(&mut metric.encode_family(&s.labels)?, s.value)?;
            }
        }
        Ok(())
    }

    fn encode_value(&self, m: &mut MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
        if self.kind == MetricType::Counter {
            m.encode_counter::<NoLabelSet, u64, u64>(&value, None)
        } else {
            m.encode_gauge(&value)
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in self.table() {
            metric.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The exposition formats a scrape may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (the default; what `promtool check
    /// metrics` reads).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The exposition of a snapshot.
pub fn encode(snapshot: Snapshot, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(snapshot));
    let mut text = String::with_capacity(16 * 1024);
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?,
    }
    Ok(text)
}

/// An HTTP status the endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeadTooLarge,
    Unavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadTooLarge => 431,
            Status::Unavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// What the endpoint cares about in a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The target without its query.
    path: &'a str,
    accept: Option<&'a str>,
}

/// Parses a request head (request line and headers, through the empty line).
fn parse_request(head: &[u8]) -> Result<Request<'_>, Status> {
    let head = std::str::from_utf8(head).map_err(|_| Status::BadRequest)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || target.bytes().any(|b| b <= b' ') {
        return Err(Status::BadRequest);
    }
    match version.strip_prefix("HTTP/") {
        Some("1.0" | "1.1") => {}
        Some(v) if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !v.is_empty() => {
            return Err(Status::VersionNotSupported)
        }
        _ => return Err(Status::BadRequest),
    }
    let mut accept = None;
    for header in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = header.split_once(':') else {
            return Err(Status::BadRequest);
        };
        if name.eq_ignore_ascii_case("accept") {
            accept = Some(value.trim());
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request {
        method,
        path,
        accept,
    })
}

/// One answer, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: Status,
    content_type: &'static str,
    body: String,
    /// A HEAD request: the headers only.
    head_only: bool,
}

impl Reply {
    fn plain(status: Status, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status.code(),
            self.status.reason(),
            self.content_type,
            self.body.len()
        );
        if self.status == Status::MethodNotAllowed {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// The answer to a request head.
fn answer(head: &[u8], source: &Source) -> Reply {
    let request = match parse_request(head) {
        Ok(r) => r,
        Err(status) => return Reply::plain(status, "bad request"),
    };
    if !["/metrics", "/live", "/ready"].contains(&request.path) {
        return Reply::plain(Status::NotFound, "not found: try /metrics, /live or /ready");
    }
    let head_only = match request.method {
        "GET" => false,
        "HEAD" => true,
        _ => return Reply::plain(Status::MethodNotAllowed, "only GET and HEAD"),
    };
    let reply = match request.path {
        // Answering at all means the event loop runs.
        "/live" => Reply::plain(Status::Ok, "live"),
        // The endpoint is started last: TUN device, steering and control
        // socket are up.
        "/ready" => Reply::plain(Status::Ok, "ready"),
        _ => {
            let format = Format::from_accept(request.accept);
            let encoded = source.snapshot().map(|s| encode(s, format));
            match encoded {
                Some(Ok(body)) => Reply {
                    status: Status::Ok,
                    content_type: format.content_type(),
                    body,
                    head_only: false,
                },
                Some(Err(_)) => Reply::plain(Status::Unavailable, "metrics could not be encoded"),
                None => Reply::plain(Status::Unavailable, "engine busy; try again"),
            }
        }
    };
    Reply { head_only, ..reply }
}

/// The admin endpoint: `/metrics`, `/live`, `/ready` over HTTP/1.1.
pub struct AdminServer {
    listener: TcpListener,
    source: Source,
    /// How long a request head may take ([`HEAD_TIMEOUT`]; tests shorten it).
    pub head_timeout: Duration,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, source: Source) -> io::Result<AdminServer> {
        Ok(AdminServer {
            listener: TcpListener::bind(addr).await?,
            source,
            head_timeout: HEAD_TIMEOUT,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until dropped (runs on the dataplane's `LocalSet`).
    pub async fn serve(self) {
        let active = Rc::new(Cell::new(0usize));
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if active.get() >= MAX_CONNECTIONS {
                tracing::debug!("metrics endpoint busy; connection closed");
                continue;
            }
            active.set(active.get() + 1);
            let (active, source, timeout) =
                (active.clone(), self.source.clone(), self.head_timeout);
            tokio::task::spawn_local(async move {
                serve_connection(stream, &source, timeout).await;
                active.set(active.get() - 1);
            });
        }
    }
}

/// Where a request head ends (after its empty line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        [b'\n', b'\n', ..] => Some(i + 2),
        _ => None,
    })
}

/// Reads one request head: its bytes, or the status to refuse it with
/// (None: the client closed without a request).
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Option<Status>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Some(Status::BadRequest))?;
        if n == 0 {
            return Err((!buf.is_empty()).then_some(Status::BadRequest));
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched_from..]) {
            buf.truncate(searched_from + end);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(Some(Status::HeadTooLarge));
        }
    }
}

async fn serve_connection(mut stream: TcpStream, source: &Source, head_timeout: Duration) {
    let reply = match tokio::time::timeout(head_timeout, read_head(&mut stream)).await {
        Ok(Ok(head)) => answer(&head, source),
        Ok(Err(None)) => return,
        Ok(Err(Some(status))) => Reply::plain(status, "bad request"),
        Err(_) => Reply::plain(Status::RequestTimeout, "request head too slow"),
    };
    if reply.status != Status::Ok {
        tracing::debug!(status = reply.status.code(), "metrics request refused");
    }
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // Let the client read the answer before the close: what it still sends
    // is read and dropped, within bounds.
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut chunk = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use etherparse::{IpNumber, Ipv4Header, TcpHeader};
    use smoltcp::time::Instant;

    use super::*;
    use crate::proxybox::{Event, ProxyConfig};
    use crate::server::Side;

    const SESSION: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);

    fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut t = TcpHeader::new(sport, dport, 1000, 64240);
        t.syn = true;
        t.checksum = t
            .calc_checksum_ipv4_raw(src.octets(), dst.octets(), &[])
            .unwrap();
        let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, src.octets(), dst.octets()).unwrap();
        ip.set_payload_len(t.header_len()).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        [&ip.to_bytes()[..], &t.to_bytes()].concat()
    }

    /// The value of one series (`name{labels}` exactly as exposed).
    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    fn proxy_text(engine: &ProxyEngine) -> String {
        encode(Snapshot::of_proxy(engine), Format::Text).unwrap()
    }

    #[test]
    fn a_fresh_proxy_box_exposes_every_metric_at_zero() {
        let engine = ProxyEngine::new(ProxyConfig::default(), 1);
        let text = proxy_text(&engine);
        for series in [
            r#"mobidesk_dataplane_packets_total{direction="in"}"#,
            r#"mobidesk_dataplane_packets_total{direction="out"}"#,
            r#"mobidesk_dataplane_bytes_total{direction="in"}"#,
            r#"mobidesk_dataplane_bytes_total{direction="out"}"#,
            "mobidesk_dataplane_vnics",
            "mobidesk_dataplane_vnics_created_total",
            "mobidesk_dataplane_vnics_reclaimed_total",
            "mobidesk_dataplane_labels_in_use",
            "mobidesk_dataplane_rewrites_total",
            "mobidesk_dataplane_labelled_packets_total",
            "mobidesk_dataplane_idle_polls_total",
            "mobidesk_dataplane_udp_flows",
            "mobidesk_dataplane_udp_flows_created_total",
            "mobidesk_dataplane_udp_flows_expired_total",
            r#"mobidesk_dataplane_udp_datagrams_total{direction="to_outside"}"#,
            r#"mobidesk_dataplane_udp_datagrams_total{direction="to_session"}"#,
            "mobidesk_dataplane_icmp_echo_requests_total",
            "mobidesk_dataplane_icmp_echo_replies_total",
            "mobidesk_dataplane_icmp_echo_timeouts_total",
            "mobidesk_dataplane_icmp_echoes_outstanding",
        ] {
            assert_eq!(sample(&text, series), Some(0), "{series} in\n{text}");
        }
        for reason in PROXY_DROP_REASONS {
            let series =
                format!(r#"mobidesk_dataplane_dropped_packets_total{{reason="{reason}"}}"#);
            assert_eq!(sample(&text, &series), Some(0), "{series}");
        }
        let version = env!("CARGO_PKG_VERSION");
        let info = format!(r#"mobidesk_dataplane_build_info{{mode="proxy",version="{version}"}}"#);
        assert_eq!(sample(&text, &info), Some(1), "{text}");
        // No socket yet: the relay opens it on its first echo.
        let states: u64 = ECHO_SOCKET_STATES
            .iter()
            .map(|s| {
                sample(
                    &text,
                    &format!(r#"mobidesk_dataplane_icmp_echo_socket{{state="{s}"}}"#),
                )
                .unwrap()
            })
            .sum();
        assert_eq!(states, 1, "one state at a time:\n{text}");
        assert!(text.contains("# TYPE mobidesk_dataplane_vnics gauge\n"));
        assert!(text.contains("# TYPE mobidesk_dataplane_packets_total counter\n"));
        assert!(text.contains(
            "# HELP mobidesk_dataplane_vnics VNICs alive: TCP connections terminated by the proxy box\n"
        ));
        assert_eq!(
            sample(&text, "mobidesk_dataplane_tun_read_errors_total").map(|_| ()),
            Some(())
        );
    }

    #[test]
    fn traffic_through_the_proxy_box_moves_its_counters() {
        let mut engine = ProxyEngine::new(ProxyConfig::default(), 1);
        let mut packet = syn(SESSION, 40000, REMOTE, 80);
        let syn_len = packet.len() as u64;
        engine.handle_packet(Instant::from_millis(0), &mut packet);
        let Some(Event::Connect { id, .. }) = engine.take_events().pop() else {
            panic!("the SYN made no VNIC");
        };
        // The destination accepted: the VNIC answers with a SYN-ACK.
        engine.accept(id);
        engine.poll_vnic(Instant::from_millis(1), id);
        let mut junk = vec![0x45, 0, 0];
        engine.handle_packet(Instant::from_millis(2), &mut junk);
        engine.handle_packet(Instant::from_millis(2), &mut junk);

        let text = proxy_text(&engine);
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(get("mobidesk_dataplane_vnics"), 1);
        assert_eq!(get("mobidesk_dataplane_vnics_created_total"), 1);
        assert_eq!(get("mobidesk_dataplane_vnics_reclaimed_total"), 0);
        assert_eq!(
            get(r#"mobidesk_dataplane_packets_total{direction="in"}"#),
            3
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_bytes_total{direction="in"}"#),
            syn_len + 6
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_packets_total{direction="out"}"#),
            1
        );
        assert!(get(r#"mobidesk_dataplane_bytes_total{direction="out"}"#) >= 40);
        assert_eq!(
            get(r#"mobidesk_dataplane_dropped_packets_total{reason="truncated"}"#),
            2
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_dropped_packets_total{reason="no_connection"}"#),
            0
        );
        assert_eq!(get("mobidesk_dataplane_labels_in_use"), 0);
        // The same numbers as the control interface's.
        let stats = ProxyStats::of(&engine);
        assert_eq!(
            get(r#"mobidesk_dataplane_packets_total{direction="out"}"#),
            stats.packets_out
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_bytes_total{direction="out"}"#),
            stats.bytes_out
        );
    }

    #[test]
    fn a_server_exposes_its_label_counters() {
        let mut engine = ServerEngine::new(16, 1);
        let fresh = encode(Snapshot::of_server(&engine), Format::Text).unwrap();
        for reason in SERVER_DROP_REASONS {
            let series =
                format!(r#"mobidesk_dataplane_dropped_packets_total{{reason="{reason}"}}"#);
            assert_eq!(sample(&fresh, &series), Some(0), "{series}");
        }
        assert!(fresh.contains(r#"mobidesk_dataplane_build_info{mode="server""#));
        assert!(!fresh.contains("vnics"), "no proxy box metrics on a server");

        let packet = syn(SESSION, 40000, REMOTE, 80);
        let mut buf = vec![0; ServerEngine::HEADROOM];
        buf.extend_from_slice(&packet);
        engine.handle_packet(&mut buf, ServerEngine::HEADROOM, Side::Session);
        let mut junk = vec![0; ServerEngine::HEADROOM + 3];
        engine.handle_packet(&mut junk, ServerEngine::HEADROOM, Side::Uplink);

        let text = encode(Snapshot::of_server(&engine), Format::Text).unwrap();
        let get = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}"));
        assert_eq!(
            get(r#"mobidesk_dataplane_packets_total{direction="in"}"#),
            2
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_bytes_total{direction="in"}"#),
            packet.len() as u64 + 3
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_label_offers_total{direction="sent"}"#),
            1
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_label_offers_total{direction="received"}"#),
            0
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_labelled_packets_total{direction="out"}"#),
            1
        );
        assert_eq!(
            get(r#"mobidesk_dataplane_labelled_packets_total{direction="in"}"#),
            0
        );
        assert_eq!(get("mobidesk_dataplane_connections"), 1);
        assert_eq!(get("mobidesk_dataplane_labelled_sessions"), 0);
        assert_eq!(get("mobidesk_dataplane_connections_evicted_total"), 0);
        assert_eq!(get("mobidesk_dataplane_rewrites_total"), 0);
        assert_eq!(
            get(r#"mobidesk_dataplane_dropped_packets_total{reason="truncated"}"#),
            1
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let proxy = ProxyEngine::new(ProxyConfig::default(), 1);
        let server = ServerEngine::new(16, 1);
        for snapshot in [Snapshot::of_proxy(&proxy), Snapshot::of_server(&server)] {
            let text = encode(snapshot, Format::Text).unwrap();
            let mut names = BTreeSet::new();
            for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
                let (name, kind) = line.split_once(' ').unwrap();
                assert!(names.insert(name), "{name} twice");
                assert!(name.starts_with("mobidesk_dataplane_"), "{name}");
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{name}: snake_case"
                );
                assert_eq!(name.ends_with("_total"), kind == "counter", "{name} {kind}");
            }
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(names.contains(name), "{line}: no TYPE for it");
            }
        }
    }

    #[test]
    fn openmetrics_is_served_when_asked_for() {
        let engine = ProxyEngine::new(ProxyConfig::default(), 1);
        let text = encode(Snapshot::of_proxy(&engine), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE mobidesk_dataplane_packets counter\n"));
        assert!(text.contains("mobidesk_dataplane_packets_total{direction=\"in\"} 0\n"));
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }

    /// The string literals that follow `marker` in `source`.
    fn literals_after<'a>(source: &'a str, marker: &str) -> Vec<&'a str> {
        source
            .split(marker)
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(lit, _)| lit))
            .collect()
    }

    /// The reasons a source file counts: `drop("..")`, `Err("..")` and
    /// `|_| ".."` (a reason mapped from an error).
    fn counted_reasons(source: &str) -> BTreeSet<&str> {
        ["drop(\"", "Err(\"", "|_| \""]
            .into_iter()
            .flat_map(|m| literals_after(source, m))
            .collect()
    }

    #[test]
    fn every_drop_reason_the_engines_count_is_listed() {
        let wire = include_str!("wire/mod.rs");
        let reason_fn = wire
            .split_once("fn reason(")
            .and_then(|(_, rest)| rest.split_once("\n    }\n"))
            .map(|(body, _)| body)
            .unwrap();
        let wire_reasons: BTreeSet<&str> = literals_after(reason_fn, "=> \"").into_iter().collect();
        assert!(wire_reasons.len() >= 14, "{wire_reasons:?}");
        let reassembly = include_str!("wire/reassembly.rs")
            .split_once("fn reason(")
            .and_then(|(_, rest)| rest.split_once("\n    }\n"))
            .map(|(body, _)| body)
            .unwrap();
        let fragment_reasons = literals_after(reassembly, "=> \"");
        assert_eq!(fragment_reasons.len(), 4, "{fragment_reasons:?}");
        let proxy: BTreeSet<&str> = [
            include_str!("proxybox/mod.rs"),
            include_str!("proxybox/udp.rs"),
            include_str!("proxybox/icmp.rs"),
            include_str!("proxybox/datagram.rs"),
        ]
        .into_iter()
        .flat_map(counted_reasons)
        .chain(wire_reasons.iter().copied())
        .chain(fragment_reasons)
        .collect();
        let server: BTreeSet<&str> = counted_reasons(include_str!("server/mod.rs"))
            .into_iter()
            .chain(wire_reasons.iter().copied())
            .collect();
        for (engine, counted, listed, list) in [
            ("proxy box", proxy, PROXY_DROP_REASONS, "PROXY_DROP_REASONS"),
            ("server", server, SERVER_DROP_REASONS, "SERVER_DROP_REASONS"),
        ] {
            let listed: BTreeSet<&str> = listed.iter().copied().collect();
            let missing: Vec<_> = counted.difference(&listed).collect();
            assert!(
                missing.is_empty(),
                "the {engine} engine counts {missing:?}: add them to metrics::{list}"
            );
            let stale: Vec<_> = listed.difference(&counted).collect();
            assert!(
                stale.is_empty(),
                "metrics::{list} lists {stale:?}, never counted"
            );
        }
    }

    fn fresh_source() -> Source {
        Source::Proxy(Rc::new(RefCell::new(ProxyEngine::new(
            ProxyConfig::default(),
            1,
        ))))
    }

    #[test]
    fn requests_are_routed_and_bad_ones_refused() {
        let source = fresh_source();
        let status = |head: &[u8]| answer(head, &source).status;
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::Ok
        );
        assert_eq!(status(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Status::Ok);
        assert_eq!(status(b"GET /live HTTP/1.1\r\n\r\n"), Status::Ok);
        assert_eq!(status(b"GET /ready HTTP/1.1\n\n"), Status::Ok);
        assert_eq!(status(b"GET /nope HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Status::NotFound);
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            status(b"GET /metrics HTTP/2.0\r\n\r\n"),
            Status::VersionNotSupported
        );
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"G\xffT /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(status(bad), Status::BadRequest, "{bad:?}");
        }

        let reply = answer(b"POST /live HTTP/1.1\r\n\r\n", &source);
        let bytes = String::from_utf8(reply.to_bytes()).unwrap();
        assert!(
            bytes.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{bytes}"
        );
        assert!(bytes.contains("\r\nAllow: GET, HEAD\r\n"));

        let get = answer(b"GET /metrics HTTP/1.1\r\n\r\n", &source);
        assert_eq!(get.content_type, Format::Text.content_type());
        let head = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &source);
        let bytes = String::from_utf8(head.to_bytes()).unwrap();
        assert!(bytes.ends_with("\r\n\r\n"), "no body for HEAD");
        assert!(bytes.contains(&format!("Content-Length: {}\r\n", get.body.len())));
        let om = answer(
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
            &source,
        );
        assert_eq!(
            om.content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );

        // A scrape while the engine is borrowed (never between awaits)
        // answers 503 instead of panicking.
        let Source::Proxy(engine) = &source else {
            unreachable!()
        };
        let _busy = engine.borrow_mut();
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Status::Unavailable
        );
        assert_eq!(status(b"GET /live HTTP/1.1\r\n\r\n"), Status::Ok);
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    /// Sends `request` to the endpoint and reads the whole answer.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn the_endpoint_serves_over_tcp_and_survives_bad_clients() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let mut server = AdminServer::bind(any, fresh_source()).await.unwrap();
            server.head_timeout = Duration::from_millis(300);
            let addr = server.local_addr().unwrap();
            tokio::task::spawn_local(server.serve());

            let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(
                ok.contains("\r\n\r\n# HELP mobidesk_dataplane_build_info "),
                "{ok}"
            );
            let (head, body) = ok.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));

            // Over-long head: refused, and the client reads the refusal.
            let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
            big.resize(MAX_REQUEST_HEAD * 3, b'a');
            big.extend_from_slice(b"\r\n\r\n");
            let refused = exchange(addr, &big).await;
            assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");

            // A client that sends half a request and waits: timed out.
            let mut slow = TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"GET /met").await.unwrap();
            let mut answer = String::new();
            slow.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");

            // One that connects and goes: nothing to answer.
            drop(TcpStream::connect(addr).await.unwrap());
            let garbage = exchange(addr, b"\x00\x01\x02 garbage\r\n\r\n").await;
            assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

            let live = exchange(addr, b"GET /live HTTP/1.1\r\n\r\n").await;
            assert!(live.starts_with("HTTP/1.1 200 OK\r\n") && live.ends_with("\r\n\r\nlive\n"));
        });
    }
}
