//! VIDEO end to end (issue 4, items 2 and acceptance): an area redrawn at
//! 25 frames/s (a test program's PutImage: ffmpeg, mplayer and mpv are not
//! installed here) becomes a VIDEO stream; during the video the viewer's
//! area is "close" to the X screen (PSNR over R, G, B ≥ 30 dB, PROTOCOL.md
//! §6.1), and once the area calms down the stream ends and the screen is
//! pixel-exact again.

use std::time::{Duration, Instant};

use mobidesk_client::{Connection, Security, ViewerConfig};
use mobidesk_display::codec::yuv::{psnr, CLOSE_PSNR_DB};
use mobidesk_display::encode::{Encoder, PixelView};
use mobidesk_display::protocol::{Capabilities, Message, Rect, CODEC_H264};
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat};

use super::scale::assert_scaled;
use super::xvfb::Xvfb;
use super::{assert_catches_up, start_server, Painter, MAX};

const AREA: (i16, i16, u16, u16) = (100, 80, 320, 240);

/// Frame `t` of a smooth moving test picture (like ffmpeg's testsrc, but
/// photo-like: no sharp coloured edges), `0x00RRGGBB` pixels.
fn frame_pixels(t: u32) -> Vec<u32> {
    let (_, _, w, h) = AREA;
    let mut out = Vec::with_capacity(usize::from(w) * usize::from(h));
    let t = f64::from(t);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (f64::from(x), f64::from(y));
            let r = 128.0 + 90.0 * ((fx + 3.0 * t) / 9.0 + fy / 23.0).sin();
            let g = 128.0 + 90.0 * (fx / 17.0 - (fy + 2.0 * t) / 7.0).cos();
            let b = 128.0 + 90.0 * ((fx + fy + 5.0 * t) / 13.0).sin();
            let c = |v: f64| v.clamp(0.0, 255.0) as u32;
            out.push((c(r) << 16) | (c(g) << 8) | c(b));
        }
    }
    out
}

fn draw_frame(p: &Painter, pixels: &[u32]) {
    let (x0, y0, w, h) = AREA;
    let data: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    p.conn
        .put_image(
            ImageFormat::Z_PIXMAP,
            p.root,
            p.gc,
            w,
            h,
            x0,
            y0,
            0,
            24,
            &data,
        )
        .unwrap();
    p.sync();
}

/// Polls `viewer` until it has had a VIDEO_END (at most [`MAX`]).
fn await_video_end(viewer: &mut Connection) {
    let end = Instant::now() + MAX;
    while viewer.viewer().stats().of("VideoEnd").messages == 0 {
        assert!(Instant::now() < end, "no VideoEnd");
        viewer.poll(Duration::from_millis(50)).unwrap();
    }
}

fn area_of(pixels: &[u32], width: u16) -> Vec<u32> {
    let (x0, y0, w, h) = AREA;
    let mut out = Vec::new();
    for y in 0..usize::from(h) {
        let start = (usize::from(y0 as u16) + y) * usize::from(width) + x0 as usize;
        out.extend_from_slice(&pixels[start..start + usize::from(w)]);
    }
    out
}

/// VIDEO as I420 planes (the viewer offers no optional codec).
#[test]
fn video_area_is_close_while_playing_and_exact_after() {
    playback(&[]);
}

/// VIDEO as H.264 (codec 0x80, negotiated; PROTOCOL.md §6.3): the same
/// bounds, and each frame far smaller than as I420.
#[test]
fn h264_video_area_is_close_while_playing_and_exact_after() {
    playback(&[CODEC_H264]);
}

fn playback(codecs: &[u8]) {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let connect = |capabilities, viewport: (u16, u16)| {
        let config = ViewerConfig {
            capabilities,
            max_width: viewport.0,
            max_height: viewport.1,
            codecs: codecs.to_vec(),
            ..ViewerConfig::default()
        };
        Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap()
    };
    let video = Capabilities(Capabilities::CURSOR.0 | Capabilities::VIDEO.0);
    let mut viewer = connect(video, (8192, 8192));
    assert_catches_up(&mut viewer, &painter);
    assert_eq!(viewer.viewer().server_hello().unwrap().codecs, codecs);
    // A half-size viewer: its VIDEO frames are of the downscaled area.
    let mut half = connect(video, (320, 240));
    assert_scaled(&mut half, &painter, (320, 240));
    // A viewer without VIDEO (it reads only at the end: its queue stays
    // bounded, it gets no VIDEO).
    let mut raw_viewer = connect(Capabilities::CURSOR, (8192, 8192));
    assert_catches_up(&mut raw_viewer, &painter);

    // 3 s at 25 frames/s; from frame 40 on, every 5th frame is compared.
    let frames = 75u32;
    let start = Instant::now();
    let mut psnrs = Vec::new();
    let mut waits = Vec::new();
    let mut first_video_at = None;
    for i in 0..frames {
        let due = start + Duration::from_millis(40) * i;
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            viewer.poll(left).unwrap();
            half.poll(Duration::from_millis(1)).unwrap();
        }
        let want = frame_pixels(i);
        draw_frame(&painter, &want);
        if first_video_at.is_none() && viewer.viewer().stats().of("Video").messages > 0 {
            first_video_at = Some(i);
        }
        if i >= 40 && i % 5 == 0 {
            // The viewer gets this frame as VIDEO. How soon depends on the
            // machine's load (the server encodes from the current screen and
            // may read it while X draws the next frame), so the player holds
            // the frame: it redraws it every 40 ms, which keeps the stream
            // going, until the viewer shows it (at most 5 s).
            let videos = viewer.viewer().stats().of("Video").messages;
            let waited = Instant::now();
            let mut best = 0.0f64;
            while waited.elapsed() < Duration::from_secs(5) && best < CLOSE_PSNR_DB {
                let next = Instant::now() + Duration::from_millis(40);
                while let Some(left) = next.checked_duration_since(Instant::now()) {
                    viewer.poll(left).unwrap();
                    let fb = viewer.framebuffer().unwrap();
                    best = best.max(psnr(&area_of(fb.pixels(), fb.width()), &want));
                }
                if best < CLOSE_PSNR_DB {
                    draw_frame(&painter, &want);
                }
            }
            waits.push(waited.elapsed().as_millis());
            assert!(viewer.viewer().stats().of("Video").messages > videos);
            assert_eq!(viewer.viewer().stats().of("VideoEnd").messages, 0);
            psnrs.push(best);
        }
    }
    let playing = start.elapsed();
    // The stream was fed; nothing is drawn from now on.
    let video_stats = viewer.viewer().stats().clone();
    let video_frames = video_stats.of("Video").messages;
    let video_bytes = video_stats.of("Video").bytes;
    // What one frame costs as the other commands (RAW, LZ4): encoded from
    // the screen as it is now against a black image.
    let (w, h) = painter.size();
    let bytes = painter.screen_bytes();
    let screen = PixelView::new(&bytes, usize::from(w) * 4, w, h).unwrap();
    let (x0, y0, aw, ah) = AREA;
    let raw_frame: usize = Encoder::new(w, h)
        .paint(&screen, Rect::new(x0 as u16, y0 as u16, aw, ah))
        .into_iter()
        .map(|c| Message::Command(c).buffer_len())
        .sum();
    let streamed = first_video_at.map_or(0, |f| frames - f);
    eprintln!(
        "video: {frames} frames drawn in {playing:.2?}, first VIDEO after frame {first_video_at:?}; \
         {video_frames} VIDEO messages for the {streamed} frames drawn since \
         ({:.1} per s of streaming), {} bytes per VIDEO frame, {raw_frame} bytes per frame as RAW; \
         PSNR {psnrs:.1?} dB (each shown after {waits:?} ms)",
        video_frames as f64 / (playing.as_secs_f64() * f64::from(streamed) / f64::from(frames)),
        video_bytes / video_frames.max(1),
    );
    assert!(video_frames >= 10, "{video_frames} VIDEO frames");
    // I420 is 1.5 bytes a pixel (LZ4 saves little on a moving picture);
    // H.264 a small fraction of that.
    let i420_frame = u64::from(aw) * u64::from(ah) * 3 / 2;
    let per_frame = video_bytes / video_frames.max(1);
    if codecs.contains(&CODEC_H264) {
        assert!(
            per_frame * 8 < i420_frame,
            "{per_frame} bytes per H.264 frame"
        );
    } else {
        assert!(
            per_frame * 2 > i420_frame,
            "{per_frame} bytes per I420 frame"
        );
    }
    for db in &psnrs {
        assert!(*db >= CLOSE_PSNR_DB, "PSNR {db:.1} dB < {CLOSE_PSNR_DB}");
    }
    assert!(!psnrs.is_empty());

    // Calm: the stream ends and the area is repainted exactly.
    assert_catches_up(&mut viewer, &painter);
    await_video_end(&mut viewer);
    assert_catches_up(&mut viewer, &painter);
    assert_eq!(viewer.viewer().stats().of("VideoEnd").messages, 1);
    assert_scaled(&mut half, &painter, (320, 240));
    let half_stats = half.viewer().stats();
    eprintln!(
        "half-size viewer: {} VIDEO messages, {} bytes each, {} VideoEnd",
        half_stats.of("Video").messages,
        half_stats.of("Video").bytes / half_stats.of("Video").messages.max(1),
        half_stats.of("VideoEnd").messages
    );
    assert!(half_stats.of("Video").messages > 0);
    assert_eq!(raw_viewer.viewer().stats().of("Video").messages, 0);
}

/// A real player: ffplay (scripts/setup installs ffmpeg) shows ffmpeg's
/// `testsrc2` at 25 frames/s in a 320×240 window for 4 s. Its frames are not
/// under the test's control, so closeness is sampled: the viewer's window
/// area against `GetImage` of it right after a VIDEO frame arrived. A sample
/// taken while ffplay draws the next frame compares two different frames
/// (15–20 dB seen), so the test asks for at least one close sample (the
/// in-step ones measure about 32.8 dB, which is also what the 4:2:0 round
/// trip of the same X frames gives: testsrc2 has sharp coloured edges); the
/// strict check of every sampled frame is the test above, whose player
/// holds its frames. After ffplay exits the screen is exact.
#[test]
fn video_played_by_ffplay() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = start_server(&xvfb, true);
    let config = ViewerConfig {
        capabilities: Capabilities(Capabilities::CURSOR.0 | Capabilities::VIDEO.0),
        ..ViewerConfig::default()
    };
    let mut viewer = Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap();
    assert_catches_up(&mut viewer, &painter);
    let mut ffplay = std::process::Command::new("ffplay")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostats",
            "-an",
            "-noborder",
        ])
        .args(["-left", "100", "-top", "80", "-autoexit"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=25:duration=4",
        ])
        .env("DISPLAY", xvfb.display())
        .env("SDL_AUDIODRIVER", "dummy")
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffplay (scripts/setup installs ffmpeg)");
    let start = Instant::now();
    let mut psnrs = Vec::new();
    let mut first_video = None;
    let mut intrinsic = Vec::new();
    let mut last_sample = 0;
    while ffplay.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < MAX, "ffplay did not end");
        viewer.poll(Duration::from_millis(20)).unwrap();
        let videos = viewer.viewer().stats().of("Video").messages;
        if videos == 0 {
            continue;
        }
        first_video.get_or_insert(start.elapsed());
        // Right after a frame arrived (before ffplay shows the next one).
        if videos % 5 == 2 && videos != last_sample {
            last_sample = videos;
            let fb = viewer.framebuffer().unwrap();
            let got = area_of(fb.pixels(), fb.width());
            let (x0, y0, w, h) = AREA;
            let want: Vec<u32> = painter
                .conn
                .get_image(ImageFormat::Z_PIXMAP, painter.root, x0, y0, w, h, !0)
                .unwrap()
                .reply()
                .unwrap()
                .data
                .chunks_exact(4)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 0]))
                .collect();
            psnrs.push(psnr(&got, &want));
            // The 4:2:0 round trip alone (reference conversion, 1:1).
            let (_, _, w, h) = AREA;
            let i420 =
                mobidesk_display::codec::yuv::bgrx_to_i420(&want, usize::from(w), usize::from(h));
            let mut back = vec![0u32; want.len()];
            mobidesk_display::codec::yuv::i420_to_bgrx(
                &i420.as_ref(),
                &mut back,
                usize::from(w),
                usize::from(w),
                usize::from(h),
                mobidesk_display::codec::Filter::Bilinear,
            );
            intrinsic.push(psnr(&back, &want));
        }
    }
    eprintln!("4:2:0 round trip of the same X frames: {intrinsic:.1?} dB");
    let played = start.elapsed();
    let stats = viewer.viewer().stats().clone();
    let frames = stats.of("Video").messages;
    psnrs.sort_by(f64::total_cmp);
    let median = psnrs.get(psnrs.len() / 2).copied().unwrap_or(0.0);
    let best = psnrs.last().copied().unwrap_or(0.0);
    eprintln!(
        "ffplay testsrc2 320x240@25 for {played:.2?}: first VIDEO after {first_video:?}, \
         {frames} VIDEO messages, {} bytes each; sampled PSNR {psnrs:.1?} dB, median {median:.1}",
        stats.of("Video").bytes / frames.max(1)
    );
    assert!(frames >= 10, "{frames} VIDEO frames");
    assert!(best >= CLOSE_PSNR_DB, "best sampled PSNR {best:.1} dB");
    // The window is gone: the stream ends, the screen is exact.
    assert_catches_up(&mut viewer, &painter);
    await_video_end(&mut viewer);
    assert_catches_up(&mut viewer, &painter);
}

/// A video that pauses: once its last frame has stood for a little more than
/// one frame interval, the server sends that frame exactly, without waiting
/// for the stream to end. Here a stream ends only after 30 s of calm, so the
/// viewer must be pixel-exact while its stream still goes on (no VideoEnd).
/// With ZSTD, over loopback (measured at gigabytes per second here, so the
/// still frame goes outside the zstd stream; the test holds either way).
#[test]
fn a_paused_video_is_exact_before_its_stream_ends() {
    let xvfb = Xvfb::start();
    let painter = Painter::new(&xvfb.display());
    painter.pattern();
    let addr = super::start_server_with(&xvfb, true, |config| {
        config.video.calm = Duration::from_secs(30);
        config.video.min_calm = Duration::from_secs(30);
    });
    let config = ViewerConfig {
        capabilities: Capabilities(
            Capabilities::CURSOR.0 | Capabilities::VIDEO.0 | Capabilities::ZSTD.0,
        ),
        codecs: vec![CODEC_H264],
        ..ViewerConfig::default()
    };
    let mut viewer = Connection::connect(addr, &config, &Security::InsecurePlaintext).unwrap();
    assert_catches_up(&mut viewer, &painter);
    // 25 frames/s until the viewer has had VIDEO frames for a while.
    let start = Instant::now();
    let mut i = 0u32;
    while viewer.viewer().stats().of("Video").messages < 5 {
        assert!(i < 500, "no VIDEO after {i} frames");
        let due = start + Duration::from_millis(40) * i;
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            viewer.poll(left).unwrap();
        }
        draw_frame(&painter, &frame_pixels(i));
        i += 1;
    }
    // Paused on frame i - 1: exact, and the stream goes on.
    assert_catches_up(&mut viewer, &painter);
    let stats = viewer.viewer().stats();
    assert_eq!(stats.of("VideoEnd").messages, 0);
    eprintln!(
        "paused after {i} frames ({} VIDEO): exact with the stream on",
        stats.of("Video").messages
    );
    // It goes on: the next frames are VIDEO again, and the pause after them
    // is exact again.
    let videos = stats.of("Video").messages;
    let resumed = Instant::now();
    for k in 0..10u32 {
        let due = resumed + Duration::from_millis(40) * k;
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            viewer.poll(left).unwrap();
        }
        draw_frame(&painter, &frame_pixels(i + k));
    }
    assert_catches_up(&mut viewer, &painter);
    let stats = viewer.viewer().stats();
    assert!(
        stats.of("Video").messages > videos,
        "no VIDEO after the pause"
    );
    assert_eq!(stats.of("VideoEnd").messages, 0);
}
