//! MP4 (and whatever else FFmpeg's demuxers and decoders read) through `ffmpeg-next`
//! and Debian's FFmpeg libraries. Frames come out as RGB, their longer side scaled
//! to at most `MAX_SIDE` while decoding (FFmpeg's area filter), so that memory stays
//! proportional to the canonical tensor, not to the video's resolution.

use super::{Format, IoError, Limits, Values, Volume};
use ffmpeg_next as ff;
use std::io::Write;
use std::sync::Once;

/// The canonical tensor's side: frames are never kept larger than this.
pub const MAX_SIDE: u32 = 256;

fn invalid(reason: impl Into<String>) -> IoError {
    IoError::invalid(Format::Mp4, reason)
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        // FFmpeg logs to stderr, which inside PostgreSQL is the server log.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// Reads every frame (up to the frame limit).
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    init();
    // libavformat opens by path; the bytes go to a private temporary file.
    let mut file = tempfile::Builder::new()
        .prefix("m3ret-video-")
        .tempfile()
        .map_err(|e| invalid(format!("temporary file: {e}")))?;
    file.write_all(bytes)
        .map_err(|e| invalid(format!("temporary file: {e}")))?;
    let mut input = ff::format::input(file.path()).map_err(|e| invalid(e.to_string()))?;
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .ok_or_else(|| invalid("no video stream"))?;
    let index = stream.index();
    let mut context = ff::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| invalid(e.to_string()))?;
    // One thread: decoders must not start thread pools inside PostgreSQL backends.
    context.set_threading(ff::codec::threading::Config::count(1));
    let mut decoder = context
        .decoder()
        .video()
        .map_err(|e| invalid(format!("decoder: {e}")))?;
    let (w, h) = (decoder.width(), decoder.height());
    limits
        .check_geometry(1, h as usize, w as usize, 3)
        .map_err(IoError::TooLarge)?;
    let scale = (MAX_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (ow, oh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let mut scaler = ff::software::scaling::context::Context::get(
        decoder.format(),
        w,
        h,
        ff::format::Pixel::RGB24,
        ow,
        oh,
        ff::software::scaling::Flags::AREA,
    )
    .map_err(|e| invalid(format!("scaler: {e}")))?;
    let mut frames = Frames {
        data: Vec::new(),
        count: 0,
        width: ow as usize,
        height: oh as usize,
        max: limits.max_frames,
    };
    for (s, packet) in input.packets() {
        if s.index() == index {
            decoder
                .send_packet(&packet)
                .map_err(|e| invalid(format!("decoding: {e}")))?;
            frames.receive(&mut decoder, &mut scaler)?;
        }
    }
    decoder
        .send_eof()
        .map_err(|e| invalid(format!("decoding: {e}")))?;
    frames.receive(&mut decoder, &mut scaler)?;
    if frames.count == 0 {
        return Err(invalid("no frame could be decoded"));
    }
    Ok(Volume {
        data: frames.data,
        frames: frames.count,
        rows: oh as usize,
        cols: ow as usize,
        channels: 3,
        values: Values::EightBit,
        format: Format::Mp4,
        modality: None,
        spacing: None,
        window: None,
        inverted: false,
        is_video: true,
    })
}

struct Frames {
    data: Vec<f32>,
    count: usize,
    width: usize,
    height: usize,
    max: usize,
}

impl Frames {
    fn receive(
        &mut self,
        decoder: &mut ff::decoder::Video,
        scaler: &mut ff::software::scaling::context::Context,
    ) -> Result<(), IoError> {
        let mut decoded = ff::util::frame::video::Video::empty();
        while decoder.receive_frame(&mut decoded).is_ok() {
            if self.count >= self.max {
                return Err(IoError::TooLarge(format!(
                    "video has more than {} frames",
                    self.max
                )));
            }
            let mut rgb = ff::util::frame::video::Video::empty();
            scaler
                .run(&decoded, &mut rgb)
                .map_err(|e| invalid(format!("scaling: {e}")))?;
            let stride = rgb.stride(0);
            let plane = rgb.data(0);
            for row in 0..self.height {
                let line = &plane[row * stride..row * stride + self.width * 3];
                self.data.extend(line.iter().map(|&v| v as f32));
            }
            self.count += 1;
        }
        Ok(())
    }
}
