//! PROTOCOL.md and the code agree: the message table of §2, the close codes
//! of §10 and the limits of §12.

use mobidesk_display::protocol::*;

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap()
}

/// The table rows of the section starting with `heading`.
fn rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("no {heading}"));
    let section = &doc[start + heading.len()..];
    let end = section.find("\n## ").unwrap_or(section.len());
    section[..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

/// "1 048 576", "16 MiB" or "8".
fn number(text: &str) -> usize {
    let text = text.trim();
    if let Some(mib) = text.strip_suffix("MiB") {
        return number(mib) << 20;
    }
    text.replace(' ', "")
        .parse()
        .unwrap_or_else(|_| panic!("{text:?}"))
}

#[test]
fn message_table_matches() {
    let doc = protocol_md();
    let mut seen = Vec::new();
    for row in rows(&doc, "## 2. Framing") {
        let Some(hex) = row[0].strip_prefix("0x") else {
            continue;
        };
        let value = u8::from_str_radix(hex, 16).unwrap();
        if row[1] == "—" {
            assert_eq!(MessageType::from_u8(value), None);
            continue;
        }
        let t = MessageType::from_u8(value).unwrap_or_else(|| panic!("{row:?}"));
        assert_eq!(t.name(), row[1]);
        let sender = match row[2].as_str() {
            "client" => Sender::Client,
            "server" => Sender::Server,
            "either" => Sender::Either,
            other => panic!("{other}"),
        };
        assert_eq!(t.sender(), sender, "{t}");
        let (min, max) = match row[3].split_once("..=") {
            Some((a, b)) => (number(a), number(b)),
            None => (number(&row[3]), number(&row[3])),
        };
        assert_eq!(t.body_len_range(), min..=max, "{t}");
        seen.push(t);
    }
    assert_eq!(seen, MessageType::ALL);
}

#[test]
fn close_codes_match() {
    let doc = protocol_md();
    let mut n = 0;
    for row in rows(&doc, "## 10. Errors and close codes") {
        let Ok(code) = row[0].parse::<u16>() else {
            continue;
        };
        assert_eq!(CloseCode::from_u16(code).name(), row[1]);
        n += 1;
    }
    assert_eq!(n, 15);
}

#[test]
fn limits_match() {
    let doc = protocol_md();
    let constants = [
        ("HEADER_LEN", HEADER_LEN),
        ("MAX_BODY_LEN", MAX_BODY_LEN),
        ("MAX_ZSTD_WINDOW", MAX_ZSTD_WINDOW),
        ("MAX_DIMENSION", usize::from(MAX_DIMENSION)),
        ("MAX_RAW_PIXELS", MAX_RAW_PIXELS),
        ("MAX_CURSOR_DIMENSION", usize::from(MAX_CURSOR_DIMENSION)),
        ("MAX_CLIPBOARD_LEN", MAX_CLIPBOARD_LEN),
        ("MAX_REASON_LEN", MAX_REASON_LEN),
        ("MAX_TOKEN_LEN", MAX_TOKEN_LEN),
        ("MAX_VERSIONS", MAX_VERSIONS),
        ("MAX_CODECS", MAX_CODECS),
        ("VERSION_1", usize::from(VERSION_1)),
    ];
    let table = rows(&doc, "## 12. Limits at a glance");
    assert_eq!(table.len(), constants.len());
    for (name, value) in constants {
        let row = table
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} not in §12"));
        let text = row[1].split('(').next().unwrap();
        assert_eq!(number(text), value, "{name}");
    }
}
