//! The session server's fast path: `bpf/server_fastpath.c`, two tc
//! programs on the uplink that label and rewrite established TCP segments
//! of labelled (migrated) sessions in the kernel. The user-space engine
//! (`crate::server`) stays the authority: it decides every connection's
//! labels and tells the fast path through [`FastPathChange`]s, which this
//! module writes into the programs' maps. What the maps do not explain goes
//! to the engine as before.
//!
//! The programs are attached with TCX links (kernel >= 6.6): the links
//! belong to this process, so the programs leave the uplink when it exits,
//! however it exits.

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::server::{FastPathChange, SteerChange};
use crate::vnic::FourTuple;

/// The object file built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/server_fastpath.o"));

/// Errors setting the fast path up or changing its maps.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("interface {name}: {source}")]
    Interface {
        name: String,
        source: std::io::Error,
    },
}

/// The fast path's own counters (summed over CPUs), in the order of
/// `enum counter` in the C source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathCounters {
    /// Segments labelled and rewritten towards the proxy box.
    pub out_packets: u64,
    pub out_bytes: u64,
    /// Segments whose label was checked and stripped, from the proxy box.
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Addresses rewritten, either direction.
    pub rewrites: u64,
    /// Packets of labelled sessions handed to the engine (SYNs, UDP, ICMP,
    /// connections the maps do not hold).
    pub to_engine: u64,
    /// The kernel refused to grow or shrink a header.
    pub adjust_failed: u64,
}

const COUNTERS: u32 = 7;

/// Map keys and values as the C structs lay them out (addresses, ports and
/// labels in network order). Byte arrays need no `unsafe impl Pod`.
type OutKey = [u8; 12];
type OutValue = [u8; 8];
type InValue = [u8; 16];

fn out_key(tuple: &FourTuple) -> OutKey {
    let mut k = [0; 12];
    k[0..4].copy_from_slice(&tuple.session.ip().octets());
    k[4..8].copy_from_slice(&tuple.remote.ip().octets());
    k[8..10].copy_from_slice(&tuple.session.port().to_be_bytes());
    k[10..12].copy_from_slice(&tuple.remote.port().to_be_bytes());
    k
}

fn in_value(tuple: &FourTuple, physical: Ipv4Addr) -> InValue {
    let mut v = [0; 16];
    v[0..4].copy_from_slice(&tuple.session.ip().octets());
    v[4..8].copy_from_slice(&tuple.remote.ip().octets());
    v[8..12].copy_from_slice(&physical.octets());
    v[12..14].copy_from_slice(&tuple.session.port().to_be_bytes());
    v[14..16].copy_from_slice(&tuple.remote.port().to_be_bytes());
    v
}

/// The programs, attached, and their maps.
pub struct FastPath {
    /// Holds the programs and their links (dropping it detaches them).
    _ebpf: Ebpf,
    out_conns: HashMap<MapData, OutKey, OutValue>,
    in_conns: HashMap<MapData, [u8; 4], InValue>,
    labelled: HashMap<MapData, [u8; 4], [u8; 4]>,
    counters: PerCpuArray<MapData, u64>,
    /// Connections the maps could not take (full): they stay on the engine.
    pub refused: u64,
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, FastPathError> {
    ebpf.take_map(name).ok_or(FastPathError::Missing(name))
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> FastPathError {
    move |source| FastPathError::Map { name, source }
}

/// The interface's index in this thread's network namespace (/sys may show
/// another one's).
fn ifindex(name: &str) -> Result<u32, FastPathError> {
    nix::net::if_::if_nametoindex(name).map_err(|e| FastPathError::Interface {
        name: name.to_string(),
        source: e.into(),
    })
}

impl FastPath {
    /// Loads the programs and attaches them to `uplink` (egress and
    /// ingress). What the egress program cannot take goes into
    /// `session_tun` (the engine's input); what the engine wrote into
    /// `uplink_tun` (its output) passes untouched; what the ingress program
    /// handled is marked `done_mark`.
    pub fn attach(
        uplink: &str,
        session_tun: &str,
        uplink_tun: &str,
        done_mark: u32,
    ) -> Result<FastPath, FastPathError> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        let mut settings: Array<MapData, [u8; 12]> =
            Array::try_from(take_map(&mut ebpf, "settings")?).map_err(map_err("settings"))?;
        let mut config = [0u8; 12];
        config[0..4].copy_from_slice(&ifindex(session_tun)?.to_ne_bytes());
        config[4..8].copy_from_slice(&ifindex(uplink_tun)?.to_ne_bytes());
        config[8..12].copy_from_slice(&done_mark.to_ne_bytes());
        settings.set(0, config, 0).map_err(map_err("settings"))?;
        for (name, direction) in [
            ("mobidesk_out", TcAttachType::Egress),
            ("mobidesk_in", TcAttachType::Ingress),
        ] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(FastPathError::Missing(name))?
                .try_into()
                .map_err(|source| FastPathError::Program { name, source })?;
            program
                .load()
                .map_err(|source| FastPathError::Program { name, source })?;
            program
                .attach(uplink, direction)
                .map_err(|source| FastPathError::Program { name, source })?;
        }
        Ok(FastPath {
            out_conns: HashMap::try_from(take_map(&mut ebpf, "out_conns")?)
                .map_err(map_err("out_conns"))?,
            in_conns: HashMap::try_from(take_map(&mut ebpf, "in_conns")?)
                .map_err(map_err("in_conns"))?,
            labelled: HashMap::try_from(take_map(&mut ebpf, "labelled")?)
                .map_err(map_err("labelled"))?,
            counters: PerCpuArray::try_from(take_map(&mut ebpf, "counters")?)
                .map_err(map_err("counters"))?,
            _ebpf: ebpf,
            refused: 0,
        })
    }

    /// A labelled session arrived or left.
    pub fn steer(&mut self, change: &SteerChange) {
        let result = match *change {
            SteerChange::Add {
                virtual_addr,
                physical,
            } => self
                .labelled
                .insert(virtual_addr.octets(), physical.octets(), 0),
            SteerChange::Remove { virtual_addr, .. } => {
                ignore_missing(self.labelled.remove(&virtual_addr.octets()))
            }
        };
        if let Err(e) = result {
            tracing::warn!(?change, error = %e, "fast path: session map change failed");
        }
    }

    /// A connection's labels changed.
    pub fn apply(&mut self, change: &FastPathChange) {
        match *change {
            FastPathChange::Connection {
                tuple,
                physical,
                server_label,
                proxy_label,
            } => {
                let mut value = [0; 8];
                value[0..4].copy_from_slice(&physical.octets());
                value[4..8].copy_from_slice(&proxy_label.to_be_bytes());
                let result = self
                    .out_conns
                    .insert(out_key(&tuple), value, 0)
                    .and_then(|()| {
                        self.in_conns.insert(
                            server_label.to_be_bytes(),
                            in_value(&tuple, physical),
                            0,
                        )
                    });
                if let Err(e) = result {
                    // Full (E2BIG) is the likely cause: the connection stays
                    // on the engine's path, which is slower but whole.
                    self.refused += 1;
                    let _ = self.out_conns.remove(&out_key(&tuple));
                    tracing::debug!(session = %tuple.session, remote = %tuple.remote, error = %e,
                        "fast path: connection left to the engine");
                }
            }
            FastPathChange::Forget {
                tuple,
                server_label,
            } => {
                let a = ignore_missing(self.out_conns.remove(&out_key(&tuple)));
                let b = ignore_missing(self.in_conns.remove(&server_label.to_be_bytes()));
                if let Err(e) = a.and(b) {
                    tracing::warn!(session = %tuple.session, error = %e,
                        "fast path: removing a connection failed");
                }
            }
        }
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> FastPathCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        debug_assert_eq!(COUNTERS, 7);
        FastPathCounters {
            out_packets: sum(0),
            out_bytes: sum(1),
            in_packets: sum(2),
            in_bytes: sum(3),
            rewrites: sum(4),
            to_engine: sum(5),
            adjust_failed: sum(6),
        }
    }
}

/// Removing what is not there is fine (the engine forgets connections the
/// fast path never held).
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}
