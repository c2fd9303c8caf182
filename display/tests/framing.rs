//! Hostile and broken input at the framing and parsing layers: the right
//! error, the right close code, no panic, no large allocation.

use mobidesk_display::protocol::*;

use crate::rng::Rng;
use crate::round_trip::random_message;

#[test]
fn unknown_types() {
    let known: Vec<u8> = MessageType::ALL.iter().map(|&t| t as u8).collect();
    for byte in 0..=255u8 {
        let mut decoder = FrameDecoder::new(Sender::Either);
        let result = decoder.handle_bytes(&[byte, 0, 0, 0, 0]);
        if known.contains(&byte) {
            assert!(
                !matches!(result, Err(DecodeError::UnknownType(_))),
                "{byte:#x}"
            );
        } else {
            assert_eq!(result, Err(DecodeError::UnknownType(byte)));
            assert_eq!(
                result.unwrap_err().close_code(),
                CloseCode::UnknownMessageType
            );
            assert_eq!(Message::parse_u8(byte, &[]), Err(Error::UnknownType(byte)));
        }
    }
}

#[test]
fn huge_lengths_are_refused_before_any_body() {
    for &t in MessageType::ALL {
        let max = *t.body_len_range().end();
        for len in [max as u64 + 1, u64::from(u32::MAX)] {
            let Ok(len) = u32::try_from(len) else {
                continue;
            };
            let mut header = vec![t as u8];
            header.extend(len.to_le_bytes());
            let mut decoder = FrameDecoder::new(Sender::Either);
            let result = decoder.handle_bytes(&header);
            assert_eq!(
                result,
                Err(DecodeError::TooLarge {
                    msg_type: t,
                    len,
                    max
                })
            );
            assert_eq!(result.unwrap_err().close_code(), CloseCode::MessageTooLarge);
            assert_eq!(decoder.buffered(), 0);
        }
    }
}

#[test]
fn client_messages_are_bounded_by_the_clipboard() {
    let largest = MessageType::ALL
        .iter()
        .filter(|t| t.may_be_sent_by(Sender::Client))
        .map(|t| *t.body_len_range().end())
        .max();
    assert_eq!(largest, Some(MAX_CLIPBOARD_LEN));
}

#[test]
fn truncated_bodies_are_errors() {
    let mut rng = Rng::new(4);
    for &t in MessageType::ALL {
        for _ in 0..20 {
            let message = random_message(&mut rng, t);
            let bytes = message.to_vec().unwrap();
            let body = &bytes[HEADER_LEN..];
            for cut in 0..body.len() {
                // A body cut short, with a length that says so, does not
                // parse (the framing layer may refuse it even earlier).
                let short = &body[..cut];
                if let Ok(parsed) = Message::parse(t, short) {
                    // Only possible where a shorter body is also valid and
                    // means something else: it must then differ.
                    assert_ne!(parsed, message, "{t} cut at {cut}");
                }
            }
            // A stream that ends inside a message leaves the decoder busy.
            if bytes.len() > 1 {
                let mut decoder = FrameDecoder::new(Sender::Either);
                let cut = 1 + rng.below(bytes.len() - 1);
                assert_eq!(decoder.handle_bytes(&bytes[..cut]), Ok(cut));
                assert!(decoder.poll_message().is_none());
                assert!(!decoder.is_idle());
                assert_eq!(decoder.buffered(), cut);
            }
        }
    }
}

#[test]
fn trailing_bytes_are_errors() {
    let mut rng = Rng::new(5);
    for &t in MessageType::ALL {
        let message = random_message(&mut rng, t);
        let mut body = message.to_vec().unwrap()[HEADER_LEN..].to_vec();
        body.push(0);
        match Message::parse(t, &body) {
            Err(e) => assert_eq!(e.close_code(), CloseCode::MalformedMessage, "{t}: {e}"),
            // Types whose last field runs to the end take the byte.
            Ok(parsed) => assert!(
                matches!(
                    t,
                    MessageType::Close
                        | MessageType::Clipboard
                        | MessageType::Compressed
                        | MessageType::Raw
                        | MessageType::Bitmap
                        | MessageType::PFill
                        | MessageType::Video
                        | MessageType::CursorShape
                ) && parsed != message,
                "{t}"
            ),
        }
    }
}

#[test]
fn error_messages_are_lowercase() {
    let errors: Vec<String> = vec![
        Error::Truncated { need: 4, len: 2 }.to_string(),
        Error::UnknownEncoding(9).to_string(),
        DecodeError::UnknownType(0x7f).to_string(),
        DecodeError::TooLarge {
            msg_type: MessageType::Key,
            len: 9,
            max: 5,
        }
        .to_string(),
        EmitError::BufferTooSmall { need: 2, have: 1 }.to_string(),
        InflateError::PartialMessage.to_string(),
        InflateError::Zstd("corruption detected").to_string(),
        DeflateError::Size(3).to_string(),
    ];
    for e in errors {
        let first = e.chars().next().unwrap();
        assert!(!first.is_uppercase() && !e.ends_with('.'), "{e}");
    }
}

#[test]
fn bad_magic_and_version_choice() {
    let hello = ClientHelloRepr {
        capabilities: Capabilities::ALL,
        max_width: 800,
        max_height: 600,
        versions: vec![1],
        codecs: vec![],
        token: Default::default(),
    };
    let mut bytes = Message::ClientHello(hello.clone()).to_vec().unwrap();
    assert_eq!(hello.choose_version(SUPPORTED_VERSIONS), Some(VERSION_1));
    bytes[HEADER_LEN] = b'X';
    let err = Message::parse(MessageType::ClientHello, &bytes[HEADER_LEN..]).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::BadMagic);
}

#[test]
fn random_junk_never_panics() {
    let mut rng = Rng::new(6);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut junk = rng.bytes(len);
        // Make a known type and a small length likely.
        if let Some(first) = junk.first_mut() {
            *first = MessageType::ALL[rng.below(MessageType::ALL.len())] as u8;
        }
        if junk.len() >= 5 {
            let body_len = (junk.len() - 5) as u32;
            junk[1..5].copy_from_slice(&body_len.to_le_bytes());
        }
        mobidesk_display::fuzzing::decode_oracle(&junk);
    }
}
