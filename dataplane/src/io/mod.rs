//! The dataplane's I/O: the TUN device, the relays, the clock. Everything
//! here runs on one thread (a tokio current-thread runtime with a
//! `LocalSet`): the engine is shared by `Rc<RefCell<..>>` and never borrowed
//! across an await.

mod alloc;
pub mod fastpath;
mod icmp;
pub mod publish;
mod server_io;
pub mod steer;
mod stream;
pub mod tun;
mod udp;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use alloc::tune_allocator;

use crate::proxybox::{Event, ProxyEngine, VnicId};
use crate::vnic::smol_now;
use crate::wire::vnet;

/// What the device loop and the relays share besides the engine.
pub struct Shared {
    start: std::time::Instant,
    /// Wakes the device loop: VNICs to poll ([`ProxyEngine::schedule`]) or
    /// replies to flush.
    kick: Notify,
    /// One datagram as the UDP and ICMP relays receive it; borrowed only
    /// between a socket read and the engine call that copies it out.
    recv_buf: RefCell<Vec<u8>>,
    pub connect_timeout: Duration,
}

impl Shared {
    pub fn new(connect_timeout: Duration) -> Rc<Shared> {
        Rc::new(Shared {
            start: std::time::Instant::now(),
            kick: Notify::new(),
            recv_buf: RefCell::new(vec![0; 65536]),
            connect_timeout,
        })
    }

    /// The engine's clock.
    pub fn now(&self) -> smoltcp::time::Instant {
        smol_now(self.start.elapsed())
    }

    /// Wakes the device loop: it polls the VNICs scheduled in the engine
    /// and flushes what they send.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    fn std_instant(&self, at: smoltcp::time::Instant) -> tokio::time::Instant {
        let micros = u64::try_from(at.total_micros()).unwrap_or(0);
        tokio::time::Instant::from_std(self.start + Duration::from_micros(micros))
    }
}

/// Runs the proxy box: packets from the TUN device through the engine,
/// relays for new connections, timers. Returns only on a device error.
pub async fn run_proxybox(
    device: tun::Tun,
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
) -> io::Result<()> {
    let mut rx = vec![0; vnet::LEN + 65535];
    let mut scratch = Vec::new();
    engine.borrow_mut().set_offload(device.offload());
    tokio::task::spawn_local(icmp::relay(engine.clone(), shared.clone()));
    loop {
        let deadline = engine.borrow().next_deadline();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(shared.std_instant(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = device.recv_raw(&mut rx) => {
                let now = shared.now();
                let mut engine = engine.borrow_mut();
                let mut read = r;
                // What else is queued, up to a batch: the VNICs answer once
                // for all of it at the flush below.
                for _ in 0..READ_BATCH {
                    match read {
                        Ok(n) => ingest_frame(&mut engine, now, &mut rx[..n], device.offload(), &mut scratch),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => tun::survive(Err(e))?,
                    }
                    read = device.try_recv_raw(&mut rx);
                }
            }
            () = sleep => engine.borrow_mut().poll_timers(shared.now()),
            () = shared.kick.notified() => {}
        }
        let mut outbox = {
            let mut eng = engine.borrow_mut();
            // The VNICs that took packets, and those whose relay moved data.
            eng.flush(shared.now());
            for event in eng.take_events() {
                match event {
                    Event::Connect { id, tuple } => {
                        let engine = engine.clone();
                        let shared = shared.clone();
                        let remote = SocketAddr::V4(tuple.remote);
                        tokio::task::spawn_local(relay(engine, shared, id, remote));
                    }
                    Event::UdpFlow { id, remote } => {
                        let flow = udp::relay(engine.clone(), shared.clone(), id, remote);
                        tokio::task::spawn_local(flow);
                    }
                    Event::Closed { .. } => {}
                }
            }
            eng.flush_replies();
            if eng.outbox.is_empty() {
                continue;
            }
            // Only this loop polls VNICs, so only it fills the outbox: it
            // is taken out while the write awaits (relays borrow the engine
            // meanwhile).
            std::mem::take(&mut eng.outbox)
        };
        if let Err(e) = device.send(&outbox).await {
            tracing::warn!(error = %e, "tun write failed");
        }
        outbox.clear();
        engine.borrow_mut().outbox = outbox;
    }
}

/// Packets the proxy box reads per wake-up before its VNICs answer.
const READ_BATCH: usize = 64;

/// Hands one packet read from the TUN device to the engine. With offloads
/// it comes after its virtio-net header: a TCP super-packet (GSO) goes in
/// whole, a UDP one as the datagrams it stands for, and a partial checksum
/// (`NEEDS_CSUM`) is left for what it is.
fn ingest_frame(
    engine: &mut ProxyEngine,
    now: smoltcp::time::Instant,
    frame: &mut [u8],
    offload: bool,
    scratch: &mut Vec<u8>,
) {
    if !offload {
        return engine.ingest(now, frame);
    }
    let Some(header) = vnet::VnetHeader::parse(frame) else {
        return;
    };
    let packet = &mut frame[vnet::LEN..];
    if header.gso() == vnet::GSO_UDP_L4 {
        vnet::split_udp(packet, header.gso_size, scratch, |d| engine.ingest(now, d));
    } else if header.needs_csum() {
        engine.ingest_partial(now, packet);
    } else {
        // Anything else the engine does not take (IPv6) is counted there.
        engine.ingest(now, packet);
    }
}

/// Connects to the real destination, completes the session's handshake,
/// and relays bytes both ways until both sides closed.
async fn relay(
    engine: Rc<RefCell<ProxyEngine>>,
    shared: Rc<Shared>,
    id: VnicId,
    remote: SocketAddr,
) {
    let outside =
        match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(remote)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "outside connect failed");
                engine.borrow_mut().refuse(id);
                shared.kick();
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "outside connect timed out");
                engine.borrow_mut().refuse(id);
                shared.kick();
                return;
            }
        };
    let _ = outside.set_nodelay(true);
    engine.borrow_mut().accept(id);
    shared.kick();
    let splice = stream::Splice::new(engine, shared, id, outside);
    if splice.established().await.is_err() {
        return;
    }
    if let Err(e) = splice.run().await {
        tracing::debug!(%remote, error = %e, "relay ended with an error");
        splice.abort();
    }
}

/// Runs a session server's dataplane: packets from both TUN devices
/// through the engine, written back (the kernel routes them on), steering
/// kept in step with the labelled sessions. Returns only on a device error.
pub async fn run_server(
    session_tun: tun::Tun,
    uplink_tun: tun::Tun,
    engine: Rc<RefCell<crate::server::ServerEngine>>,
    steering: Rc<steer::ServerSteering>,
    fast_path: Option<Rc<RefCell<fastpath::FastPath>>>,
    kick: Rc<Notify>,
) -> io::Result<()> {
    use crate::server::{Side, SteerChange};
    let mut rx_session = vec![0; server_io::BUFFER];
    let mut rx_uplink = vec![0; server_io::BUFFER];
    loop {
        tokio::select! {
            r = session_tun.recv_raw(&mut rx_session[server_io::ROOM..]) => {
                server_io::forward_batch(r, &session_tun, &uplink_tun, &mut rx_session, &engine, fast_path.as_deref(), Side::Session).await?;
            }
            r = uplink_tun.recv_raw(&mut rx_uplink[server_io::ROOM..]) => {
                server_io::forward_batch(r, &uplink_tun, &uplink_tun, &mut rx_uplink, &engine, fast_path.as_deref(), Side::Uplink).await?;
            }
            () = kick.notified() => {}
        }
        let (changes, fast_changes, mut outbox) = {
            let mut eng = engine.borrow_mut();
            (
                eng.take_steer_changes(),
                eng.take_fast_path_changes(),
                std::mem::take(&mut eng.outbox),
            )
        };
        if let Some(fast) = &fast_path {
            let mut fast = fast.borrow_mut();
            for change in &changes {
                fast.steer(change);
            }
            for change in &fast_changes {
                fast.apply(change);
            }
        }
        for change in changes {
            let result = match change {
                SteerChange::Add {
                    virtual_addr,
                    physical,
                } => steering.add(virtual_addr, physical),
                SteerChange::Remove {
                    virtual_addr,
                    physical,
                } => steering.remove(virtual_addr, physical),
            };
            if let Err(e) = result {
                tracing::warn!(?change, error = %e, "steering change failed");
            }
        }
        if !outbox.is_empty() {
            if let Err(e) = uplink_tun.send(&outbox).await {
                tracing::warn!(error = %e, "tun write failed");
            }
            outbox.clear();
        }
        engine.borrow_mut().outbox = outbox;
    }
}
