//! New TCP connections per second from the session to the outside host.
//!
//! The server (in `web`) accepts each connection and closes it at once. A
//! few client workers (in the session) each loop: connect, wait for the
//! server's FIN (read returns 0), close. Each connection is complete —
//! handshake, FIN from the server, FIN from the client — and, as with a
//! web server that closes first, TIME_WAIT stays at the server, so the
//! client's ephemeral ports never run out however long the run.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::path::{interrupted, Testbed};
use crate::process::pin_thread;
use crate::report::{Measurement, Metric};
use crate::Settings;

pub static CONNECT_RATE: Metric = Metric {
    name: "connect_rate.session_to_web",
    unit: "conn/s",
    higher_is_better: true,
    description: "new TCP connections per second, session -> outside host (connect, server closes, client closes)",
};

pub static METRICS: &[&Metric] = &[&CONNECT_RATE];

const PORT: u16 = 7300;
/// Concurrent client workers.
const WORKERS: usize = 4;
/// Server threads accepting (and closing) connections.
const ACCEPTORS: usize = 2;
/// Longest a connect or the wait for the server's FIN may take before the
/// attempt counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// What the client workers did.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub fn run(testbed: &Testbed, settings: &Settings) -> Result<Vec<Measurement>> {
    let cpu = settings.endpoints_cpu;
    let duration = if settings.smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let to = SocketAddr::from((testbed.server_addr, PORT));
    let listener = testbed
        .server
        .run(|| TcpListener::bind(to))?
        .with_context(|| format!("listening on {to} in {}", testbed.server.name()))?;
    // Bound and listening: clients may connect from here on.

    let stop = AtomicBool::new(false);
    let accepted = AtomicU64::new(0);
    let (tally, elapsed, accept_errors) = std::thread::scope(|scope| {
        let acceptors: Vec<_> = (0..ACCEPTORS)
            .map(|_| scope.spawn(|| accept_and_close(&listener, &stop, &accepted, cpu)))
            .collect();

        let clients = testbed.client.run(|| {
            let started = Instant::now();
            let deadline = started + duration;
            let tally = std::thread::scope(|workers| {
                let handles: Vec<_> = (0..WORKERS)
                    .map(|_| workers.spawn(move || connect_and_close(to, deadline, cpu)))
                    .collect();
                let mut total = Tally::default();
                for h in handles {
                    match h.join() {
                        Ok(t) => total.add(t),
                        Err(_) => total.error("a client worker panicked".into()),
                    }
                }
                total
            });
            (tally, started.elapsed())
        });

        // Always stop the acceptors, also when the clients failed: one wake-up
        // connection per acceptor, each takes one and sees `stop`.
        stop.store(true, Ordering::SeqCst);
        for _ in 0..ACCEPTORS {
            let _ = testbed
                .server
                .run(|| TcpStream::connect_timeout(&to, IO_TIMEOUT));
        }
        let mut accept_errors = Vec::new();
        for a in acceptors {
            match a.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => accept_errors.push(e),
                Err(_) => accept_errors.push("an acceptor panicked".into()),
            }
        }
        clients.map(|(t, e)| (t, e, accept_errors))
    })?;

    if let Some(e) = accept_errors.first() {
        bail!("the server failed: {e}");
    }
    if tally.ok == 0 {
        bail!(
            "no connection succeeded in {duration:?} ({} errors, first: {})",
            tally.errors,
            tally.first_error.as_deref().unwrap_or("none")
        );
    }
    let rate = tally.ok as f64 / elapsed.as_secs_f64();
    let mut detail = format!(
        "{WORKERS} client workers, {ACCEPTORS} acceptors, {:.2} s, {} connections ({} accepted)",
        elapsed.as_secs_f64(),
        tally.ok,
        accepted.load(Ordering::SeqCst)
    );
    if tally.errors > 0 {
        detail.push_str(&format!(
            ", {} failed attempts (first: {})",
            tally.errors,
            tally.first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(vec![Measurement::new(&CONNECT_RATE, rate, detail)])
}

/// One acceptor: accept, close, until `stop` (checked after each accept;
/// the wake-up connection arrives after it is set).
fn accept_and_close(
    listener: &TcpListener,
    stop: &AtomicBool,
    accepted: &AtomicU64,
    cpu: Option<usize>,
) -> Result<(), String> {
    pin_thread(cpu).map_err(|e| format!("{e:#}"))?;
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match conn {
            // Dropping the stream closes it: the client sees EOF.
            Ok((stream, _)) => {
                drop(stream);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            // The peer gave up before we accepted: its problem, counted there.
            Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// One client worker (on a thread inside the session's namespace): connect,
/// wait for the server's close, close, until `deadline`.
fn connect_and_close(to: SocketAddr, deadline: Instant, cpu: Option<usize>) -> Tally {
    let mut tally = Tally::default();
    if let Err(e) = pin_thread(cpu) {
        tally.error(format!("{e:#}"));
        return tally;
    }
    let mut byte = [0u8; 1];
    while Instant::now() < deadline && !interrupted() {
        let mut stream = match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                tally.error(format!("connect: {e}"));
                continue;
            }
        };
        let eof = stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.read(&mut byte));
        match eof {
            Ok(0) => tally.ok += 1,
            Ok(_) => tally.error("the server sent data".into()),
            Err(e) => tally.error(format!("waiting for the server's close: {e}")),
        }
    }
    tally
}
