//! The text form of an embedding, `[1,2.5,-3]`, identical to pgvector's `vector`.

use super::{check_dims, VectorError, MAX_DIMS};

/// Parses `[1,2.5,-3]` (whitespace allowed around brackets, commas and numbers).
///
/// Stops counting at [`MAX_DIMS`] + 1 elements so a huge literal is refused before
/// it is stored; rejects NaN, infinity and values outside the `real` range.
pub fn parse(literal: &str) -> Result<Vec<f32>, VectorError> {
    let malformed = |reason: &str| VectorError::Malformed {
        literal: abbreviate(literal),
        reason: reason.to_string(),
    };
    let inner = literal
        .trim()
        .strip_prefix('[')
        .ok_or_else(|| malformed("it must start with \"[\""))?
        .strip_suffix(']')
        .ok_or_else(|| malformed("it must end with \"]\""))?;
    if inner.trim().is_empty() {
        return Err(VectorError::Empty);
    }
    let mut values = Vec::new();
    for (i, token) in inner.split(',').enumerate() {
        if i >= MAX_DIMS {
            return Err(VectorError::TooManyDims(inner.split(',').count()));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(malformed(&format!("element {} is empty", i + 1)));
        }
        let value: f32 = token.parse().map_err(|_| {
            malformed(&format!(
                "element {} (\"{}\") is not a number",
                i + 1,
                abbreviate(token)
            ))
        })?;
        if !value.is_finite() {
            return Err(VectorError::NotFinite {
                index: i + 1,
                value: abbreviate(token),
            });
        }
        values.push(value);
    }
    check_dims(values.len())?;
    Ok(values)
}

/// Formats as `[1,2.5,-3]` with the shortest text that reads back to the same `f32`.
pub fn format(values: &[f32]) -> String {
    let mut out = String::with_capacity(values.len() * 10 + 2);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_float(&mut out, *v);
    }
    out.push(']');
    out
}

fn push_float(out: &mut String, v: f32) {
    use std::fmt::Write;
    let magnitude = v.abs();
    // Rust's shortest round-trip formats; exponent form only where plain digits would be long.
    if magnitude == 0.0 || (1e-4..1e15).contains(&magnitude) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

/// Keeps error messages readable when a client sends a megabyte of garbage.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let v = parse(" [ 1, 2.5 ,-3 ] ").unwrap();
        assert_eq!(v, vec![1.0, 2.5, -3.0]);
        assert_eq!(format(&v), "[1,2.5,-3]");
        for x in [1e-7f32, 3.4028235e38, -1.1754944e-38, 0.1, 123456.78] {
            let text = format(&[x]);
            assert_eq!(parse(&text).unwrap(), vec![x], "{text}");
        }
        assert_eq!(format(&[1e-7]), "[1e-7]");
    }

    #[test]
    fn rejects_malformed_literals() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert!(
            msg("[1,,2]").contains("element 2 is empty"),
            "{}",
            msg("[1,,2]")
        );
        assert!(msg("[1,2").contains("must end with"));
        assert!(msg("abc").contains("must start with"));
        assert_eq!(parse("[]"), Err(VectorError::Empty));
        assert!(msg("[1,x]").contains("element 2 (\"x\") is not a number"));
        assert!(msg("[1,NaN]").contains("not finite"));
        assert!(msg("[inf]").contains("not finite"));
        assert!(msg("[1e39]").contains("not finite"));
    }

    #[test]
    fn refuses_too_many_dimensions() {
        let big = format!("[{}]", vec!["1"; MAX_DIMS + 1].join(","));
        assert_eq!(parse(&big), Err(VectorError::TooManyDims(MAX_DIMS + 1)));
        let max = format!("[{}]", vec!["1"; MAX_DIMS].join(","));
        assert_eq!(parse(&max).unwrap().len(), MAX_DIMS);
    }
}
