//! The five modalities of the paper, and `auto`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Xray,
    Ultrasound,
    Endoscopy,
    Ct,
    Mri,
}

pub const VALID_MODALITIES: &str = "xray, ultrasound, endoscopy, ct, mri, auto";

impl Modality {
    pub const ALL: [Modality; 5] = [
        Modality::Xray,
        Modality::Ultrasound,
        Modality::Endoscopy,
        Modality::Ct,
        Modality::Mri,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Modality::Xray => "xray",
            Modality::Ultrasound => "ultrasound",
            Modality::Endoscopy => "endoscopy",
            Modality::Ct => "ct",
            Modality::Mri => "mri",
        }
    }

    /// The DICOM Modality (0008,0060) code's modality, for `auto`.
    pub fn from_dicom_code(code: &str) -> Option<Modality> {
        match code.trim() {
            "CR" | "DX" | "MG" | "RF" | "XA" | "PX" | "IO" => Some(Modality::Xray),
            "US" | "IVUS" => Some(Modality::Ultrasound),
            "ES" => Some(Modality::Endoscopy),
            "CT" => Some(Modality::Ct),
            "MR" => Some(Modality::Mri),
            _ => None,
        }
    }

    /// Whether the paper treats it as a volume (64 slices) rather than a 2D image or video.
    pub fn is_volume(self) -> bool {
        matches!(self, Modality::Ct | Modality::Mri)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a caller asked for: one modality, or `auto` (from the file's metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModalityChoice {
    Auto,
    Given(Modality),
}

impl ModalityChoice {
    /// Parses `xray|ultrasound|endoscopy|ct|mri|auto` (case-insensitive).
    pub fn parse(text: &str) -> Result<ModalityChoice, String> {
        let lower = text.trim().to_ascii_lowercase();
        if lower == "auto" {
            return Ok(ModalityChoice::Auto);
        }
        Modality::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .map(ModalityChoice::Given)
            .ok_or_else(|| {
                format!("unknown modality \"{text}\": expected one of {VALID_MODALITIES}")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_dicom_codes() {
        assert_eq!(
            ModalityChoice::parse("CT"),
            Ok(ModalityChoice::Given(Modality::Ct))
        );
        assert_eq!(ModalityChoice::parse("auto"), Ok(ModalityChoice::Auto));
        assert_eq!(
            ModalityChoice::parse("pet").unwrap_err(),
            "unknown modality \"pet\": expected one of xray, ultrasound, endoscopy, ct, mri, auto"
        );
        for (code, m) in [
            ("CR", Modality::Xray),
            ("DX", Modality::Xray),
            ("MG", Modality::Xray),
            ("RF", Modality::Xray),
            ("US", Modality::Ultrasound),
            ("ES", Modality::Endoscopy),
            ("CT", Modality::Ct),
            ("MR", Modality::Mri),
        ] {
            assert_eq!(Modality::from_dicom_code(code), Some(m), "{code}");
        }
        assert_eq!(Modality::from_dicom_code("PT"), None);
    }
}
