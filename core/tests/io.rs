//! Reading real files from ../shared/data into the canonical tensor.
//!
//! Known values were read independently with pydicom 3.0.1, nibabel 5.3.2 and PyAV
//! 14.2 (benches/python/requirements.txt); each assertion says which.

mod common;

use m3ret_core::io::{self, IoError, Limits, Values};
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::preprocess::{sample_frames, FrameSampling, Layout};
use m3ret_core::study::{self, StudyOptions};
use std::io::Write;
use std::path::Path;
use tch::Kind;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn options(m: ModalityChoice) -> StudyOptions {
    StudyOptions::new(m)
}

/// Shape `[3, slices, 256, 256]` and every value in [0, 1].
fn assert_canonical(t: &tch::Tensor, slices: i64, what: &str) {
    assert_eq!(t.size(), vec![3, slices, 256, 256], "{what}");
    let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
    assert!(
        min >= 0.0 && max <= 1.0 && max > min,
        "{what}: range [{min}, {max}]"
    );
}

/// Splits a CSV line, honouring double-quoted fields.
fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    fields.push(cur);
    fields
}

#[test]
fn every_dicom_sample_reads_or_fails_cleanly() {
    let root = common::shared_data();
    let index = std::fs::read_to_string(root.join("dicom_samples/index.csv")).unwrap();
    let mut read_ok = 0;
    for line in index.lines().skip(1) {
        // file,Modality,BodyPartExamined,StudyDescription,SeriesDescription,Rows,Columns,NumberOfFrames,TransferSyntax
        let cols = split_csv(line);
        let (file, code) = (cols[0].as_str(), cols[1].as_str());
        let (rows, columns, frames): (usize, usize, usize) = (
            cols[5].parse().unwrap(),
            cols[6].parse().unwrap(),
            cols[7].parse().unwrap(),
        );
        let bytes = read(&root.join("dicom_samples").join(file));
        let result = study::load(&bytes, &options(ModalityChoice::Auto));
        let s = result.unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            Some(s.detected.modality),
            Modality::from_dicom_code(code),
            "{file}"
        );
        assert_eq!(s.detected.shape[..3], [frames, rows, columns], "{file}");
        let slices = match s.detected.layout {
            Layout::Image2d => 4,
            Layout::Video => 16,
            Layout::Volume => 64,
        };
        assert_canonical(&s.tensor, slices, file);
        read_ok += 1;
    }
    assert_eq!(read_ok, 21);
}

/// The issue expected `bad_sequence` to fail; its sequence encoding is unusual but its
/// JPEG Lossless pixel data is valid, and pydicom with pylibjpeg decodes it too.
#[test]
fn bad_sequence_file_decodes_to_the_same_hounsfield_units_as_pydicom() {
    let root = common::shared_data();
    let v = io::read(
        &read(&root.join("dicom_samples/pydicom-data_bad_sequence.dcm")),
        &Limits::default(),
    )
    .unwrap();
    // pydicom + pylibjpeg: min -1011, max 1243, [256, 256] = 202, mean -76.6256 HU.
    let (min, max) = v
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    assert_eq!(
        (min, max, v.data[256 * 512 + 256]),
        (-1011.0, 1243.0, 202.0)
    );
    let mean = v.data.iter().map(|x| *x as f64).sum::<f64>() / v.data.len() as f64;
    assert!((mean + 76.6256).abs() < 1e-3, "{mean}");
}

#[test]
fn jpeg2000_cr_monochrome1_with_voi_window() {
    let root = common::shared_data();
    let v = io::read(
        &read(&root.join("dicom_samples/pydicom-data_RG1_J2KR.dcm")),
        &Limits::default(),
    )
    .unwrap();
    // pydicom + pylibjpeg-openjpeg: 1955 x 1841, [1000, 900] = 3606, MONOCHROME1, window 15000/30000.
    assert_eq!((v.rows, v.cols), (1955, 1841));
    assert_eq!(v.data[1000 * 1841 + 900], 3606.0);
    assert!(v.inverted);
    assert_eq!(v.window, Some((15000.0, 30000.0)));
}

#[test]
fn dicom_ct_is_in_hounsfield_units() {
    let root = common::shared_data();
    let v = io::read(
        &read(&root.join("dicom_samples/imageio_dicom_file01.dcm")),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((v.rows, v.cols, v.values), (512, 512, Values::Rescaled));
    // pydicom: pixel_array * RescaleSlope (1) + RescaleIntercept (-1024).
    assert_eq!(v.data[0], -980.0);
    assert_eq!(v.data[256 * 512 + 256], -255.0);
    let max = v.data.iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(max, 2976.0);
}

#[test]
fn dicom_multiframe_palette_and_colour() {
    let root = common::shared_data();
    let d = |f: &str| {
        io::read(
            &read(&root.join("dicom_samples").join(f)),
            &Limits::default(),
        )
        .unwrap()
    };
    // pydicom: emri_small is 10 frames of 64 x 64, frame 3 pixel (32, 32) = 159.
    let v = d("pydicom-data_emri_small.dcm");
    assert_eq!((v.frames, v.rows, v.cols), (10, 64, 64));
    assert_eq!(v.data[3 * 64 * 64 + 32 * 64 + 32], 159.0);
    // Palette colour becomes RGB.
    let v = d("pydicom-data_gdcm-US-ALOKA-16.dcm");
    assert_eq!((v.channels, v.values), (3, Values::EightBit));
    // JPEG baseline cine: 120 RGB frames, read as a video.
    let s = study::load(
        &read(&root.join("dicom_samples/pydicom-data_color3d_jpeg_baseline.dcm")),
        &options(ModalityChoice::Auto),
    )
    .unwrap();
    assert_eq!(s.detected.layout, Layout::Video);
    assert_eq!(
        s.detected.frame_indices,
        Some(sample_frames(120, 16, FrameSampling::Uniform))
    );
}

#[test]
fn dicom_series_is_assembled_in_position_order() {
    let root = common::shared_data();
    let mut files: Vec<_> =
        std::fs::read_dir(root.join("ct/body_dicom-series/totalseg_example_ct_dicom"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    let buffers: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    // pydicom: ImagePositionPatient z falls by 2 mm per file in name order (-766.5 ... -804.5),
    // orientation [1,0,0,0,1,0], so sorted by position the last file comes first.
    let mut shuffled: Vec<&[u8]> = buffers.iter().map(|b| b.as_slice()).collect();
    shuffled.swap(0, 7);
    shuffled.swap(3, 19);
    let v = io::series::read(&shuffled, &Limits::default()).unwrap();
    assert_eq!((v.frames, v.rows, v.cols), (20, 512, 512));
    assert!(
        (v.spacing.unwrap()[0] - 2.0).abs() < 1e-6,
        "{:?}",
        v.spacing
    );
    let per = 512 * 512;
    for (slot, file) in [(0, 19), (1, 18), (19, 0)] {
        let alone = io::read(&buffers[file], &Limits::default()).unwrap();
        assert_eq!(
            &v.data[slot * per..(slot + 1) * per],
            &alone.data[..],
            "slot {slot} should be file {file}"
        );
    }
    let s = study::load_many(&shuffled, &options(ModalityChoice::Auto)).unwrap();
    assert_eq!(s.detected.layout, Layout::Volume);
    assert_canonical(&s.tensor, 64, "series");
}

/// Voxels stream into `[slice][row][col]` along the superior-inferior axis: here i
/// (the sform's third row points along i), so slices run along i, rows along k
/// and columns along j; plain and gzip alike.
#[test]
fn nifti_voxels_land_in_slice_order_along_any_axis() {
    let (nx, ny, nz) = (3usize, 4usize, 5usize);
    let mut file = vec![0u8; 352];
    file[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, nx as i16, ny as i16, nz as i16].iter().enumerate() {
        file[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    file[70..72].copy_from_slice(&16i16.to_le_bytes());
    file[108..112].copy_from_slice(&352f32.to_le_bytes());
    file[254..256].copy_from_slice(&1i16.to_le_bytes()); // sform_code
    for (row, values) in [
        [0f32, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
    ]
    .iter()
    .enumerate()
    {
        for (c, v) in values.iter().enumerate() {
            let at = 280 + 16 * row + 4 * c;
            file[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    file[344..348].copy_from_slice(b"n+1\0");
    for v in 0..nx * ny * nz {
        file.extend_from_slice(&(v as f32).to_le_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&file).unwrap();
    for bytes in [file.clone(), gz.finish().unwrap()] {
        let v = io::read(&bytes, &Limits::default()).unwrap();
        assert_eq!((v.frames, v.rows, v.cols), (nx, nz, ny));
        for s in 0..nx {
            for r in 0..nz {
                for c in 0..ny {
                    let expected = (s + nx * (c + ny * r)) as f32;
                    assert_eq!(v.data[(s * nz + r) * ny + c], expected, "({s}, {r}, {c})");
                }
            }
        }
    }
}

#[test]
fn nifti_volumes_ct_air_and_label_map() {
    let root = common::shared_data();
    let ct = io::read(
        &read(&root.join("ct/abdomen_volume/totalseg_example_ct.nii.gz")),
        &Limits::default(),
    )
    .unwrap();
    // nibabel: shape (122, 101, 112), RAS, voxel [0,0,0] = -1023 HU (air).
    assert_eq!((ct.frames, ct.rows, ct.cols), (112, 101, 122));
    assert_eq!(ct.data[0], -1023.0);
    let corner: f32 = (0..10).map(|i| ct.data[i]).sum::<f32>() / 10.0;
    assert!((corner + 1000.0).abs() < 50.0, "air reads {corner} HU");
    let labels = io::read(
        &read(&root.join("ct/abdomen_volume-labels/totalseg_example_ct_seg.nii.gz")),
        &Limits::default(),
    )
    .unwrap();
    // nibabel: shape (122, 101, 30), labels 0..=117, 42 distinct values.
    assert_eq!((labels.frames, labels.rows, labels.cols), (30, 101, 122));
    let mut distinct: Vec<i64> = labels.data.iter().map(|v| *v as i64).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!((distinct.len(), *distinct.last().unwrap()), (42, 117));
    // LPS-oriented chest CT: slices still along k (S), 164 of them.
    let chest = io::read(
        &read(&root.join("ct/chest_volume/totalseg_aorta_ct_cropped.nii.gz")),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((chest.frames, chest.rows, chest.cols), (164, 126, 120));
    let s = study::load(
        &read(&root.join("mri/head_volume/niivue_FLAIR.nii.gz")),
        &options(ModalityChoice::Given(Modality::Mri)),
    )
    .unwrap();
    assert_eq!(s.detected.shape, [140, 160, 124, 1]);
    assert_canonical(&s.tensor, 64, "FLAIR");
    let s = study::load(
        &read(&root.join("ct/abdomen_volume/totalseg_example_ct.nii.gz")),
        &options(ModalityChoice::Given(Modality::Ct)),
    )
    .unwrap();
    assert_canonical(&s.tensor, 64, "CT volume");
    // 122 x 101 voxels: 256 x 212 after resizing, 22 rows of zero padding on top;
    // air (about -1000 HU) maps to about 0 in the [-1000, 1000] HU window.
    assert_eq!(
        s.tensor
            .narrow(2, 0, 22)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert!(s.tensor.narrow(2, 22, 212).min().double_value(&[]) < 0.01);
}

#[test]
fn images_of_every_modality() {
    let cases = [
        ("xray/chest_pneumonia-pediatric", Modality::Xray, 28, 28),
        ("xray/chest_covid19", Modality::Xray, 0, 0),
        ("ultrasound/breast_benign", Modality::Ultrasound, 0, 0),
        ("endoscopy/capsule-gi_normal", Modality::Endoscopy, 224, 224),
        ("ct/head_hemorrhage", Modality::Ct, 0, 0),
        ("mri/brain_glioma", Modality::Mri, 224, 224),
    ];
    for (dir, modality, rows, cols) in cases {
        let file = common::corpus_files(dir, 1).remove(0);
        let s = study::load(&read(&file), &options(ModalityChoice::Given(modality)))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(s.detected.layout, Layout::Image2d);
        if rows > 0 {
            assert_eq!(s.detected.shape[1..3], [rows, cols], "{}", file.display());
        }
        assert_canonical(&s.tensor, 4, dir);
        // The 4 slices are copies of one image.
        assert!(s.tensor.select(1, 0).equal(&s.tensor.select(1, 3)));
    }
    // A 28 x 28 PNG is scaled up to fill 256 x 256 exactly (square: no padding).
    let f = common::corpus_files("xray/chest_pneumonia-pediatric", 1).remove(0);
    let s = study::load(&read(&f), &options(ModalityChoice::Given(Modality::Xray))).unwrap();
    assert!(
        s.tensor.get(0).get(0).get(0).get(0).double_value(&[]) > 0.0
            || s.tensor.get(0).get(0).get(255).get(255).double_value(&[]) > 0.0
    );
}

#[test]
fn aspect_ratio_kept_and_shorter_side_padded() {
    let file = common::corpus_files("endoscopy/abdomen-laparoscopy_cholecystectomy", 2)
        .into_iter()
        .find(|f| f.ends_with("rvim_endo.mp4"))
        .unwrap();
    let s = study::load(
        &read(&file),
        &options(ModalityChoice::Given(Modality::Endoscopy)),
    )
    .unwrap();
    // PyAV: 250 frames of 256 x 144 (H.264 High).
    assert_eq!(s.detected.shape, [250, 144, 256, 3]);
    assert_eq!(
        s.detected.frame_indices,
        Some(sample_frames(250, 16, FrameSampling::Uniform))
    );
    assert_canonical(&s.tensor, 16, "laparoscopy");
    // 144 rows centred in 256: 56 rows of zero padding above and below.
    let t = &s.tensor;
    assert_eq!(
        t.narrow(2, 0, 56).abs().sum(Kind::Float).double_value(&[]),
        0.0
    );
    assert_eq!(
        t.narrow(2, 200, 56)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert!(t.narrow(2, 56, 144).sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn mp4_frames_and_sampled_indices() {
    let root = common::shared_data();
    let bytes = read(&root.join("ultrasound/lung_covid19/pocus_convex_Cov-Atlas-Dayp1.mp4"));
    let v = io::read(&bytes, &Limits::default()).unwrap();
    // PyAV: 33 frames of 256 x 256.
    assert_eq!((v.frames, v.rows, v.cols, v.channels), (33, 256, 256, 3));
    let s = study::load(
        &bytes,
        &options(ModalityChoice::Given(Modality::Ultrasound)),
    )
    .unwrap();
    let idx = s.detected.frame_indices.clone().unwrap();
    assert_eq!(
        idx,
        vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]
    );
    assert_canonical(&s.tensor, 16, "POCUS");
    let again = study::load(
        &bytes,
        &options(ModalityChoice::Given(Modality::Ultrasound)),
    )
    .unwrap();
    assert!(
        s.tensor.equal(&again.tensor),
        "inference sampling is deterministic"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let limits = Limits::default();
    assert_eq!(io::read(b"", &limits).unwrap_err(), IoError::Empty);
    let unknown = io::read(b"hello world, not an image", &limits)
        .unwrap_err()
        .to_string();
    assert!(
        unknown.starts_with("unrecognised format: expected DICOM"),
        "{unknown}"
    );
    // A NIfTI-1 header claiming 10^12 voxels.
    let mut header = vec![0u8; 352];
    header[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, 10000, 10000, 10000].iter().enumerate() {
        header[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    header[70..72].copy_from_slice(&16i16.to_le_bytes());
    header[344..348].copy_from_slice(b"n+1\0");
    let err = io::read(&header, &limits).unwrap_err();
    assert!(matches!(err, IoError::TooLarge(_)), "{err}");
    // The same header claiming a small volume but carrying no voxels.
    for (i, d) in [3i16, 64, 64, 64].iter().enumerate() {
        header[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    let err = io::read(&header, &limits).unwrap_err().to_string();
    assert!(
        err.contains("4 voxel bytes after offset 348, 1048576 needed for 64 x 64 x 64"),
        "{err}"
    );
    // Gzip (issue 28, finding 3): the header is read first and only the voxel bytes
    // it declares are inflated. A bomb whose header declares 1024^3 int16 is refused
    // on its header, and a stream of zeros is not NIfTI at all.
    let gzip = |header: &[u8], zero_mib: usize| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(header).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..zero_mib {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap()
    };
    let nifti_header = |dims: [i16; 3], datatype: i16| {
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        for (i, d) in [3i16, dims[0], dims[1], dims[2]].iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        h[70..72].copy_from_slice(&datatype.to_le_bytes());
        h[108..112].copy_from_slice(&352f32.to_le_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        h
    };
    let small = Limits {
        max_inflated_bytes: 16 << 20,
        ..limits
    };
    let bomb = gzip(&nifti_header([1024, 1024, 1024], 4), 64);
    let err = io::read(&bomb, &limits).unwrap_err();
    assert!(
        matches!(err, IoError::TooLarge(ref m) if m.contains("1024 x 1024 pixels exceeds")
            || m.contains("samples exceeds")),
        "{err}"
    );
    let declared = gzip(&nifti_header([2048, 2048, 4], 4), 0);
    let err = io::read(&declared, &small).unwrap_err().to_string();
    assert!(
        err.contains("the header declares 33554784 bytes, past the gzip limit of 16777216"),
        "{err}"
    );
    let zeros = gzip(&[], 64);
    let err = io::read(&zeros, &small).unwrap_err().to_string();
    assert!(
        err.contains("only gzip-compressed NIfTI is accepted"),
        "{err}"
    );
    // A small volume followed by 64 MiB the header does not declare: read, and the
    // rest never inflated (it would break the 16 MiB limit).
    let padded = gzip(&nifti_header([4, 4, 4], 4), 64);
    let v = io::read(&padded, &small).unwrap();
    assert_eq!((v.frames, v.rows, v.cols, v.data.len()), (4, 4, 4, 64));
    // Too short for what it declares.
    let short = gzip(&nifti_header([64, 64, 64], 4), 0);
    let err = io::read(&short, &small).unwrap_err().to_string();
    assert!(err.contains("needed for 64 x 64 x 64"), "{err}");

    let root = common::shared_data();
    let dcm = read(&root.join("dicom_samples/imageio_dicom_file01.dcm"));
    // Truncated in the middle of the pixel data.
    let err = io::read(&dcm[..dcm.len() / 2], &limits)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid dicom:"), "{err}");
    // Rows doubled in the header: the pixel data is now shorter than rows x columns.
    let mut lying = dcm.clone();
    let at = lying
        .windows(8)
        .position(|w| w == [0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0])
        .expect("Rows element");
    lying[at + 8..at + 10].copy_from_slice(&1024u16.to_le_bytes());
    let err = io::read(&lying, &limits).unwrap_err().to_string();
    assert!(err.contains("pixel data"), "{err}");
    // A truncated PNG.
    let png = read(&common::corpus_files("ultrasound/breast_benign", 1)[0]);
    let err = io::read(&png[..png.len() / 3], &limits)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid png:"), "{err}");
    // Auto on a file without a Modality tag.
    let err = study::load(&png, &options(ModalityChoice::Auto))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("modality auto needs a DICOM file"), "{err}");
}

/// The committed fixtures read everywhere, with or without ../shared/data.
#[test]
fn committed_fixtures_read_without_the_corpus() {
    let load = |name: &str, m: Modality| {
        study::load(
            &read(&common::fixture(name)),
            &options(ModalityChoice::Given(m)),
        )
        .unwrap()
    };
    let s = load("pmnist_train_0000.png", Modality::Xray);
    assert_eq!(
        (s.detected.shape, s.detected.layout.clone()),
        ([1, 28, 28, 1], Layout::Image2d)
    );
    assert_canonical(&s.tensor, 4, "png");
    let s = load("wce_img1310.jpg", Modality::Endoscopy);
    assert_eq!(s.detected.shape, [1, 224, 224, 3]);
    assert_canonical(&s.tensor, 4, "jpeg");
    let s = load(
        "pocus_convex_Cov_recommendations_likebutterfly_mov5.mp4",
        Modality::Ultrasound,
    );
    assert_eq!(s.detected.shape, [138, 256, 256, 3]);
    assert_eq!(s.detected.frame_indices.as_ref().unwrap()[..3], [4, 12, 21]);
    assert_canonical(&s.tensor, 16, "mp4");
    let s = load("totalseg_example_mr_sm.nii.gz", Modality::Mri);
    assert_eq!(s.detected.layout, Layout::Volume);
    assert_canonical(&s.tensor, 64, "nifti mri");
    let mut series: Vec<_> = std::fs::read_dir(common::fixture("ct_series"))
        .unwrap()
        .map(|e| read(&e.unwrap().path()))
        .collect();
    series.reverse();
    let refs: Vec<&[u8]> = series.iter().map(|b| b.as_slice()).collect();
    let s = study::load_many(&refs, &options(ModalityChoice::Auto)).unwrap();
    assert_eq!(
        (s.detected.modality, s.detected.shape),
        (Modality::Ct, [3, 512, 512, 1])
    );
    assert!((s.detected.spacing.unwrap()[0] - 2.0).abs() < 1e-6);
    assert_canonical(&s.tensor, 64, "series");
}

/// fuzz/seeds/nifti2_2x2x2.nii was written by hand (Python struct, following the
/// NIfTI-2 header layout): 2 x 2 x 2 int16 values 0, 100, ..., 700, scl_slope 1,
/// scl_inter -1024, no sform or qform (so slices along k).
#[test]
fn nifti2_plain_and_gzip() {
    let seeds = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    for name in ["nifti2_2x2x2.nii", "nifti2_2x2x2.nii.gz"] {
        let v = io::read(&read(&seeds.join(name)), &Limits::default()).unwrap();
        assert_eq!(v.format, io::Format::Nifti2, "{name}");
        assert_eq!((v.frames, v.rows, v.cols), (2, 2, 2));
        let expected: Vec<f32> = (0..8).map(|i| i as f32 * 100.0 - 1024.0).collect();
        assert_eq!(v.data, expected, "{name}");
    }
}

/// Inputs the fuzzer found (fuzz/regressions/): each must be a clear error, within limits.
#[test]
fn fuzzer_findings_stay_fixed() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    // A mutated CT slice with a private element declaring 4 GB in a 70 KB file:
    // dicom-parser zero-filled 2.7 GB for it before the length pre-scan existed.
    let input = read(&dir.join("oom-element-length-4gb.bin"));
    let err = study::load(&input[1..], &options(ModalityChoice::Given(Modality::Ct)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid dicom: element (0029,1044) at byte 4322 claims 4176751630 bytes, only 14 remain"
    );
}

/// A DICOM whose Bits Stored is impossible: dicom-pixeldata asserts (a panic) on it.
#[test]
fn impossible_bits_stored_is_an_error_not_a_panic() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let input = read(&dir.join("panic-bits-stored.bin"));
    let err = study::load(&input[1..], &options(ModalityChoice::Auto))
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not describe a sample"), "{err}");
}

/// m3ret_dicom_meta's direct header reader gives what dicom-object's parser gives,
/// on every DICOM file at hand, whole and cut short.
#[test]
fn the_direct_header_reader_agrees_with_the_parser() {
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/ct_series"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    {
        let root = common::shared_data();
        for e in std::fs::read_dir(root.join("dicom_samples")).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "dcm") {
                files.push(path);
            }
        }
    }
    let mut agreed = 0;
    for path in &files {
        let bytes = read(path);
        for cut in [bytes.len(), bytes.len() / 2, 2000, 500] {
            let part = &bytes[..cut.min(bytes.len())];
            let (direct, parser) = (
                io::dicom_meta::meta(part),
                io::dicom_meta::meta_with_parser(part),
            );
            match (&direct, &parser) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{} cut at {cut}", path.display()),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "{} cut at {cut}: direct {direct:?}, parser {parser:?}",
                    path.display()
                ),
            }
            agreed += 1;
        }
    }
    assert!(agreed >= 12, "{agreed} files compared");
}
