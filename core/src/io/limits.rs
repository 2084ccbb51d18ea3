//! Caps checked before anything is allocated from sizes a file claims.

/// What a single study may claim. The defaults admit every real study in the
/// development corpus with a wide margin (a 2k x 2k CR, a 512 x 512 x 300 CT, a few
/// minutes of ultrasound cine) and refuse the sizes that exist only to exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one input buffer (compressed, as received).
    pub max_input_bytes: usize,
    /// Bytes a gzip stream may inflate to.
    pub max_inflated_bytes: usize,
    /// Rows or columns of one image.
    pub max_side: usize,
    /// Frames of a video or multi-frame object, slices of a volume or series.
    pub max_frames: usize,
    /// Samples of the whole decoded study (slices x rows x columns x channels).
    pub max_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 1 << 30,
            max_inflated_bytes: 1 << 30,
            max_side: 8192,
            max_frames: 4096,
            max_samples: 256 << 20,
        }
    }
}

impl Limits {
    /// Checks a claimed geometry; `Err` says which limit it breaks.
    pub fn check_geometry(
        &self,
        frames: usize,
        rows: usize,
        cols: usize,
        channels: usize,
    ) -> Result<(), String> {
        if rows == 0 || cols == 0 || frames == 0 || channels == 0 {
            return Err(format!(
                "empty image: {frames} frames of {rows} x {cols} x {channels}"
            ));
        }
        if rows > self.max_side || cols > self.max_side {
            return Err(format!(
                "{rows} x {cols} pixels exceeds the limit of {} per side",
                self.max_side
            ));
        }
        if frames > self.max_frames {
            return Err(format!(
                "{frames} frames or slices exceeds the limit of {}",
                self.max_frames
            ));
        }
        let samples = frames
            .checked_mul(rows)
            .and_then(|v| v.checked_mul(cols))
            .and_then(|v| v.checked_mul(channels))
            .unwrap_or(usize::MAX);
        if samples > self.max_samples {
            return Err(format!(
                "{frames} x {rows} x {cols} x {channels} samples exceeds the limit of {}",
                self.max_samples
            ));
        }
        Ok(())
    }
}
