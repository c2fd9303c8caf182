//! The framebuffer as a PNG (`--png`).

use std::io::Write;

use mobidesk_display::codec::Framebuffer;

/// Why the PNG was not written.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    /// The encoder or the writer failed.
    #[error("png: {0}")]
    Encode(#[from] png::EncodingError),
}

/// Writes `fb` as an 8-bit RGB PNG (the X byte of BGRX is dropped).
pub fn write_png(fb: &Framebuffer, out: impl Write) -> Result<(), PngError> {
    let mut encoder = png::Encoder::new(out, u32::from(fb.width()), u32::from(fb.height()));
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let mut rgb = Vec::with_capacity(fb.pixels().len() * 3);
    for p in fb.pixels() {
        let [b, g, r, _] = p.to_le_bytes();
        rgb.extend_from_slice(&[r, g, b]);
    }
    writer.write_image_data(&rgb)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn writes_a_decodable_png() {
        let fb = Framebuffer::from_pixels(2, 1, vec![0x00ff_0000, 0x0000_00ff]).unwrap();
        let mut bytes = Vec::new();
        write_png(&fb, &mut bytes).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2, 1));
        assert_eq!(&buf[..6], &[255, 0, 0, 0, 0, 255]);
    }
}
