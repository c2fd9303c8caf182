//! VIDEO: I420 conversion and scaling are "close" (PSNR ≥ 30 dB over R, G,
//! B; PROTOCOL.md §6.1).

use mobidesk_display::codec::scale::scale_bgrx;
use mobidesk_display::codec::yuv::{bgrx_to_i420, psnr, I420Buf, CLOSE_PSNR_DB};
use mobidesk_display::codec::{Filter, Framebuffer};
use mobidesk_display::protocol::*;

use crate::rng::Rng;

/// Smooth gradients with a little noise: photo-like content.
fn photo(width: usize, height: usize) -> Vec<u32> {
    let mut rng = Rng::new(20);
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f64, y as f64);
            let noise = |rng: &mut Rng| rng.range(0, 8) as f64 - 4.0;
            let r = 128.0 + 90.0 * (fx / 9.0 + fy / 23.0).sin() + noise(&mut rng);
            let g = 128.0 + 90.0 * (fx / 17.0 - fy / 7.0).cos() + noise(&mut rng);
            let b = 128.0 + 90.0 * ((fx + fy) / 13.0).sin() + noise(&mut rng);
            let c = |v: f64| v.clamp(0.0, 255.0) as u32;
            out.push((c(r) << 16) | (c(g) << 8) | c(b));
        }
    }
    out
}

fn video_of(frame: &I420Buf, dst: Rect, lz4: bool) -> Command<'static> {
    let plane = |p: &Vec<u8>| -> std::borrow::Cow<'static, [u8]> {
        if lz4 {
            Payload::lz4(p).data.into_owned().into()
        } else {
            p.clone().into()
        }
    };
    Command::Video(VideoRepr {
        stream_id: 1,
        frame: 0,
        dst,
        src_w: frame.width as u16,
        src_h: frame.height as u16,
        data: VideoData::I420 {
            encoding: if lz4 { Encoding::Lz4 } else { Encoding::Plain },
            y: plane(&frame.y),
            u: plane(&frame.u),
            v: plane(&frame.v),
        },
    })
}

#[test]
fn one_to_one_is_close() {
    let (w, h) = (96, 64);
    let source = photo(w, h);
    let frame = bgrx_to_i420(&source, w, h);
    for (filter, lz4) in [(Filter::Bilinear, false), (Filter::Nearest, true)] {
        let mut fb = Framebuffer::new(w as u16 + 10, h as u16 + 10).unwrap();
        fb.set_video_filter(filter);
        let dst = Rect::new(5, 7, w as u16, h as u16);
        let command = video_of(&frame, dst, lz4);
        // Through the wire and back.
        let bytes = Message::Command(command.clone()).to_vec().unwrap();
        let parsed = Message::parse_u8(bytes[0], &bytes[HEADER_LEN..]).unwrap();
        let Message::Command(parsed) = parsed else {
            panic!("not a command")
        };
        fb.apply(&parsed).unwrap();
        let db = psnr(&fb.region(dst).unwrap(), &source);
        // What PROTOCOL.md §6.1 states for photo-like content at 1:1:
        // about 40 dB with bilinear chroma, about 36 dB with nearest.
        let bound = if filter == Filter::Bilinear {
            38.0
        } else {
            34.0
        };
        eprintln!("1:1 {filter:?}: {db:.1} dB");
        assert!(db > bound && db >= CLOSE_PSNR_DB, "{filter:?}: {db:.1} dB");
        // Nothing outside dst changed.
        assert_eq!(fb.pixel(4, 7), Some(0));
        assert_eq!(fb.pixel(5, 6), Some(0));
        assert_eq!(fb.pixel(5 + w as u16, 7), Some(0));
    }
}

#[test]
fn scaled_is_close() {
    let (w, h) = (120, 90);
    let source = photo(w, h);
    let frame = bgrx_to_i420(&source, w, h);
    for (dw, dh) in [(60, 45), (80, 50), (200, 150), (37, 91)] {
        for filter in [Filter::Bilinear, Filter::Nearest] {
            let mut fb = Framebuffer::new(dw, dh).unwrap();
            fb.set_video_filter(filter);
            let dst = Rect::new(0, 0, dw, dh);
            fb.apply(&video_of(&frame, dst, false)).unwrap();
            let reference = scale_bgrx(&source, w, h, usize::from(dw), usize::from(dh), filter);
            let db = psnr(fb.pixels(), &reference);
            eprintln!("{w}x{h} -> {dw}x{dh} {filter:?}: {db:.1} dB");
            assert!(db >= CLOSE_PSNR_DB, "{dw}x{dh} {filter:?}: {db:.1} dB");
        }
    }
}

#[test]
fn nearest_upscale_replicates_pixels() {
    let (w, h) = (7, 5);
    let source = photo(w, h);
    let frame = bgrx_to_i420(&source, w, h);
    let mut one = Framebuffer::new(w as u16, h as u16).unwrap();
    one.set_video_filter(Filter::Nearest);
    one.apply(&video_of(
        &frame,
        Rect::new(0, 0, w as u16, h as u16),
        false,
    ))
    .unwrap();
    let mut two = Framebuffer::new(2 * w as u16, 2 * h as u16).unwrap();
    two.set_video_filter(Filter::Nearest);
    two.apply(&video_of(
        &frame,
        Rect::new(0, 0, 2 * w as u16, 2 * h as u16),
        false,
    ))
    .unwrap();
    for y in 0..2 * h as u16 {
        for x in 0..2 * w as u16 {
            assert_eq!(two.pixel(x, y), one.pixel(x / 2, y / 2), "{x},{y}");
        }
    }
}

#[test]
fn odd_sizes_and_corrupt_planes() {
    let frame = bgrx_to_i420(&photo(5, 3), 5, 3);
    assert_eq!((frame.y.len(), frame.u.len(), frame.v.len()), (15, 6, 6));
    let mut fb = Framebuffer::new(8, 8).unwrap();
    fb.apply(&video_of(&frame, Rect::new(1, 1, 5, 3), false))
        .unwrap();
    // A corrupt LZ4 plane is bad_payload and changes nothing.
    let before = fb.clone();
    let bad = Command::Video(VideoRepr {
        stream_id: 1,
        frame: 1,
        dst: Rect::new(0, 0, 8, 8),
        src_w: 5,
        src_h: 3,
        data: VideoData::I420 {
            encoding: Encoding::Lz4,
            y: vec![0xf0, 1].into(),
            u: vec![0x60, 1, 2, 3, 4, 5, 6].into(),
            v: vec![0x60, 1, 2, 3, 4, 5, 6].into(),
        },
    });
    let err = fb.apply(&bad).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::BadPayload);
    assert_eq!(fb, before);
}
