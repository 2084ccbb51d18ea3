//! A pass over a DICOM file's element headers before `dicom-object` parses it.
//!
//! `dicom-parser` allocates and zero-fills each value at the length its header
//! declares before reading it, so a 70 KB file declaring a 3 GB element takes 3 GB
//! (found by fuzzing). This walk refuses any length that exceeds the bytes left, at
//! every nesting level (sequences, items, encapsulated pixel data), without
//! allocating. It reads only headers and is linear in the file size.

use super::{Format, IoError};

const MAX_DEPTH: usize = 32;
const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);

fn invalid(reason: String) -> IoError {
    IoError::invalid(Format::Dicom, reason)
}

#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

struct Scanner<'a> {
    b: &'a [u8],
}

/// Checks every declared length; `Err` names the first impossible one.
pub fn check_lengths(bytes: &[u8]) -> Result<(), IoError> {
    let start = begin(bytes)?;
    start
        .scanner
        .dataset(start.pos, bytes.len(), start.encoding, 0, None)?;
    Ok(())
}

/// Checks every declared length, then returns where the data set's first element
/// of a group after `last_group` starts (the file's length if none does): the
/// prefix a reader of groups up to `last_group` needs.
pub fn end_of_groups(bytes: &[u8], last_group: u16) -> Result<usize, IoError> {
    Ok(raw_header(bytes, last_group)?.end)
}

/// One element at the top level of the data set, its value not decoded.
pub struct RawElement<'a> {
    pub tag: (u16, u16),
    /// The VR written in the file; `None` in implicit VR files.
    pub vr: Option<[u8; 2]>,
    pub value: &'a [u8],
}

/// The top-level elements of the groups up to some group, after a check of every
/// length in the file: what a header reader needs, borrowed from the bytes.
pub struct RawHeader<'a> {
    pub transfer_syntax: String,
    pub big_endian: bool,
    /// Elements of defined length (sequences of undefined length are left out).
    pub elements: Vec<RawElement<'a>>,
    /// Where the first element after those groups starts.
    pub end: usize,
}

/// The data set's top-level elements of groups up to `last_group`, once every
/// length in the whole file has been checked.
pub fn raw_header(bytes: &[u8], last_group: u16) -> Result<RawHeader<'_>, IoError> {
    let start = begin(bytes)?;
    let (s, e) = (&start.scanner, start.encoding);
    s.dataset(start.pos, bytes.len(), e, 0, None)?;
    let mut elements = Vec::new();
    let mut pos = start.pos;
    while pos + 8 <= bytes.len() {
        let (tag, len, value_at) = s.header(pos, e)?;
        if tag.0 > last_group {
            break;
        }
        pos = if len == UNDEFINED {
            s.sequence(value_at, bytes.len(), Some(e), e, 1, None)?
        } else {
            let end = value_at + len as usize;
            let vr = e.explicit.then(|| [bytes[pos + 4], bytes[pos + 5]]);
            elements.push(RawElement {
                tag,
                vr,
                value: &bytes[value_at..end],
            });
            end
        };
    }
    Ok(RawHeader {
        transfer_syntax: start.transfer_syntax,
        big_endian: e.big_endian,
        elements,
        end: pos.min(bytes.len()),
    })
}

/// Where the data set starts, read from the file meta group.
struct Start<'a> {
    scanner: Scanner<'a>,
    pos: usize,
    encoding: Encoding,
    transfer_syntax: String,
}

/// The scanner, where the data set starts, and its encoding (from the meta group).
fn begin(bytes: &[u8]) -> Result<Start<'_>, IoError> {
    let start = if bytes.starts_with(b"DICM") { 4 } else { 132 };
    let s = Scanner { b: bytes };
    let meta = Encoding {
        explicit: true,
        big_endian: false,
    };
    // The file meta group is explicit VR little endian; it names the data set's encoding.
    let mut pos = start;
    let mut transfer_syntax = String::new();
    while pos + 4 <= bytes.len() && s.u16(pos, false)? == 0x0002 {
        let (tag, len, value_at) = s.header(pos, meta)?;
        let len = len as usize;
        if len as u32 == UNDEFINED || value_at + len > bytes.len() {
            return Err(invalid(format!(
                "file meta element ({:04X},{:04X}) claims {len} bytes",
                tag.0, tag.1
            )));
        }
        if tag == (0x0002, 0x0010) {
            transfer_syntax = String::from_utf8_lossy(&bytes[value_at..value_at + len])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        pos = value_at + len;
    }
    let encoding = match transfer_syntax.as_str() {
        "1.2.840.10008.1.2" => Encoding {
            explicit: false,
            big_endian: false,
        },
        "1.2.840.10008.1.2.2" => Encoding {
            explicit: true,
            big_endian: true,
        },
        "1.2.840.10008.1.2.1.99" => {
            return Err(IoError::unsupported(
                Format::Dicom,
                "deflated transfer syntax (1.2.840.10008.1.2.1.99)",
            ))
        }
        _ => Encoding {
            explicit: true,
            big_endian: false,
        },
    };
    Ok(Start {
        scanner: s,
        pos,
        encoding,
        transfer_syntax,
    })
}

impl Scanner<'_> {
    fn u16(&self, at: usize, big: bool) -> Result<u16, IoError> {
        let b = self
            .b
            .get(at..at + 2)
            .ok_or_else(|| invalid(format!("truncated at byte {at}")))?;
        Ok(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&self, at: usize, big: bool) -> Result<u32, IoError> {
        let b = self
            .b
            .get(at..at + 4)
            .ok_or_else(|| invalid(format!("truncated at byte {at}")))?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    /// (tag, length, value offset) of the element header at `at`.
    fn header(&self, at: usize, e: Encoding) -> Result<((u16, u16), u32, usize), IoError> {
        let tag = (self.u16(at, e.big_endian)?, self.u16(at + 2, e.big_endian)?);
        // Items and delimiters have no VR in any encoding.
        if tag.0 == 0xFFFE || !e.explicit {
            return Ok((tag, self.u32(at + 4, e.big_endian)?, at + 8));
        }
        let vr = self
            .b
            .get(at + 4..at + 6)
            .ok_or_else(|| invalid(format!("truncated at byte {at}")))?;
        let long = matches!(
            vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        if long {
            Ok((tag, self.u32(at + 8, e.big_endian)?, at + 12))
        } else {
            Ok((tag, self.u16(at + 6, e.big_endian)? as u32, at + 8))
        }
    }

    fn is_sequence_value(&self, at: usize, e: Encoding) -> bool {
        self.u16(at, e.big_endian).ok() == Some(ITEM.0)
            && self.u16(at + 2, e.big_endian).ok() == Some(ITEM.1)
    }

    /// Walks elements in `[pos, end)`; stops early at `stop` (a delimiter tag). Returns
    /// the position after the last element (after the delimiter when one ended it).
    fn dataset(
        &self,
        mut pos: usize,
        end: usize,
        e: Encoding,
        depth: usize,
        stop: Option<(u16, u16)>,
    ) -> Result<usize, IoError> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("sequences nested deeper than {MAX_DEPTH}")));
        }
        while pos + 8 <= end {
            let (tag, len, value_at) = self.header(pos, e)?;
            if Some(tag) == stop {
                return Ok(value_at);
            }
            if tag == ITEM_END || tag == SEQUENCE_END {
                return Err(invalid(format!(
                    "unexpected delimiter ({:04X},{:04X}) at byte {pos}",
                    tag.0, tag.1
                )));
            }
            if len == UNDEFINED {
                let nested = if tag == PIXEL_DATA { None } else { Some(e) };
                pos = self.sequence(value_at, end, nested, e, depth + 1, None)?;
                continue;
            }
            let len = len as usize;
            if len > end.saturating_sub(value_at) {
                return Err(invalid(format!(
                    "element ({:04X},{:04X}) at byte {pos} claims {len} bytes, only {} remain",
                    tag.0,
                    tag.1,
                    end.saturating_sub(value_at)
                )));
            }
            if len >= 8 && self.is_sequence_value(value_at, e) {
                self.sequence(
                    value_at,
                    value_at + len,
                    Some(e),
                    e,
                    depth + 1,
                    Some(value_at + len),
                )?;
            }
            pos = value_at + len;
        }
        Ok(pos)
    }

    /// Walks the items of a sequence starting at `pos`: as data sets when `nested` is
    /// an encoding, as raw fragments (encapsulated pixel data) when it is None. Ends at
    /// the sequence delimiter, or at `bound` for a defined-length sequence.
    fn sequence(
        &self,
        mut pos: usize,
        end: usize,
        nested: Option<Encoding>,
        e: Encoding,
        depth: usize,
        bound: Option<usize>,
    ) -> Result<usize, IoError> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("sequences nested deeper than {MAX_DEPTH}")));
        }
        loop {
            if bound == Some(pos) {
                return Ok(pos);
            }
            let tag = (
                self.u16(pos, e.big_endian)?,
                self.u16(pos + 2, e.big_endian)?,
            );
            let len = self.u32(pos + 4, e.big_endian)?;
            let value_at = pos + 8;
            if tag == SEQUENCE_END {
                return Ok(value_at);
            }
            if tag != ITEM {
                return Err(invalid(format!(
                    "expected an item at byte {pos}, found ({:04X},{:04X})",
                    tag.0, tag.1
                )));
            }
            pos = match (len, nested) {
                (UNDEFINED, Some(inner)) => {
                    self.dataset(value_at, end, inner, depth + 1, Some(ITEM_END))?
                }
                (UNDEFINED, None) => {
                    return Err(invalid(format!(
                        "pixel data fragment of undefined length at byte {pos}"
                    )))
                }
                (len, _) if len as usize > end.saturating_sub(value_at) => {
                    return Err(invalid(format!(
                        "item at byte {pos} claims {len} bytes, only {} remain",
                        end.saturating_sub(value_at)
                    )))
                }
                (len, Some(inner)) => {
                    self.dataset(value_at, value_at + len as usize, inner, depth + 1, None)?;
                    value_at + len as usize
                }
                (len, None) => value_at + len as usize,
            };
        }
    }
}
