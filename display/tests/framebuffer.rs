//! The reference framebuffer (`codec::Framebuffer`) against PROTOCOL.md §5.

use mobidesk_display::codec::{ApplyError, Framebuffer};
use mobidesk_display::fuzzing::{apply_oracle, Model};
use mobidesk_display::protocol::*;

use crate::rng::Rng;

fn numbered(width: u16, height: u16) -> Framebuffer {
    let pixels = (0..u32::from(width) * u32::from(height)).collect();
    Framebuffer::from_pixels(width, height, pixels).unwrap()
}

fn model_of(fb: &Framebuffer) -> Model {
    Model {
        width: usize::from(fb.width()),
        height: usize::from(fb.height()),
        pixels: fb.pixels().to_vec(),
    }
}

/// Applies `command` to `fb` and to the naive model and checks both agree.
fn apply_both(fb: &mut Framebuffer, command: &Command<'_>) -> Result<(), ApplyError> {
    let mut model = model_of(fb);
    let before = fb.clone();
    let got = fb.apply(command);
    assert_eq!(got.is_ok(), model.apply(command), "{command:?}");
    if got.is_err() {
        assert_eq!(*fb, before);
    }
    assert_eq!(fb.pixels(), &model.pixels[..]);
    got
}

#[test]
fn copy_overlapping_in_both_directions() {
    let mut rng = Rng::new(10);
    for _ in 0..2000 {
        let (w, h) = (rng.range(1, 12) as u16, rng.range(1, 12) as u16);
        let cw = rng.range(1, u64::from(w)) as u16;
        let ch = rng.range(1, u64::from(h)) as u16;
        let copy = CopyRepr {
            src_x: rng.range(0, u64::from(w - cw)) as u16,
            src_y: rng.range(0, u64::from(h - ch)) as u16,
            dst_x: rng.range(0, u64::from(w - cw)) as u16,
            dst_y: rng.range(0, u64::from(h - ch)) as u16,
            w: cw,
            h: ch,
        };
        let mut fb = numbered(w, h);
        apply_both(&mut fb, &Command::Copy(copy)).unwrap();
    }
}

#[test]
fn scroll_up_and_down_by_one_row() {
    // The typical COPY: a terminal scrolls by one line, both ways.
    let mut fb = numbered(4, 5);
    let up = CopyRepr {
        src_x: 0,
        src_y: 1,
        dst_x: 0,
        dst_y: 0,
        w: 4,
        h: 4,
    };
    apply_both(&mut fb, &Command::Copy(up)).unwrap();
    assert_eq!(&fb.pixels()[..4], &[4, 5, 6, 7]);
    assert_eq!(&fb.pixels()[12..], &[16, 17, 18, 19, 16, 17, 18, 19]);
    let mut fb = numbered(4, 5);
    let down = CopyRepr {
        src_y: 0,
        dst_y: 1,
        ..up
    };
    apply_both(&mut fb, &Command::Copy(down)).unwrap();
    assert_eq!(&fb.pixels()[..8], &[0, 1, 2, 3, 0, 1, 2, 3]);
    assert_eq!(&fb.pixels()[16..], &[12, 13, 14, 15]);
    // And sideways, within rows.
    let mut fb = numbered(5, 1);
    let right = CopyRepr {
        src_x: 0,
        src_y: 0,
        dst_x: 1,
        dst_y: 0,
        w: 4,
        h: 1,
    };
    apply_both(&mut fb, &Command::Copy(right)).unwrap();
    assert_eq!(fb.pixels(), &[0, 0, 1, 2, 3]);
}

#[test]
fn bitmap_with_and_without_background() {
    // 10 × 2: row 0 = 1010_0000 01.., row 1 = 0000_0000 1...
    let bits = Payload::plain(vec![0b1010_0000, 0b0100_0000, 0, 0b1000_0000]);
    let rect = Rect::new(1, 1, 10, 2);
    let (fg, bg) = (0x00ff_0000, 0x0000_00ff);
    let mut fb = Framebuffer::new(12, 3).unwrap();
    let transparent = BitmapRepr {
        rect,
        fg,
        bg: None,
        bits: bits.clone(),
    };
    apply_both(&mut fb, &Command::Bitmap(transparent)).unwrap();
    let row = |fb: &Framebuffer, y: u16| -> Vec<u32> {
        (0..12).map(|x| fb.pixel(x, y).unwrap()).collect()
    };
    assert_eq!(row(&fb, 1), [0, fg, 0, fg, 0, 0, 0, 0, 0, 0, fg, 0]);
    assert_eq!(row(&fb, 2), [0, 0, 0, 0, 0, 0, 0, 0, 0, fg, 0, 0]);
    assert!(row(&fb, 0).iter().all(|&p| p == 0));

    let opaque = BitmapRepr {
        rect,
        fg,
        bg: Some(bg),
        bits,
    };
    let mut fb = Framebuffer::new(12, 3).unwrap();
    apply_both(&mut fb, &Command::Bitmap(opaque)).unwrap();
    assert_eq!(row(&fb, 1), [0, fg, bg, fg, bg, bg, bg, bg, bg, bg, fg, 0]);
    assert_eq!(row(&fb, 2), [0, bg, bg, bg, bg, bg, bg, bg, bg, fg, bg, 0]);
}

#[test]
fn bitmap_padding_bits_are_ignored() {
    let rect = Rect::new(0, 0, 3, 1);
    let mut a = Framebuffer::new(3, 1).unwrap();
    let mut b = Framebuffer::new(3, 1).unwrap();
    for (fb, byte) in [(&mut a, 0b1010_0000u8), (&mut b, 0b1011_1111)] {
        let bitmap = BitmapRepr {
            rect,
            fg: 1,
            bg: Some(2),
            bits: Payload::plain(vec![byte]),
        };
        fb.apply(&Command::Bitmap(bitmap)).unwrap();
    }
    assert_eq!(a, b);
    assert_eq!(a.pixels(), &[1, 2, 1]);
}

#[test]
fn pfill_tile_origin() {
    // A 2 × 2 tile [a b / c d] with origin (1, 1): pixel (1, 1) gets a, (0, 0)
    // gets d, (2, 0) gets d, (0, 1) gets b.
    let (a, b, c, d) = (0xa, 0xb, 0xc, 0xd);
    let tile: Vec<u8> = [a, b, c, d]
        .iter()
        .flat_map(|p: &u32| p.to_le_bytes())
        .collect();
    let fill = PFillRepr {
        tile_w: 2,
        tile_h: 2,
        origin_x: 1,
        origin_y: 1,
        rects: vec![Rect::new(0, 0, 4, 3)],
        tile: Payload::compress(&tile),
    };
    let mut fb = Framebuffer::new(4, 3).unwrap();
    apply_both(&mut fb, &Command::PFill(fill)).unwrap();
    assert_eq!(
        fb.pixels(),
        &[d, c, d, c, b, a, b, a, d, c, d, c],
        "rows: [d c d c] [b a b a] [d c d c]"
    );
}

#[test]
fn pfill_rects_share_the_tiling() {
    // Two rectangles of one PFILL line up as one tiling of the plane.
    let tile: Vec<u8> = (0..9u32).flat_map(|p| p.to_le_bytes()).collect();
    let whole = PFillRepr {
        tile_w: 3,
        tile_h: 3,
        origin_x: 2,
        origin_y: 1,
        rects: vec![Rect::new(0, 0, 7, 5)],
        tile: Payload::plain(tile.clone()),
    };
    let split = PFillRepr {
        rects: vec![
            Rect::new(0, 0, 3, 5),
            Rect::new(3, 0, 4, 2),
            Rect::new(3, 2, 4, 3),
        ],
        ..whole.clone()
    };
    let mut a = Framebuffer::new(7, 5).unwrap();
    let mut b = Framebuffer::new(7, 5).unwrap();
    apply_both(&mut a, &Command::PFill(whole)).unwrap();
    apply_both(&mut b, &Command::PFill(split)).unwrap();
    assert_eq!(a, b);
}

#[test]
fn commands_outside_the_framebuffer_are_errors() {
    let mut fb = numbered(8, 6);
    let before = fb.clone();
    let outside = [
        Rect::new(0, 0, 9, 1),
        Rect::new(7, 0, 2, 1),
        Rect::new(0, 5, 1, 2),
        Rect::new(8, 6, 1, 1),
        Rect::new(100, 100, 1, 1),
    ];
    for rect in outside {
        let raw = RawRepr {
            rect,
            data: Payload::plain(vec![0; rect.area() * 4]),
        };
        let err = apply_both(&mut fb, &Command::Raw(raw)).unwrap_err();
        assert!(matches!(err, ApplyError::OutOfBounds { .. }), "{err}");
        assert_eq!(err.close_code(), CloseCode::OutOfBounds);
        let fill = SFillRepr {
            colour: 1,
            rects: vec![Rect::new(0, 0, 1, 1), rect],
        };
        assert!(apply_both(&mut fb, &Command::SFill(fill)).is_err());
        let bitmap = BitmapRepr {
            rect,
            fg: 1,
            bg: None,
            bits: Payload::plain(vec![
                0xff;
                usize::from(rect.w).div_ceil(8) * usize::from(rect.h)
            ]),
        };
        assert!(apply_both(&mut fb, &Command::Bitmap(bitmap)).is_err());
        let copy = CopyRepr {
            src_x: 0,
            src_y: 0,
            dst_x: rect.x,
            dst_y: rect.y,
            w: rect.w,
            h: rect.h,
        };
        assert!(apply_both(&mut fb, &Command::Copy(copy)).is_err());
        let copy_from = CopyRepr {
            src_x: rect.x,
            src_y: rect.y,
            dst_x: 0,
            dst_y: 0,
            ..copy
        };
        assert!(apply_both(&mut fb, &Command::Copy(copy_from)).is_err());
        let video = VideoRepr {
            stream_id: 1,
            frame: 1,
            dst: rect,
            src_w: 2,
            src_h: 2,
            data: VideoData::I420 {
                encoding: Encoding::Plain,
                y: vec![0; 4].into(),
                u: vec![0; 1].into(),
                v: vec![0; 1].into(),
            },
        };
        assert!(matches!(
            fb.apply(&Command::Video(video)),
            Err(ApplyError::OutOfBounds { .. })
        ));
    }
    assert_eq!(fb, before);
    // The edge itself is inside.
    let fill = SFillRepr {
        colour: 9,
        rects: vec![Rect::new(7, 5, 1, 1), Rect::new(0, 0, 8, 6)],
    };
    apply_both(&mut fb, &Command::SFill(fill)).unwrap();
}

#[test]
fn hand_built_invalid_commands_are_errors() {
    let mut fb = numbered(4, 4);
    let raw = RawRepr {
        rect: Rect::new(0, 0, 0, 1),
        data: Payload::plain(vec![]),
    };
    assert!(matches!(
        fb.apply(&Command::Raw(raw)),
        Err(ApplyError::Invalid(Error::EmptyRect(_)))
    ));
    let fill = PFillRepr {
        tile_w: 1,
        tile_h: 1,
        origin_x: 1,
        origin_y: 0,
        rects: vec![Rect::new(0, 0, 1, 1)],
        tile: Payload::plain(vec![0; 4]),
    };
    assert!(apply_both(&mut fb, &Command::PFill(fill)).is_err());
}

#[test]
fn random_commands_match_the_model() {
    let mut rng = Rng::new(11);
    for _ in 0..3000 {
        let len = rng.below(400);
        apply_oracle(&rng.bytes(len));
    }
}
