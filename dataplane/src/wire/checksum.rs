//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` while adding and folded once at the end.
//! A checksum *field* holds the one's complement of the folded sum; a packet
//! verifies when the folded sum over the data including the field is 0xFFFF.

use core::net::Ipv4Addr;

/// Adds the 16-bit big-endian words of `data` to `sum` (a trailing odd byte is
/// padded with zero). The result is unfolded: pass it to [`fold`].
pub fn add(mut sum: u64, data: &[u8]) -> u64 {
    // A 32-bit word is congruent to the sum of its two 16-bit halves modulo
    // 0xFFFF (2^16 = 1 mod 0xFFFF), so adding 4 bytes at a time is exact.
    // 65535 / 4 words of at most 2^32 each cannot overflow a u64.
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        if let &[a, b, c, d] = chunk {
            sum += u64::from(u32::from_be_bytes([a, b, c, d]));
        }
    }
    match *chunks.remainder() {
        [a] => sum += u64::from(u16::from_be_bytes([a, 0])),
        [a, b] => sum += u64::from(u16::from_be_bytes([a, b])),
        [a, b, c] => {
            sum += u64::from(u16::from_be_bytes([a, b])) + u64::from(u16::from_be_bytes([c, 0]))
        }
        _ => {}
    }
    sum
}

/// Folds a sum to 16 bits with end-around carry. The result is 0 only when
/// `sum` is 0; any other multiple of 0xFFFF folds to 0xFFFF.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    // The loop leaves sum <= 0xFFFF.
    u16::try_from(sum).unwrap_or(u16::MAX)
}

/// The checksum field value for `data` (whose own checksum field must be 0).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// Whether `data`, checksum field included, verifies.
pub fn verify(data: &[u8]) -> bool {
    fold(add(0, data)) == 0xFFFF
}

/// The unfolded sum of the IPv4 pseudo-header that TCP and UDP checksums cover
/// (RFC 9293 §3.1, RFC 768). `length` is the TCP segment or UDP datagram length.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    let sum = add(0, &src.octets());
    let sum = add(sum, &dst.octets());
    sum + u64::from(protocol) + u64::from(length)
}

/// Updates a checksum field after the 32-bit word `old` changed to `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`).
///
/// Done this way, a checksum that was correct stays correct and one that was
/// wrong stays wrong by the same amount. For a checksum that was computed in
/// full, the result is the one a full recomputation gives (never 0xFFFF); for
/// a field that held the other encoding of zero (0xFFFF instead of 0x0000) the
/// result is still valid but may come back in the other encoding.
pub fn update(field: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let [o0, o1, o2, o3] = old;
    let [n0, n1, n2, n3] = new;
    let sum = u64::from(!field)
        + u64::from(!u16::from_be_bytes([o0, o1]))
        + u64::from(!u16::from_be_bytes([o2, o3]))
        + u64::from(u16::from_be_bytes([n0, n1]))
        + u64::from(u16::from_be_bytes([n2, n3]));
    !fold(sum)
}

#[cfg(test)]
mod test {
    use super::*;

    /// A word-at-a-time reference, written the plain RFC 1071 way.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = match *pair {
                [a, b] => u16::from_be_bytes([a, b]),
                [a] => u16::from_be_bytes([a, 0]),
                _ => 0,
            };
            sum += u32::from(word);
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn matches_reference_for_every_length() {
        let mut rng = crate::testutil::Rng::new(7);
        for len in 0..300 {
            let data = rng.bytes(len);
            assert_eq!(checksum(&data), reference(&data), "len {len}");
        }
        let ones = [0xFFu8; 1501];
        assert_eq!(checksum(&ones), reference(&ones));
    }

    #[test]
    fn fold_keeps_zero_and_minus_zero_apart() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_FFFE), 0xFFFF);
        assert_eq!(fold(u64::MAX), 0xFFFF);
    }

    #[test]
    fn update_matches_recompute() {
        let mut rng = crate::testutil::Rng::new(11);
        for _ in 0..10_000 {
            let len = 4 + 2 * rng.below(30);
            let mut data = rng.bytes(len);
            data[0] |= 1; // a non-zero word, as every real header has
            let at = 2 * rng.below(data.len() / 2 - 1);
            data.truncate(at + 4 + 2 * rng.below(4));
            let field = checksum(&data);
            let old = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            let new = rng.array4();
            data[at..at + 4].copy_from_slice(&new);
            if data.iter().all(|&b| b == 0) {
                continue;
            }
            assert_eq!(update(field, old, new), checksum(&data));
        }
    }
}
