//! The control interface: how sessiond and the proxy tell the dataplane what
//! changed, and read its counters. One JSON object per line over a Unix
//! socket; every request gets one response line. Sans-I/O here: parsing a
//! request line and applying it to the engine.
//!
//! ```text
//! -> {"op":"stats"}
//! <- {"ok":true,"stats":{"vnics":2,"labels_in_use":0,...}}
//! -> {"op":"session_moved","virtual":"10.1.0.100","from":"10.1.0.100","to":"10.2.0.100"}
//! <- {"ok":true,"connections":1}
//! -> {"op":"bogus"}
//! <- {"ok":false,"error":"bad request: unknown variant `bogus`, ..."}
//! ```

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::io::fastpath::{FastPath, FastPathCounters};
use crate::io::publish::Publisher;
use crate::proxybox::ProxyEngine;
use crate::server::{ServerCounters, ServerEngine, SessionState};

/// Longest request line accepted; a longer one closes the connection.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A request to the proxy box's dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProxyRequest {
    /// Counters and gauges.
    Stats {},
    /// A session moved: its connections from `virtual` at physical `from`
    /// now reach it at physical `to`, with labels.
    SessionMoved {
        #[serde(rename = "virtual")]
        virtual_addr: Ipv4Addr,
        from: Ipv4Addr,
        to: Ipv4Addr,
    },
    /// Listen on `listen` and relay every connection that arrives to the
    /// session's service `session` (virtual address and port).
    Publish {
        listen: SocketAddr,
        session: SocketAddrV4,
    },
    /// Stop listening on `listen` (relayed connections go on).
    Unpublish { listen: SocketAddr },
    /// The published services.
    Published {},
}

/// One published service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedService {
    pub listen: SocketAddr,
    pub session: SocketAddrV4,
}

/// The dataplane's counters as the control interface reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStats {
    pub vnics: usize,
    /// Socket buffer bytes of the live VNICs (within `vnic.memory_budget`).
    #[serde(default)]
    pub vnic_buffer_bytes: usize,
    /// VNICs made with `vnic.min_buffer`: the budget was short.
    #[serde(default)]
    pub vnics_reduced: u64,
    /// Datagrams reassembled from sessions' fragments.
    #[serde(default)]
    pub datagrams_reassembled: u64,
    /// ICMP destination-unreachable messages passed on to sessions.
    #[serde(default)]
    pub icmp_errors_to_session: u64,
    pub labels_in_use: usize,
    pub vnics_created: u64,
    pub vnics_reclaimed: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub rewrites: u64,
    pub labelled_packets: u64,
    pub idle_polls: u64,
    /// UDP flows open now, opened, and closed after their idle timeout.
    pub udp_flows: usize,
    pub udp_flows_created: u64,
    pub udp_flows_expired: u64,
    pub udp_datagrams_to_outside: u64,
    pub udp_datagrams_to_session: u64,
    /// ICMP echo requests relayed, replies delivered, requests unanswered.
    pub echo_requests: u64,
    pub echo_replies: u64,
    pub echo_timeouts: u64,
    pub echoes_outstanding: usize,
    /// The echo relay's ICMP socket: "datagram", "raw", "opening" or
    /// "unavailable".
    pub echo_socket: String,
    pub dropped: BTreeMap<String, u64>,
}

impl ProxyStats {
    pub fn of(engine: &ProxyEngine) -> Self {
        let c = &engine.counters;
        ProxyStats {
            vnics: engine.vnics(),
            vnic_buffer_bytes: engine.vnic_buffer_bytes(),
            vnics_reduced: c.vnics_reduced,
            datagrams_reassembled: c.reassembled,
            icmp_errors_to_session: c.icmp_errors_to_session,
            labels_in_use: engine.labels_in_use(),
            vnics_created: c.vnics_created,
            vnics_reclaimed: c.vnics_reclaimed,
            packets_in: c.packets_in,
            bytes_in: c.bytes_in,
            packets_out: c.packets_out,
            bytes_out: c.bytes_out,
            rewrites: c.rewrites,
            labelled_packets: c.labelled_packets,
            idle_polls: c.idle_polls,
            udp_flows: engine.udp_flows(),
            udp_flows_created: c.udp_flows_created,
            udp_flows_expired: c.udp_flows_expired,
            udp_datagrams_to_outside: c.udp_datagrams_to_outside,
            udp_datagrams_to_session: c.udp_datagrams_to_session,
            echo_requests: c.echo_requests,
            echo_replies: c.echo_replies,
            echo_timeouts: c.echo_timeouts,
            echoes_outstanding: engine.echoes_outstanding(),
            echo_socket: engine.echo_socket().to_string(),
            dropped: c
                .dropped
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
        }
    }
}

/// A request to a session server's dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerRequest {
    /// Counters and gauges.
    Stats {},
    /// Take a session's connection labels out of this server (it moves away).
    ExportSession {
        #[serde(rename = "virtual")]
        virtual_addr: Ipv4Addr,
    },
    /// Place a session here with its connection labels; `announce` sends a
    /// gratuitous ARP for its physical address on the uplink.
    ImportSession {
        session: SessionState,
        #[serde(default)]
        announce: bool,
    },
}

/// A session server dataplane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    pub connections: usize,
    pub labelled_sessions: usize,
    /// The engine's counters, plus the kernel fast path's labelled packets
    /// and rewrites (so they count every labelled packet, whichever path).
    #[serde(flatten)]
    pub counters: ServerCounters,
    /// The kernel fast path's own counters, when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathCounters>,
}

impl ServerStats {
    pub fn of(engine: &ServerEngine) -> Self {
        ServerStats {
            connections: engine.connections(),
            labelled_sessions: engine.labelled_sessions(),
            counters: engine.counters.clone(),
            fast_path: None,
        }
    }

    /// Adds what the kernel fast path did.
    pub fn with_fast_path(mut self, fast: Option<FastPathCounters>) -> Self {
        if let Some(f) = fast {
            let c = &mut self.counters;
            c.labelled_out += f.out_packets;
            c.labelled_in += f.in_packets;
            c.rewrites += f.rewrites;
            self.fast_path = Some(f);
        }
        self
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ProxyStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_stats: Option<ServerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Publish: where it listens; Published: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Vec<PublishedService>>,
}

impl Response {
    fn ok() -> Self {
        Response {
            ok: true,
            error: None,
            stats: None,
            server_stats: None,
            session: None,
            connections: None,
            published: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::ok()
        }
    }

    /// The response as one line (with its newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"ok":false,"error":"unencodable response"}"#.into());
        s.push('\n');
        s
    }
}

/// Parses one request line and applies it to the engine.
///
/// `publisher`: the published services (None: the publish requests are
/// refused, as in tests of the engine alone).
pub fn handle_line(
    engine: &mut ProxyEngine,
    publisher: Option<&Publisher>,
    line: &str,
) -> Response {
    let request: ProxyRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("bad request: {e}")),
    };
    match request {
        ProxyRequest::Stats {} => Response {
            stats: Some(ProxyStats::of(engine)),
            ..Response::ok()
        },
        ProxyRequest::SessionMoved {
            virtual_addr,
            from,
            to,
        } => Response {
            connections: Some(engine.session_moved(virtual_addr, from, to)),
            ..Response::ok()
        },
        ProxyRequest::Publish { listen, session } => {
            let Some(publisher) = publisher else {
                return Response::error("publishing is not available here");
            };
            match publisher.publish(listen, session) {
                Ok(listen) => Response {
                    published: Some(vec![PublishedService { listen, session }]),
                    ..Response::ok()
                },
                Err(e) => Response::error(e.to_string()),
            }
        }
        ProxyRequest::Unpublish { listen } => match publisher {
            Some(p) if p.unpublish(listen) => Response::ok(),
            _ => Response::error(format!("{listen} is not published")),
        },
        ProxyRequest::Published {} => Response {
            published: Some(
                publisher
                    .map(|p| p.list())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(listen, session)| PublishedService { listen, session })
                    .collect(),
            ),
            ..Response::ok()
        },
    }
}

/// Parses one request line for a server's dataplane and applies it. The
/// second value is the session to announce (gratuitous ARP), if asked.
///
/// `fast_path`: the kernel fast path's counters, when it is on.
pub fn handle_server_line(
    engine: &mut ServerEngine,
    fast_path: Option<&FastPath>,
    line: &str,
) -> (Response, Option<Ipv4Addr>) {
    let request: ServerRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return (Response::error(format!("bad request: {e}")), None),
    };
    match request {
        ServerRequest::Stats {} => (
            Response {
                server_stats: Some(
                    ServerStats::of(engine).with_fast_path(fast_path.map(FastPath::counters)),
                ),
                ..Response::ok()
            },
            None,
        ),
        ServerRequest::ExportSession { virtual_addr } => (
            Response {
                session: Some(engine.export_session(virtual_addr)),
                ..Response::ok()
            },
            None,
        ),
        ServerRequest::ImportSession { session, announce } => {
            let taken = engine.import_session(&session);
            (
                Response {
                    connections: Some(taken),
                    ..Response::ok()
                },
                announce.then_some(session.physical),
            )
        }
    }
}

/// Sends one request to the control socket at `path` and reads the
/// response (blocking; for tools, sessiond and tests).
pub fn request<R: Serialize>(path: &Path, request: &R) -> io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("bad response {reply:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxybox::ProxyConfig;

    #[test]
    fn requests_parse_and_bad_ones_get_a_reason() {
        let mut engine = ProxyEngine::new(ProxyConfig::default(), 1);
        let r = handle_line(&mut engine, None, r#"{"op":"stats"}"#);
        assert!(r.ok);
        assert_eq!(r.stats.unwrap().vnics, 0);
        let r = handle_line(
            &mut engine,
            None,
            r#"{"op":"session_moved","virtual":"10.1.0.100","from":"10.1.0.100","to":"10.2.0.100"}"#,
        );
        assert_eq!(r.connections, Some(0));
        for bad in [
            "",
            "{",
            r#"{"op":"bogus"}"#,
            r#"{"op":"stats","extra":1}"#,
            r#"{"op":"session_moved","virtual":"10.1.0.999","from":"1.1.1.1","to":"1.1.1.1"}"#,
            "\u{0}\u{ff}",
        ] {
            let r = handle_line(&mut engine, None, bad);
            assert!(!r.ok, "{bad:?} was accepted");
            assert!(r.error.unwrap().starts_with("bad request"));
        }
    }
}
