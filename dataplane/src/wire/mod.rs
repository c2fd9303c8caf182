//! Packet formats, sans-I/O, in the style of `smoltcp::wire`.
//!
//! Two levels, as in smoltcp:
//!
//! - A *packet view* such as [`Ipv4Packet<T: AsRef<[u8]>>`](Ipv4Packet) reads
//!   and writes fields in place, without copying. [`Ipv4Packet::new_checked`]
//!   is mandatory for untrusted input: after it, no accessor panics.
//! - A *representation* such as [`Ipv4Repr`] is the validated, high-level form,
//!   with `parse` (from a checked view), `buffer_len` and `emit`.
//!
//! The dataplane itself mostly needs neither: [`parse_ipv4`] checks a whole
//! packet (IPv4 + TCP/UDP/ICMP, checksums included) in one pass and returns a
//! [`PacketInfo`] with what forwarding decisions need. Every way a packet can be
//! refused is its own [`WireError`] variant, so drops can be counted by reason.
//!
//! Connection labels and their candidate IPv4 option format are in [`label`].

pub mod checksum;
mod classify;
pub mod ipv4;
pub mod label;
pub mod reassembly;
pub mod vnet;

pub use classify::{parse_ipv4, parse_ipv4_partial, PacketInfo, TcpFlags, Transport};
pub use ipv4::{Ipv4Option, Ipv4Options, Ipv4Packet, Ipv4Repr};
pub use label::{Label, LabelError};

/// A byte range of a header field.
type Field = core::ops::Range<usize>;

/// IP protocol numbers the dataplane handles.
pub mod protocol {
    /// ICMP (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
}

/// TCP header layout (only what the dataplane touches in place).
pub(crate) mod tcp {
    use super::Field;

    pub(crate) const CHECKSUM: Field = 16..18;
}

/// UDP header layout (only what the dataplane touches in place).
pub(crate) mod udp {
    use super::Field;

    pub(crate) const CHECKSUM: Field = 6..8;
    pub(crate) const HEADER_LEN: usize = 8;
}

/// Why a packet was refused. One variant per reason: the dataplane counts
/// drops by [`WireError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the IPv4 header or before the IPv4 total length.
    #[error("packet truncated")]
    Truncated,
    /// The version field is not 4.
    #[error("ip version {0} is not 4")]
    BadVersion(u8),
    /// IHL is below 5 (a header shorter than 20 bytes).
    #[error("ipv4 header length below 20 bytes")]
    BadHeaderLength,
    /// The total length is below the header length or does not match the
    /// buffer.
    #[error("ipv4 total length does not match the header or the buffer")]
    BadTotalLength,
    /// The IPv4 header checksum does not verify.
    #[error("bad ipv4 header checksum")]
    BadHeaderChecksum,
    /// The IPv4 option list is malformed (an option's length byte is missing,
    /// below 2, or runs past the header).
    #[error("malformed ipv4 option list")]
    BadOption,
    /// A connection label option has the wrong length or appears twice.
    #[error("malformed connection label option")]
    BadLabel,
    /// A connection label option carries the reserved label 0.
    #[error("connection label 0 is reserved")]
    ZeroLabel,
    /// The packet is a fragment (more-fragments set or a non-zero offset).
    #[error("ipv4 fragment")]
    Fragment,
    /// The protocol is not TCP, UDP or ICMP.
    #[error("unsupported ip protocol {0}")]
    UnsupportedProtocol(u8),
    /// The IP payload is shorter than the TCP/UDP/ICMP header it must hold.
    #[error("transport header truncated")]
    TruncatedTransport,
    /// The TCP data offset is below 5.
    #[error("tcp data offset below 5")]
    BadTcpDataOffset,
    /// The UDP length field does not match the IP payload length.
    #[error("udp length does not match the ip payload")]
    BadUdpLength,
    /// The TCP, UDP or ICMP checksum does not verify.
    #[error("bad transport checksum")]
    BadTransportChecksum,
}

impl WireError {
    /// A short, stable, snake_case name for metric labels
    /// (`mobidesk_dataplane_dropped_packets_total{reason="..."}`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadVersion(_) => "bad_version",
            Self::BadHeaderLength => "bad_header_length",
            Self::BadTotalLength => "bad_total_length",
            Self::BadHeaderChecksum => "bad_header_checksum",
            Self::BadOption => "bad_option",
            Self::BadLabel => "bad_label",
            Self::ZeroLabel => "zero_label",
            Self::Fragment => "fragment",
            Self::UnsupportedProtocol(_) => "unsupported_protocol",
            Self::TruncatedTransport => "truncated_transport",
            Self::BadTcpDataOffset => "bad_tcp_data_offset",
            Self::BadUdpLength => "bad_udp_length",
            Self::BadTransportChecksum => "bad_transport_checksum",
        }
    }
}

/// Reads a big-endian `u16` at `field`, or 0 if the buffer is too short.
/// Callers check lengths first; this only keeps out-of-range reads panic-free.
pub(crate) fn read_u16(buf: &[u8], field: Field) -> u16 {
    match buf.get(field) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

/// Writes a big-endian `u16` at `field`; does nothing if the buffer is too
/// short (callers check lengths first).
pub(crate) fn write_u16(buf: &mut [u8], field: Field, value: u16) {
    if let Some(bytes) = buf.get_mut(field) {
        if bytes.len() == 2 {
            bytes.copy_from_slice(&value.to_be_bytes());
        }
    }
}
