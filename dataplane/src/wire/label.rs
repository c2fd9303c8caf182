//! Connection labels (paper §5, DESIGN.md §3.3) and their **candidate** wire
//! format.
//!
//! At connection setup the proxy and the hosting server each choose a label
//! for the connection and exchange them. Once the session has migrated, every
//! packet between the two carries the *peer's* label, so the receiver can find
//! the VNIC a packet belongs to even when an address tuple is reused.
//!
//! # Candidate format
//!
//! The label travels in an IPv4 option, an RFC 4727 experimental one:
//!
//! ```text
//!  offset  0     1     2     3     4     5     6     7
//!        +-----+-----+-----+-----+-----+-----+-----+-----+
//!        | NOP | NOP | 0x9E| 6   |   label (32 bits, BE) |
//!        +-----+-----+-----+-----+-----+-----+-----+-----+
//! ```
//!
//! - Type 0x9E: copied flag 1 (every fragment carries it), class 0, number 30
//!   (RFC 4727 "EXP"). Length 6: type, length and a 32-bit big-endian label.
//! - Two NOPs pad it to 8 bytes, so the header stays a multiple of 4 bytes;
//!   they come first so that the label itself is 4-byte aligned.
//! - [`insert_label`] puts the 8 bytes at the start of the option list, so the
//!   header grows by exactly 8 bytes and [`strip_label`] restores the packet.
//!   On receive the option is found anywhere in a well-formed option list.
//! - Label 0 is reserved and invalid on the wire ([`WireError::ZeroLabel`]).
//! - Only the IPv4 header changes: IHL, total length and header checksum. The
//!   TCP/UDP checksums stay valid because the pseudo-header holds the segment
//!   length, not the option bytes.
//!
//! This format is a candidate. It is to be confirmed by forwarding tests
//! through Linux network namespaces (routers must forward the option unchanged
//! between the proxy box and the session servers); `dataplane/LABELS.md`
//! records the outcome and is the reference for the wire format. Experimental
//! option numbers (RFC 3692) are fine on our own subnets, not on the Internet,
//! which labelled packets never cross.

use core::fmt;
use core::num::NonZeroU32;

use super::ipv4::{self, Ipv4Options, Ipv4Packet, OPTION_NOP};
use super::WireError;

/// The option type of a label: copied, class 0, number 30 (RFC 4727).
pub const LABEL_OPTION_TYPE: u8 = 0x9E;
/// The option length of a label: type, length, 4 bytes of label.
pub const LABEL_OPTION_LEN: u8 = 6;
/// How many bytes a label adds to an IPv4 header (option plus padding).
pub const LABEL_OPTION_SPACE: usize = 8;

/// A connection label: any 32-bit value but 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(NonZeroU32);

impl Label {
    /// The label `value`, or `None` for the reserved value 0.
    pub const fn new(value: u32) -> Option<Self> {
        match NonZeroU32::new(value) {
            Some(value) => Some(Self(value)),
            None => None,
        }
    }

    /// The label's value (never 0).
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.get())
    }
}

/// Why a label could not be inserted or stripped. The packet is left
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// The packet is not a well-formed IPv4 packet (header checksum and
    /// option list included).
    #[error("malformed packet: {0}")]
    Malformed(#[from] WireError),
    /// There are fewer than 8 bytes before the packet in the buffer.
    #[error("no headroom for a label")]
    NoHeadroom,
    /// The packet already carries a label.
    #[error("packet already carries label {0}")]
    AlreadyLabelled(Label),
    /// The header has no room for 8 more option bytes (IHL would pass 15).
    #[error("ipv4 options full")]
    OptionsFull,
    /// The total length would pass 65535 bytes.
    #[error("packet too long for a label")]
    TooLong,
}

/// The 8 bytes [`insert_label`] writes.
pub(crate) const fn option_bytes(label: Label) -> [u8; LABEL_OPTION_SPACE] {
    let [a, b, c, d] = label.get().to_be_bytes();
    [
        OPTION_NOP,
        OPTION_NOP,
        LABEL_OPTION_TYPE,
        LABEL_OPTION_LEN,
        a,
        b,
        c,
        d,
    ]
}

/// Where a label sits in an option list.
struct Located {
    label: Label,
    /// Offset of the label option in the option bytes.
    offset: usize,
    /// NOPs right before it that belong to it (0..=2).
    padding: usize,
}

fn locate(options: &[u8]) -> Result<Option<Located>, WireError> {
    let mut found = None;
    let mut nops = 0;
    for option in Ipv4Options::new(options) {
        let option = option?;
        match option.kind {
            OPTION_NOP => nops += 1,
            LABEL_OPTION_TYPE => {
                let &[_, _, a, b, c, d] = option.bytes else {
                    return Err(WireError::BadLabel);
                };
                if found.is_some() {
                    return Err(WireError::BadLabel);
                }
                let label =
                    Label::new(u32::from_be_bytes([a, b, c, d])).ok_or(WireError::ZeroLabel)?;
                found = Some(Located {
                    label,
                    offset: option.offset,
                    padding: nops.min(2),
                });
                nops = 0;
            }
            _ => nops = 0,
        }
    }
    Ok(found)
}

/// Finds the label in an IPv4 option list (the bytes between the fixed header
/// and the payload), checking the whole list. Other options are tolerated.
pub fn find_label(options: &[u8]) -> Result<Option<Label>, WireError> {
    Ok(locate(options)?.map(|located| located.label))
}

/// Checks what insertion and stripping rely on; returns the view and where
/// the label is.
fn inspect(packet: &[u8]) -> Result<(Ipv4Packet<&[u8]>, Option<Located>), WireError> {
    let view = Ipv4Packet::new_checked(packet)?;
    if !view.verify_checksum() {
        return Err(WireError::BadHeaderChecksum);
    }
    let located = locate(view.options())?;
    Ok((view, located))
}

/// Writes a rebuilt header at `buf[start..]`: sets IHL and total length and
/// fills the checksum. `header` holds the fixed header and the options.
fn write_header(buf: &mut [u8], start: usize, header: &[u8], total_len: usize) {
    let Some(dst) = buf.get_mut(start..start + header.len()) else {
        return;
    };
    dst.copy_from_slice(header);
    let mut view = Ipv4Packet::new_unchecked(dst);
    view.set_version_and_header_len(header.len());
    view.set_total_len(u16::try_from(total_len).unwrap_or(u16::MAX));
    view.fill_checksum();
}

/// Inserts `label` into the IPv4 packet at `buf[start..]`, using 8 bytes of
/// headroom before it: only the header moves. Returns where the packet now
/// starts (`start - 8`).
///
/// The packet must be well-formed (header checksum and option list) and not
/// labelled yet. The header grows by 8 bytes; its checksum is recomputed. On
/// error `buf` is unchanged.
pub fn insert_label(buf: &mut [u8], start: usize, label: Label) -> Result<usize, LabelError> {
    let packet = buf.get(start..).ok_or(WireError::Truncated)?;
    let (view, located) = inspect(packet)?;
    if let Some(located) = located {
        return Err(LabelError::AlreadyLabelled(located.label));
    }
    let header_len = view.header_len() + LABEL_OPTION_SPACE;
    if header_len > ipv4::MAX_HEADER_LEN {
        return Err(LabelError::OptionsFull);
    }
    let total_len = usize::from(view.total_len()) + LABEL_OPTION_SPACE;
    if total_len > usize::from(u16::MAX) {
        return Err(LabelError::TooLong);
    }
    let new_start = start
        .checked_sub(LABEL_OPTION_SPACE)
        .ok_or(LabelError::NoHeadroom)?;

    let mut header = [0u8; ipv4::MAX_HEADER_LEN];
    let (fixed, rest) = header.split_at_mut(ipv4::HEADER_LEN);
    let (option, old_options) = rest.split_at_mut(LABEL_OPTION_SPACE);
    fixed.copy_from_slice(view.header().get(..ipv4::HEADER_LEN).unwrap_or(&[0; 20]));
    option.copy_from_slice(&option_bytes(label));
    let old = view.options();
    if let Some(dst) = old_options.get_mut(..old.len()) {
        dst.copy_from_slice(old);
    }
    write_header(
        buf,
        new_start,
        header.get(..header_len).unwrap_or(&[]),
        total_len,
    );
    Ok(new_start)
}

/// Removes the label from the IPv4 packet at `buf[start..]`: only the header
/// moves, towards the payload. Returns the label and where the packet now
/// starts, or `None` (and leaves `buf` unchanged) if there is no label.
///
/// The label option goes, with up to two NOPs right before it; what remains of
/// the option list is padded with End of Option List to a multiple of 4. For a
/// label that [`insert_label`] put there this gives back the packet as it was
/// (up to the encoding of a zero header checksum: see
/// [`checksum::update`](super::checksum::update)). On error `buf` is
/// unchanged.
pub fn strip_label(buf: &mut [u8], start: usize) -> Result<Option<(Label, usize)>, LabelError> {
    let packet = buf.get(start..).ok_or(WireError::Truncated)?;
    let (view, located) = inspect(packet)?;
    let Some(located) = located else {
        return Ok(None);
    };
    let options = view.options();
    let cut_start = located.offset - located.padding;
    let cut_end = located.offset + usize::from(LABEL_OPTION_LEN);
    let (before, after) = (
        options.get(..cut_start).unwrap_or(&[]),
        options.get(cut_end..).unwrap_or(&[]),
    );
    let kept = before.len() + after.len();
    let header_len = ipv4::HEADER_LEN + kept.div_ceil(4) * 4;
    let shrink = view.header_len() - header_len;
    let total_len = usize::from(view.total_len()) - shrink;

    let mut header = [0u8; ipv4::MAX_HEADER_LEN];
    let (fixed, rest) = header.split_at_mut(ipv4::HEADER_LEN);
    fixed.copy_from_slice(view.header().get(..ipv4::HEADER_LEN).unwrap_or(&[0; 20]));
    if let Some(dst) = rest.get_mut(..before.len()) {
        dst.copy_from_slice(before);
    }
    if let Some(dst) = rest.get_mut(before.len()..kept) {
        dst.copy_from_slice(after);
    }
    let new_start = start + shrink;
    write_header(
        buf,
        new_start,
        header.get(..header_len).unwrap_or(&[]),
        total_len,
    );
    Ok(Some((located.label, new_start)))
}

/// [`insert_label`] for a packet that fills a `Vec` (moves the whole packet).
pub fn push_label(packet: &mut Vec<u8>, label: Label) -> Result<(), LabelError> {
    // Check first, so that a refused packet is left as it was.
    let (_, located) = inspect(packet)?;
    if let Some(located) = located {
        return Err(LabelError::AlreadyLabelled(located.label));
    }
    packet.splice(0..0, [0; LABEL_OPTION_SPACE]);
    match insert_label(packet, LABEL_OPTION_SPACE, label) {
        Ok(_) => Ok(()),
        Err(error) => {
            packet.drain(..LABEL_OPTION_SPACE);
            Err(error)
        }
    }
}

/// [`strip_label`] for a packet that fills a `Vec`.
pub fn pop_label(packet: &mut Vec<u8>) -> Result<Option<Label>, LabelError> {
    let Some((label, start)) = strip_label(packet, 0)? else {
        return Ok(None);
    };
    packet.drain(..start);
    Ok(Some(label))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::testutil::{self, Rng};
    use crate::wire::parse_ipv4;

    fn label(value: u32) -> Label {
        Label::new(value).unwrap()
    }

    #[test]
    fn zero_is_not_a_label() {
        assert_eq!(Label::new(0), None);
        assert_eq!(label(7).get(), 7);
        assert_eq!(label(0xDEAD_BEEF).to_string(), "0xdeadbeef");
    }

    #[test]
    fn find_in_option_lists() {
        let l = [0x12, 0x34, 0x56, 0x78];
        type Case<'a> = (&'a [u8], Result<Option<u32>, WireError>);
        let cases: [Case; 10] = [
            (&[], Ok(None)),
            (&[1, 1, 1, 0], Ok(None)),
            (
                &[1, 1, 0x9E, 6, l[0], l[1], l[2], l[3]],
                Ok(Some(0x1234_5678)),
            ),
            // After another option, no padding, END after it.
            (
                &[0x88, 4, 0, 1, 0x9E, 6, l[0], l[1], l[2], l[3], 0, 0],
                Ok(Some(0x1234_5678)),
            ),
            // After END it is not an option.
            (&[0, 0, 0x9E, 6, l[0], l[1], l[2], l[3]], Ok(None)),
            (&[0x9E, 6, 0, 0, 0, 0, 1, 1], Err(WireError::ZeroLabel)),
            (&[0x9E, 4, 0, 0], Err(WireError::BadLabel)),
            (&[0x9E, 8, 1, 2, 3, 4, 5, 6], Err(WireError::BadLabel)),
            (
                &[0x9E, 6, 1, 2, 3, 4, 0x9E, 6, 1, 2, 3, 4],
                Err(WireError::BadLabel),
            ),
            (&[1, 1, 0x9E, 6, 1, 2, 3], Err(WireError::BadOption)),
        ];
        for (options, expected) in cases {
            let found = find_label(options).map(|l| l.map(Label::get));
            assert_eq!(found, expected, "{options:?}");
        }
    }

    #[test]
    fn insert_then_strip_restores_random_packets() {
        let mut rng = Rng::new(3);
        for _ in 0..2_000 {
            let original = testutil::random_packet(&mut rng);
            if parse_ipv4(&original).is_ok_and(|info| info.label.is_some()) {
                continue;
            }
            let value = label(rng.next_u32() | 1);
            let mut buf = vec![0xAA; LABEL_OPTION_SPACE];
            buf.extend_from_slice(&original);

            let start = insert_label(&mut buf, LABEL_OPTION_SPACE, value).unwrap();
            assert_eq!(start, 0);
            let labelled = buf.clone();
            let info = parse_ipv4(&labelled).unwrap();
            let before = parse_ipv4(&original).unwrap();
            assert_eq!(info.label, Some(value));
            assert_eq!(info.ip_header_len, before.ip_header_len + 8);
            assert_eq!(
                (info.src_addr, info.transport),
                (before.src_addr, before.transport)
            );
            // etherparse sees a valid header with our option in it.
            let (header, _) = etherparse::Ipv4Header::from_slice(&labelled).unwrap();
            assert_eq!(header.calc_header_checksum(), header.header_checksum);
            assert_eq!(&header.options.as_slice()[..8], &option_bytes(value));

            assert_eq!(strip_label(&mut buf, 0), Ok(Some((value, 8))));
            assert_eq!(&buf[8..], &original[..]);

            let mut vec = original.clone();
            push_label(&mut vec, value).unwrap();
            assert_eq!(vec, labelled);
            assert_eq!(pop_label(&mut vec), Ok(Some(value)));
            assert_eq!(vec, original);
        }
    }

    #[test]
    fn strip_a_label_placed_elsewhere() {
        // A stream-id option, then a label without padding: the header shrinks
        // by 4 and the rest is padded with END.
        let value = label(0xCAFE_F00D);
        let mut options = vec![0x88, 4, 0, 7, 0x9E, 6];
        options.extend_from_slice(&value.get().to_be_bytes());
        options.extend_from_slice(&[1, 0]);
        let packet = testutil::udp_packet_with_options(&options, b"hello");
        assert_eq!(parse_ipv4(&packet).unwrap().label, Some(value));

        let mut buf = packet.clone();
        assert_eq!(strip_label(&mut buf, 0), Ok(Some((value, 4))));
        let stripped = &buf[4..];
        let info = parse_ipv4(stripped).unwrap();
        assert_eq!(info.label, None);
        assert_eq!(info.ip_header_len, 28);
        assert_eq!(&stripped[20..28], &[0x88, 4, 0, 7, 1, 0, 0, 0]);
        assert_eq!(&stripped[28..], &packet[32..]);
    }

    #[test]
    fn refusals_leave_the_buffer_alone() {
        let mut rng = Rng::new(5);
        let packet = testutil::udp_packet_with_options(&[], b"x");

        let mut buf = packet.clone();
        assert_eq!(
            insert_label(&mut buf, 0, label(1)),
            Err(LabelError::NoHeadroom)
        );
        assert_eq!(
            insert_label(&mut buf, 100, label(1)),
            Err(WireError::Truncated.into())
        );
        assert_eq!(buf, packet);

        let labelled = testutil::udp_packet_with_options(&option_bytes(label(9)), b"x");
        let mut buf = [vec![0; 8], labelled.clone()].concat();
        assert_eq!(
            insert_label(&mut buf, 8, label(1)),
            Err(LabelError::AlreadyLabelled(label(9)))
        );
        let mut vec = labelled.clone();
        assert_eq!(
            push_label(&mut vec, label(1)),
            Err(LabelError::AlreadyLabelled(label(9)))
        );
        assert_eq!(vec, labelled);

        let full = testutil::udp_packet_with_options(&[1; 36], b"x");
        let mut buf = [vec![0; 8], full.clone()].concat();
        assert_eq!(
            insert_label(&mut buf, 8, label(1)),
            Err(LabelError::OptionsFull)
        );

        let mut long = testutil::udp_packet_with_options(&[], &vec![0; 65_500]);
        let mut vec = long.clone();
        assert_eq!(push_label(&mut vec, label(1)), Err(LabelError::TooLong));
        assert_eq!(vec, long);

        long[10] ^= 0xFF;
        assert_eq!(
            pop_label(&mut long),
            Err(LabelError::Malformed(WireError::BadHeaderChecksum))
        );

        for _ in 0..2_000 {
            let len = rng.below(80);
            let junk = rng.bytes(len);
            let mut buf = junk.clone();
            let _ = strip_label(&mut buf, 0);
            let _ = insert_label(&mut buf, rng.below(16), label(1));
            let mut vec = junk.clone();
            if push_label(&mut vec, label(2)).is_err() {
                assert_eq!(vec, junk);
            }
        }
    }
}
