//! The precision of matrix products on the CPU: bf16 where the CPU has a bf16 unit
//! (Intel AMX-BF16 or AVX512-BF16, which oneDNN inside libtorch uses), f32 elsewhere.
//!
//! bf16 runs under libtorch's CPU autocast (`torch_ext::CpuBf16`): matrix products
//! and convolutions in bf16, normalisations, softmax and the residual stream in f32,
//! weights and optimiser state in f32. Model files and checkpoints do not change.
//! On CUDA, bf16 is the device's own path (unchanged by this setting).

use std::sync::OnceLock;

/// What a user asks for: `auto`, `bf16` or `f32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    Auto,
    Bf16,
    F32,
}

impl PrecisionChoice {
    pub fn parse(name: &str) -> Result<PrecisionChoice, String> {
        match name.trim() {
            "auto" => Ok(PrecisionChoice::Auto),
            "bf16" => Ok(PrecisionChoice::Bf16),
            "f32" => Ok(PrecisionChoice::F32),
            other => Err(format!(
                "unknown precision \"{other}\": expected auto, bf16 or f32"
            )),
        }
    }
}

/// The precision CPU forward (and backward) passes run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// The precision chosen, and why (`m3ret_runtime_info()`, `m3ret-train info`):
/// "bf16 (amx_bf16)", "f32 (no bf16 unit on this CPU)", "f32 (asked for)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPrecision {
    pub precision: Precision,
    pub reason: String,
}

impl CpuPrecision {
    pub fn describe(&self) -> String {
        let name = match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        format!("{name} ({})", self.reason)
    }
}

/// The CPU feature that makes bf16 fast here, if any: `amx_bf16`, else
/// `avx512_bf16` (from /proc/cpuinfo; none off Linux).
pub fn bf16_unit() -> Option<&'static str> {
    static UNIT: OnceLock<Option<&'static str>> = OnceLock::new();
    *UNIT.get_or_init(|| {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        ["amx_bf16", "avx512_bf16"]
            .into_iter()
            .find(|f| flags.contains(f))
    })
}

/// What `choice` means on this CPU; an error names the missing feature when bf16
/// is asked for on a CPU without a bf16 unit.
pub fn resolve(choice: PrecisionChoice) -> Result<CpuPrecision, String> {
    let chosen = |precision, reason: &str| CpuPrecision {
        precision,
        reason: reason.to_string(),
    };
    match (choice, bf16_unit()) {
        (PrecisionChoice::F32, _) => Ok(chosen(Precision::F32, "asked for")),
        (_, Some(unit)) => Ok(chosen(Precision::Bf16, unit)),
        (PrecisionChoice::Auto, None) => Ok(chosen(Precision::F32, "no bf16 unit on this CPU")),
        (PrecisionChoice::Bf16, None) => Err(
            "bf16 on the CPU needs AMX-BF16 or AVX512-BF16 (the amx_bf16 or avx512_bf16 flag in /proc/cpuinfo), which this CPU lacks: use auto or f32"
                .to_string(),
        ),
    }
}

/// `auto`, `bf16` or `f32`, parsed and resolved on this CPU.
pub fn resolve_name(name: &str) -> Result<CpuPrecision, String> {
    resolve(PrecisionChoice::parse(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_resolve_as_the_cpu_allows() {
        assert_eq!(PrecisionChoice::parse("bf16"), Ok(PrecisionChoice::Bf16));
        assert!(PrecisionChoice::parse("fp8")
            .unwrap_err()
            .contains("auto, bf16 or f32"));
        let f32 = resolve(PrecisionChoice::F32).unwrap();
        assert_eq!(f32.describe(), "f32 (asked for)");
        let auto = resolve(PrecisionChoice::Auto).unwrap();
        match bf16_unit() {
            Some(unit) => {
                assert_eq!(auto.describe(), format!("bf16 ({unit})"));
                assert!(resolve(PrecisionChoice::Bf16).is_ok());
            }
            None => {
                assert_eq!(auto.describe(), "f32 (no bf16 unit on this CPU)");
                assert!(resolve(PrecisionChoice::Bf16)
                    .unwrap_err()
                    .contains("amx_bf16"));
            }
        }
    }
}
