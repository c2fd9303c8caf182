//! The TUN device: one packet per read or write, with the Linux offloads
//! (`IFF_VNET_HDR`) when enabled: a virtio-net header (see
//! [`crate::wire::vnet`]) in front of every packet, GSO super-packets of up
//! to 64 KiB both ways, checksums left to the kernel.

use std::io;

use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};

use crate::vnic::{Outbox, HEADROOM};

// The outbox's headroom is where the virtio-net header goes.
const _: () = assert!(HEADROOM == VIRTIO_NET_HDR_LEN);

/// How to open the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    pub name: String,
    pub mtu: u16,
    /// GSO/GRO offloads through the virtio-net header.
    pub offload: bool,
}

/// An open TUN device (layer 3, no packet information header).
pub struct Tun {
    device: AsyncDevice,
    mtu: usize,
    offload: bool,
}

impl Tun {
    /// Creates the device in the calling thread's network namespace and
    /// brings it up.
    pub fn open(config: &TunConfig) -> io::Result<Tun> {
        let device = DeviceBuilder::new()
            .name(config.name.clone())
            .mtu(config.mtu)
            .with(|b| {
                b.offload(config.offload);
            })
            .build_async()?;
        Ok(Tun {
            device,
            mtu: usize::from(config.mtu),
            offload: config.offload,
        })
    }

    pub fn mtu(&self) -> usize {
        self.mtu
    }

    /// Whether packets go with a virtio-net header (the offloads are on).
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Waits for one packet and reads it whole into `buf` (a GSO
    /// super-packet stays one packet), its virtio-net header first when the
    /// offloads are on. Returns the bytes read.
    pub async fn recv_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf).await
    }

    /// [`Tun::recv_raw`] without waiting: `WouldBlock` when none is queued.
    pub fn try_recv_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.try_recv(buf)
    }

    /// Writes one packet, its virtio-net header first when the offloads
    /// are on.
    pub async fn send_raw(&self, frame: &[u8]) -> io::Result<usize> {
        self.device.send(frame).await
    }

    /// Writes the outbox's packets, one write each. With offloads on, each
    /// goes with the virtio-net header its producer left in its headroom
    /// (zero: a complete packet; or a large TCP segment for the kernel to
    /// cut and checksum). Every packet is tried; the first error is
    /// returned.
    pub async fn send(&self, outbox: &Outbox) -> io::Result<()> {
        let mut result = Ok(());
        for frame in outbox.frames() {
            let bytes = if self.offload {
                frame
            } else {
                &frame[HEADROOM..]
            };
            if let Err(e) = self.device.send(bytes).await {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// Reads that failed on one packet (the kernel refused to hand one over),
/// not on the device.
pub static READ_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn is_packet_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::Other
    )
}

fn count_read_error(e: &io::Error) {
    let n = READ_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The first few, then one in a thousand: a flood must not flood the log.
    if n < 10 || n % 1000 == 0 {
        tracing::warn!(error = %e, errors = n + 1, "tun read failed on one packet; dropped");
    }
}

/// What a failed [`Tun::recv`] means: a packet-level error is counted and
/// survived (`Ok`), anything else (the device is gone) is returned.
pub fn survive(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if is_packet_error(&e) => {
            count_read_error(&e);
            Ok(())
        }
        other => other,
    }
}
