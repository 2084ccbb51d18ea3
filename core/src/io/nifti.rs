//! NIfTI-1 and NIfTI-2 volumes, plain or gzip-compressed.
//!
//! Written here rather than with the `nifti` crate, which reads NIfTI-1 only. The
//! header is parsed by hand (both versions, either byte order), every size checked
//! against the limits, scl_slope/scl_inter applied, and for 4D files the first
//! volume kept. Slices are taken along the voxel axis closest to the patient's
//! superior-inferior axis, found from the sform (else qform, else the voxel grid).

use super::{Format, IoError, Limits, Values, Volume};
use std::io::Read;

const NIFTI1_HEADER: usize = 348;
const NIFTI2_HEADER: usize = 540;

pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// NIfTI-1 or NIfTI-2 from the header size field (either byte order) and magic.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    let size = |b: &[u8]| {
        (
            i32::from_le_bytes(b[0..4].try_into().unwrap()),
            i32::from_be_bytes(b[0..4].try_into().unwrap()),
        )
    };
    if bytes.len() >= NIFTI1_HEADER {
        let (le, be) = size(bytes);
        if (le == 348 || be == 348) && matches!(&bytes[344..348], b"n+1\0" | b"ni1\0") {
            return Some(Format::Nifti1);
        }
    }
    if bytes.len() >= NIFTI2_HEADER {
        let (le, be) = size(bytes);
        if (le == 540 || be == 540) && matches!(&bytes[4..8], b"n+2\0" | b"ni2\0") {
            return Some(Format::Nifti2);
        }
    }
    None
}

/// A gzip-compressed NIfTI file, inflated as far as its header says and no further:
/// the header first, which is checked against the limits before any voxel is
/// inflated, then exactly the declared voxel bytes, decoded as they stream out. A
/// gzip bomb is refused after its header; trailing bytes are never inflated.
pub fn read_gzip(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    let gzip_error = |e: std::io::Error| IoError::Invalid {
        format: "gzip",
        reason: e.to_string(),
    };
    let mut stream = flate2::read::MultiGzDecoder::new(bytes);
    let mut head = Vec::with_capacity(NIFTI2_HEADER);
    (&mut stream)
        .take(NIFTI2_HEADER as u64)
        .read_to_end(&mut head)
        .map_err(gzip_error)?;
    if !matches!(sniff(&head), Some(Format::Nifti1 | Format::Nifti2)) {
        return Err(IoError::Unsupported {
            format: "gzip",
            reason: "only gzip-compressed NIfTI is accepted".into(),
        });
    }
    let h = parse_header(&head)?;
    let plan = Plan::new(&h, limits)?;
    let inflated = plan.start as u64 + plan.voxel_bytes() as u64;
    if inflated > limits.max_inflated_bytes as u64 {
        return Err(IoError::TooLarge(format!(
            "the header declares {inflated} bytes, past the gzip limit of {}",
            limits.max_inflated_bytes
        )));
    }
    // The bytes between the header read and the voxels (extensions), skipped.
    let skip = (plan.start as u64).saturating_sub(head.len() as u64);
    let skipped =
        std::io::copy(&mut (&mut stream).take(skip), &mut std::io::sink()).map_err(gzip_error)?;
    if skipped < skip {
        return Err(plan.short_error(0));
    }
    // The header read may have taken the first voxels with it (NIfTI-1 at offset 352).
    let already = head.get(plan.start..).unwrap_or_default();
    plan.decode(&h, &mut already.chain(stream))
}

/// The fields of either header version that reading needs.
#[derive(Debug, Clone)]
pub struct Header {
    pub format: Format,
    pub dims: Vec<usize>,
    pub datatype: i16,
    pub pixdim: [f64; 8],
    pub vox_offset: usize,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i32,
    pub sform_code: i32,
    pub quatern: [f64; 3],
    pub srow: [[f64; 4]; 3],
    pub big_endian: bool,
}

/// Little reader over the header bytes in the file's byte order.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a: [u8; N] = self.b[at..at + N].try_into().unwrap();
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.arr(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.arr(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.arr(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.arr(at))
    }
}

pub fn parse_header(bytes: &[u8]) -> Result<Header, IoError> {
    let format =
        sniff(bytes).ok_or_else(|| IoError::invalid(Format::Nifti1, "not a NIfTI header"))?;
    let big = match format {
        Format::Nifti1 => i32::from_le_bytes(bytes[0..4].try_into().unwrap()) != 348,
        _ => i32::from_le_bytes(bytes[0..4].try_into().unwrap()) != 540,
    };
    let f = Fields { b: bytes, big };
    let bad = |reason: String| IoError::invalid(format, reason);
    let (raw_dims, datatype, pixdim, vox_offset, slope, inter, qcode, scode, quatern, srow): (
        Vec<i64>,
        _,
        [f64; 8],
        f64,
        _,
        _,
        _,
        _,
        _,
        _,
    ) = if format == Format::Nifti1 {
        (
            (0..8).map(|i| f.i16(40 + 2 * i) as i64).collect(),
            f.i16(70),
            std::array::from_fn(|i| f.f32(76 + 4 * i)),
            f.f32(108),
            f.f32(112),
            f.f32(116),
            f.i16(252) as i32,
            f.i16(254) as i32,
            [f.f32(256), f.f32(260), f.f32(264)],
            std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c))),
        )
    } else {
        (
            (0..8).map(|i| f.i64(16 + 8 * i)).collect(),
            f.i16(12),
            std::array::from_fn(|i| f.f64(104 + 8 * i)),
            f.i64(168) as f64,
            f.f64(176),
            f.f64(184),
            f.i32(344),
            f.i32(348),
            [f.f64(352), f.f64(360), f.f64(368)],
            std::array::from_fn(|r| std::array::from_fn(|c| f.f64(400 + 32 * r + 8 * c))),
        )
    };
    let ndim = raw_dims[0];
    if !(1..=7).contains(&ndim) {
        return Err(bad(format!("dim[0] = {ndim}: must be 1 to 7")));
    }
    let mut dims = Vec::new();
    for &d in &raw_dims[1..=ndim as usize] {
        if d < 1 || d > u32::MAX as i64 {
            return Err(bad(format!("dimension {d} out of range")));
        }
        dims.push(d as usize);
    }
    if !(vox_offset.is_finite() && (0.0..1e12).contains(&vox_offset)) {
        return Err(bad(format!("vox_offset {vox_offset} out of range")));
    }
    Ok(Header {
        format,
        dims,
        datatype,
        pixdim,
        vox_offset: vox_offset as usize,
        scl_slope: slope,
        scl_inter: inter,
        qform_code: qcode,
        sform_code: scode,
        quatern,
        srow,
        big_endian: big,
    })
}

/// Bytes per voxel of the datatypes m3ret reads.
fn bytes_per_voxel(datatype: i16) -> Option<usize> {
    match datatype {
        2 | 256 => Some(1),
        4 | 512 => Some(2),
        8 | 16 | 768 => Some(4),
        64 | 1024 | 1280 => Some(8),
        _ => None,
    }
}

/// An uncompressed NIfTI file held in memory.
pub fn read(bytes: &[u8], limits: &Limits) -> Result<Volume, IoError> {
    let h = parse_header(bytes)?;
    let plan = Plan::new(&h, limits)?;
    let available = bytes.len().saturating_sub(plan.start);
    if available < plan.voxel_bytes() {
        return Err(plan.short_error(available));
    }
    plan.decode(&h, &mut &bytes[plan.start..])
}

/// How a header's first volume is read: its geometry checked against the limits,
/// where its voxels start, and the axis the slices are taken along.
struct Plan {
    format: Format,
    bytes_per_voxel: usize,
    dims: [usize; 3],
    axis: usize,
    start: usize,
}

impl Plan {
    fn new(h: &Header, limits: &Limits) -> Result<Plan, IoError> {
        let format = h.format;
        let bytes_per_voxel = bytes_per_voxel(h.datatype).ok_or_else(|| {
            IoError::unsupported(
                format,
                format!(
                    "datatype {} (m3ret reads integer and float scalars)",
                    h.datatype
                ),
            )
        })?;
        let dims = [
            h.dims[0],
            *h.dims.get(1).unwrap_or(&1),
            *h.dims.get(2).unwrap_or(&1),
        ];
        let axis = superior_inferior_axis(h);
        let (row_axis, col_axis) = in_plane_axes(axis);
        limits
            .check_geometry(dims[axis], dims[row_axis], dims[col_axis], 1)
            .map_err(IoError::TooLarge)?;
        let start = h.vox_offset.max(if format == Format::Nifti1 {
            NIFTI1_HEADER
        } else {
            NIFTI2_HEADER
        });
        Ok(Plan {
            format,
            bytes_per_voxel,
            dims,
            axis,
            start,
        })
    }

    /// Voxels of the first volume; bounded by the geometry check.
    fn voxels(&self) -> usize {
        self.dims.iter().product()
    }

    fn voxel_bytes(&self) -> usize {
        self.voxels() * self.bytes_per_voxel
    }

    fn short_error(&self, available: usize) -> IoError {
        let [nx, ny, nz] = self.dims;
        IoError::invalid(
            self.format,
            format!(
                "{available} voxel bytes after offset {}, {} needed for {nx} x {ny} x {nz}",
                self.start,
                self.voxel_bytes()
            ),
        )
    }

    /// Decodes the voxels as they are read, scaled, straight into their place in
    /// `[slice][row][col]` order: the only buffer the size of the volume is the
    /// output (4 bytes a voxel), whatever the datatype and slice axis.
    fn decode(&self, h: &Header, source: &mut dyn Read) -> Result<Volume, IoError> {
        let slope = if h.scl_slope.is_finite() && h.scl_slope != 0.0 {
            h.scl_slope
        } else {
            1.0
        };
        let inter = if h.scl_inter.is_finite() {
            h.scl_inter
        } else {
            0.0
        };
        let (row_axis, col_axis) = in_plane_axes(self.axis);
        let (frames, rows, cols) = (
            self.dims[self.axis],
            self.dims[row_axis],
            self.dims[col_axis],
        );
        // Where a step along i, j and k moves in the output.
        let mut out_stride = [0usize; 3];
        out_stride[self.axis] = rows * cols;
        out_stride[row_axis] = cols;
        out_stride[col_axis] = 1;
        let mut data = vec![0f32; self.voxels()];
        let bpv = self.bytes_per_voxel;
        let mut chunk = vec![0u8; (64 << 10) / bpv * bpv];
        let (mut at, mut ijk, mut done) = (0usize, [0usize; 3], 0usize);
        while done < data.len() {
            let want = chunk.len().min((data.len() - done) * bpv);
            source
                .read_exact(&mut chunk[..want])
                .map_err(|_| self.short_error(done * bpv))?;
            for voxel in chunk[..want].chunks_exact(bpv) {
                data[at] = (decode_voxel(voxel, h.datatype, h.big_endian) * slope + inter) as f32;
                // Next voxel in file order (i fastest), and its place in the output.
                for (axis, extent) in self.dims.iter().enumerate() {
                    ijk[axis] += 1;
                    at += out_stride[axis];
                    if ijk[axis] < *extent {
                        break;
                    }
                    at -= extent * out_stride[axis];
                    ijk[axis] = 0;
                }
            }
            done += want / bpv;
        }
        let pd = |i: usize| h.pixdim[i + 1].abs();
        Ok(Volume {
            data,
            frames,
            rows,
            cols,
            channels: 1,
            values: Values::Rescaled,
            format: self.format,
            modality: None,
            spacing: Some([pd(self.axis), pd(row_axis), pd(col_axis)]),
            window: None,
            inverted: false,
            is_video: false,
        })
    }
}

/// One voxel's value, from its bytes in the file's byte order.
fn decode_voxel(raw: &[u8], datatype: i16, big: bool) -> f64 {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            let a: [u8; $n] = raw.try_into().expect("bytes_per_voxel");
            (if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }) as f64
        }};
    }
    match datatype {
        2 => raw[0] as f64,
        256 => raw[0] as i8 as f64,
        4 => conv!(i16, 2),
        512 => conv!(u16, 2),
        8 => conv!(i32, 4),
        768 => conv!(u32, 4),
        16 => conv!(f32, 4),
        64 => conv!(f64, 8),
        1024 => conv!(i64, 8),
        1280 => conv!(u64, 8),
        _ => unreachable!("datatype checked by bytes_per_voxel"),
    }
}

/// The voxel axis (0 = i, 1 = j, 2 = k) whose direction has the largest
/// superior-inferior (RAS z) component.
pub fn superior_inferior_axis(h: &Header) -> usize {
    let m = direction_matrix(h);
    let score = |axis: usize| {
        let col = [m[0][axis], m[1][axis], m[2][axis]];
        let norm = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        if norm > 0.0 {
            (col[2] / norm).abs()
        } else {
            0.0
        }
    };
    let mut best = 2;
    for axis in [2, 1, 0] {
        if score(axis) > score(best) + 1e-6 {
            best = axis;
        }
    }
    best
}

/// The 3x3 voxel-to-world direction matrix from the sform, else the qform quaternion,
/// else the identity (Analyze-style files).
fn direction_matrix(h: &Header) -> [[f64; 3]; 3] {
    if h.sform_code > 0 {
        return std::array::from_fn(|r| std::array::from_fn(|c| h.srow[r][c]));
    }
    if h.qform_code > 0 {
        let [b, c, d] = h.quatern;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        return std::array::from_fn(|row| [r[row][0], r[row][1], r[row][2] * qfac]);
    }
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
}

/// The two axes other than `slice_axis`: (rows, columns) = (higher, lower) axis, so an
/// axial slice has rows along j and columns along i, as viewers show it.
fn in_plane_axes(slice_axis: usize) -> (usize, usize) {
    match slice_axis {
        0 => (2, 1),
        1 => (2, 0),
        _ => (1, 0),
    }
}
