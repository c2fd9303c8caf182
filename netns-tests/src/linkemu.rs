//! A user-space link emulator: WAN delay and a bottleneck rate between two
//! lab namespaces (this kernel has no `netem`, see `/work/shared/NOTES.md`).
//!
//! ```text
//!   namespace a                 this process                 namespace b
//!  ┌───────────┐        ┌──────────────────────────┐        ┌───────────┐
//!  │ route ──▶ tun a ──▶│ a→b: queue ▸ rate ▸ delay│──▶ tun b ──▶ stack │
//!  │ stack ◀── tun a ◀──│ b→a: queue ▸ rate ▸ delay│◀── tun b ◀── route │
//!  └───────────┘        └──────────────────────────┘        └───────────┘
//! ```
//!
//! [`LinkEmulator::between`] makes one TUN device in each namespace (plain
//! IPv4 packets: no packet-information header, no offloads, MTU 1500 by
//! default) and one thread per direction that reads packets from one device
//! and writes them to the other. Routes decide what crosses the link
//! ([`LinkEmulator::route`]); [`Lab::slow_link`] sets them so that one host's
//! traffic to and through the proxy box takes the link.
//!
//! # The model, per direction
//! A router with a drop-tail queue in front of a serializer of `rate` bit/s,
//! then a wire of one-way delay `rtt / 2`:
//! - a packet that arrives while the serializer is busy waits; the bytes not
//!   yet serialized are the *backlog*; a packet that would take the backlog
//!   over `queue_bytes` is dropped (tail drop, like a router);
//! - a packet leaves the serializer at `done = max(now, previous done) +
//!   len × 8 / rate` and is written to the other device at `done + rtt / 2`;
//! - without a rate, a packet is written at `arrival + rtt / 2`.
//!
//! Release times never decrease, so one FIFO per direction is the whole
//! timer: the thread writes what is due, then sleeps in `ppoll` (nanosecond
//! timeout, monotonic clock) until the head of the FIFO is due, a packet
//! arrives, or the emulator stops. Nothing spins. Order is preserved. What
//! the FIFO may hold is bounded twice: by the queue (backlog ≤ `queue_bytes`,
//! so in flight ≤ queue + rate × delay), and, for unlimited links, by
//! [`MAX_IN_FLIGHT_BYTES`] (packets over it are dropped and counted).
//!
//! The default queue is one bandwidth-delay product (rate × RTT), at least
//! [`MIN_DEFAULT_QUEUE`].
//!
//! # Lifetime
//! Dropping a [`LinkEmulator`] stops and joins its threads and closes the
//! devices (a TUN device without the persist flag is removed with its last
//! descriptor, and the routes through it with it). An open TUN device holds
//! a reference to its namespace: a namespace deleted by name (`ip netns del`,
//! [`Lab::down`]) lives on, nameless and empty, until the emulator is
//! dropped. A device removed under a running emulator (`ip link del`) ends
//! the direction that reads it ([`LinkEmulator::is_running`] turns false).
//!
//! # By hand
//! `mobidesk-lab link --lab demo --rtt-ms 66 --rate-mbit 100 alice` puts
//! client `alice` behind a 66 ms / 100 Mbit/s link to the proxy box until
//! Ctrl-C; `mobidesk-lab link A B --route-a PREFIX --route-b PREFIX` joins
//! any two namespaces of a lab.
//!
//! # Figures
//! Measured 2026-11-26 on this machine (2 cores, load average 6–8 from
//! other builds at the time), between the `web` and `alice` namespaces of a
//! standard lab, through the emulator's /30:
//!
//! ```text
//! mobidesk-lab up --name lemu1
//! mobidesk-lab link --lab lemu1 --rtt-ms 66 --rate-mbit 100 web alice &  # or --rtt-ms 0
//! mobidesk-lab exec --lab lemu1 alice -- iperf3 -s -1 -B 198.19.255.2 &
//! mobidesk-lab exec --lab lemu1 web -- ping -c 20 -i 0.2 -q 198.19.255.2
//! mobidesk-lab exec --lab lemu1 web -- iperf3 -c 198.19.255.2 -t 10
//! ```
//!
//! | path                            | ping RTT min/avg/max, ms | iperf3, 1 TCP stream, 10 s      |
//! |---------------------------------|--------------------------|---------------------------------|
//! | 66 ms, 100 Mbit/s (release)     | 66.35 / 66.39 / 66.46    | 92.1 Mbit/s (2 065 tail drops)  |
//! | 0 ms, unlimited (release)       | 0.095 / 0.107 / 0.123    | 2.01 Gbit/s                     |
//! | 0 ms, unlimited (debug)         | 0.115 / 0.127 / 0.142    | 1.70 Gbit/s                     |
//! | no emulator (veth and bridge)   | 0.058 / 0.065 / 0.074    | 13.0 Gbit/s                     |
//!
//! The 0 ms rows are the emulator's own cost: about 40 µs per round trip
//! and a ceiling near 2 Gbit/s (one read, one copy and one write per packet
//! on one thread per direction). Above it the sending device's 1000-packet
//! ring overflows (`ip -s link`: TX dropped), as a NIC's would; a rate
//! limit far below it (100 Mbit/s) is not affected. The 100 Mbit/s row is
//! TCP CUBIC filling a one-BDP drop-tail queue. CPU at 100 Mbit/s (release,
//! `/proc/PID/stat` over the 10 s run): 0.28 s user, 3.05 s system — the
//! system time is mostly the receiving stack, which runs in the thread that
//! writes the packet to the TUN device; idle, the emulator uses none (it
//! sleeps in `ppoll`). The tests print the same
//! figures for the debug build they run (`cargo test -p mobidesk-lab --test
//! netns linkemu -- --nocapture`).

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use serde::Serialize;
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::netns::Netns;
use crate::{Lab, LabError};

/// Default queue when none is given and one BDP is smaller.
pub const MIN_DEFAULT_QUEUE: usize = 64 * 1024;

/// Most bytes one direction holds at once, whatever the configuration (an
/// unlimited link with a long delay would otherwise grow without bound).
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Most packets one direction holds at once (small packets cost more than
/// their bytes).
pub const MAX_IN_FLIGHT_PACKETS: usize = 128 * 1024;

/// Packets read from a device before the due ones are written again.
const READ_BATCH: usize = 64;

/// Longest delay accepted (a typo guard; a satellite link is 600 ms).
const MAX_RTT: Duration = Duration::from_secs(10);

/// Longest interface name Linux takes.
const MAX_IFNAME: usize = 15;

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid link configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("creating TUN device {ifname} in {netns}: {source}")]
    Tun {
        ifname: String,
        netns: String,
        source: io::Error,
    },
    #[error("link emulator: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

/// The link's shape. Both directions get the same delay, rate and queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkConfig {
    /// Round-trip time the link adds; each direction holds packets for half.
    pub rtt: Duration,
    /// Bottleneck rate in bits per second, each direction; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// Drop-tail queue in front of the rate limit, bytes, each direction;
    /// `None`: one bandwidth-delay product, at least [`MIN_DEFAULT_QUEUE`].
    pub queue_bytes: Option<usize>,
    pub mtu: u16,
    /// The TUN device's name in namespace `a`.
    pub ifname_a: String,
    /// The TUN device's name in namespace `b`.
    pub ifname_b: String,
    /// Point-to-point addresses of the two ends (`a`, `b`), each with the
    /// other as its peer; `None`: the devices get no address (routes then
    /// need a `src`).
    pub addresses: Option<(Ipv4Addr, Ipv4Addr)>,
}

impl Default for LinkConfig {
    /// 0 ms, unlimited, MTU 1500, devices `lemu0`, 198.19.255.1 ↔ .2.
    fn default() -> Self {
        LinkConfig {
            rtt: Duration::ZERO,
            rate_bps: None,
            queue_bytes: None,
            mtu: 1500,
            ifname_a: "lemu0".into(),
            ifname_b: "lemu0".into(),
            addresses: Some((
                Ipv4Addr::new(198, 19, 255, 1),
                Ipv4Addr::new(198, 19, 255, 2),
            )),
        }
    }
}

impl LinkConfig {
    /// A WAN link: `rtt` and a rate in bits per second (`None`: unlimited).
    pub fn wan(rtt: Duration, rate_bps: Option<u64>) -> Self {
        LinkConfig {
            rtt,
            rate_bps,
            ..LinkConfig::default()
        }
    }

    /// The queue each direction gets: the configured one, or one BDP.
    pub fn queue_limit(&self) -> usize {
        self.queue_bytes.unwrap_or_else(|| {
            let bdp = self.rate_bps.map_or(0, |rate| {
                let bytes = u128::from(rate) * self.rtt.as_nanos() / 8_000_000_000;
                usize::try_from(bytes).unwrap_or(usize::MAX)
            });
            bdp.max(MIN_DEFAULT_QUEUE)
        })
    }

    pub fn validate(&self) -> Result<(), LinkError> {
        let bad = |m: String| Err(LinkError::Config(m));
        if self.rtt > MAX_RTT {
            return bad(format!("rtt {:?} is over {MAX_RTT:?}", self.rtt));
        }
        if self.rate_bps == Some(0) {
            return bad("rate 0 passes nothing; leave it out for unlimited".into());
        }
        if !(576..=9000).contains(&self.mtu) {
            return bad(format!("mtu {} is not in 576..=9000", self.mtu));
        }
        if self.queue_bytes.is_some_and(|q| q < usize::from(self.mtu)) {
            return bad(format!(
                "queue of {} bytes cannot hold one packet of mtu {}",
                self.queue_limit(),
                self.mtu
            ));
        }
        for name in [&self.ifname_a, &self.ifname_b] {
            if name.is_empty()
                || name.len() > MAX_IFNAME
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(format!(
                    "interface name {name:?}: 1 to {MAX_IFNAME} of [A-Za-z0-9_-]"
                ));
            }
        }
        if let Some((a, b)) = self.addresses {
            if a == b {
                return bad(format!("both ends have address {a}"));
            }
        }
        Ok(())
    }
}

/// One end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// What one direction did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets and bytes read from the sending side's device.
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Packets and bytes written to the receiving side's device.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Tail drops: the queue was full.
    pub dropped_queue: u64,
    /// Drops over [`MAX_IN_FLIGHT_BYTES`] / [`MAX_IN_FLIGHT_PACKETS`].
    pub dropped_memory: u64,
    /// Writes the receiving device refused.
    pub write_errors: u64,
    /// The largest backlog (bytes waiting for the rate limit) seen.
    pub max_backlog_bytes: u64,
    /// The most bytes held at once (queued or on the wire).
    pub max_in_flight_bytes: u64,
}

/// Both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
}

#[derive(Debug, Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_memory: AtomicU64,
    write_errors: AtomicU64,
    max_backlog_bytes: AtomicU64,
    max_in_flight_bytes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionStats {
            packets_in: g(&self.packets_in),
            bytes_in: g(&self.bytes_in),
            packets_out: g(&self.packets_out),
            bytes_out: g(&self.bytes_out),
            dropped_queue: g(&self.dropped_queue),
            dropped_memory: g(&self.dropped_memory),
            write_errors: g(&self.write_errors),
            max_backlog_bytes: g(&self.max_backlog_bytes),
            max_in_flight_bytes: g(&self.max_in_flight_bytes),
        }
    }
}

fn add(a: &AtomicU64, n: usize) {
    a.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn raise(a: &AtomicU64, n: u64) {
    a.fetch_max(n, Ordering::Relaxed);
}

/// The emulated link; see the module docs. Dropping it takes it down.
#[derive(Debug)]
pub struct LinkEmulator {
    config: LinkConfig,
    netns: (Netns, Netns),
    counters: (Arc<Counters>, Arc<Counters>),
    /// Dropping it wakes both threads (their end reads EOF).
    stop: Option<UnixStream>,
    threads: Vec<JoinHandle<()>>,
}

impl LinkEmulator {
    /// Makes the link between namespaces `a` and `b`: a TUN device in each
    /// (named and addressed as `config` says, up), and the two forwarding
    /// threads. No routes yet besides the peer addresses: see
    /// [`LinkEmulator::route`].
    pub fn between(a: &Netns, b: &Netns, config: LinkConfig) -> Result<LinkEmulator, LinkError> {
        config.validate()?;
        if a == b {
            return Err(LinkError::Config(format!(
                "both ends are in namespace {}",
                a.name()
            )));
        }
        let dev_a = Arc::new(open_tun(a, &config.ifname_a, config.mtu)?);
        let dev_b = Arc::new(open_tun(b, &config.ifname_b, config.mtu)?);
        configure(a, &config.ifname_a, config.addresses)?;
        configure(b, &config.ifname_b, config.addresses.map(|(x, y)| (y, x)))?;
        wait_running(a, &config.ifname_a)?;
        wait_running(b, &config.ifname_b)?;

        let (stop, stopped) = UnixStream::pair().map_err(|source| LinkError::Io {
            what: "stop socket",
            source,
        })?;
        let counters = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        let mut emu = LinkEmulator {
            config,
            netns: (a.clone(), b.clone()),
            counters,
            stop: Some(stop),
            threads: Vec::new(),
        };
        for (name, rx, tx, counters) in [
            ("linkemu-a>b", &dev_a, &dev_b, &emu.counters.0),
            ("linkemu-b>a", &dev_b, &dev_a, &emu.counters.1),
        ] {
            let direction = Direction {
                rx: Arc::clone(rx),
                tx: Arc::clone(tx),
                shaper: Shaper::new(&emu.config),
                counters: Arc::clone(counters),
                stop: stopped.try_clone().map_err(|source| LinkError::Io {
                    what: "stop socket",
                    source,
                })?,
                mtu: usize::from(emu.config.mtu),
            };
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || direction.run(name))
                .map_err(|source| LinkError::Io {
                    what: "thread",
                    source,
                })?;
            // On a later error `emu` is dropped, which stops this one.
            emu.threads.push(handle);
        }
        tracing::info!(
            a = a.name(),
            b = b.name(),
            rtt = ?emu.config.rtt,
            rate_bps = ?emu.config.rate_bps,
            queue_bytes = emu.config.queue_limit(),
            "link emulator up"
        );
        Ok(emu)
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The namespace of one end.
    pub fn netns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.netns.0,
            Side::B => &self.netns.1,
        }
    }

    /// The TUN device's name at one end.
    pub fn ifname(&self, side: Side) -> &str {
        match side {
            Side::A => &self.config.ifname_a,
            Side::B => &self.config.ifname_b,
        }
    }

    /// Routes `dst` into the link at one end (`ip route replace dst dev
    /// TUN [src SRC]`): packets that end sends to `dst` cross to the other
    /// end. The route goes with the device.
    pub fn route(&self, side: Side, dst: Ipv4Net, src: Option<Ipv4Addr>) -> Result<(), LinkError> {
        let dst = dst.trunc().to_string();
        let mut args = vec!["route", "replace", &dst, "dev", self.ifname(side)];
        let src = src.map(|s| s.to_string());
        if let Some(s) = &src {
            args.extend(["src", s]);
        }
        self.netns(side).ip(&args)?;
        Ok(())
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            a_to_b: self.counters.0.snapshot(),
            b_to_a: self.counters.1.snapshot(),
        }
    }

    /// Whether both forwarding threads still run (one ends early only when
    /// the device it reads went away).
    pub fn is_running(&self) -> bool {
        self.threads.len() == 2 && self.threads.iter().all(|t| !t.is_finished())
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!("a link emulator thread panicked");
            }
        }
        // The threads held the last references to the devices: they are
        // closed now, and the kernel removed them.
        tracing::info!(
            a = self.netns.0.name(),
            b = self.netns.1.name(),
            stats = ?self.stats(),
            "link emulator down"
        );
    }
}

impl Lab {
    /// Puts `host`'s traffic to and through the proxy box on an emulated
    /// link: a TUN device `le-proxy` in the host, `le-<host>` in the proxy
    /// box. In the host, `0.0.0.0/1`, `128.0.0.0/1` (together: everything
    /// off its own network, more specific than the default route, which
    /// stays) and the proxy's address on the host's network take the link,
    /// from the host's own address; in the proxy box, the host's address
    /// does. Traffic between the host and others on its network (an outside
    /// host) stays on the network. Dropping the emulator restores the old
    /// paths. `config.ifname_*` and `config.addresses` are ignored.
    pub fn slow_link(&self, host: &str, config: LinkConfig) -> Result<LinkEmulator, LinkError> {
        let h = self
            .topology()
            .host(host)
            .ok_or_else(|| LabError::UnknownNamespace(host.into()))?;
        let net = self
            .topology()
            .network(&h.network)
            .ok_or_else(|| LabError::UnknownNamespace(h.network.clone()))?;
        let config = LinkConfig {
            ifname_a: "le-proxy".into(),
            ifname_b: format!("le-{host}"),
            addresses: None,
            ..config
        };
        let emu = LinkEmulator::between(&self.host(host)?, &self.proxy(), config)?;
        for dst in [
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 1),
            Ipv4Net::new(Ipv4Addr::new(128, 0, 0, 0), 1),
            Ipv4Net::new(net.gateway, 32),
        ] {
            let dst = dst.map_err(|e| LinkError::Config(e.to_string()))?;
            emu.route(Side::A, dst, Some(h.address))?;
        }
        let to_host = Ipv4Net::new(h.address, 32).map_err(|e| LinkError::Config(e.to_string()))?;
        emu.route(Side::B, to_host, Some(net.gateway))?;
        Ok(emu)
    }
}

fn open_tun(ns: &Netns, ifname: &str, mtu: u16) -> Result<SyncDevice, LinkError> {
    let tun_error = |source| LinkError::Tun {
        ifname: ifname.into(),
        netns: ns.name().into(),
        source,
    };
    // The device is made in the namespace of the thread that opens it.
    let dev = ns
        .run(|| {
            DeviceBuilder::new()
                .name(ifname)
                // Up only once IPv6 is off (see `configure`).
                .enable(false)
                .mtu(mtu)
                .offload(false)
                .packet_information(false)
                .tx_queue_len(1000)
                .build_sync()
        })?
        .map_err(tun_error)?;
    dev.set_nonblocking(true).map_err(tun_error)?;
    Ok(dev)
}

fn configure(
    ns: &Netns,
    ifname: &str,
    addresses: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Result<(), LinkError> {
    // No IPv6 chatter (router solicitations) through the link; a
    // namespace without IPv6 has no such key, which is fine.
    let _ = ns.sysctl(&[(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "1")]);
    let mut cmds = Vec::new();
    if let Some((local, peer)) = addresses {
        cmds.push(format!("addr add {local} peer {peer}/32 dev {ifname}"));
    }
    cmds.push(format!("link set {ifname} up"));
    ns.ip_batch(&cmds)?;
    Ok(())
}

/// Waits until the device has its carrier and is up (a TUN device reports
/// operstate UNKNOWN, not UP: it has no link of its own to watch).
fn wait_running(ns: &Netns, ifname: &str) -> Result<(), LinkError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let links = ns.ip_json(&["link", "show", "dev", ifname])?;
        let up = links[0]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("LOWER_UP")))
            && matches!(links[0]["operstate"].as_str(), Some("UP" | "UNKNOWN"));
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::LinkDown {
                netns: ns.name().into(),
                links: ifname.into(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// When a packet leaves, or whether it is dropped: the model of the module
/// docs, with time passed in.
#[derive(Debug)]
struct Shaper {
    delay: Duration,
    rate_bps: Option<u64>,
    queue_limit: u64,
    /// When the serializer is done with what it accepted so far.
    busy_until: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Write it at this time.
    Due(Instant),
    /// The queue is full.
    Drop,
}

impl Shaper {
    fn new(config: &LinkConfig) -> Self {
        Shaper {
            delay: config.rtt / 2,
            rate_bps: config.rate_bps,
            queue_limit: u64::try_from(config.queue_limit()).unwrap_or(u64::MAX),
            busy_until: None,
        }
    }

    /// Bytes accepted but not yet serialized at `now`.
    fn backlog(&self, now: Instant) -> u64 {
        match (self.rate_bps, self.busy_until) {
            (Some(rate), Some(busy)) if busy > now => {
                let bytes = (busy - now).as_nanos() * u128::from(rate) / 8_000_000_000;
                u64::try_from(bytes).unwrap_or(u64::MAX)
            }
            _ => 0,
        }
    }

    fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        let Some(rate) = self.rate_bps else {
            return Verdict::Due(now + self.delay);
        };
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        if self.backlog(now).saturating_add(len64) > self.queue_limit {
            return Verdict::Drop;
        }
        let start = self.busy_until.filter(|b| *b > now).unwrap_or(now);
        let nanos = u128::from(len64) * 8 * 1_000_000_000 / u128::from(rate);
        let done = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.busy_until = Some(done);
        Verdict::Due(done + self.delay)
    }
}

/// One direction: reads `rx`, writes `tx`.
struct Direction {
    rx: Arc<SyncDevice>,
    tx: Arc<SyncDevice>,
    shaper: Shaper,
    counters: Arc<Counters>,
    stop: UnixStream,
    mtu: usize,
}

impl Direction {
    fn run(mut self, name: &str) {
        match self.forward() {
            Ok(()) => tracing::debug!(direction = name, "link emulator direction stopped"),
            Err(e) => tracing::warn!(
                direction = name,
                error = %e,
                "link emulator direction ended (its device is gone?)"
            ),
        }
    }

    fn forward(&mut self) -> io::Result<()> {
        // INVARIANT: release times in `line` never decrease (see Shaper).
        let mut line: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut in_flight = 0usize;
        // Room for more than the MTU: a packet that does not fit would be
        // cut short by the read, not refused.
        let mut buf = vec![0u8; self.mtu.max(1500) + 4096];
        loop {
            let now = Instant::now();
            while line.front().is_some_and(|(due, _)| *due <= now) {
                let Some((_, packet)) = line.pop_front() else {
                    break;
                };
                in_flight -= packet.len();
                match self.tx.send(&packet) {
                    Ok(_) => {
                        add(&self.counters.packets_out, 1);
                        add(&self.counters.bytes_out, packet.len());
                    }
                    Err(e) => {
                        let n = self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        if n < 10 || n % 1000 == 0 {
                            tracing::warn!(error = %e, errors = n + 1, "link emulator: write refused");
                        }
                    }
                }
            }
            let timeout = line
                .front()
                .map(|(due, _)| TimeSpec::from_duration(due.saturating_duration_since(now)));
            let (rx_events, stop_events) = {
                let mut fds = [
                    PollFd::new(self.rx.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                ];
                match ppoll(&mut fds, timeout, None) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let events = |f: &PollFd| f.revents().unwrap_or(PollFlags::empty());
                (events(&fds[0]), events(&fds[1]))
            };
            if !stop_events.is_empty() {
                return Ok(());
            }
            if rx_events.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                return Err(io::Error::other(format!("device poll: {rx_events:?}")));
            }
            if !rx_events.contains(PollFlags::POLLIN) {
                continue;
            }
            for _ in 0..READ_BATCH {
                let n = match self.rx.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let now = Instant::now();
                add(&self.counters.packets_in, 1);
                add(&self.counters.bytes_in, n);
                if in_flight + n > MAX_IN_FLIGHT_BYTES || line.len() >= MAX_IN_FLIGHT_PACKETS {
                    add(&self.counters.dropped_memory, 1);
                    continue;
                }
                match self.shaper.admit(now, n) {
                    Verdict::Drop => add(&self.counters.dropped_queue, 1),
                    Verdict::Due(due) => {
                        raise(&self.counters.max_backlog_bytes, self.shaper.backlog(now));
                        line.push_back((due, buf[..n].to_vec()));
                        in_flight += n;
                        raise(
                            &self.counters.max_in_flight_bytes,
                            u64::try_from(in_flight).unwrap_or(u64::MAX),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(rtt_ms: u64, rate_bps: Option<u64>, queue: Option<usize>) -> Shaper {
        Shaper::new(&LinkConfig {
            queue_bytes: queue,
            ..LinkConfig::wan(Duration::from_millis(rtt_ms), rate_bps)
        })
    }

    fn due(v: Verdict) -> Instant {
        match v {
            Verdict::Due(t) => t,
            Verdict::Drop => panic!("dropped"),
        }
    }

    #[test]
    fn unlimited_link_only_delays_by_half_the_rtt() {
        let t0 = Instant::now();
        let mut s = shaper(66, None, None);
        for i in 0..1000 {
            let now = t0 + Duration::from_micros(i);
            assert_eq!(due(s.admit(now, 1500)), now + Duration::from_millis(33));
        }
    }

    #[test]
    fn rate_spaces_packets_and_backlog_is_the_unsent_bytes() {
        let t0 = Instant::now();
        // 12 Mbit/s: 1500 bytes take exactly 1 ms.
        let mut s = shaper(20, Some(12_000_000), Some(100_000));
        let d1 = due(s.admit(t0, 1500));
        let d2 = due(s.admit(t0, 1500));
        assert_eq!(d1, t0 + Duration::from_millis(11));
        assert_eq!(d2, t0 + Duration::from_millis(12));
        assert_eq!(s.backlog(t0), 3000);
        assert_eq!(s.backlog(t0 + Duration::from_micros(1500)), 750);
        // Idle later: a new packet starts at its own arrival.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(s.backlog(later), 0);
        assert_eq!(due(s.admit(later, 1500)), later + Duration::from_millis(11));
    }

    #[test]
    fn full_queue_drops_the_tail_and_keeps_order() {
        let t0 = Instant::now();
        let mut s = shaper(0, Some(12_000_000), Some(4500));
        let mut last = t0;
        for _ in 0..3 {
            let d = due(s.admit(t0, 1500));
            assert!(d > last);
            last = d;
        }
        assert_eq!(
            s.admit(t0, 1500),
            Verdict::Drop,
            "a fourth packet overflows"
        );
        assert_eq!(s.admit(t0, 1), Verdict::Drop);
        // Once one packet's worth is sent, one more fits.
        let t1 = t0 + Duration::from_millis(1);
        assert!(due(s.admit(t1, 1500)) > last);
    }

    #[test]
    fn default_queue_is_one_bdp_with_a_floor() {
        let c = LinkConfig::wan(Duration::from_millis(66), Some(100_000_000));
        assert_eq!(c.queue_limit(), 825_000);
        assert_eq!(LinkConfig::default().queue_limit(), MIN_DEFAULT_QUEUE);
        c.validate().unwrap();
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = [
            LinkConfig {
                rate_bps: Some(0),
                ..LinkConfig::default()
            },
            LinkConfig {
                rtt: Duration::from_secs(11),
                ..LinkConfig::default()
            },
            LinkConfig {
                queue_bytes: Some(100),
                ..LinkConfig::default()
            },
            LinkConfig {
                ifname_a: "much-too-long-name".into(),
                ..LinkConfig::default()
            },
            LinkConfig {
                ifname_b: "a b".into(),
                ..LinkConfig::default()
            },
            LinkConfig {
                mtu: 100,
                ..LinkConfig::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
