//! PNG and JPEG through the `image` crate, with its decoder limits set from ours.

use super::{Format, IoError, Limits, Values, Volume};
use image::{DynamicImage, ImageFormat};
use std::io::Cursor;

pub fn read(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    let format = if bytes.starts_with(&[0xFF, 0xD8]) {
        Format::Jpeg
    } else {
        Format::Png
    };
    let mut reader = image::ImageReader::with_format(
        Cursor::new(bytes),
        if format == Format::Jpeg {
            ImageFormat::Jpeg
        } else {
            ImageFormat::Png
        },
    );
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| IoError::invalid(format, e.to_string()))?;
    limits
        .check_geometry(1, h as usize, w as usize, 3)
        .map_err(IoError::TooLarge)?;
    reader = image::ImageReader::with_format(
        Cursor::new(bytes),
        if format == Format::Jpeg {
            ImageFormat::Jpeg
        } else {
            ImageFormat::Png
        },
    );
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side as u32);
    image_limits.max_image_height = Some(limits.max_side as u32);
    image_limits.max_alloc = Some((limits.max_samples as u64) * 8);
    reader.limits(image_limits);
    let image = reader
        .decode()
        .map_err(|e| IoError::invalid(format, e.to_string()))?;
    Ok(from_image(image, format))
}

fn from_image(image: DynamicImage, format: Format) -> Volume {
    let (rows, cols) = (image.height() as usize, image.width() as usize);
    let color = image.color();
    let (data, channels, values): (Vec<f32>, usize, Values) = if color.has_color() {
        let rgb = image.into_rgb8();
        (
            rgb.into_raw().into_iter().map(f32::from).collect(),
            3,
            Values::EightBit,
        )
    } else if color.bits_per_pixel() / color.channel_count() as u16 > 8 {
        let grey = image.into_luma16();
        (
            grey.into_raw().into_iter().map(f32::from).collect(),
            1,
            Values::Rescaled,
        )
    } else {
        let grey = image.into_luma8();
        (
            grey.into_raw().into_iter().map(f32::from).collect(),
            1,
            Values::EightBit,
        )
    };
    Volume {
        data,
        frames: 1,
        rows,
        cols,
        channels,
        values,
        format,
        modality: None,
        spacing: None,
        window: None,
        inverted: false,
        is_video: false,
    }
}
