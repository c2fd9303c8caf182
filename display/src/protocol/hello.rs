//! Version and capability negotiation: `ClientHello` and `ServerHello`
//! (PROTOCOL.md §3.1, §3.2).

use std::borrow::Cow;

use super::wire::{
    check_range, check_reserved, check_room, expect_end, get, get_u16, get_u32, get_u8, put,
    put_u16, put_u32, put_u8, Field,
};
use super::{EmitError, Error, MAGIC, MAX_CODECS, MAX_DIMENSION, MAX_TOKEN_LEN, MAX_VERSIONS};

/// The capability bits of the hellos (PROTOCOL.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// The client accepts `Video`/`VideoEnd`.
    pub const VIDEO: Capabilities = Capabilities(1 << 0);
    /// The client draws the cursor from `CursorShape`/`CursorPosition`.
    pub const CURSOR: Capabilities = Capabilities(1 << 1);
    /// The client exchanges `Clipboard` messages.
    pub const CLIPBOARD: Capabilities = Capabilities(1 << 2);
    /// The client decodes `Compressed` messages: the server may send its
    /// messages in a zstd stream (PROTOCOL.md §2.1).
    pub const ZSTD: Capabilities = Capabilities(1 << 3);
    /// Every capability version 1 defines.
    pub const ALL: Capabilities = Capabilities(0b1111);
    /// None.
    pub const NONE: Capabilities = Capabilities(0);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits set in both.
    pub fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

impl core::ops::BitOr for Capabilities {
    type Output = Capabilities;

    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

mod field {
    use super::Field;

    pub(super) const MAGIC: Field = 0..4;
    pub(super) const CLIENT_CAPABILITIES: Field = 4..8;
    pub(super) const MAX_WIDTH: Field = 8..10;
    pub(super) const MAX_HEIGHT: Field = 10..12;
    pub(super) const VERSION_COUNT: usize = 12;
    pub(super) const CODEC_COUNT: usize = 13;
    pub(super) const TOKEN_LEN: usize = 14;
    pub(super) const RESERVED: usize = 15;
    pub(super) const CLIENT_LISTS: usize = 16;

    pub(super) const VERSION: Field = 4..6;
    pub(super) const SERVER_CAPABILITIES: Field = 6..10;
    pub(super) const FLAGS: usize = 10;
    pub(super) const SERVER_CODEC_COUNT: usize = 11;
    pub(super) const SERVER_CODECS: usize = 12;
}

/// The client's hello (PROTOCOL.md §3.1, type 0x01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloRepr<'a> {
    /// What the client supports; unknown bits are kept as received.
    pub capabilities: Capabilities,
    /// The viewport width, 1 ..= 8192.
    pub max_width: u16,
    /// The viewport height, 1 ..= 8192.
    pub max_height: u16,
    /// Protocol versions, 1 ..= 16 of them, each ≥ 1, no duplicates.
    pub versions: Vec<u16>,
    /// Optional video codecs, 0 ..= 16 of them, each ≥ 0x80, no duplicates.
    pub codecs: Vec<u8>,
    /// An opaque credential, 0 ..= 255 bytes.
    pub token: Cow<'a, [u8]>,
}

impl<'a> ClientHelloRepr<'a> {
    /// Body length without the lists.
    pub const FIXED_LEN: usize = field::CLIENT_LISTS;

    /// Parses a `ClientHello` body.
    pub fn parse(body: &'a [u8]) -> Result<Self, Error> {
        check_magic(body)?;
        let version_count = usize::from(get_u8(body, field::VERSION_COUNT)?);
        let codec_count = usize::from(get_u8(body, field::CODEC_COUNT)?);
        let token_len = usize::from(get_u8(body, field::TOKEN_LEN)?);
        check_reserved("reserved", u32::from(get_u8(body, field::RESERVED)?), 0)?;
        let versions_at = field::CLIENT_LISTS;
        let codecs_at = versions_at + 2 * version_count;
        let token_at = codecs_at + codec_count;
        let end = token_at + token_len;
        expect_end(body, end)?;
        let versions = get(body, versions_at..codecs_at)?
            .chunks_exact(2)
            .map(|v| u16::from_le_bytes([v[0], v[1]]))
            .collect();
        let repr = ClientHelloRepr {
            capabilities: Capabilities(get_u32(body, field::CLIENT_CAPABILITIES)?),
            max_width: get_u16(body, field::MAX_WIDTH)?,
            max_height: get_u16(body, field::MAX_HEIGHT)?,
            versions,
            codecs: get(body, codecs_at..token_at)?.to_vec(),
            token: Cow::Borrowed(get(body, token_at..end)?),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §3.1.
    pub fn validate(&self) -> Result<(), Error> {
        let max = u64::from(MAX_DIMENSION);
        check_range("max_width", u64::from(self.max_width), 1, max)?;
        check_range("max_height", u64::from(self.max_height), 1, max)?;
        check_count("version_count", self.versions.len(), 1, MAX_VERSIONS)?;
        check_count("codec_count", self.codecs.len(), 0, MAX_CODECS)?;
        check_count("token_len", self.token.len(), 0, MAX_TOKEN_LEN)?;
        for (i, &version) in self.versions.iter().enumerate() {
            check_range("version", u64::from(version), 1, u64::from(u16::MAX))?;
            if self.versions[..i].contains(&version) {
                return Err(Error::Duplicate {
                    field: "versions",
                    value: version,
                });
            }
        }
        check_codecs(&self.codecs)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::FIXED_LEN + 2 * self.versions.len() + self.codecs.len() + self.token.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put(buf, field::MAGIC.start, &MAGIC)?;
        put_u32(buf, field::CLIENT_CAPABILITIES, self.capabilities.0)?;
        put_u16(buf, field::MAX_WIDTH, self.max_width)?;
        put_u16(buf, field::MAX_HEIGHT, self.max_height)?;
        // INVARIANT: validate() bounded the three lengths to u8.
        put_u8(buf, field::VERSION_COUNT, count_u8(self.versions.len()))?;
        put_u8(buf, field::CODEC_COUNT, count_u8(self.codecs.len()))?;
        put_u8(buf, field::TOKEN_LEN, count_u8(self.token.len()))?;
        put_u8(buf, field::RESERVED, 0)?;
        let mut at = field::CLIENT_LISTS;
        for version in &self.versions {
            put(buf, at, &version.to_le_bytes())?;
            at += 2;
        }
        put(buf, at, &self.codecs)?;
        put(buf, at + self.codecs.len(), &self.token)
    }

    /// An owned copy.
    pub fn into_owned(self) -> ClientHelloRepr<'static> {
        ClientHelloRepr {
            token: Cow::Owned(self.token.into_owned()),
            ..self
        }
    }

    /// The version a server speaking `supported` chooses: the highest common
    /// one (PROTOCOL.md §3.2).
    pub fn choose_version(&self, supported: &[u16]) -> Option<u16> {
        self.versions
            .iter()
            .copied()
            .filter(|v| supported.contains(v))
            .max()
    }
}

/// The server's hello (PROTOCOL.md §3.2, type 0x02).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHelloRepr {
    /// The version chosen, ≥ 1.
    pub version: u16,
    /// The capabilities in force (only bits version 1 defines).
    pub capabilities: Capabilities,
    /// The server will not apply this client's input.
    pub view_only: bool,
    /// The optional codecs the server may use, 0 ..= 16, each ≥ 0x80.
    pub codecs: Vec<u8>,
}

impl ServerHelloRepr {
    /// Body length without the codec list.
    pub const FIXED_LEN: usize = field::SERVER_CODECS;
    const VIEW_ONLY: u8 = 1 << 0;

    /// Parses a `ServerHello` body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        check_magic(body)?;
        let flags = get_u8(body, field::FLAGS)?;
        check_reserved("flags", u32::from(flags), u32::from(Self::VIEW_ONLY))?;
        let codec_count = usize::from(get_u8(body, field::SERVER_CODEC_COUNT)?);
        let end = field::SERVER_CODECS + codec_count;
        expect_end(body, end)?;
        let repr = ServerHelloRepr {
            version: get_u16(body, field::VERSION)?,
            capabilities: Capabilities(get_u32(body, field::SERVER_CAPABILITIES)?),
            view_only: flags & Self::VIEW_ONLY != 0,
            codecs: get(body, field::SERVER_CODECS..end)?.to_vec(),
        };
        repr.validate()?;
        Ok(repr)
    }

    /// Checks the limits of PROTOCOL.md §3.2.
    pub fn validate(&self) -> Result<(), Error> {
        check_range("version", u64::from(self.version), 1, u64::from(u16::MAX))?;
        check_reserved("capabilities", self.capabilities.0, Capabilities::ALL.0)?;
        check_count("codec_count", self.codecs.len(), 0, MAX_CODECS)?;
        check_codecs(&self.codecs)
    }

    /// Body length.
    pub fn buffer_len(&self) -> usize {
        Self::FIXED_LEN + self.codecs.len()
    }

    /// Writes the body into `buf[..self.buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), EmitError> {
        self.validate()?;
        check_room(buf, self.buffer_len())?;
        put(buf, field::MAGIC.start, &MAGIC)?;
        put_u16(buf, field::VERSION, self.version)?;
        put_u32(buf, field::SERVER_CAPABILITIES, self.capabilities.0)?;
        let flags = if self.view_only { Self::VIEW_ONLY } else { 0 };
        put_u8(buf, field::FLAGS, flags)?;
        put_u8(buf, field::SERVER_CODEC_COUNT, count_u8(self.codecs.len()))?;
        put(buf, field::SERVER_CODECS, &self.codecs)
    }
}

fn check_magic(body: &[u8]) -> Result<(), Error> {
    let magic = get(body, field::MAGIC)?;
    if magic != MAGIC {
        let mut found = [0; 4];
        found.copy_from_slice(magic);
        return Err(Error::BadMagic { found });
    }
    Ok(())
}

fn check_count(field: &'static str, count: usize, min: usize, max: usize) -> Result<(), Error> {
    let as_u64 = super::wire::as_u64;
    check_range(field, as_u64(count), as_u64(min), as_u64(max))
}

fn check_codecs(codecs: &[u8]) -> Result<(), Error> {
    for (i, &codec) in codecs.iter().enumerate() {
        check_range("codec", u64::from(codec), 0x80, 0xff)?;
        if codecs[..i].contains(&codec) {
            return Err(Error::Duplicate {
                field: "codecs",
                value: u16::from(codec),
            });
        }
    }
    Ok(())
}

fn count_u8(len: usize) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod test {
    use super::*;

    fn client() -> ClientHelloRepr<'static> {
        ClientHelloRepr {
            capabilities: Capabilities::ALL,
            max_width: 1024,
            max_height: 768,
            versions: vec![1, 2],
            codecs: vec![0x80],
            token: Cow::Borrowed(b"tok"),
        }
    }

    #[test]
    fn client_hello_bytes() {
        let hello = client();
        let mut buf = vec![0; hello.buffer_len()];
        hello.emit(&mut buf).unwrap();
        assert_eq!(
            buf,
            [
                b'M', b'D', b'S', b'K', 15, 0, 0, 0, 0, 4, 0, 3, 2, 1, 3, 0, 1, 0, 2, 0, 0x80,
                b't', b'o', b'k'
            ]
        );
        assert_eq!(ClientHelloRepr::parse(&buf), Ok(hello));
        buf[15] = 1;
        assert!(matches!(
            ClientHelloRepr::parse(&buf),
            Err(Error::ReservedBits { .. })
        ));
    }

    #[test]
    fn client_hello_limits() {
        let mut hello = client();
        hello.versions = vec![1, 1];
        assert!(matches!(hello.validate(), Err(Error::Duplicate { .. })));
        hello.versions = vec![];
        assert!(hello.validate().is_err());
        hello.versions = vec![0];
        assert!(hello.validate().is_err());
        let mut hello = client();
        hello.codecs = vec![0x7f];
        assert!(hello.validate().is_err());
        hello.codecs = vec![];
        hello.max_width = 8193;
        assert!(hello.validate().is_err());
        let mut buf = vec![0; 64];
        let mut bad = client();
        bad.token = Cow::Owned(vec![0; 256]);
        assert!(matches!(bad.emit(&mut buf), Err(EmitError::Invalid(_))));
        let mut short = [0; 20];
        assert!(matches!(
            client().emit(&mut short),
            Err(EmitError::BufferTooSmall { need: 24, have: 20 })
        ));
        assert_eq!(
            ClientHelloRepr::parse(b"MDSX\0\0\0\0"),
            Err(Error::BadMagic { found: *b"MDSX" })
        );
    }

    #[test]
    fn version_choice() {
        assert_eq!(client().choose_version(&[1]), Some(1));
        assert_eq!(client().choose_version(&[2, 1, 3]), Some(2));
        assert_eq!(client().choose_version(&[3]), None);
    }

    #[test]
    fn server_hello_round_trip() {
        let hello = ServerHelloRepr {
            version: 1,
            capabilities: Capabilities::CURSOR | Capabilities::VIDEO,
            view_only: true,
            codecs: vec![],
        };
        let mut buf = vec![0; hello.buffer_len()];
        hello.emit(&mut buf).unwrap();
        assert_eq!(buf, [b'M', b'D', b'S', b'K', 1, 0, 3, 0, 0, 0, 1, 0]);
        assert_eq!(ServerHelloRepr::parse(&buf), Ok(hello));
        buf[10] = 3;
        assert!(ServerHelloRepr::parse(&buf).is_err());
        buf[10] = 0;
        buf[6] = 16;
        assert!(ServerHelloRepr::parse(&buf).is_err());
    }
}
