//! Decode + preprocess to the canonical tensor, per format, on one core.
//! `benches/io.sh` runs this beside the Python pipeline (python/bench_io.py) and
//! prints the ratio. M3RET_DATA: the corpus (default ../shared/data);
//! M3RET_BENCH_GENERATED: the inputs made by python/make_io_inputs.py.

use criterion::{criterion_group, criterion_main, Criterion};
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::study::{self, StudyOptions};
use std::path::PathBuf;

fn bench_io(c: &mut Criterion) {
    tch::set_num_threads(1);
    let data =
        PathBuf::from(std::env::var("M3RET_DATA").unwrap_or_else(|_| "../shared/data".into()));
    let generated = PathBuf::from(
        std::env::var("M3RET_BENCH_GENERATED").unwrap_or_else(|_| "/tmp/m3ret-bench-io".into()),
    );
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let single = [
        (
            "png_512",
            read(generated.join("xray_512.png")),
            Modality::Xray,
        ),
        (
            "jpeg_capsule_224",
            read(data.join("endoscopy/capsule-gi_normal/wce_img1310.jpg")),
            Modality::Endoscopy,
        ),
        (
            "cr_dicom_j2k_1955x1841",
            read(data.join("dicom_samples/pydicom-data_RG1_J2KR.dcm")),
            Modality::Xray,
        ),
        (
            "ct_nifti_122x101x112",
            read(data.join("ct/abdomen_volume/totalseg_example_ct.nii.gz")),
            Modality::Ct,
        ),
        (
            "ct_nifti_512x512x300",
            read(generated.join("ct_512x512x300.nii")),
            Modality::Ct,
        ),
        (
            "mp4_pocus_33",
            read(data.join("ultrasound/lung_covid19/pocus_convex_Cov-Atlas-Dayp1.mp4")),
            Modality::Ultrasound,
        ),
    ];
    let mut group = c.benchmark_group("io");
    group.sample_size(10);
    for (name, bytes, modality) in &single {
        let options = StudyOptions::new(ModalityChoice::Given(*modality));
        group.bench_function(*name, |b| b.iter(|| study::load(bytes, &options).unwrap()));
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(data.join("ct/body_dicom-series/totalseg_example_ct_dicom"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    let series: Vec<Vec<u8>> = files.into_iter().map(read).collect();
    let refs: Vec<&[u8]> = series.iter().map(|b| b.as_slice()).collect();
    let options = StudyOptions::new(ModalityChoice::Auto);
    group.bench_function("ct_series_20", |b| {
        b.iter(|| study::load_many(&refs, &options).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_io);
criterion_main!(benches);
