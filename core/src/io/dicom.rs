//! DICOM objects through `dicom-object` and `dicom-pixeldata`: native, JPEG
//! (baseline and lossless), JPEG 2000 and RLE transfer syntaxes; the Modality LUT
//! (Rescale Slope/Intercept, so CT is in HU); MONOCHROME1; RGB and YBR; multi-frame.

use super::{Format, IoError, Limits, Values, Volume};
use crate::modality::Modality;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::VR;
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, ModalityLutOption, PhotometricInterpretation, PixelDecoder,
    VoiLutOption,
};

fn invalid(reason: impl Into<String>) -> IoError {
    IoError::invalid(Format::Dicom, reason)
}

/// First line only: dicom-rs errors can carry long backtraces of context.
fn reason(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// Parses the object (meta group and data set), with or without the 128-byte preamble.
pub fn parse(bytes: &[u8]) -> Result<DefaultDicomObject, IoError> {
    open(bytes, OpenFileOptions::new())
}

/// Parses the meta group and the data set's groups up to 0028 (patient, study,
/// series, equipment, acquisition, position, image): not the private groups,
/// procedure sequences and pixels after them, which can be most of a header and
/// all of a file. Every length in the file is still checked.
pub fn parse_header(bytes: &[u8]) -> Result<DefaultDicomObject, IoError> {
    let end = super::dicom_scan::end_of_groups(bytes, 0x0028)?;
    open_checked(
        &bytes[..end],
        OpenFileOptions::new().read_until(tags::PIXEL_DATA),
    )
}

fn open(bytes: &[u8], options: OpenFileOptions) -> Result<DefaultDicomObject, IoError> {
    super::dicom_scan::check_lengths(bytes)?;
    open_checked(bytes, options)
}

/// Parses bytes whose lengths were checked.
fn open_checked(bytes: &[u8], options: OpenFileOptions) -> Result<DefaultDicomObject, IoError> {
    let preamble = if bytes.starts_with(b"DICM") {
        ReadPreamble::Never
    } else {
        ReadPreamble::Always
    };
    // dicom-object reads the magic itself after an optional preamble.
    options
        .read_preamble(preamble)
        .from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| invalid(reason(e)))
}

/// The tags m3ret reads besides the pixels.
pub struct Attributes {
    pub rows: usize,
    pub cols: usize,
    pub frames: usize,
    pub samples_per_pixel: usize,
    pub modality: Option<Modality>,
    pub modality_code: Option<String>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub image_position: Option<[f64; 3]>,
    pub image_orientation: Option<[f64; 6]>,
    pub instance_number: Option<i64>,
}

impl Attributes {
    /// Where the slice lies, for ordering a series.
    pub fn place(&self) -> super::series::SlicePlace {
        super::series::SlicePlace {
            position: self.image_position,
            orientation: self.image_orientation,
            instance_number: self.instance_number,
        }
    }
}

/// A text attribute; also from raw bytes, for files that store it with VR UN.
pub(crate) fn string(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<String> {
    let element = obj.element_opt(tag).ok().flatten()?;
    let text = if element.vr() == VR::UN {
        String::from_utf8_lossy(&element.to_bytes().ok()?).into_owned()
    } else {
        element.to_str().ok()?.into_owned()
    };
    Some(
        text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    )
}

/// Numbers of a DS, IS, US or UL attribute; also from raw bytes, for files that
/// store it with VR UN (the dictionary says how its bytes are to be read).
pub(crate) fn floats(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<Vec<f64>> {
    let element = obj.element_opt(tag).ok().flatten()?;
    if element.vr() != VR::UN {
        return element.to_multi_float64().ok();
    }
    let bytes = element.to_bytes().ok()?;
    match dictionary_vr(tag)? {
        VR::DS | VR::IS => String::from_utf8_lossy(&bytes)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .split('\\')
            .map(|v| v.trim().parse::<f64>().ok())
            .collect(),
        VR::US => Some(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as f64)
                .collect(),
        ),
        VR::UL => Some(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect(),
        ),
        _ => None,
    }
}

pub(crate) fn int(obj: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<i64> {
    let element = obj.element_opt(tag).ok().flatten()?;
    if element.vr() != VR::UN {
        return element.to_int::<i64>().ok();
    }
    let first = *floats(obj, tag)?.first()?;
    (first.fract() == 0.0 && first.abs() < 9.0e15).then_some(first as i64)
}

/// The VR the standard dictionary gives a tag, when it is one VR.
fn dictionary_vr(tag: dicom_object::Tag) -> Option<VR> {
    match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(vr) => Some(vr),
        _ => None,
    }
}

pub fn attributes(obj: &DefaultDicomObject) -> Result<Attributes, IoError> {
    let dim = |tag, name: &str| -> Result<usize, IoError> {
        match int(obj, tag) {
            Some(v) if v > 0 => Ok(v as usize),
            Some(v) => Err(invalid(format!("{name} is {v}"))),
            None => Err(invalid(format!("no {name}: not an image"))),
        }
    };
    let modality_code = string(obj, tags::MODALITY);
    Ok(Attributes {
        rows: dim(tags::ROWS, "Rows")?,
        cols: dim(tags::COLUMNS, "Columns")?,
        frames: int(obj, tags::NUMBER_OF_FRAMES)
            .filter(|v| *v > 0)
            .unwrap_or(1) as usize,
        samples_per_pixel: int(obj, tags::SAMPLES_PER_PIXEL)
            .filter(|v| *v > 0)
            .unwrap_or(1) as usize,
        modality: modality_code.as_deref().and_then(Modality::from_dicom_code),
        modality_code,
        pixel_spacing: floats(obj, tags::PIXEL_SPACING)
            .filter(|v| v.len() == 2)
            .map(|v| [v[0], v[1]]),
        slice_thickness: floats(obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| floats(obj, tags::SLICE_THICKNESS))
            .and_then(|v| v.first().copied()),
        image_position: floats(obj, tags::IMAGE_POSITION_PATIENT)
            .filter(|v| v.len() == 3)
            .map(|v| [v[0], v[1], v[2]]),
        image_orientation: floats(obj, tags::IMAGE_ORIENTATION_PATIENT)
            .filter(|v| v.len() == 6)
            .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
    })
}

/// Reads one DICOM object (single or multi-frame).
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    let obj = parse(bytes)?;
    read_object(&obj, limits)
}

pub fn read_object(obj: &DefaultDicomObject, limits: &Limits) -> Result<Volume, IoError> {
    let a = attributes(obj)?;
    check_bits(obj)?;
    if a.samples_per_pixel != 1 && a.samples_per_pixel != 3 {
        return Err(IoError::unsupported(
            Format::Dicom,
            format!("{} samples per pixel", a.samples_per_pixel),
        ));
    }
    // Checked before decoding: the decoders allocate what the headers claim.
    limits
        .check_geometry(a.frames, a.rows, a.cols, a.samples_per_pixel)
        .map_err(IoError::TooLarge)?;
    check_compressed_frames(obj, &a)?;
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| invalid(format!("pixel data: {}", reason(e))))?;
    check_pixel_length(&decoded, &a)?;
    let pi = decoded.photometric_interpretation().clone();
    let (data, channels, values) = if decoded.samples_per_pixel() == 3 {
        (color_samples(&decoded, &pi)?, 3, Values::EightBit)
    } else if pi == PhotometricInterpretation::PaletteColor {
        (palette_samples(obj, &decoded)?, 3, Values::EightBit)
    } else {
        grey_samples(&decoded)?
    };
    let window = decoded
        .window()
        .ok()
        .flatten()
        .and_then(|w| w.first())
        .map(|w| (w.center, w.width));
    let slice = a.slice_thickness.unwrap_or(1.0);
    Ok(Volume {
        data,
        frames: a.frames,
        rows: a.rows,
        cols: a.cols,
        channels,
        values,
        format: Format::Dicom,
        modality: a.modality,
        spacing: a.pixel_spacing.map(|[r, c]| [slice, r, c]),
        window,
        inverted: pi == PhotometricInterpretation::Monochrome1,
        is_video: a.frames > 1 && !a.modality.is_some_and(Modality::is_volume),
    })
}

/// Bits Allocated, Bits Stored and High Bit must describe a real sample layout
/// (the pixel decoders assert on impossible ones; found by fuzzing).
fn check_bits(obj: &DefaultDicomObject) -> Result<(), IoError> {
    let allocated = int(obj, tags::BITS_ALLOCATED).ok_or_else(|| invalid("no Bits Allocated"))?;
    let stored = int(obj, tags::BITS_STORED).unwrap_or(allocated);
    let high = int(obj, tags::HIGH_BIT).unwrap_or(stored - 1);
    if ![1, 8, 16, 32, 64].contains(&allocated)
        || stored < 1
        || stored > allocated
        || high < stored - 1
        || high >= allocated
    {
        return Err(invalid(format!("Bits Allocated {allocated}, Bits Stored {stored}, High Bit {high} do not describe a sample")));
    }
    Ok(())
}

/// Every compressed frame must declare the size the DICOM attributes give it.
fn check_compressed_frames(obj: &DefaultDicomObject, a: &Attributes) -> Result<(), IoError> {
    let Some(element) = obj.element_opt(tags::PIXEL_DATA).ok().flatten() else {
        return Err(invalid("no Pixel Data"));
    };
    let native = matches!(
        obj.meta().transfer_syntax().trim_end_matches('\0'),
        "1.2.840.10008.1.2"
            | "1.2.840.10008.1.2.1"
            | "1.2.840.10008.1.2.2"
            | "1.2.840.10008.1.2.1.99"
    );
    let whole;
    let fragments: Vec<&[u8]> = match element.value() {
        dicom_core::DicomValue::PixelSequence(sequence) => {
            sequence.fragments().iter().map(|f| f.as_slice()).collect()
        }
        // A compressed transfer syntax with unencapsulated data: the decoder reads it whole.
        dicom_core::DicomValue::Primitive(p) if !native => {
            whole = p.to_bytes();
            vec![&whole[..]]
        }
        _ => return Ok(()), // native pixel data: its length is checked after decoding
    };
    if fragments.len() > a.frames.max(1) * 64 + 64 {
        return Err(invalid(format!(
            "{} pixel data fragments for {} frames",
            fragments.len(),
            a.frames
        )));
    }
    for fragment in fragments {
        let Some(d) = super::codestream::declared_size(fragment) else {
            continue;
        };
        if (d.width, d.height) != (a.cols as u64, a.rows as u64)
            || d.components > 4
            || d.tiles > 65_536
        {
            return Err(invalid(format!(
                "a compressed frame declares {} x {} pixels, {} components and {} tiles, but Rows x Columns are {} x {}",
                d.width, d.height, d.components, d.tiles, a.rows, a.cols
            )));
        }
    }
    Ok(())
}

fn check_pixel_length(decoded: &DecodedPixelData<'_>, a: &Attributes) -> Result<(), IoError> {
    let bytes_per_sample = (decoded.bits_allocated() as usize).div_ceil(8).max(1);
    let needed = a.frames * a.rows * a.cols * a.samples_per_pixel * bytes_per_sample;
    let have = decoded.data().len();
    if decoded.bits_allocated() != 1 && have < needed {
        return Err(invalid(format!(
            "pixel data has {have} bytes, but {} frames of {} x {} x {} samples at {} bits need {needed}",
            a.frames, a.rows, a.cols, a.samples_per_pixel, decoded.bits_allocated()
        )));
    }
    Ok(())
}

/// Grey samples with the Modality LUT applied, frame by frame.
fn grey_samples(decoded: &DecodedPixelData<'_>) -> Result<(Vec<f32>, usize, Values), IoError> {
    let options = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Default)
        .with_voi_lut(VoiLutOption::Identity);
    let frames = decoded.number_of_frames();
    let mut data =
        Vec::with_capacity(frames as usize * decoded.rows() as usize * decoded.columns() as usize);
    for f in 0..frames {
        let frame: Vec<f32> = decoded
            .to_vec_frame_with_options(f, &options)
            .map_err(|e| invalid(reason(e)))?;
        data.extend_from_slice(&frame);
    }
    let identity = decoded
        .rescale()
        .map(|r| r.iter().all(|r| r.slope == 1.0 && r.intercept == 0.0))
        .unwrap_or(true);
    let values = if decoded.bits_allocated() <= 8 && identity {
        Values::EightBit
    } else {
        Values::Rescaled
    };
    Ok((data, 1, values))
}

/// 8-bit colour samples as interleaved RGB, whatever the planar configuration and
/// whether the codec already converted YBR to RGB.
fn color_samples(
    decoded: &DecodedPixelData<'_>,
    pi: &PhotometricInterpretation,
) -> Result<Vec<f32>, IoError> {
    if decoded.bits_allocated() != 8 {
        return Err(IoError::unsupported(
            Format::Dicom,
            format!("{}-bit colour", decoded.bits_allocated()),
        ));
    }
    let pixels = decoded.rows() as usize * decoded.columns() as usize;
    let frames = decoded.number_of_frames() as usize;
    let raw = &decoded.data()[..pixels * 3 * frames];
    let planar = decoded.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst;
    let ybr = match pi {
        PhotometricInterpretation::Rgb => false,
        PhotometricInterpretation::YbrFull => true,
        other => {
            return Err(IoError::unsupported(
                Format::Dicom,
                format!("uncompressed {other} colour"),
            ))
        }
    };
    let mut out = Vec::with_capacity(raw.len());
    for f in 0..frames {
        let frame = &raw[f * pixels * 3..(f + 1) * pixels * 3];
        for p in 0..pixels {
            let s = |c: usize| if planar { frame[c * pixels + p] } else { frame[p * 3 + c] } as f32;
            let (a, b, c) = (s(0), s(1), s(2));
            if ybr {
                // ITU-R BT.601 full range, as DICOM PS3.3 C.7.6.3.1.2 defines YBR_FULL.
                let (cb, cr) = (b - 128.0, c - 128.0);
                out.push((a + 1.402 * cr).clamp(0.0, 255.0));
                out.push((a - 0.344136 * cb - 0.714136 * cr).clamp(0.0, 255.0));
                out.push((a + 1.772 * cb).clamp(0.0, 255.0));
            } else {
                out.extend_from_slice(&[a, b, c]);
            }
        }
    }
    Ok(out)
}

/// PALETTE COLOR: stored values index the Red/Green/Blue Palette Color LUTs,
/// given whole or segmented (PS3.3 C.7.9.2).
fn palette_samples(
    obj: &DefaultDicomObject,
    decoded: &DecodedPixelData<'_>,
) -> Result<Vec<f32>, IoError> {
    let red = palette_lut(
        obj,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let green = palette_lut(
        obj,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let blue = palette_lut(
        obj,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        tags::SEGMENTED_BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
    )?;
    let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
    let mut out = Vec::new();
    for f in 0..decoded.number_of_frames() {
        let indices: Vec<f32> = decoded
            .to_vec_frame_with_options(f, &options)
            .map_err(|e| invalid(reason(e)))?;
        for v in indices {
            out.extend_from_slice(&[red.lookup(v), green.lookup(v), blue.lookup(v)]);
        }
    }
    Ok(out)
}

/// One palette channel: entries scaled to 0..=255, and the first mapped value.
struct PaletteLut {
    table: Vec<f32>,
    first: i64,
}

impl PaletteLut {
    fn lookup(&self, stored: f32) -> f32 {
        let i = (stored as i64 - self.first).clamp(0, self.table.len() as i64 - 1);
        self.table[i as usize]
    }
}

fn palette_lut(
    obj: &DefaultDicomObject,
    descriptor: dicom_object::Tag,
    data: dicom_object::Tag,
    segmented: dicom_object::Tag,
) -> Result<PaletteLut, IoError> {
    let d = floats(obj, descriptor)
        .filter(|d| d.len() == 3)
        .ok_or_else(|| invalid("palette colour without a LUT descriptor"))?;
    let (entries, first, bits) = (
        if d[0] == 0.0 { 65536 } else { d[0] as usize },
        d[1] as i64,
        d[2] as u32,
    );
    let bytes = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_bytes().ok())
            .map(|b| b.into_owned())
    };
    let words = |b: Vec<u8>| {
        b.chunks_exact(2)
            .map(|w| u16::from_le_bytes([w[0], w[1]]))
            .collect::<Vec<u16>>()
    };
    let values: Vec<u16> = if let Some(b) = bytes(data) {
        if bits <= 8 && b.len() < 2 * entries {
            b.into_iter().map(u16::from).collect()
        } else {
            words(b)
        }
    } else if let Some(b) = bytes(segmented) {
        expand_segments(&words(b), entries)?
    } else {
        return Err(invalid("palette colour without LUT data"));
    };
    if values.len() < entries.min(2) {
        return Err(invalid(format!(
            "palette LUT has {} of {entries} entries",
            values.len()
        )));
    }
    let scale = if bits > 8 { 1.0 / 257.0 } else { 1.0 };
    Ok(PaletteLut {
        table: values.iter().map(|&v| v as f32 * scale).collect(),
        first,
    })
}

/// Expands segmented LUT data: opcode 0 (discrete values), 1 (linear ramp to a value);
/// opcode 2 (indirect) is refused. Never grows past `entries`.
fn expand_segments(words: &[u16], entries: usize) -> Result<Vec<u16>, IoError> {
    let mut out: Vec<u16> = Vec::with_capacity(entries);
    let mut i = 0;
    while i + 1 < words.len() {
        let (op, len) = (words[i], words[i + 1] as usize);
        if out.len() + len > entries {
            return Err(invalid("segmented palette LUT longer than its descriptor"));
        }
        match op {
            0 => {
                let seg = words
                    .get(i + 2..i + 2 + len)
                    .ok_or_else(|| invalid("truncated segmented palette LUT"))?;
                out.extend_from_slice(seg);
                i += 2 + len;
            }
            1 => {
                let end = *words
                    .get(i + 2)
                    .ok_or_else(|| invalid("truncated segmented palette LUT"))?
                    as f64;
                let start = *out
                    .last()
                    .ok_or_else(|| invalid("linear palette segment with no previous value"))?
                    as f64;
                out.extend(
                    (1..=len)
                        .map(|k| (start + (end - start) * k as f64 / len as f64).round() as u16),
                );
                i += 3;
            }
            other => {
                return Err(IoError::unsupported(
                    Format::Dicom,
                    format!("segmented palette LUT opcode {other}"),
                ))
            }
        }
    }
    Ok(out)
}
