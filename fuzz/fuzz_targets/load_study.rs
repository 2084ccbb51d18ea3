//! The single-buffer entry point, `study::load`, on arbitrary bytes: it must return
//! Ok or Err, never panic, hang or allocate past its limits. The first byte picks the
//! modality the bytes are read as; limits are lowered so that runs stay fast.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m3ret_core::io::Limits;
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::study::{self, StudyOptions};

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else { return };
    let modality = match first % 6 {
        5 => ModalityChoice::Auto,
        i => ModalityChoice::Given(Modality::ALL[i as usize]),
    };
    let mut options = StudyOptions::new(modality);
    options.limits = Limits {
        max_input_bytes: 4 << 20,
        max_inflated_bytes: 64 << 20,
        max_side: 4096,
        max_frames: 512,
        max_samples: 32 << 20,
    };
    let _ = study::load(bytes, &options);
});
