//! Every message, random values: emit → parse is the identity.

use std::borrow::Cow;

use mobidesk_display::fuzzing::check_round_trip;
use mobidesk_display::protocol::*;

use crate::rng::Rng;

fn rect(rng: &mut Rng, max_w: u16, max_h: u16) -> Rect {
    let w = rng.range(1, u64::from(max_w)) as u16;
    let h = rng.range(1, u64::from(max_h)) as u16;
    let x = rng.range(0, u64::from(MAX_DIMENSION - w)) as u16;
    let y = rng.range(0, u64::from(MAX_DIMENSION - h)) as u16;
    Rect::new(x, y, w, h)
}

fn payload(rng: &mut Rng, len: usize) -> Payload<'static> {
    let decoded = rng.bytes(len);
    match rng.below(3) {
        0 => Payload::compress(&decoded),
        1 => Payload::delta(&decoded),
        _ => Payload::plain(decoded),
    }
}

fn utf8(rng: &mut Rng, max_bytes: usize) -> String {
    let mut s = String::new();
    let alphabet = ['a', 'é', '€', '😀', ' ', '\n', '\0'];
    loop {
        let c = alphabet[rng.below(alphabet.len())];
        if s.len() + c.len_utf8() > max_bytes || rng.below(20) == 0 {
            return s;
        }
        s.push(c);
    }
}

fn distinct<T: PartialEq>(rng: &mut Rng, n: usize, mut gen: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = gen(rng);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// A random valid message of type `t`.
pub(crate) fn random_message(rng: &mut Rng, t: MessageType) -> Message<'static> {
    match t {
        MessageType::ClientHello => {
            let versions = rng.range(1, MAX_VERSIONS as u64) as usize;
            let codecs = rng.range(0, MAX_CODECS as u64) as usize;
            let token = rng.range(0, MAX_TOKEN_LEN as u64) as usize;
            Message::ClientHello(ClientHelloRepr {
                capabilities: Capabilities(rng.u32()),
                max_width: rng.range(1, 8192) as u16,
                max_height: rng.range(1, 8192) as u16,
                versions: distinct(rng, versions, |r| r.u16().max(1)),
                codecs: distinct(rng, codecs, |r| r.u8() | 0x80),
                token: Cow::Owned(rng.bytes(token)),
            })
        }
        MessageType::ServerHello => {
            let codecs = rng.range(0, MAX_CODECS as u64) as usize;
            Message::ServerHello(ServerHelloRepr {
                version: rng.u16().max(1),
                capabilities: Capabilities(rng.u32() & Capabilities::ALL.0),
                view_only: rng.bool(),
                codecs: distinct(rng, codecs, |r| r.u8() | 0x80),
            })
        }
        MessageType::Ping => Message::Ping(PingRepr { token: rng.next() }),
        MessageType::Pong => Message::Pong(PingRepr { token: rng.next() }),
        MessageType::Close => Message::Close(CloseRepr {
            code: CloseCode::from_u16(rng.u16() % 20),
            reason: Cow::Owned(utf8(rng, MAX_REASON_LEN)),
        }),
        MessageType::Clipboard => Message::Clipboard(ClipboardRepr {
            text: Cow::Owned(utf8(rng, 4096)),
        }),
        MessageType::Compressed => {
            let len = rng.range(1, 2048) as usize;
            Message::Compressed(CompressedRepr {
                decoded_len: rng.range(HEADER_LEN as u64, MAX_BODY_LEN as u64) as u32,
                data: Cow::Owned(rng.bytes(len)),
            })
        }
        MessageType::FramebufferSize => Message::FramebufferSize(FramebufferSizeRepr {
            width: rng.range(1, 8192) as u16,
            height: rng.range(1, 8192) as u16,
            session_width: rng.range(1, 8192) as u16,
            session_height: rng.range(1, 8192) as u16,
        }),
        MessageType::StateComplete => Message::StateComplete,
        MessageType::Raw => {
            let rect = rect(rng, 40, 40);
            let data = payload(rng, rect.area() * 4);
            Message::Command(Command::Raw(RawRepr { rect, data }))
        }
        MessageType::Copy => {
            let (src, dst) = (rect(rng, 500, 500), rect(rng, 500, 500));
            let (w, h) = (src.w.min(dst.w), src.h.min(dst.h));
            Message::Command(Command::Copy(CopyRepr {
                src_x: src.x,
                src_y: src.y,
                dst_x: dst.x,
                dst_y: dst.y,
                w,
                h,
            }))
        }
        MessageType::SFill => {
            let n = rng.range(1, 50) as usize;
            Message::Command(Command::SFill(SFillRepr {
                colour: rng.u32(),
                rects: (0..n).map(|_| rect(rng, 8192, 8192)).collect(),
            }))
        }
        MessageType::Bitmap => {
            let rect = rect(rng, 100, 40);
            let len = usize::from(rect.w).div_ceil(8) * usize::from(rect.h);
            Message::Command(Command::Bitmap(BitmapRepr {
                rect,
                fg: rng.u32(),
                bg: rng.bool().then(|| rng.u32()),
                bits: payload(rng, len),
            }))
        }
        MessageType::PFill => {
            let (tile_w, tile_h) = (rng.range(1, 32) as u16, rng.range(1, 32) as u16);
            let n = rng.range(1, 10) as usize;
            let origin_x = rng.range(0, u64::from(tile_w - 1)) as u16;
            let origin_y = rng.range(0, u64::from(tile_h - 1)) as u16;
            let rects = (0..n).map(|_| rect(rng, 8192, 8192)).collect();
            let tile = payload(rng, usize::from(tile_w) * usize::from(tile_h) * 4);
            Message::Command(Command::PFill(PFillRepr {
                tile_w,
                tile_h,
                origin_x,
                origin_y,
                rects,
                tile,
            }))
        }
        MessageType::Video => {
            let (src_w, src_h) = (rng.range(1, 33) as u16, rng.range(1, 33) as u16);
            let data = if rng.below(4) == 0 {
                let len = rng.below(100);
                VideoData::Codec {
                    codec: rng.u8() | 0x80,
                    data: Cow::Owned(rng.bytes(len)),
                }
            } else {
                let (cw, ch) = (
                    usize::from(src_w).div_ceil(2),
                    usize::from(src_h).div_ceil(2),
                );
                let lz4 = rng.bool();
                let mut plane = |len: usize| {
                    let raw = rng.bytes(len);
                    Cow::Owned(if lz4 { lz4_flex_compress(&raw) } else { raw })
                };
                VideoData::I420 {
                    encoding: if lz4 { Encoding::Lz4 } else { Encoding::Plain },
                    y: plane(usize::from(src_w) * usize::from(src_h)),
                    u: plane(cw * ch),
                    v: plane(cw * ch),
                }
            };
            Message::Command(Command::Video(VideoRepr {
                stream_id: rng.u32(),
                frame: rng.u32(),
                dst: rect(rng, 8192, 8192),
                src_w,
                src_h,
                data,
            }))
        }
        MessageType::VideoEnd => Message::VideoEnd(VideoEndRepr {
            stream_id: rng.u32(),
        }),
        MessageType::CursorShape => {
            if rng.below(8) == 0 {
                return Message::CursorShape(CursorShapeRepr::hidden());
            }
            let (w, h) = (rng.range(1, 64) as u16, rng.range(1, 64) as u16);
            Message::CursorShape(CursorShapeRepr {
                w,
                h,
                hot_x: rng.range(0, u64::from(w - 1)) as u16,
                hot_y: rng.range(0, u64::from(h - 1)) as u16,
                pixels: payload(rng, usize::from(w) * usize::from(h) * 4),
            })
        }
        MessageType::CursorPosition => Message::CursorPosition(CursorPositionRepr {
            x: rng.u16(),
            y: rng.u16(),
        }),
        MessageType::Key => Message::Key(KeyRepr {
            keysym: rng.u32(),
            down: rng.bool(),
        }),
        MessageType::Pointer => Message::Pointer(PointerRepr {
            x: rng.u16(),
            y: rng.u16(),
            buttons: Buttons(rng.u16() & Buttons::ALL.0),
        }),
        MessageType::Wheel => Message::Wheel(WheelRepr {
            dx: rng.u16() as i16,
            dy: rng.u16() as i16,
        }),
        MessageType::ViewportRequest => Message::ViewportRequest(ViewportRequestRepr {
            max_width: rng.range(1, 8192) as u16,
            max_height: rng.range(1, 8192) as u16,
        }),
    }
}

/// An LZ4 block, through the crate's own encoder (plain when larger).
fn lz4_flex_compress(data: &[u8]) -> Vec<u8> {
    let payload = Payload::compress(data);
    match payload.encoding {
        Encoding::Lz4 => payload.data.into_owned(),
        // Force a block even for noise: the encoding is chosen per frame.
        Encoding::Plain | Encoding::Delta => {
            let mut block = Vec::new();
            // An LZ4 block of literals only: token, length bytes, literals.
            let n = data.len();
            let head = n.min(15) as u8;
            block.push(head << 4);
            if n >= 15 {
                let mut rest = n - 15;
                while rest >= 255 {
                    block.push(255);
                    rest -= 255;
                }
                block.push(rest as u8);
            }
            block.extend_from_slice(data);
            block
        }
    }
}

#[test]
fn every_type_round_trips() {
    let mut rng = Rng::new(1);
    for &t in MessageType::ALL {
        for _ in 0..200 {
            let message = random_message(&mut rng, t);
            assert_eq!(message.message_type(), t);
            let bytes = message.to_vec().unwrap();
            assert_eq!(bytes.len(), message.buffer_len(), "{t}");
            assert_eq!(bytes[0], t as u8);
            assert_eq!(
                u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize,
                message.body_len()
            );
            let parsed = Message::parse(t, &bytes[HEADER_LEN..]).unwrap();
            assert_eq!(parsed, message, "{t}");
            check_round_trip(&message);
            // Emitting into a buffer one byte short is an error, not a panic.
            let mut short = vec![0; bytes.len() - 1];
            assert!(matches!(
                message.emit(&mut short),
                Err(EmitError::BufferTooSmall { .. })
            ));
            // into_owned keeps the value.
            assert_eq!(parsed.into_owned(), message);
        }
    }
}

#[test]
fn lz4_planes_decode() {
    // The hand-made literal-only blocks above are real LZ4.
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let block = lz4_flex_compress(&data);
    let payload = Payload::new(Encoding::Lz4, block);
    let mut scratch = Vec::new();
    assert_eq!(payload.decode("y", 300, &mut scratch).unwrap(), &data[..]);
}

#[test]
fn a_stream_decodes_the_same_in_any_chunks() {
    let mut rng = Rng::new(2);
    let messages: Vec<Message<'static>> = (0..300)
        .map(|_| {
            let t = MessageType::ALL[rng.below(MessageType::ALL.len())];
            random_message(&mut rng, t)
        })
        .collect();
    let stream: Vec<u8> = messages.iter().flat_map(|m| m.to_vec().unwrap()).collect();
    for max_chunk in [1, 2, 5, 7, 64, 4096, usize::MAX] {
        let mut decoder = FrameDecoder::new(Sender::Either);
        let mut frames = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = if max_chunk == usize::MAX {
                rest.len()
            } else {
                1 + rng.below(max_chunk)
            }
            .min(rest.len());
            let mut chunk = &rest[..n];
            rest = &rest[n..];
            loop {
                let used = decoder.handle_bytes(chunk).unwrap();
                chunk = &chunk[used..];
                let mut any = false;
                while let Some(frame) = decoder.poll_message() {
                    frames.push(frame);
                    any = true;
                }
                if chunk.is_empty() && !any {
                    break;
                }
            }
        }
        assert!(decoder.is_idle());
        let parsed: Vec<Message<'_>> = frames.iter().map(|f| f.parse().unwrap()).collect();
        assert_eq!(parsed, messages, "chunks of up to {max_chunk}");
    }
}

#[test]
fn directions() {
    let mut rng = Rng::new(3);
    for &t in MessageType::ALL {
        let bytes = random_message(&mut rng, t).to_vec().unwrap();
        for peer in [Sender::Client, Sender::Server] {
            let mut decoder = FrameDecoder::new(peer);
            let result = decoder.handle_bytes(&bytes);
            if t.may_be_sent_by(peer) {
                assert_eq!(result, Ok(bytes.len()), "{t} from {peer}");
            } else {
                assert_eq!(
                    result,
                    Err(DecodeError::UnexpectedType { msg_type: t, peer })
                );
                assert_eq!(
                    result.unwrap_err().close_code(),
                    CloseCode::UnexpectedMessage
                );
            }
        }
    }
}
