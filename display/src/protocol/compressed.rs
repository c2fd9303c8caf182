//! `Compressed` (PROTOCOL.md §2.1, type 0x07): whole server messages carried
//! in the connection's zstd stream, and the two ends of that stream:
//! [`Deflater`] (the server's compression context) and [`Inflater`] (the
//! client's decompression context). Sans I/O: bytes in, bytes out.
//!
//! The stream is one zstd stream per connection (RFC 8878 frames), flushed
//! at the end of every `Compressed` message, so each message decodes at
//! once, while matches and entropy statistics carry over from every earlier
//! message (glyphs seen before, the statistics of an image), as VNC's
//! per-connection zlib stream does.

use std::borrow::Cow;

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use super::session::CloseCode;
use super::wire::{
    as_u32, as_u64, check_range, check_room, get_u32, put, put_u32, put_u8, rest, Field,
};
use super::{
    Command, DecodeError, EmitError, Encoding, Error, Frame, FrameDecoder, MessageType, Payload,
    Sender, HEADER_LEN, MAX_BODY_LEN,
};

/// `Window_Log` of the server's stream (a 4 MiB window: several screens of
/// glyphs and widgets).
pub const ZSTD_WINDOW_LOG: u32 = 22;
/// The largest `Window_Log` a client accepts (`MAX_ZSTD_WINDOW`, §12): a
/// frame that needs a larger window is refused before it is decoded.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The largest zstd window a client keeps, in bytes (PROTOCOL.md §12).
pub const MAX_ZSTD_WINDOW: usize = 1 << ZSTD_WINDOW_LOG_MAX;
/// The zstd level `mobidesk-display` compresses at by default.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

mod field {
    use super::Field;

    pub(super) const DECODED_LEN: Field = 0..4;
    pub(super) const DATA: usize = 4;
}

/// `Compressed` (PROTOCOL.md §2.1): the next piece of the connection's zstd
/// stream, which decodes to `decoded_len` bytes of whole messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedRepr<'a> {
    /// The bytes `data` decodes to, `HEADER_LEN ..= MAX_BODY_LEN`.
    pub decoded_len: u32,
    /// zstd data, at least one byte.
    pub data: Cow<'a, [u8]>,
}

impl<'a> CompressedRepr<'a> {
    /// Body length without the data.
    pub const HEADER_LEN: usize = field::DATA;

    /// Parses a `Compressed` body (the data is borrowed, not decoded).
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        let repr = CompressedRepr {
            decoded_len: get_u32(body, field::DECODED_LEN)?,
            data: Cow::Borrowed(rest(body, field::DATA)?),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §2.1.
    pub fn validate(&self) -> Result<(), Error> {
        check_range(
            "decoded_len",
            u64::from(self.decoded_len),
            as_u64(HEADER_LEN),
            as_u64(MAX_BODY_LEN),
        )?;
        check_range(
            "data",
            as_u64(self.data.len()),
            1,
            as_u64(MAX_BODY_LEN - Self::HEADER_LEN),
        )
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.data.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put_u32(buf, field::DECODED_LEN, self.decoded_len)?;
        put(buf, field::DATA, &self.data)
    }

    /// An owned copy.
    pub fn into_owned(self) -> CompressedRepr<'static> {
        CompressedRepr {
            decoded_len: self.decoded_len,
            data: Cow::Owned(self.data.into_owned()),
        }
    }
}

/// Why the server's side of the stream failed (a resource failure of the
/// zstd library, or messages that do not fit one `Compressed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeflateError {
    /// The zstd library refused or failed.
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// Messages outside `HEADER_LEN ..= MAX_BODY_LEN` bytes, or data that
    /// came out larger than a body may be.
    #[error("{0} bytes do not fit one Compressed message")]
    Size(usize),
}

/// Why a `Compressed` message was refused (PROTOCOL.md §2.1, §10).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The zstd data is corrupt, needs a window above `MAX_ZSTD_WINDOW`, or
    /// the library failed.
    #[error("compressed: zstd: {0}")]
    Zstd(&'static str),
    /// The data decodes to other than `decoded_len` bytes (or ends inside a
    /// zstd block).
    #[error("compressed: decodes to {len} bytes, expected {expected}")]
    Length {
        /// Bytes decoded (`expected + 1` for "more").
        len: usize,
        /// `decoded_len`.
        expected: usize,
    },
    /// The decoded bytes end inside a message.
    #[error("compressed: the decoded bytes end inside a message")]
    PartialMessage,
    /// A message inside failed framing (§2).
    #[error("compressed: {0}")]
    Framing(#[from] DecodeError),
    /// A `Compressed` or a `ServerHello` inside.
    #[error("compressed: {0} inside Compressed")]
    Nested(MessageType),
}

impl InflateError {
    /// The close code a client sends for this error (PROTOCOL.md §10).
    pub fn close_code(&self) -> CloseCode {
        match self {
            InflateError::Zstd(_) | InflateError::Length { .. } | InflateError::PartialMessage => {
                CloseCode::BadPayload
            }
            InflateError::Framing(e) => e.close_code(),
            InflateError::Nested(_) => CloseCode::UnexpectedMessage,
        }
    }
}

/// The server's end of a connection's zstd stream: one compression context,
/// kept for the whole connection.
pub struct Deflater {
    cctx: CCtx<'static>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// A stream compressed at zstd `level` (negative: faster; 1..=19), with
    /// a window of 2^[`ZSTD_WINDOW_LOG`] bytes, no checksum (the transport
    /// has its own) and no content size (the stream never ends).
    pub fn new(level: i32) -> Result<Self, DeflateError> {
        let mut cctx = CCtx::try_create().ok_or(DeflateError::Zstd("cannot create a context"))?;
        for param in [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(ZSTD_WINDOW_LOG),
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(false),
            CParameter::DictIdFlag(false),
        ] {
            cctx.set_parameter(param).map_err(zstd_error)?;
        }
        Ok(Deflater { cctx })
    }

    /// Appends to `out` one whole `Compressed` message (header included)
    /// that carries `messages` (whole encoded messages, `HEADER_LEN ..=
    /// MAX_BODY_LEN` bytes) as the next piece of the stream, flushed. After
    /// an error the stream is broken: close the connection.
    pub fn deflate(&mut self, messages: &[u8], out: &mut Vec<u8>) -> Result<(), DeflateError> {
        if !(HEADER_LEN..=MAX_BODY_LEN).contains(&messages.len()) {
            return Err(DeflateError::Size(messages.len()));
        }
        let start = out.len();
        let data_at = start + HEADER_LEN + CompressedRepr::HEADER_LEN;
        out.resize(data_at, 0);
        out.reserve(zstd_safe::compress_bound(messages.len()));
        let mut input = InBuffer::around(messages);
        let mut pos = data_at;
        loop {
            let mut output = OutBuffer::around_pos(out, pos);
            let flushed = self.cctx.compress_stream2(
                &mut output,
                &mut input,
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
            );
            pos = output.pos();
            let left = match flushed {
                Ok(left) => left,
                Err(code) => {
                    out.truncate(start);
                    return Err(zstd_error(code));
                }
            };
            if left == 0 && input.pos() == messages.len() {
                break;
            }
            // Not all flushed: more room (zstd goes on where it stopped).
            out.reserve(left.max(1024));
        }
        let body_len = out.len() - start - HEADER_LEN;
        if body_len > MAX_BODY_LEN {
            out.truncate(start);
            return Err(DeflateError::Size(body_len));
        }
        let header = out.get_mut(start..data_at).unwrap_or_default();
        let emitted = put_u8(header, 0, MessageType::Compressed as u8)
            .and_then(|()| put_u32(header, 1..5, as_u32(body_len)))
            .and_then(|()| put_u32(header, 5..9, as_u32(messages.len())));
        emitted.map_err(|_| DeflateError::Size(body_len))
    }
}

/// The client's end of a connection's zstd stream: one decompression
/// context, kept for the whole connection, whose window is at most
/// [`MAX_ZSTD_WINDOW`].
pub struct Inflater {
    dctx: DCtx<'static>,
    /// The first error: the stream is broken from there on.
    failed: Option<InflateError>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Inflater {
    /// A decompression context that refuses windows above
    /// [`MAX_ZSTD_WINDOW`].
    pub fn new() -> Result<Self, InflateError> {
        let mut dctx = DCtx::try_create().ok_or(InflateError::Zstd("cannot create a context"))?;
        dctx.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(|code| InflateError::Zstd(zstd_safe::get_error_name(code)))?;
        Ok(Inflater { dctx, failed: None })
    }

    /// Decodes the data of a `Compressed` message, as the next piece of the
    /// stream, into exactly `decoded_len` bytes (it never writes more than
    /// `decoded_len + 1`: a bomb stops there), and cuts them into messages
    /// as a client's [`FrameDecoder`] does (each header checked before its
    /// body is taken). After an error the stream is broken: close the
    /// connection with [`InflateError::close_code`].
    pub fn inflate(&mut self, repr: &CompressedRepr<'_>) -> Result<Vec<Frame>, InflateError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.inflate_inner(repr);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn inflate_inner(&mut self, repr: &CompressedRepr<'_>) -> Result<Vec<Frame>, InflateError> {
        let expected = usize::try_from(repr.decoded_len).unwrap_or(usize::MAX);
        let decoded = self.decode(&repr.data, expected)?;
        let mut decoder = FrameDecoder::new(Sender::Server);
        let mut frames = Vec::new();
        let mut input = &decoded[..];
        while !input.is_empty() {
            let used = decoder.handle_bytes(input)?;
            input = input.get(used..).unwrap_or_default();
            while let Some(frame) = decoder.poll_message() {
                if matches!(
                    frame.msg_type,
                    MessageType::Compressed | MessageType::ServerHello
                ) {
                    return Err(InflateError::Nested(frame.msg_type));
                }
                frames.push(frame);
            }
        }
        if !decoder.is_idle() {
            return Err(InflateError::PartialMessage);
        }
        Ok(frames)
    }

    /// `data` decoded, exactly `expected` bytes.
    fn decode(&mut self, data: &[u8], expected: usize) -> Result<Vec<u8>, InflateError> {
        // One byte more than announced: room to notice a stream that
        // decodes to more, without room for much more.
        let limit = expected.saturating_add(1).min(MAX_BODY_LEN + 1);
        let mut out: Vec<u8> = Vec::with_capacity(limit);
        let mut input = InBuffer::around(data);
        {
            let mut output = OutBuffer::around(&mut out);
            loop {
                let before = (input.pos(), output.pos());
                self.dctx
                    .decompress_stream(&mut output, &mut input)
                    .map_err(|code| InflateError::Zstd(zstd_safe::get_error_name(code)))?;
                if output.pos() >= limit || (input.pos(), output.pos()) == before {
                    break;
                }
                if input.pos() == data.len() && output.pos() < output.capacity() {
                    // Everything consumed, and the decoder flushed all it could.
                    break;
                }
            }
        }
        let consumed = input.pos() == data.len();
        if out.len() != expected || !consumed {
            return Err(InflateError::Length {
                len: out.len().max(if consumed { 0 } else { expected + 1 }),
                expected,
            });
        }
        Ok(out)
    }
}

/// `command` with its payloads as they go best into the zstd stream: zstd
/// codes pixels and bitmaps far better than LZ4's output of them (whose byte
/// statistics are gone), so an LZ4 payload is decoded to `plain`; a RAW or
/// PFILL tile that is `plain` (LZ4 found no repeats in it: a photo, noise)
/// goes as `delta`, whose small differences zstd's entropy coder halves. A
/// payload that does not decode (none that an encoder makes) stays as it is.
pub fn zstd_payloads(command: Command<'_>) -> Command<'_> {
    fn recode<'a>(
        payload: Payload<'a>,
        field: &'static str,
        len: Result<usize, Error>,
        pixels: bool,
    ) -> Payload<'a> {
        let Ok(len) = len else {
            return payload;
        };
        match payload.encoding {
            Encoding::Plain if pixels => Payload::delta(&payload.data),
            Encoding::Lz4 => {
                let mut scratch = Vec::new();
                match payload.decode(field, len, &mut scratch) {
                    Ok(_) => Payload::plain(scratch),
                    Err(_) => payload,
                }
            }
            _ => payload,
        }
    }
    match command {
        Command::Raw(mut r) => {
            let len = r.decoded_len();
            r.data = recode(r.data, "data", len, true);
            Command::Raw(r)
        }
        Command::Bitmap(mut b) => {
            let len = b.decoded_len();
            b.bits = recode(b.bits, "bits", len, false);
            Command::Bitmap(b)
        }
        Command::PFill(mut p) => {
            let len = p.decoded_len();
            p.tile = recode(p.tile, "tile", len, true);
            Command::PFill(p)
        }
        other => other,
    }
}

fn zstd_error(code: zstd_safe::ErrorCode) -> DeflateError {
    DeflateError::Zstd(zstd_safe::get_error_name(code))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::protocol::{Command, Payload};
    use crate::protocol::{Message, PingRepr, RawRepr, Rect, SFillRepr};

    /// Noise-free but varied bytes: a RAW of `w × h` pixels from `seed`.
    fn raw(seed: u32, w: u16, h: u16) -> Message<'static> {
        let data: Vec<u8> = (0..u32::from(w) * u32::from(h))
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).to_le_bytes())
            .collect();
        Message::Command(Command::Raw(RawRepr {
            rect: Rect::new(0, 0, w, h),
            data: Payload::plain(data),
        }))
    }

    fn bytes(messages: &[Message<'_>]) -> Vec<u8> {
        messages.iter().flat_map(|m| m.to_vec().unwrap()).collect()
    }

    /// One whole `Compressed` message: its parsed body.
    fn parse_one(wire: &[u8]) -> CompressedRepr<'_> {
        assert_eq!(wire[0], MessageType::Compressed as u8);
        let len = u32::from_le_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(wire.len(), HEADER_LEN + len);
        CompressedRepr::parse(&wire[HEADER_LEN..]).unwrap()
    }

    fn compressed(decoded_len: u32, data: Vec<u8>) -> CompressedRepr<'static> {
        CompressedRepr {
            decoded_len,
            data: Cow::Owned(data),
        }
    }

    #[test]
    fn body_layout() {
        let repr = compressed(9, vec![0xaa, 0xbb]);
        let message = Message::Compressed(repr.clone());
        let wire = message.to_vec().unwrap();
        assert_eq!(wire, [0x07, 6, 0, 0, 0, 9, 0, 0, 0, 0xaa, 0xbb]);
        assert_eq!(
            Message::parse(MessageType::Compressed, &wire[5..]),
            Ok(message)
        );
        // decoded_len below a header, or no data: malformed.
        assert!(CompressedRepr::parse(&[4, 0, 0, 0, 1]).is_err());
        assert!(CompressedRepr::parse(&[9, 0, 0, 0]).is_err());
        assert!(CompressedRepr::parse(&[0, 0, 0, 2, 1]).is_err());
        assert!(compressed(5, vec![]).emit(&mut [0; 8]).is_err());
    }

    #[test]
    fn round_trip() {
        let messages = vec![
            Message::Ping(PingRepr { token: 7 }),
            raw(1, 40, 30),
            Message::StateComplete,
        ];
        let plain = bytes(&messages);
        let mut deflater = Deflater::new(DEFAULT_ZSTD_LEVEL).unwrap();
        let mut wire = vec![0xee];
        deflater.deflate(&plain, &mut wire).unwrap();
        // Appended after what was there.
        assert_eq!(wire[0], 0xee);
        let repr = parse_one(&wire[1..]);
        assert_eq!(repr.decoded_len as usize, plain.len());
        let frames = Inflater::new().unwrap().inflate(&repr).unwrap();
        let got: Vec<Message<'_>> = frames.iter().map(|f| f.parse().unwrap()).collect();
        assert_eq!(got, messages);
    }

    #[test]
    fn a_stream_across_many_messages_reuses_what_came_before() {
        // The same 16 KiB image 20 times, each in its own Compressed, and
        // other messages between: after the first, each costs a few bytes,
        // because the window still holds it.
        let image = bytes(&[raw(3, 64, 64)]);
        let mut deflater = Deflater::new(DEFAULT_ZSTD_LEVEL).unwrap();
        let mut inflater = Inflater::new().unwrap();
        let mut sizes = Vec::new();
        for i in 0..20u64 {
            let mut wire = Vec::new();
            deflater.deflate(&image, &mut wire).unwrap();
            sizes.push(wire.len());
            let frames = inflater.inflate(&parse_one(&wire)).unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].body, image[HEADER_LEN..]);
            let ping = bytes(&[Message::Ping(PingRepr { token: i })]);
            let mut wire = Vec::new();
            deflater.deflate(&ping, &mut wire).unwrap();
            let frames = inflater.inflate(&parse_one(&wire)).unwrap();
            assert_eq!(frames[0].parse(), Ok(Message::Ping(PingRepr { token: i })));
        }
        assert!(sizes[0] > image.len() / 2, "{sizes:?}");
        for &size in &sizes[1..] {
            assert!(size < 64, "{sizes:?}");
        }
        // A fresh decoder does not have the window: the second piece alone
        // does not decode to its message.
        let mut wire = Vec::new();
        deflater.deflate(&image, &mut wire).unwrap();
        assert!(Inflater::new().unwrap().inflate(&parse_one(&wire)).is_err());
    }

    #[test]
    fn payloads_for_the_stream_decode_to_the_same_bytes() {
        use crate::protocol::BitmapRepr;
        let flat = vec![7u8; 64 * 4];
        let noise: Vec<u8> = (0..64u32)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761) >> 8).to_le_bytes())
            .collect();
        let rect = Rect::new(0, 0, 8, 8);
        let cases = [
            (Payload::compress(&flat), Encoding::Plain, flat.clone()),
            (Payload::compress(&noise), Encoding::Delta, noise.clone()),
        ];
        for (data, want, decoded) in cases {
            let Command::Raw(r) = zstd_payloads(Command::Raw(RawRepr { rect, data })) else {
                panic!("not a RAW");
            };
            assert_eq!(r.data.encoding, want);
            let mut scratch = Vec::new();
            assert_eq!(r.data.decode("data", 256, &mut scratch).unwrap(), decoded);
        }
        // Bits are not pixels: LZ4 is decoded, plain stays plain.
        for data in [
            Payload::compress(&[0xf0; 8]),
            Payload::plain(vec![1, 2, 3, 4, 5, 6, 7, 8]),
        ] {
            let Command::Bitmap(b) = zstd_payloads(Command::Bitmap(BitmapRepr {
                rect,
                fg: 1,
                bg: None,
                bits: data,
            })) else {
                panic!("not a BITMAP");
            };
            assert_eq!(b.bits.encoding, Encoding::Plain);
        }
    }

    #[test]
    fn corrupt_data_is_an_error_never_a_panic() {
        // Text-like: few values, repeats (mostly entropy-coded sequences).
        let text = Message::Command(Command::Raw(RawRepr {
            rect: Rect::new(0, 0, 32, 32),
            data: Payload::plain((0..4096u32).map(|i| (i * i % 7) as u8).collect::<Vec<u8>>()),
        }));
        let plain = bytes(&[text, Message::Ping(PingRepr { token: 1 })]);
        let mut deflater = Deflater::new(3).unwrap();
        let mut wire = Vec::new();
        deflater.deflate(&plain, &mut wire).unwrap();
        let good = parse_one(&wire).into_owned();
        let mut failures = 0;
        for at in 0..good.data.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut data = good.data.to_vec();
                data[at] ^= flip;
                let bad = compressed(good.decoded_len, data);
                match Inflater::new().unwrap().inflate(&bad) {
                    // A flipped literal can still decode to valid messages.
                    Ok(frames) => assert!(
                        frames.iter().map(|f| 5 + f.body.len()).sum::<usize>() == plain.len()
                    ),
                    Err(e) => {
                        failures += 1;
                        assert!(matches!(
                            e.close_code(),
                            CloseCode::BadPayload
                                | CloseCode::UnknownMessageType
                                | CloseCode::UnexpectedMessage
                                | CloseCode::MessageTooLarge
                                | CloseCode::MalformedMessage
                        ));
                    }
                }
            }
        }
        assert!(failures > good.data.len() / 2, "{failures}");
        // Cut short: ends inside the block.
        let cut = compressed(good.decoded_len, good.data[..good.data.len() - 1].to_vec());
        let err = Inflater::new().unwrap().inflate(&cut).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::BadPayload, "{err}");
        // Not zstd at all.
        let junk = compressed(16, vec![0x55; 40]);
        assert!(matches!(
            Inflater::new().unwrap().inflate(&junk),
            Err(InflateError::Zstd(_))
        ));
        // After an error the context stays refused (the stream is broken).
        let mut inflater = Inflater::new().unwrap();
        assert!(inflater.inflate(&junk).is_err());
        assert!(inflater.inflate(&good).is_err());
    }

    #[test]
    fn a_bomb_stops_at_decoded_len() {
        // 1 MiB of messages that compress to a few hundred bytes, announced
        // as 64 bytes: the decoder writes at most 65 and refuses.
        let fill = Message::Command(Command::SFill(SFillRepr {
            colour: 1,
            rects: vec![Rect::new(0, 0, 1, 1); 8000],
        }));
        let plain = bytes(&vec![fill; 20]);
        assert!(plain.len() > 1 << 20);
        let mut wire = Vec::new();
        Deflater::new(DEFAULT_ZSTD_LEVEL)
            .unwrap()
            .deflate(&plain, &mut wire)
            .unwrap();
        let real = parse_one(&wire);
        assert!(real.data.len() < 4096, "{}", real.data.len());
        let bomb = compressed(64, real.data.to_vec());
        assert_eq!(
            Inflater::new().unwrap().inflate(&bomb),
            Err(InflateError::Length {
                len: 65,
                expected: 64
            })
        );
        // Announcing more than it has is refused as well.
        let short = compressed(plain.len() as u32 + 1, real.data.to_vec());
        let err = Inflater::new().unwrap().inflate(&short).unwrap_err();
        assert_eq!(
            err,
            InflateError::Length {
                len: plain.len(),
                expected: plain.len() + 1
            }
        );
    }

    #[test]
    fn a_window_above_the_limit_is_refused() {
        let plain = bytes(&[Message::Ping(PingRepr { token: 3 })]);
        for (log, ok) in [
            (ZSTD_WINDOW_LOG_MAX, true),
            (ZSTD_WINDOW_LOG_MAX + 1, false),
        ] {
            let mut cctx = CCtx::create();
            cctx.set_parameter(CParameter::WindowLog(log)).unwrap();
            cctx.set_parameter(CParameter::ContentSizeFlag(false))
                .unwrap();
            let mut data = Vec::with_capacity(1024);
            let mut out = OutBuffer::around(&mut data);
            let mut input = InBuffer::around(&plain);
            let left = cctx
                .compress_stream2(
                    &mut out,
                    &mut input,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
                )
                .unwrap();
            assert_eq!(left, 0);
            let repr = compressed(plain.len() as u32, data);
            let got = Inflater::new().unwrap().inflate(&repr);
            assert_eq!(got.is_ok(), ok, "window log {log}: {got:?}");
            if let Err(e) = got {
                assert_eq!(e.close_code(), CloseCode::BadPayload);
            }
        }
    }

    #[test]
    fn what_it_decodes_to_must_be_whole_server_messages() {
        let mut cases: Vec<(Vec<u8>, CloseCode)> = vec![
            // Ends inside a message.
            (
                bytes(&[Message::Ping(PingRepr { token: 1 })])[..10].to_vec(),
                CloseCode::BadPayload,
            ),
            // A client's message.
            (
                bytes(&[Message::Key(crate::protocol::KeyRepr {
                    keysym: 1,
                    down: true,
                })]),
                CloseCode::UnexpectedMessage,
            ),
            // An unknown type.
            (vec![0x7f, 0, 0, 0, 0], CloseCode::UnknownMessageType),
            // A body that does not parse goes out as a frame (it is parsed
            // by the receiver like any other), but a wrong length does not.
            (
                vec![0x03, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                CloseCode::MessageTooLarge,
            ),
        ];
        // Nested Compressed.
        let mut inner = Vec::new();
        Deflater::new(1)
            .unwrap()
            .deflate(&bytes(&[Message::StateComplete]), &mut inner)
            .unwrap();
        cases.push((inner, CloseCode::UnexpectedMessage));
        for (plain, code) in cases {
            let mut wire = Vec::new();
            Deflater::new(1)
                .unwrap()
                .deflate(&plain, &mut wire)
                .unwrap();
            let err = Inflater::new()
                .unwrap()
                .inflate(&parse_one(&wire))
                .unwrap_err();
            assert_eq!(err.close_code(), code, "{err}");
        }
        // The deflater refuses what cannot be a Compressed.
        assert_eq!(
            Deflater::new(1).unwrap().deflate(&[1, 2], &mut Vec::new()),
            Err(DeflateError::Size(2))
        );
    }
}
