//! Integration tests of `mobidesk-dataplane`.
//!
//! `fuzz_regression` replays every file in `tests/data/fuzz_regression/`
//! through the fuzz oracles (the crate's `fuzzing` feature, enabled for tests
//! by the crate's dev-dependency on itself): inputs that once crashed a fuzz
//! target, plus hand-made tricky ones. File names start with the target:
//! `parse-*` or `rewrite-*`; other files go through both oracles.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use mobidesk_dataplane::fuzzing::{parse_oracle, rewrite_oracle};
use mobidesk_dataplane::rewrite::{Endpoint, SessionAddresses};
use mobidesk_dataplane::wire::label::{pop_label, push_label};
use mobidesk_dataplane::wire::{parse_ipv4, Label, Transport};

#[test]
fn fuzz_regression() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz_regression");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| {
            if !name.starts_with("rewrite-") {
                parse_oracle(&data);
            }
            if !name.starts_with("parse-") {
                rewrite_oracle(&data);
            }
        });
        assert!(result.is_ok(), "oracle failed on {}", path.display());
        replayed += 1;
    }
    assert!(
        replayed >= 5,
        "only {replayed} regression inputs in {}",
        dir.display()
    );
}

/// The path of one packet after a migration across subnets: the server
/// rewrites the session's virtual source to its physical address and labels
/// the packet with the proxy's label; the proxy strips the label and rewrites
/// the source back.
#[test]
fn migrated_session_packet_path() {
    let session = SessionAddresses {
        virtual_addr: Ipv4Addr::new(10, 1, 0, 10),
        physical_addr: Ipv4Addr::new(10, 2, 0, 20),
    };
    let proxy_label = Label::new(0x0000_0042).unwrap();
    // TCP SYN+ACK 10.1.0.10:80 -> 10.0.0.1:51000, checksums from Linux.
    let original: [u8; 40] = [
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x40, 0x00, 0x40, 0x06, 0x26, 0xbc, 0x0a, 0x01, 0x00,
        0x0a, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x50, 0xc7, 0x38, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x02, 0x50, 0x12, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut packet = original.to_vec();
    fix_checksums(&mut packet);
    let reference = packet.clone();

    // Server side.
    assert_eq!(
        session.virtual_to_physical(&mut packet, Endpoint::Source),
        Ok(true)
    );
    push_label(&mut packet, proxy_label).unwrap();
    let on_the_wire = parse_ipv4(&packet).unwrap();
    assert_eq!(on_the_wire.src_addr, session.physical_addr);
    assert_eq!(on_the_wire.label, Some(proxy_label));
    assert_eq!(packet.len(), reference.len() + 8);

    // Proxy side.
    assert_eq!(pop_label(&mut packet), Ok(Some(proxy_label)));
    assert_eq!(
        session.physical_to_virtual(&mut packet, Endpoint::Source),
        Ok(true)
    );
    assert_eq!(packet, reference);
    let info = parse_ipv4(&packet).unwrap();
    assert!(matches!(
        info.transport,
        Transport::Tcp {
            src_port: 80,
            dst_port: 51000,
            ..
        }
    ));
}

/// Fills the IPv4 and TCP checksums of a 20-byte-header TCP packet with a
/// plain RFC 1071 computation, independent of the crate.
fn fix_checksums(packet: &mut [u8]) {
    fn sum(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum()
    }
    fn finish(mut sum: u32) -> u16 {
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }
    packet[10..12].fill(0);
    let ip = finish(sum(&packet[..20]));
    packet[10..12].copy_from_slice(&ip.to_be_bytes());
    packet[36..38].fill(0);
    let tcp_len = (packet.len() - 20) as u32;
    let pseudo = sum(&packet[12..20]) + 6 + tcp_len;
    let tcp = finish(pseudo + sum(&packet[20..]));
    packet[36..38].copy_from_slice(&tcp.to_be_bytes());
}
