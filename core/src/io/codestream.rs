//! Sizes declared inside compressed DICOM frames, checked before decoding.
//!
//! The JPEG and JPEG 2000 decoders allocate what their own headers declare, not
//! what the DICOM Rows and Columns say; a frame whose codestream claims 60000 x 60000
//! would exhaust memory. Each frame's header is read here and must agree with the
//! DICOM attributes (found by fuzzing).

/// Width, height, components and (for JPEG 2000) tile count a codestream declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    pub width: u64,
    pub height: u64,
    pub components: u64,
    pub tiles: u64,
}

/// Reads the declared size of a JPEG (SOF marker) or JPEG 2000 (SIZ marker,
/// raw codestream or inside a JP2 file) frame. None when neither is recognised.
pub fn declared_size(frame: &[u8]) -> Option<Declared> {
    if frame.starts_with(&[0xFF, 0xD8]) {
        jpeg_sof(frame)
    } else {
        let at = frame
            .windows(4)
            .take(4096)
            .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?;
        j2k_siz(&frame[at + 2..])
    }
}

fn be16(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as u64)
}

fn be32(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]) as u64)
}

/// Walks JPEG markers to the first start-of-frame.
fn jpeg_sof(b: &[u8]) -> Option<Declared> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        let marker = b[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        let len = be16(b, i + 2)? as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let height = be16(b, i + 5)?;
            let width = be16(b, i + 7)?;
            let components = *b.get(i + 9)? as u64;
            return Some(Declared {
                width,
                height,
                components,
                tiles: 1,
            });
        }
        i += 2 + len;
    }
    None
}

/// Parses a SIZ marker segment starting at its marker (FF51).
fn j2k_siz(b: &[u8]) -> Option<Declared> {
    // FF51 Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
    let (x, y, xo, yo) = (be32(b, 6)?, be32(b, 10)?, be32(b, 14)?, be32(b, 18)?);
    let (xt, yt, xto, yto) = (be32(b, 22)?, be32(b, 26)?, be32(b, 30)?, be32(b, 34)?);
    let components = be16(b, 38)?;
    if x <= xo || y <= yo || xt == 0 || yt == 0 || xto > xo || yto > yo {
        return Some(Declared {
            width: 0,
            height: 0,
            components,
            tiles: 0,
        });
    }
    let tiles = (x - xto).div_ceil(xt) * (y - yto).div_ceil(yt);
    Some(Declared {
        width: x - xo,
        height: y - yo,
        components,
        tiles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jpeg_sof_and_j2k_siz() {
        // SOI, APP0 (length 4), SOF0: precision 8, 3 x 5, 1 component
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 0, 0, 0xFF, 0xC0, 0, 11, 8, 0, 3, 0, 5, 1, 1, 0x11, 0,
        ];
        assert_eq!(
            declared_size(&jpeg),
            Some(Declared {
                width: 5,
                height: 3,
                components: 1,
                tiles: 1
            })
        );
        let mut j2k = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [512u32, 256, 0, 0, 128, 128, 0, 0] {
            j2k.extend_from_slice(&v.to_be_bytes());
        }
        j2k.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            declared_size(&j2k),
            Some(Declared {
                width: 512,
                height: 256,
                components: 1,
                tiles: 8
            })
        );
        assert_eq!(declared_size(b"not a codestream"), None);
    }
}
