//! Framing: a state machine that cuts the byte stream into messages
//! (PROTOCOL.md §2).

use core::mem;

use super::session::CloseCode;
use super::{Error, Message, MessageType, Sender, HEADER_LEN};

/// Why the stream was refused at the framing layer. Each variant is decided
/// from the 5 header bytes alone, before any body is buffered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A type byte version 1 does not define.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// A type that the peer may not send.
    #[error("message type {msg_type} may not be sent by the {peer}")]
    UnexpectedType {
        /// The type received.
        msg_type: MessageType,
        /// Who sent it.
        peer: Sender,
    },
    /// A length above the type's maximum.
    #[error("body of {len} bytes for {msg_type}, more than its maximum {max}")]
    TooLarge {
        /// The type received.
        msg_type: MessageType,
        /// The length announced.
        len: u32,
        /// The type's maximum.
        max: usize,
    },
    /// A length below the type's minimum.
    #[error("body of {len} bytes for {msg_type}, less than its minimum {min}")]
    TooShort {
        /// The type received.
        msg_type: MessageType,
        /// The length announced.
        len: u32,
        /// The type's minimum.
        min: usize,
    },
}

impl DecodeError {
    /// The close code a receiver sends for this error (PROTOCOL.md §10).
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::UnknownType(_) => CloseCode::UnknownMessageType,
            DecodeError::UnexpectedType { .. } => CloseCode::UnexpectedMessage,
            DecodeError::TooLarge { .. } => CloseCode::MessageTooLarge,
            DecodeError::TooShort { .. } => CloseCode::MalformedMessage,
        }
    }
}

/// One whole message: its type and its body, not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type.
    pub msg_type: MessageType,
    /// The body (its length is within the type's range).
    pub body: Vec<u8>,
}

impl Frame {
    /// Parses the body; the message borrows from the frame.
    pub fn parse(&self) -> Result<Message<'_>, Error> {
        Message::parse(self.msg_type, &self.body)
    }
}

/// Initial capacity of a body buffer: a body grows with the bytes that
/// arrive, so a peer that announces 16 MiB and sends 10 bytes costs little.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

#[derive(Debug, Default)]
enum State {
    /// Reading the 5 header bytes (`FrameDecoder::header`, `filled` so far).
    #[default]
    Header,
    /// Reading a body of `len` bytes.
    Body {
        msg_type: MessageType,
        len: usize,
        body: Vec<u8>,
    },
    /// A whole message waits for [`FrameDecoder::poll_message`].
    Ready(Frame),
    /// The stream was refused; every later call returns the same error.
    Failed(DecodeError),
}

/// Cuts a byte stream into [`Frame`]s (PROTOCOL.md §2).
///
/// Feed it bytes as they arrive, in chunks of any size, with
/// [`handle_bytes`](Self::handle_bytes); take whole messages with
/// [`poll_message`](Self::poll_message). It holds at most one message: once
/// one is complete it consumes no more bytes until that message is taken.
///
/// ```
/// use mobidesk_display::protocol::{FrameDecoder, Message, PingRepr, Sender};
///
/// let bytes = Message::Ping(PingRepr { token: 7 }).to_vec()?;
/// let mut decoder = FrameDecoder::new(Sender::Client);
/// let mut input = &bytes[..];
/// let mut messages = Vec::new();
/// while !input.is_empty() {
///     let used = decoder.handle_bytes(input)?;
///     input = &input[used..];
///     while let Some(frame) = decoder.poll_message() {
///         messages.push(frame.parse()?.into_owned());
///     }
/// }
/// assert_eq!(messages, [Message::Ping(PingRepr { token: 7 })]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    peer: Sender,
    header: [u8; HEADER_LEN],
    filled: usize,
    state: State,
}

impl FrameDecoder {
    /// A decoder for what `peer` sends: a server decodes with
    /// `Sender::Client`, a client with `Sender::Server`, and a tool that reads
    /// both directions with `Sender::Either`.
    pub fn new(peer: Sender) -> Self {
        FrameDecoder {
            peer,
            header: [0; HEADER_LEN],
            filled: 0,
            state: State::Header,
        }
    }

    /// Consumes bytes from the front of `input` and returns how many. It
    /// stops early when a message is complete (take it with
    /// [`poll_message`](Self::poll_message), then call again with the rest).
    /// After an error the stream is dead: close with
    /// [`DecodeError::close_code`].
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<usize, DecodeError> {
        let mut used = 0;
        loop {
            let remaining = input.get(used..).unwrap_or_default();
            match mem::take(&mut self.state) {
                State::Failed(error) => {
                    self.state = State::Failed(error.clone());
                    return Err(error);
                }
                State::Ready(frame) => {
                    self.state = State::Ready(frame);
                    return Ok(used);
                }
                State::Header => {
                    let want = HEADER_LEN - self.filled;
                    let take = want.min(remaining.len());
                    let dst = self.header.get_mut(self.filled..self.filled + take);
                    if let (Some(dst), Some(src)) = (dst, remaining.get(..take)) {
                        dst.copy_from_slice(src);
                    }
                    self.filled += take;
                    used += take;
                    if self.filled < HEADER_LEN {
                        return Ok(used);
                    }
                    self.filled = 0;
                    match self.check_header() {
                        Ok((msg_type, 0)) => {
                            self.state = State::Ready(Frame {
                                msg_type,
                                body: Vec::new(),
                            });
                        }
                        Ok((msg_type, len)) => {
                            self.state = State::Body {
                                msg_type,
                                len,
                                body: Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY)),
                            };
                        }
                        Err(error) => {
                            self.state = State::Failed(error.clone());
                            return Err(error);
                        }
                    }
                }
                State::Body {
                    msg_type,
                    len,
                    mut body,
                } => {
                    let take = (len - body.len()).min(remaining.len());
                    body.extend_from_slice(remaining.get(..take).unwrap_or_default());
                    used += take;
                    if body.len() == len {
                        self.state = State::Ready(Frame { msg_type, body });
                    } else {
                        self.state = State::Body {
                            msg_type,
                            len,
                            body,
                        };
                        return Ok(used);
                    }
                }
            }
        }
    }

    /// The message completed by [`handle_bytes`](Self::handle_bytes), if any.
    pub fn poll_message(&mut self) -> Option<Frame> {
        match mem::take(&mut self.state) {
            State::Ready(frame) => Some(frame),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Whether the decoder sits between two messages with nothing buffered:
    /// a transport that ends when this is false ended inside a message.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.filled == 0
    }

    /// Bytes held for the message being read.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Header => self.filled,
            State::Body { body, .. } => HEADER_LEN + body.len(),
            State::Ready(frame) => HEADER_LEN + frame.body.len(),
            State::Failed(_) => 0,
        }
    }

    fn check_header(&self) -> Result<(MessageType, usize), DecodeError> {
        let [type_byte, l0, l1, l2, l3] = self.header;
        let msg_type =
            MessageType::from_u8(type_byte).ok_or(DecodeError::UnknownType(type_byte))?;
        if !msg_type.may_be_sent_by(self.peer) {
            return Err(DecodeError::UnexpectedType {
                msg_type,
                peer: self.peer,
            });
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let range = msg_type.body_len_range();
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > *range.end() {
            return Err(DecodeError::TooLarge {
                msg_type,
                len,
                max: *range.end(),
            });
        }
        if len_usize < *range.start() {
            return Err(DecodeError::TooShort {
                msg_type,
                len,
                min: *range.start(),
            });
        }
        Ok((msg_type, len_usize))
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::protocol::{KeyRepr, PingRepr, MAX_BODY_LEN};

    fn decode_all(decoder: &mut FrameDecoder, mut input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut frames = Vec::new();
        loop {
            let used = decoder.handle_bytes(input)?;
            input = &input[used..];
            let mut any = false;
            while let Some(frame) = decoder.poll_message() {
                frames.push(frame);
                any = true;
            }
            if input.is_empty() && !any {
                return Ok(frames);
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut bytes = Message::Ping(PingRepr { token: 1 }).to_vec().unwrap();
        bytes.extend(Message::StateComplete.to_vec().unwrap());
        let mut decoder = FrameDecoder::new(Sender::Either);
        let mut frames = Vec::new();
        for byte in &bytes {
            assert_eq!(decoder.handle_bytes(std::slice::from_ref(byte)), Ok(1));
            frames.extend(decoder.poll_message());
        }
        assert!(decoder.is_idle());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].parse(), Ok(Message::Ping(PingRepr { token: 1 })));
        assert_eq!(frames[1].parse(), Ok(Message::StateComplete));
    }

    #[test]
    fn stops_at_a_complete_message() {
        let mut bytes = Message::Ping(PingRepr { token: 1 }).to_vec().unwrap();
        bytes.extend(Message::Ping(PingRepr { token: 2 }).to_vec().unwrap());
        let mut decoder = FrameDecoder::new(Sender::Server);
        assert_eq!(decoder.handle_bytes(&bytes), Ok(13));
        assert_eq!(decoder.handle_bytes(&bytes[13..]), Ok(0));
        assert!(decoder.poll_message().is_some());
        assert!(decoder.poll_message().is_none());
        assert_eq!(decoder.handle_bytes(&bytes[13..]), Ok(13));
        assert_eq!(decode_all(&mut decoder, &[]).unwrap().len(), 1);
    }

    #[test]
    fn huge_length_is_refused_from_the_header() {
        let mut decoder = FrameDecoder::new(Sender::Server);
        let err = decoder.handle_bytes(&[0x12, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            err,
            Err(DecodeError::TooLarge {
                msg_type: MessageType::Raw,
                len: u32::MAX,
                max: MAX_BODY_LEN,
            })
        );
        assert_eq!(decoder.buffered(), 0);
        // Sticky.
        assert_eq!(decoder.handle_bytes(&[0]), err);
        assert_eq!(err.unwrap_err().close_code(), CloseCode::MessageTooLarge);
    }

    #[test]
    fn fixed_size_types_refuse_other_lengths() {
        let mut decoder = FrameDecoder::new(Sender::Client);
        assert_eq!(
            decoder.handle_bytes(&[0x20, 6, 0, 0, 0]),
            Err(DecodeError::TooLarge {
                msg_type: MessageType::Key,
                len: 6,
                max: KeyRepr::LEN,
            })
        );
        let mut decoder = FrameDecoder::new(Sender::Client);
        assert!(matches!(
            decoder.handle_bytes(&[0x20, 4, 0, 0, 0]),
            Err(DecodeError::TooShort { .. })
        ));
    }

    #[test]
    fn unknown_and_unexpected_types() {
        let mut decoder = FrameDecoder::new(Sender::Client);
        assert_eq!(
            decoder.handle_bytes(&[0x08, 0, 0, 0, 0]),
            Err(DecodeError::UnknownType(0x08))
        );
        let mut decoder = FrameDecoder::new(Sender::Client);
        assert_eq!(
            decoder.handle_bytes(&[0x13, 12, 0, 0, 0]),
            Err(DecodeError::UnexpectedType {
                msg_type: MessageType::Copy,
                peer: Sender::Client,
            })
        );
        let mut decoder = FrameDecoder::new(Sender::Server);
        assert!(matches!(
            decoder.handle_bytes(&[0x20, 5, 0, 0, 0]),
            Err(DecodeError::UnexpectedType { .. })
        ));
    }

    #[test]
    fn announced_length_is_not_allocated_up_front() {
        let mut decoder = FrameDecoder::new(Sender::Server);
        let header = [0x12, 0, 0, 0, 1]; // 16 MiB RAW
        assert_eq!(decoder.handle_bytes(&header), Ok(5));
        assert_eq!(decoder.handle_bytes(&[0; 10]), Ok(10));
        assert_eq!(decoder.buffered(), 15);
        assert!(!decoder.is_idle());
        match &decoder.state {
            State::Body { body, .. } => assert!(body.capacity() <= INITIAL_BODY_CAPACITY),
            other => panic!("{other:?}"),
        }
    }
}
