//! IPv4 reassembly for the datagrams the proxy box relays per flow (UDP,
//! ICMP): a session whose datagram is larger than its path's MTU sends it
//! in fragments (RFC 791), and the relay needs the whole datagram to hand
//! it to a kernel socket. Sans-I/O: fragments in, whole packets out, the
//! clock passed in.
//!
//! Bounded: at most `max_datagrams` datagrams in reassembly, at most
//! `max_bytes` of fragment data held in all, each datagram at most 65 535
//! bytes, and a datagram not complete within `timeout` is forgotten.
//! Overlapping fragments (a classic way to smuggle a different header past
//! a filter, RFC 1858/3128) drop the whole datagram. TCP is never
//! reassembled here: the proxy box's VNICs announce an MSS that keeps TCP
//! unfragmented.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};

use super::ipv4::Ipv4Packet;

/// Limits of a [`Reassembler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyConfig {
    pub max_datagrams: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            max_datagrams: 64,
            max_bytes: 1 << 20,
            // RFC 791 suggests 15 s; Linux waits 30 s. A relay wants the
            // datagram soon or not at all.
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a fragment was not taken (each is counted as a drop reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    #[error("not a well-formed IPv4 fragment")]
    Malformed,
    #[error("fragments overlap")]
    Overlap,
    #[error("the datagram would exceed 65535 bytes")]
    TooBig,
    #[error("too many datagrams or bytes in reassembly")]
    Full,
}

impl ReassemblyError {
    /// The drop reason it is counted under.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "fragment_malformed",
            Self::Overlap => "fragment_overlap",
            Self::TooBig => "fragment_too_big",
            Self::Full => "fragment_limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
}

#[derive(Debug)]
struct Datagram {
    /// The first fragment's header (offset 0), once it arrived.
    header: Option<Vec<u8>>,
    /// Payload pieces by offset.
    pieces: BTreeMap<u16, Vec<u8>>,
    /// Payload length, once the last fragment (more-fragments clear) arrived.
    total: Option<usize>,
    bytes: usize,
    deadline: Instant,
}

impl Datagram {
    fn overlaps(&self, offset: usize, len: usize) -> bool {
        let end = offset + len;
        self.pieces
            .iter()
            .any(|(o, p)| usize::from(*o) < end && usize::from(*o) + p.len() > offset)
    }

    /// The whole payload, if every byte up to the end arrived.
    fn complete(&self) -> bool {
        let (Some(total), Some(_)) = (self.total, &self.header) else {
            return false;
        };
        let mut next = 0usize;
        for (offset, piece) in &self.pieces {
            if usize::from(*offset) != next {
                return false;
            }
            next += piece.len();
        }
        next == total
    }
}

/// Datagrams in reassembly.
#[derive(Debug)]
pub struct Reassembler {
    config: ReassemblyConfig,
    datagrams: BTreeMap<Key, Datagram>,
    bytes: usize,
}

impl Reassembler {
    pub fn new(config: ReassemblyConfig) -> Self {
        Reassembler {
            config,
            datagrams: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Datagrams in reassembly now.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Fragment bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes one fragment (an IPv4 packet with more-fragments set or a
    /// non-zero offset). Returns the whole datagram as one IPv4 packet
    /// (the first fragment's header, unfragmented, lengths and checksum
    /// set) when this fragment completed it.
    pub fn push(
        &mut self,
        now: Instant,
        packet: &[u8],
    ) -> Result<Option<Vec<u8>>, ReassemblyError> {
        let view = Ipv4Packet::new_checked(packet).map_err(|_| ReassemblyError::Malformed)?;
        if !view.is_fragment() || !view.verify_checksum() {
            return Err(ReassemblyError::Malformed);
        }
        let header_len = view.header_len();
        let total_len = usize::from(view.total_len());
        let payload = packet
            .get(header_len..total_len)
            .ok_or(ReassemblyError::Malformed)?;
        let offset = usize::from(view.frag_offset());
        let more = view.more_frags();
        // Every fragment but the last carries a multiple of 8 bytes.
        if payload.is_empty() || (more && payload.len() % 8 != 0) {
            return Err(ReassemblyError::Malformed);
        }
        if header_len + offset + payload.len() > usize::from(u16::MAX) {
            self.forget_key(&key_of(&view));
            return Err(ReassemblyError::TooBig);
        }
        let key = key_of(&view);
        if !self.datagrams.contains_key(&key) {
            if self.datagrams.len() >= self.config.max_datagrams {
                return Err(ReassemblyError::Full);
            }
            self.datagrams.insert(
                key,
                Datagram {
                    header: None,
                    pieces: BTreeMap::new(),
                    total: None,
                    bytes: 0,
                    deadline: now + self.config.timeout,
                },
            );
        }
        if self.bytes + payload.len() > self.config.max_bytes {
            self.forget_key(&key);
            return Err(ReassemblyError::Full);
        }
        let Some(d) = self.datagrams.get_mut(&key) else {
            return Err(ReassemblyError::Full);
        };
        let end = offset + payload.len();
        let bad_end = match d.total {
            // A second last fragment, or data beyond the known end.
            Some(total) => !more && end != total || end > total,
            None => {
                !more
                    && d.pieces
                        .iter()
                        .any(|(o, p)| usize::from(*o) + p.len() > end)
            }
        };
        if bad_end || d.overlaps(offset, payload.len()) {
            self.forget_key(&key);
            return Err(ReassemblyError::Overlap);
        }
        if !more {
            d.total = Some(end);
        }
        if offset == 0 {
            d.header = Some(packet[..header_len].to_vec());
        }
        let offset16 = u16::try_from(offset).map_err(|_| ReassemblyError::TooBig)?;
        d.pieces.insert(offset16, payload.to_vec());
        d.bytes += payload.len();
        self.bytes += payload.len();
        if !d.complete() {
            return Ok(None);
        }
        let Some(d) = self.datagrams.remove(&key) else {
            return Ok(None);
        };
        self.bytes -= d.bytes;
        Ok(Some(assemble(d)))
    }

    /// Forgets the datagrams not completed in time; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let late: Vec<Key> = self
            .datagrams
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in &late {
            self.forget_key(key);
        }
        late.len()
    }

    /// When the oldest datagram in reassembly times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.datagrams.values().map(|d| d.deadline).min()
    }

    fn forget_key(&mut self, key: &Key) {
        if let Some(d) = self.datagrams.remove(key) {
            self.bytes -= d.bytes;
        }
    }
}

fn key_of<T: AsRef<[u8]>>(view: &Ipv4Packet<T>) -> Key {
    Key {
        src: view.src_addr(),
        dst: view.dst_addr(),
        protocol: view.protocol(),
        ident: view.ident(),
    }
}

/// The first fragment's header (flags and offset cleared, total length
/// and checksum new) and every piece in order. `complete` held.
fn assemble(d: Datagram) -> Vec<u8> {
    let header = d.header.unwrap_or_default();
    let total = header.len() + d.total.unwrap_or(0);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header);
    for piece in d.pieces.into_values() {
        out.extend_from_slice(&piece);
    }
    let mut view = Ipv4Packet::new_unchecked(&mut out[..]);
    view.set_total_len(u16::try_from(total).unwrap_or(u16::MAX));
    view.set_unfragmented(false);
    view.fill_checksum();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_ipv4;

    fn t(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    /// A UDP datagram of `len` payload bytes, as one IPv4 packet.
    fn datagram(len: usize, ident: u16) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let p =
            etherparse::PacketBuilder::ipv4([10, 1, 0, 100], [198, 18, 0, 20], 64).udp(5000, 53);
        let mut out = Vec::new();
        p.write(&mut out, &payload).unwrap();
        out[4..6].copy_from_slice(&ident.to_be_bytes());
        out[6] = 0; // not don't-fragment (it is to be fragmented)
        let mut view = Ipv4Packet::new_unchecked(&mut out[..]);
        view.fill_checksum();
        out
    }

    /// Cuts an unfragmented packet into fragments of `size` payload bytes.
    fn fragments(packet: &[u8], size: usize) -> Vec<Vec<u8>> {
        let payload = &packet[20..];
        payload
            .chunks(size)
            .enumerate()
            .map(|(i, chunk)| {
                fragment(
                    packet,
                    (i * size) as u16,
                    chunk,
                    (i + 1) * size < payload.len(),
                )
            })
            .collect()
    }

    fn fragment(packet: &[u8], offset: u16, chunk: &[u8], more: bool) -> Vec<u8> {
        let mut f = packet[..20].to_vec();
        f.extend_from_slice(chunk);
        let total = f.len() as u16;
        f[2..4].copy_from_slice(&total.to_be_bytes());
        let flags = (offset / 8) | if more { 0x2000 } else { 0 };
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        let mut view = Ipv4Packet::new_unchecked(&mut f[..]);
        view.fill_checksum();
        f
    }

    #[test]
    fn fragments_in_any_order_give_back_the_datagram() {
        let whole = datagram(4000, 7);
        let mut frags = fragments(&whole, 1480);
        assert_eq!(frags.len(), 3);
        frags.swap(0, 2);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        assert_eq!(r.push(t(0), &frags[0]), Ok(None));
        assert_eq!(r.push(t(1), &frags[1]), Ok(None));
        let out = r.push(t(2), &frags[2]).unwrap().expect("complete");
        assert!(out == whole, "reassembled packet differs");
        assert!(parse_ipv4(&out).is_ok());
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn overlapping_or_inconsistent_fragments_drop_the_datagram() {
        let whole = datagram(3000, 9);
        let frags = fragments(&whole, 1480);
        let mut r = Reassembler::new(ReassemblyConfig::default());
        r.push(t(0), &frags[0]).unwrap();
        // A fragment that rewrites part of the first one.
        let overlap = fragment(&whole, 8, &whole[28..28 + 1480], true);
        assert_eq!(r.push(t(1), &overlap), Err(ReassemblyError::Overlap));
        assert!(r.is_empty());
        // Two different ends.
        let mut r = Reassembler::new(ReassemblyConfig::default());
        r.push(t(0), &frags[2]).unwrap();
        let other_end = fragment(&whole, 1480, &whole[20 + 1480..20 + 2960], false);
        assert_eq!(r.push(t(1), &other_end), Err(ReassemblyError::Overlap));
        // A duplicate is an overlap too.
        let mut r = Reassembler::new(ReassemblyConfig::default());
        r.push(t(0), &frags[0]).unwrap();
        assert_eq!(r.push(t(0), &frags[0]), Err(ReassemblyError::Overlap));
    }

    #[test]
    fn reassembly_is_bounded_and_forgets_late_datagrams() {
        let config = ReassemblyConfig {
            max_datagrams: 2,
            max_bytes: 4000,
            timeout: Duration::from_secs(5),
        };
        let mut r = Reassembler::new(config);
        for ident in 0..2 {
            let frags = fragments(&datagram(3000, ident), 1480);
            assert_eq!(r.push(t(0), &frags[0]), Ok(None));
        }
        let third = fragments(&datagram(3000, 2), 1480);
        assert_eq!(r.push(t(0), &third[0]), Err(ReassemblyError::Full));
        // Bytes: 2 x 1480 held; one more piece of 1480 exceeds 4000.
        let frags = fragments(&datagram(3000, 0), 1480);
        assert_eq!(r.push(t(0), &frags[1]), Err(ReassemblyError::Full));
        assert_eq!(r.len(), 1, "the datagram that hit the limit is dropped");
        assert_eq!(r.next_deadline(), Some(t(5000)));
        assert_eq!(r.expire(t(4999)), 0);
        assert_eq!(r.expire(t(5000)), 1);
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn junk_is_refused() {
        let mut r = Reassembler::new(ReassemblyConfig::default());
        let whole = datagram(100, 1);
        assert_eq!(
            r.push(t(0), &whole),
            Err(ReassemblyError::Malformed),
            "not a fragment"
        );
        assert_eq!(r.push(t(0), &[0x45, 0, 0]), Err(ReassemblyError::Malformed));
        let mut odd = fragment(&whole, 0, &whole[20..27], true);
        assert_eq!(
            r.push(t(0), &odd),
            Err(ReassemblyError::Malformed),
            "7 bytes, not last"
        );
        odd[10] ^= 1;
        assert_eq!(
            r.push(t(0), &odd),
            Err(ReassemblyError::Malformed),
            "bad checksum"
        );
        // Beyond 65535 bytes.
        let far = fragment(&whole, 65528, &whole[20..36], false);
        assert_eq!(r.push(t(0), &far), Err(ReassemblyError::TooBig));
        assert!(r.is_empty());
    }
}
