//! How fast a viewer's link is, from the kernel's TCP state (`TCP_INFO`):
//! whether compressing a large update would delay it more than it saves.

use std::os::fd::AsRawFd;

/// Links that delivered at least this many bytes per second are *fast*:
/// faster than the zstd stream compresses pixels (~400 MB/s of photo-like
/// RAW at level 1 on one core), so compression delays a large update more
/// than the bytes it saves would take on the link (it saves about half).
pub(crate) const FAST_LINK_BYTES_PER_SEC: u64 = 250_000_000;

/// What the kernel measured of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// The most recent delivery rate sample, bytes per second (Linux ≥
    /// 4.9; 0 when unknown).
    pub delivery_rate: u64,
}

impl LinkInfo {
    /// Whether the link is known to be faster than compression.
    pub(crate) fn fast(&self) -> bool {
        self.delivery_rate >= FAST_LINK_BYTES_PER_SEC
    }
}

/// A second descriptor of a viewer's TCP socket (the first is inside the
/// transport, perhaps under TLS), to read `TCP_INFO` from.
#[derive(Debug)]
pub(crate) struct LinkProbe {
    socket: socket2::Socket,
}

impl LinkProbe {
    /// A probe of `stream`'s socket (`None` if it cannot be duplicated).
    pub(crate) fn of(stream: &tokio::net::TcpStream) -> Option<LinkProbe> {
        socket2::SockRef::from(stream)
            .try_clone()
            .ok()
            .map(|socket| LinkProbe { socket })
    }

    /// What the kernel knows now (`None`: `TCP_INFO` failed).
    #[allow(unsafe_code)]
    pub(crate) fn info(&self) -> Option<LinkInfo> {
        // SAFETY: tcp_info is plain old data (integers only), so all zeros
        // is a valid value; getsockopt writes at most `len` bytes into it
        // and `len` is its size.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
        // SAFETY: the descriptor is ours and open; `info` and `len` outlive
        // the call.
        let rc = unsafe {
            libc::getsockopt(
                self.socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        // An older kernel fills less: the rate is then unknown (0).
        let rate_end =
            std::mem::offset_of!(libc::tcp_info, tcpi_delivery_rate) + std::mem::size_of::<u64>();
        let known = usize::try_from(len).is_ok_and(|l| l >= rate_end);
        Some(LinkInfo {
            rtt_us: info.tcpi_rtt,
            delivery_rate: if known { info.tcpi_delivery_rate } else { 0 },
        })
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_loopback_connection_is_fast_once_it_delivered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            while total < 8 << 20 {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                total += n;
            }
            s.write_all(b"k").await.unwrap();
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let probe = LinkProbe::of(&server).unwrap();
        let before = probe.info().unwrap();
        assert_eq!(before.delivery_rate, 0, "nothing delivered yet");
        assert!(!before.fast());
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            server.write_all(&chunk).await.unwrap();
        }
        let mut ack = [0u8; 1];
        server.read_exact(&mut ack).await.unwrap();
        client.await.unwrap();
        let after = probe.info().unwrap();
        // Loopback delivers gigabytes per second.
        assert!(after.fast(), "{after:?}");
        assert!(after.rtt_us > 0, "{after:?}");
    }
}
