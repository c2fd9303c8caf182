//! The TUN device: batched reads and writes, with the Linux offloads
//! (`IFF_VNET_HDR`: the kernel hands over GSO super-packets, which tun-rs
//! splits, and takes large TCP segments back to cut itself) when enabled.

use std::io;

use tun_rs::{AsyncDevice, DeviceBuilder, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

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

/// Packets of one batched read, each at `offset` in its buffer (room to
/// grow the header in place, e.g. for a label).
pub struct RxBatch {
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
    offset: usize,
}

impl RxBatch {
    pub fn new(mtu: usize, offset: usize) -> RxBatch {
        RxBatch {
            original: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            bufs: vec![vec![0; offset + mtu.max(1500) + 64]; IDEAL_BATCH_SIZE],
            sizes: vec![0; IDEAL_BATCH_SIZE],
            count: 0,
            offset,
        }
    }

    /// The packets read, each changeable in place.
    pub fn packets_mut(&mut self) -> impl Iterator<Item = &mut [u8]> {
        let offset = self.offset;
        self.bufs
            .iter_mut()
            .zip(self.sizes.iter())
            .take(self.count)
            .map(move |(b, n)| &mut b[offset..offset + *n])
    }

    /// The packets read, each as (buffer up to its end, where it starts).
    pub fn packets_with_room(&mut self) -> impl Iterator<Item = (&mut [u8], usize)> {
        let offset = self.offset;
        self.bufs
            .iter_mut()
            .zip(self.sizes.iter())
            .take(self.count)
            .map(move |(b, n)| (&mut b[..offset + *n], offset))
    }
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

    /// Waits for packets, then takes what else is queued, up to one batch.
    /// On an error the batch is empty.
    pub async fn recv(&self, batch: &mut RxBatch) -> io::Result<()> {
        batch.count = 0;
        batch.count = self
            .device
            .recv_multiple(
                &mut batch.original,
                &mut batch.bufs,
                &mut batch.sizes,
                batch.offset,
            )
            .await?;
        // Leave room for one more split super-packet (64 KiB / MTU).
        let room = 65535 / self.mtu.max(576) + 1;
        while batch.count + room <= batch.bufs.len() {
            let (bufs, sizes) = (
                &mut batch.bufs[batch.count..],
                &mut batch.sizes[batch.count..],
            );
            match self
                .device
                .try_recv_multiple(&mut batch.original, bufs, sizes, batch.offset)
            {
                Ok(n) => batch.count += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // One bad super-packet: drop it, keep the batch.
                Err(e) if is_packet_error(&e) => {
                    count_read_error(&e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

/// Reads that failed on one packet (a GSO super-packet tun-rs could not
/// split, say), not on the device.
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
