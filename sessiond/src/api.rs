//! The daemon's control API: request and response types, and the sans-I/O
//! part of handling a request line (parse, authenticate, validate).
//!
//! One JSON object per line over a unix socket, one response line per
//! request. Every request carries the API token:
//!
//! ```text
//! -> {"token":"...","op":"create","id":"alice","profile":"desktop.toml"}
//! <- {"ok":true,"session":{"id":"alice","state":"running","init_pid":4242,...}}
//! -> {"token":"...","op":"exec","id":"alice","argv":["hostname"]}
//! <- {"ok":true,"exec":{"exit_code":0,"stdout":"mobidesk\n","stderr":"",...}}
//! -> {"token":"...","op":"inspect","id":"bob"}
//! <- {"ok":false,"error":{"kind":"unknown_session","message":"no session \"bob\""}}
//! ```
//!
//! Errors are typed ([`ErrorKind`]) with a message for humans. What happens
//! to the connection after an error:
//! - `bad_request` (malformed JSON, unknown op, unknown or missing field),
//!   `unknown_session`, `conflict`, `busy`, `limit`, `failed`: the
//!   connection stays usable;
//! - `unauthorized` (missing or wrong token) and a line longer than
//!   [`MAX_REQUEST_LINE`]: the error is sent, then the connection is closed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::profile::{Limits, Profile};

/// Longest request line accepted (with an inline profile); a longer one is
/// answered with `bad_request` and the connection is closed.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// At most this many arguments in an `exec` argv, and environment entries.
pub const MAX_ARGS: usize = 1024;
/// Default `timeout_s` of an `exec`.
pub const DEFAULT_EXEC_TIMEOUT_S: u64 = 30;

/// The kind of an error: what a client can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be parsed or is invalid (the message says why).
    BadRequest,
    /// Missing or wrong token.
    Unauthorized,
    /// No session with that id.
    UnknownSession,
    /// The session is in a state that forbids the request (already being
    /// destroyed, an id already in use).
    Conflict,
    /// Try again later (the session is still starting, too many execs or
    /// connections at once).
    Busy,
    /// A configured limit was reached (max sessions).
    Limit,
    /// The operation was tried and failed (the message says where).
    Failed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::UnknownSession => "unknown_session",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Busy => "busy",
            ErrorKind::Limit => "limit",
            ErrorKind::Failed => "failed",
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }
    pub fn unknown_session(id: &str) -> ApiError {
        ApiError::new(ErrorKind::UnknownSession, format!("no session {id:?}"))
    }
}

/// Where a session's profile comes from: a file (name or path inside the
/// daemon's `profiles_dir`) or the profile itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ProfileSource {
    Path(PathBuf),
    Inline(Box<Profile>),
}

impl<'de> Deserialize<'de> for ProfileSource {
    /// A string is a file, an object a profile (with the profile's own
    /// error, e.g. an unknown key, when it is not one).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(ProfileSource::Path(PathBuf::from(s))),
            v @ serde_json::Value::Object(_) => serde_json::from_value::<Profile>(v)
                .map(|p| ProfileSource::Inline(Box::new(p)))
                .map_err(|e| D::Error::custom(format!("profile: {e}"))),
            _ => Err(D::Error::custom(
                "profile: a file name (string) or a profile (object)",
            )),
        }
    }
}

/// One request (without its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Start a session. `id`: chosen by the daemon when absent; `profile`:
    /// the daemon's default profile when absent; `home`: a directory inside
    /// the daemon's `homes_dir`; `command`: what the session's PID 1 runs
    /// (default: wait forever, `sleep infinity`; a desktop profile runs its
    /// desktop and takes none); `address`: the session's address, reserved
    /// instead of one allocated from the pool (a session arriving with its
    /// address; needs the daemon's `[network]`).
    Create {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        profile: Option<ProfileSource>,
        #[serde(default)]
        home: Option<PathBuf>,
        #[serde(default)]
        command: Option<Vec<String>>,
        #[serde(default)]
        address: Option<Ipv4Addr>,
    },
    /// Every session.
    List {},
    /// One session with its counters.
    Inspect { id: String },
    /// Run a command inside the session (its namespaces, cgroups, seccomp
    /// filter and capability bounding set) and return its status and output.
    Exec {
        id: String,
        argv: Vec<String>,
        /// Added to (or replacing) the session's environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory inside the session (default `/`).
        #[serde(default)]
        cwd: Option<PathBuf>,
        /// Killed (with everything in its process group) after this long.
        #[serde(default)]
        timeout_s: Option<u64>,
    },
    /// Replace the session's limits (a limit left out is lifted).
    Resources { id: String, limits: Limits },
    /// Kill every process of the session and remove its cgroups, layer and
    /// state entry.
    Destroy { id: String },
}

impl Request {
    /// The op's name (a metric label).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Create { .. } => "create",
            Request::List {} => "list",
            Request::Inspect { .. } => "inspect",
            Request::Exec { .. } => "exec",
            Request::Resources { .. } => "resources",
            Request::Destroy { .. } => "destroy",
        }
    }

    /// The session the request is about, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Request::Create { id, .. } => id.as_deref(),
            Request::List {} => None,
            Request::Inspect { id }
            | Request::Exec { id, .. }
            | Request::Resources { id, .. }
            | Request::Destroy { id } => Some(id),
        }
    }

    /// Checks what serde cannot (sizes, ids, limits).
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(id) = self.session() {
            validate_id(id)?;
        }
        match self {
            Request::Create {
                profile, command, ..
            } => {
                if let Some(ProfileSource::Inline(p)) = profile {
                    p.validate()
                        .map_err(|e| ApiError::bad_request(format!("profile: {e}")))?;
                }
                if let Some(c) = command {
                    check_args("command", c)?;
                }
            }
            Request::Exec {
                argv,
                env,
                timeout_s,
                cwd,
                ..
            } => {
                check_args("argv", argv)?;
                if env.len() > MAX_ARGS {
                    return Err(ApiError::bad_request(format!(
                        "env: at most {MAX_ARGS} entries"
                    )));
                }
                for (k, v) in env {
                    if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                        return Err(ApiError::bad_request(format!(
                            "env {k:?}: names without '=' or NUL, values without NUL"
                        )));
                    }
                }
                if *timeout_s == Some(0) {
                    return Err(ApiError::bad_request("timeout_s: at least 1"));
                }
                if let Some(c) = cwd {
                    if !c.is_absolute() {
                        return Err(ApiError::bad_request("cwd: an absolute path"));
                    }
                }
            }
            Request::Resources { limits, .. } => {
                limits
                    .validate()
                    .map_err(|e| ApiError::bad_request(format!("limits: {e}")))?;
            }
            Request::List {} | Request::Inspect { .. } | Request::Destroy { .. } => {}
        }
        Ok(())
    }
}

fn check_args(what: &str, args: &[String]) -> Result<(), ApiError> {
    if args.is_empty() || args.len() > MAX_ARGS {
        return Err(ApiError::bad_request(format!(
            "{what}: 1 to {MAX_ARGS} arguments"
        )));
    }
    if args[0].is_empty() || args.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::bad_request(format!(
            "{what}: a program name, no NUL bytes"
        )));
    }
    Ok(())
}

/// A session id: 1–40 letters, digits, `-` and `_` (it names the cgroup
/// and the layer directory).
pub fn validate_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 40
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad_request(format!(
            "invalid session id {id:?} (1-40 letters, digits, '-', '_')"
        )));
    }
    Ok(())
}

/// Compares two byte strings in time that depends only on their lengths,
/// not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Parses and authenticates one request line (without its newline):
/// malformed JSON and unknown ops are `bad_request`, a missing or wrong
/// `token` is `unauthorized` (checked before the op is looked at).
pub fn parse_line(line: &str, token: &[u8]) -> Result<Request, ApiError> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(ApiError::bad_request("a request is a JSON object"));
    };
    match map.remove("token") {
        Some(serde_json::Value::String(t)) if constant_time_eq(t.as_bytes(), token) => {}
        Some(_) => return Err(ApiError::new(ErrorKind::Unauthorized, "wrong token")),
        None => return Err(ApiError::new(ErrorKind::Unauthorized, "no token")),
    }
    let request: Request = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    request.validate()?;
    Ok(request)
}

/// A session's lifecycle state as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    Running,
    Destroying,
}

/// What `create`, `list` and `inspect` report about a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub state: SessionState,
    /// Host pid of the session's PID 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<u32>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Found running when this daemon started (started by an earlier one).
    pub adopted: bool,
    pub profile: Profile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<PathBuf>,
    pub command: Vec<String>,
    /// The limits in force now.
    pub limits: Limits,
    /// Host path of the writable layer.
    pub layer: PathBuf,
    pub cgroups: Vec<PathBuf>,
    /// The session's own (virtual) address, when it has a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Its address on this server's subnet (equal to `address` until the
    /// session migrates to another subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_address: Option<Ipv4Addr>,
    /// The server's end of its veth (`ses-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The TCP port its display server listens on (at `address`), for a
    /// desktop session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_port: Option<u16>,
    /// The name on its display server's certificate, when sessiond issued
    /// it from the display CA: what a viewer checks (`--server-name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Processes in the session (`pids.current`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// The result of an `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// The exit code, or 128 + the signal that killed the command.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed at `timeout_s`.
    pub timed_out: bool,
    /// Output (lossy UTF-8), at most the daemon's `exec_output_bytes` each.
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecResult>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            error: None,
            session: None,
            sessions: None,
            exec: None,
        }
    }

    pub fn error(e: ApiError) -> Response {
        Response {
            ok: false,
            error: Some(e),
            ..Response::ok()
        }
    }

    /// The error kind, or `ok` (a metric label).
    pub fn result(&self) -> &'static str {
        self.error.as_ref().map_or("ok", |e| e.kind.as_str())
    }

    /// The response as one line, with its newline.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"ok":false,"error":{"kind":"failed","message":"unencodable response"}}"#.into()
        });
        s.push('\n');
        s
    }
}

impl From<Result<Response, ApiError>> for Response {
    fn from(r: Result<Response, ApiError>) -> Response {
        r.unwrap_or_else(Response::error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"s3cret-token-for-tests";

    fn kind(line: &str) -> ErrorKind {
        parse_line(line, TOKEN).unwrap_err().kind
    }

    #[test]
    fn requests_parse() {
        let r = parse_line(r#"{"token":"s3cret-token-for-tests","op":"list"}"#, TOKEN).unwrap();
        assert_eq!(r, Request::List {});
        let r = parse_line(
            r#"{"op":"exec","token":"s3cret-token-for-tests","id":"a-1","argv":["ps","-e"],"timeout_s":5}"#,
            TOKEN,
        )
        .unwrap();
        assert_eq!(r.op(), "exec");
        assert_eq!(r.session(), Some("a-1"));
        let r = parse_line(
            r#"{"token":"s3cret-token-for-tests","op":"create","profile":{"hostname":"h1","userns":false}}"#,
            TOKEN,
        )
        .unwrap();
        let Request::Create {
            profile: Some(ProfileSource::Inline(p)),
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(p.hostname, "h1");
        assert_eq!(p.userns, None);
        let r = parse_line(
            r#"{"token":"s3cret-token-for-tests","op":"resources","id":"x","limits":{"pids_max":10,"memory_max":"64M"}}"#,
            TOKEN,
        )
        .unwrap();
        let Request::Resources { limits, .. } = r else {
            panic!()
        };
        assert_eq!(limits.memory_max, Some(64 << 20));
    }

    #[test]
    fn bad_requests_get_their_kind() {
        let t = r#""token":"s3cret-token-for-tests""#;
        for bad in [
            "".to_string(),
            "{".into(),
            "[1]".into(),
            "\u{0}\u{ff}".into(),
            format!("{{{t},\"op\":\"bogus\"}}"),
            format!("{{{t}}}"),
            format!("{{{t},\"op\":\"list\",\"extra\":1}}"),
            format!("{{{t},\"op\":\"inspect\"}}"),
            format!("{{{t},\"op\":\"inspect\",\"id\":\"../etc\"}}"),
            format!("{{{t},\"op\":\"exec\",\"id\":\"a\",\"argv\":[]}}"),
            format!("{{{t},\"op\":\"exec\",\"id\":\"a\",\"argv\":[\"x\"],\"timeout_s\":0}}"),
            format!(
                "{{{t},\"op\":\"exec\",\"id\":\"a\",\"argv\":[\"x\"],\"env\":{{\"A=B\":\"c\"}}}}"
            ),
            format!("{{{t},\"op\":\"resources\",\"id\":\"a\",\"limits\":{{\"cpu_weight\":0}}}}"),
            format!("{{{t},\"op\":\"create\",\"profile\":{{\"hostname\":\"bad name\"}}}}"),
        ] {
            assert_eq!(kind(&bad), ErrorKind::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn the_token_is_checked_before_the_op() {
        assert_eq!(kind(r#"{"op":"list"}"#), ErrorKind::Unauthorized);
        assert_eq!(
            kind(r#"{"token":"nope","op":"list"}"#),
            ErrorKind::Unauthorized
        );
        assert_eq!(kind(r#"{"token":7,"op":"list"}"#), ErrorKind::Unauthorized);
        assert_eq!(
            kind(r#"{"token":"nope","op":"bogus"}"#),
            ErrorKind::Unauthorized
        );
        let e = parse_line(r#"{"token":"s3cret-token-for-test","op":"list"}"#, TOKEN).unwrap_err();
        assert!(!e.message.contains("s3cret"), "the token is never echoed");
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn responses_are_one_line() {
        let r = Response::error(ApiError::unknown_session("x"));
        let line = r.to_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(line.contains(r#""kind":"unknown_session""#), "{line}");
        assert_eq!(r.result(), "unknown_session");
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }
}
