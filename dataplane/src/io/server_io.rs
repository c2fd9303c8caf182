//! A session server's packets, one at a time and whole: a GSO super-packet
//! (up to 64 KiB of a TCP stream, or of UDP datagrams) is read as one
//! packet, labelled or unlabelled and rewritten in its headers only, and
//! written back as one, with the virtio-net header adjusted for the
//! header's new length. Nothing is split, copied or checksummed over its
//! payload: the kernel cuts it (or passes it on whole) and finishes its
//! checksum.

use std::cell::RefCell;
use std::io;

use super::fastpath::FastPath;
use super::tun::{self, Tun};
use crate::server::{ServerEngine, Side};
use crate::wire::label::LABEL_OPTION_SPACE;
use crate::wire::protocol;
use crate::wire::vnet::{self, VnetHeader};

/// Room in front of a packet: a label may be inserted there, and the
/// virtio-net header then goes in front of the labelled packet.
pub(super) const ROOM: usize = LABEL_OPTION_SPACE;
/// A read buffer: room, a virtio-net header, the largest IPv4 packet.
pub(super) const BUFFER: usize = ROOM + vnet::LEN + 65535;
/// Packets taken per wake-up before the loop looks at the other device.
const BATCH: usize = 64;

/// Forwards the packet `first` read into `buf[ROOM..]`, then what else
/// `from` has queued, up to [`BATCH`] packets. Returns an error only when
/// the device failed.
pub(super) async fn forward_batch(
    first: io::Result<usize>,
    from: &Tun,
    to: &Tun,
    buf: &mut [u8],
    engine: &RefCell<ServerEngine>,
    fast_path: Option<&RefCell<FastPath>>,
    side: Side,
) -> io::Result<()> {
    let mut read = first;
    let mut write_error = None;
    for _ in 0..BATCH {
        match read {
            Ok(n) => {
                if let Err(e) = forward(buf, n, from.offload(), to, engine, fast_path, side).await {
                    write_error.get_or_insert(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // A bad packet is counted and skipped; a device error ends it.
            Err(e) => tun::survive(Err(e))?,
        }
        read = from.try_recv_raw(&mut buf[ROOM..]);
    }
    if let Some(e) = write_error {
        tracing::warn!(error = %e, "tun write failed");
    }
    Ok(())
}

/// Forwards one packet of `n` bytes at `buf[ROOM..]` (its virtio-net
/// header first if `offload`) through the engine to `to`.
async fn forward(
    buf: &mut [u8],
    n: usize,
    offload: bool,
    to: &Tun,
    engine: &RefCell<ServerEngine>,
    fast_path: Option<&RefCell<FastPath>>,
    side: Side,
) -> io::Result<()> {
    let end = ROOM + n;
    let (header, start) = if offload {
        match VnetHeader::parse(&buf[ROOM..end]) {
            Some(h) => (Some(h), ROOM + vnet::LEN),
            None => return Ok(()),
        }
    } else {
        (None, ROOM)
    };
    let partial = header.is_some_and(|h| h.needs_csum());
    let forwarded = {
        let mut engine = engine.borrow_mut();
        let forwarded = engine.forward(&mut buf[..end], start, side, partial);
        // Before the packet goes on: the proxy's SYN-ACK that taught the
        // engine a connection's labels makes the session answer at once,
        // and that answer takes the fast path, which must know them by then
        // (a reused tuple would still carry the old connection's label).
        if let Some(fast) = fast_path {
            let changes = engine.take_fast_path_changes();
            if !changes.is_empty() {
                let mut fast = fast.borrow_mut();
                for change in &changes {
                    fast.apply(change);
                }
            }
        }
        forwarded
    };
    let Some(start) = forwarded else {
        return Ok(());
    };
    let frame = match header {
        Some(header) => {
            // start >= ROOM + LEN - LABEL_OPTION_SPACE = LEN.
            let Some(at) = start.checked_sub(vnet::LEN) else {
                return Ok(());
            };
            let out = header_after(header, &buf[start..end]);
            out.write(&mut buf[at..start]);
            &buf[at..end]
        }
        None => &buf[start..end],
    };
    to.send_raw(frame).await.map(drop)
}

/// The virtio-net header for a packet that came with `header` and whose IP
/// header may have changed length since (a label inserted or stripped):
/// the checksum starts, and the headers to copy into every segment end,
/// where the transport header does now.
fn header_after(header: VnetHeader, packet: &[u8]) -> VnetHeader {
    if !header.needs_csum() && header.gso() == vnet::GSO_NONE {
        // Complete: nothing for the kernel to do but take it (and trust a
        // checksum the kernel had verified).
        return VnetHeader {
            flags: header.flags,
            ..VnetHeader::default()
        };
    }
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    let transport = match packet.get(9) {
        Some(&protocol::TCP) => packet.get(ihl + 12).map_or(20, |b| usize::from(b >> 4) * 4),
        _ => 8,
    };
    VnetHeader {
        csum_start: u16::try_from(ihl).unwrap_or(u16::MAX),
        hdr_len: u16::try_from(ihl + transport).unwrap_or(u16::MAX),
        ..header
    }
}
