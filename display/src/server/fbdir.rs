//! Xvfb's `-fbdir DIR` framebuffer: the file `DIR/Xvfb_screen<N>` is an XWD
//! image that Xvfb maps and draws into, so a read-only mapping of it shows
//! the screen as it is, without a copy or an X round trip (DESIGN.md §3.1).
//!
//! The header parser is pure; the mapping is the one `unsafe` call of the
//! crate.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::encode::PixelView;

use super::ServerError;

/// The fields of an XWD header (`XWDFileHeader`, 25 big-endian `CARD32`s as
/// Xvfb writes them) that the server needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XwdHeader {
    /// Bytes of header plus window name.
    pub header_size: u32,
    /// Depth (24).
    pub depth: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 0 = LSB first.
    pub byte_order: u32,
    /// Bits per pixel (32).
    pub bits_per_pixel: u32,
    /// Bytes per row.
    pub bytes_per_line: u32,
    /// Colormap entries after the header, 12 bytes each.
    pub ncolors: u32,
}

impl XwdHeader {
    /// Size of the fixed part.
    pub const LEN: usize = 25 * 4;
    const XWD_FILE_VERSION: u32 = 7;
    const Z_PIXMAP: u32 = 2;

    /// Parses and checks the header: version 7, ZPixmap, depth 24, 32 bits
    /// per pixel, LSB first (the BGRX of PROTOCOL.md §1).
    pub fn parse(bytes: &[u8]) -> Result<Self, ServerError> {
        let word = |i: usize| -> Result<u32, ServerError> {
            bytes
                .get(i * 4..i * 4 + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| ServerError::Fbdir("xwd header is truncated".into()))
        };
        let header = XwdHeader {
            header_size: word(0)?,
            depth: word(3)?,
            width: word(4)?,
            height: word(5)?,
            byte_order: word(7)?,
            bits_per_pixel: word(11)?,
            bytes_per_line: word(12)?,
            ncolors: word(19)?,
        };
        let bad = |what: &str| Err(ServerError::Fbdir(format!("xwd header: {what}")));
        if word(1)? != Self::XWD_FILE_VERSION {
            return bad("not an XWD version 7 file");
        }
        if word(2)? != Self::Z_PIXMAP {
            return bad("not a ZPixmap");
        }
        if header.depth != 24 || header.bits_per_pixel != 32 || header.byte_order != 0 {
            return bad(
                "only depth 24, 32 bits per pixel, LSB first (start Xvfb with -screen 0 WxHx24)",
            );
        }
        if header.width == 0
            || header.height == 0
            || header.width > u32::from(crate::protocol::MAX_DIMENSION)
            || header.height > u32::from(crate::protocol::MAX_DIMENSION)
            || header.bytes_per_line < header.width * 4
        {
            return bad("bad size");
        }
        Ok(header)
    }

    /// Where the pixels start: after the header, the window name and the
    /// colormap.
    pub fn pixel_offset(&self) -> usize {
        self.header_size as usize + self.ncolors as usize * 12
    }

    /// Bytes of the file up to the end of the last row.
    pub fn file_len(&self) -> usize {
        self.pixel_offset() + self.bytes_per_line as usize * self.height as usize
    }
}

/// A read-only mapping of Xvfb's framebuffer file.
#[derive(Debug)]
pub struct FbdirScreen {
    map: Mmap,
    header: XwdHeader,
}

impl FbdirScreen {
    /// Maps `DIR/Xvfb_screen0`.
    pub fn open(dir: &Path) -> Result<Self, ServerError> {
        let path = dir.join("Xvfb_screen0");
        let file = File::open(&path)
            .map_err(|e| ServerError::Fbdir(format!("{}: {e}", path.display())))?;
        // SAFETY: memmap2 requires that the file is not truncated while
        // mapped (a read past the end would SIGBUS) and warns that its
        // contents may change underneath. Xvfb creates the file at its full
        // size at startup and only truncates it when it exits; its RANDR
        // (`vfbRRScreenSetSize`) changes only the screen's width and height
        // within the size it started with, never the framebuffer or the file
        // (the server reads the top-left part; the size is checked after
        // every RANDR change, and the file's length below). The bytes
        // changing underneath is what we want: it is the live screen. We only
        // read them as plain bytes (no references into it outlive one encode
        // call, no invariants depend on their values); a row read while Xvfb
        // draws it is sent again on the DAMAGE event that follows.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| ServerError::Fbdir(format!("mmap {}: {e}", path.display())))?;
        let header = XwdHeader::parse(&map)?;
        if map.len() < header.file_len() {
            return Err(ServerError::Fbdir(format!(
                "{}: {} bytes, the header needs {}",
                path.display(),
                map.len(),
                header.file_len()
            )));
        }
        Ok(FbdirScreen { map, header })
    }

    /// The header.
    pub fn header(&self) -> XwdHeader {
        self.header
    }

    /// The whole screen.
    pub fn view(&self) -> Result<PixelView<'_>, ServerError> {
        let data = self
            .map
            .get(self.header.pixel_offset()..)
            .unwrap_or_default();
        PixelView::new(
            data,
            self.header.bytes_per_line as usize,
            u16::try_from(self.header.width).unwrap_or(0),
            u16::try_from(self.header.height).unwrap_or(0),
        )
        .map_err(|e| ServerError::Fbdir(e.to_string()))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn header(words: [u32; 25]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn parses_an_xvfb_header() {
        let mut w = [0u32; 25];
        w[0] = 120;
        w[1] = 7;
        w[2] = 2;
        w[3] = 24;
        w[4] = 640;
        w[5] = 480;
        w[11] = 32;
        w[12] = 2560;
        w[19] = 256;
        let h = XwdHeader::parse(&header(w)).unwrap();
        assert_eq!((h.width, h.height, h.bytes_per_line), (640, 480, 2560));
        assert_eq!(h.pixel_offset(), 120 + 256 * 12);
        assert_eq!(h.file_len(), 120 + 256 * 12 + 2560 * 480);
        w[3] = 16;
        assert!(XwdHeader::parse(&header(w)).is_err());
        assert!(XwdHeader::parse(&header(w)[..40]).is_err());
    }
}
