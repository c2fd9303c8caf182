//! IPv4 (RFC 791): packet view, representation, and option walker.

use core::net::Ipv4Addr;

use super::label::{self, Label};
use super::{checksum, read_u16, write_u16, WireError};

mod field {
    use crate::wire::Field;

    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const LENGTH: Field = 2..4;
    pub(super) const IDENT: Field = 4..6;
    pub(super) const FLG_OFF: Field = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Field = 10..12;
    pub(super) const SRC_ADDR: Field = 12..16;
    pub(super) const DST_ADDR: Field = 16..20;
}

/// Length of the IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Longest IPv4 header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DONT_FRAG: u16 = 0x4000;
const FLAG_MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1FFF;

/// Option type of End of Option List (RFC 791).
pub const OPTION_END: u8 = 0;
/// Option type of No Operation (RFC 791).
pub const OPTION_NOP: u8 = 1;

/// A zero-copy view of an IPv4 packet in a byte buffer.
///
/// Build it with [`Ipv4Packet::new_checked`] for any buffer from outside;
/// after that no accessor panics, and the payload accessors cover exactly the
/// bytes between the header and the total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without any check. Accessors then return zeroes or
    /// empty slices for fields the buffer does not hold; use this only for
    /// emission into a buffer of [`Ipv4Repr::buffer_len`] bytes or more.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Ipv4Packet::check`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check()?;
        Ok(packet)
    }

    /// Checks that the buffer holds an IPv4 header and the whole packet
    /// announced by its total length (trailing bytes are allowed).
    pub fn check(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion(self.version()));
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::BadTotalLength);
        }
        if total_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }

    fn addr(&self, field: super::Field) -> Ipv4Addr {
        match self.buffer.as_ref().get(field) {
            Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.byte(field::VER_IHL) >> 4
    }

    /// The header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.byte(field::VER_IHL) & 0x0F) * 4
    }

    /// The DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.byte(field::DSCP_ECN)
    }

    /// The total length field: header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// The don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DONT_FRAG != 0
    }

    /// The more-fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MORE_FRAGS != 0
    }

    /// The fragment offset, in bytes.
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// Whether this packet is a fragment of a larger datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// The time-to-live field.
    pub fn ttl(&self) -> u8 {
        self.byte(field::TTL)
    }

    /// The protocol field (see [`super::protocol`]).
    pub fn protocol(&self) -> u8 {
        self.byte(field::PROTOCOL)
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        self.addr(field::SRC_ADDR)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.addr(field::DST_ADDR)
    }

    /// The whole header, options included.
    pub fn header(&self) -> &[u8] {
        self.buffer.as_ref().get(..self.header_len()).unwrap_or(&[])
    }

    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..self.header_len())
            .unwrap_or(&[])
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_ref().get(range).unwrap_or(&[])
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        let header = self.header();
        !header.is_empty() && checksum::verify(header)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn set_byte(&mut self, at: usize, value: u8) {
        if let Some(byte) = self.buffer.as_mut().get_mut(at) {
            *byte = value;
        }
    }

    fn set_addr(&mut self, field: super::Field, addr: Ipv4Addr) {
        if let Some(bytes) = self.buffer.as_mut().get_mut(field) {
            bytes.copy_from_slice(&addr.octets());
        }
    }

    /// Sets version 4 and the header length in bytes (a multiple of 4,
    /// 20..=60; other values are rounded down and clamped).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = (header_len.clamp(HEADER_LEN, MAX_HEADER_LEN) / 4) as u8;
        self.set_byte(field::VER_IHL, 0x40 | ihl);
    }

    /// Sets the DSCP and ECN byte.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.set_byte(field::DSCP_ECN, value);
    }

    /// Sets the total length field.
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    /// Sets the flags and fragment offset: not a fragment, don't-fragment as
    /// given.
    pub fn set_unfragmented(&mut self, dont_frag: bool) {
        let value = if dont_frag { FLAG_DONT_FRAG } else { 0 };
        write_u16(self.buffer.as_mut(), field::FLG_OFF, value);
    }

    /// Sets the time-to-live field.
    pub fn set_ttl(&mut self, value: u8) {
        self.set_byte(field::TTL, value);
    }

    /// Sets the protocol field.
    pub fn set_protocol(&mut self, value: u8) {
        self.set_byte(field::PROTOCOL, value);
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the source address (the checksum is not updated).
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.set_addr(field::SRC_ADDR, addr);
    }

    /// Sets the destination address (the checksum is not updated).
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.set_addr(field::DST_ADDR, addr);
    }

    /// Computes the header checksum and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::checksum(self.header());
        self.set_checksum(value);
    }

    /// The option bytes, mutably.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let range = HEADER_LEN..self.header_len();
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }
}

/// One entry of an IPv4 option list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Option<'a> {
    /// Offset of the option from the start of the option bytes.
    pub offset: usize,
    /// The option type byte.
    pub kind: u8,
    /// The whole option: type byte, and for all but NOP the length byte and
    /// the data.
    pub bytes: &'a [u8],
}

/// Walks an IPv4 option list, stopping at End of Option List. Yields NOPs
/// too. A malformed entry yields `Err(WireError::BadOption)` once, then the
/// walk ends.
#[derive(Debug, Clone)]
pub struct Ipv4Options<'a> {
    options: &'a [u8],
    offset: usize,
}

impl<'a> Ipv4Options<'a> {
    /// Walks `options`, the bytes between the fixed header and the payload.
    pub const fn new(options: &'a [u8]) -> Self {
        Self { options, offset: 0 }
    }
}

impl<'a> Iterator for Ipv4Options<'a> {
    type Item = Result<Ipv4Option<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.offset;
        let rest = self.options.get(offset..).unwrap_or(&[]);
        let (kind, len) = match *rest {
            [] | [OPTION_END, ..] => {
                self.offset = self.options.len();
                return None;
            }
            [OPTION_NOP, ..] => (OPTION_NOP, 1),
            [kind, len, ..] if (2..=rest.len()).contains(&usize::from(len)) => {
                (kind, usize::from(len))
            }
            // A missing length byte, a length below 2, or one past the end.
            _ => {
                self.offset = self.options.len();
                return Some(Err(WireError::BadOption));
            }
        };
        self.offset = offset + len;
        let bytes = rest.get(..len).unwrap_or(&[]);
        Some(Ok(Ipv4Option {
            offset,
            kind,
            bytes,
        }))
    }
}

/// The validated, high-level form of an IPv4 header of a packet the dataplane
/// handles: unfragmented, options limited to a connection label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Protocol number (see [`super::protocol`]).
    pub protocol: u8,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// The connection label carried in the options, if any.
    pub label: Option<Label>,
}

impl Ipv4Repr {
    /// Parses a checked packet: verifies the header checksum and the option
    /// list (other options are tolerated and not kept), refuses fragments.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        packet.check()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadHeaderChecksum);
        }
        let label = label::find_label(packet.options())?;
        if packet.is_fragment() {
            return Err(WireError::Fragment);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            label,
        })
    }

    /// Length of the header that [`Ipv4Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        match self.label {
            Some(_) => HEADER_LEN + label::LABEL_OPTION_SPACE,
            None => HEADER_LEN,
        }
    }

    /// Writes the header (identification 0, don't-fragment set, checksum
    /// filled) into a buffer of at least `buffer_len() + payload_len` bytes.
    /// The payload is the caller's to write. A total length above 65535 is
    /// clamped.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        let header_len = self.buffer_len();
        packet.set_version_and_header_len(header_len);
        packet.set_dscp_ecn(0);
        let total_len = header_len.saturating_add(self.payload_len);
        packet.set_total_len(u16::try_from(total_len).unwrap_or(u16::MAX));
        packet.set_ident(0);
        packet.set_unfragmented(true);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        if let Some(label) = self.label {
            let option = label::option_bytes(label);
            if let Some(options) = packet.options_mut().get_mut(..option.len()) {
                options.copy_from_slice(&option);
            }
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod test {
    use super::*;

    // An ICMP echo request 10.0.0.1 -> 10.0.0.2 (id 1, seq 0), as Linux sends it.
    const PING: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x6b, 0x3a, 0x40, 0x00, 0x40, 0x01, 0xbb, 0xa4, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02, 0x08, 0x00, 0xf7, 0xfe, 0x00, 0x01, 0x00, 0x00,
    ];

    #[test]
    fn reads_fields() {
        let packet = Ipv4Packet::new_checked(&PING[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 28);
        assert_eq!(packet.ident(), 0x6b3a);
        assert!(packet.dont_frag());
        assert!(!packet.is_fragment());
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), super::super::protocol::ICMP);
        assert_eq!(packet.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(packet.payload().len(), 8);
        assert!(packet.options().is_empty());
        assert!(
            packet.verify_checksum(),
            "checksum {:#06x}",
            packet.checksum()
        );
    }

    #[test]
    fn check_rejects_each_structural_fault() {
        type Fault = fn(&mut Vec<u8>);
        let cases: [(Fault, WireError); 6] = [
            (|p| p.truncate(19), WireError::Truncated),
            (|p| p[0] = 0x65, WireError::BadVersion(6)),
            (|p| p[0] = 0x44, WireError::BadHeaderLength),
            (|p| p[0] = 0x48, WireError::Truncated),
            (|p| p[3] = 19, WireError::BadTotalLength),
            (|p| p[3] = 29, WireError::Truncated),
        ];
        for (fault, expected) in cases {
            let mut packet = PING.to_vec();
            fault(&mut packet);
            assert_eq!(Ipv4Packet::new_checked(&packet[..]), Err(expected));
        }
    }

    #[test]
    fn unchecked_accessors_do_not_panic() {
        for len in 0..HEADER_LEN {
            let mut buf = vec![0xFF; len];
            let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
            let _ = (packet.src_addr(), packet.payload(), packet.options());
            let _ = (
                packet.total_len(),
                packet.verify_checksum(),
                packet.header(),
            );
            packet.fill_checksum();
            packet.set_dst_addr(Ipv4Addr::LOCALHOST);
            let _ = packet.payload_mut();
        }
    }

    #[test]
    fn options_walk() {
        // NOP, a 4-byte option, NOP, END, junk after END.
        let options = [1, 0x88, 4, 0xAB, 0xCD, 1, 0, 0x55];
        let walked: Vec<_> = Ipv4Options::new(&options).collect();
        assert_eq!(walked.len(), 3);
        let Ok(stream_id) = walked[1] else {
            panic!("{walked:?}")
        };
        assert_eq!((stream_id.offset, stream_id.kind), (1, 0x88));
        assert_eq!(stream_id.bytes, &[0x88, 4, 0xAB, 0xCD]);
        assert!(walked.iter().all(Result::is_ok));
    }

    #[test]
    fn options_walk_rejects_malformed() {
        for options in [&[0x88][..], &[0x88, 1], &[0x88, 0], &[1, 0x88, 4, 0]] {
            let walked: Vec<_> = Ipv4Options::new(options).collect();
            assert_eq!(
                walked.last(),
                Some(&Err(WireError::BadOption)),
                "{options:?}"
            );
        }
    }

    #[test]
    fn repr_roundtrip() {
        for label in [None, Label::new(0xDEAD_BEEF)] {
            let repr = Ipv4Repr {
                src_addr: Ipv4Addr::new(10, 1, 0, 5),
                dst_addr: Ipv4Addr::new(10, 2, 0, 9),
                protocol: super::super::protocol::UDP,
                payload_len: 12,
                ttl: 63,
                label,
            };
            let mut buf = vec![0u8; repr.buffer_len() + repr.payload_len];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
            // etherparse agrees on the header.
            let (header, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
            assert_eq!(header.calc_header_checksum(), header.header_checksum);
            assert_eq!(header.source, repr.src_addr.octets());
        }
    }

    #[test]
    fn repr_refuses_fragments_and_bad_checksums() {
        let mut packet = PING.to_vec();
        packet[11] ^= 1;
        let view = Ipv4Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&view), Err(WireError::BadHeaderChecksum));

        let mut packet = PING.to_vec();
        packet[6] |= 0x20; // more fragments
        let mut view = Ipv4Packet::new_checked(&mut packet[..]).unwrap();
        view.fill_checksum();
        assert_eq!(Ipv4Repr::parse(&view), Err(WireError::Fragment));
    }
}
