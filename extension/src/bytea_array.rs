//! `bytea[]` arguments (a DICOM series' slices, a video's frames): their elements,
//! with a NULL element refused by position.

use crate::error::raise;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;

/// The elements of a bytea[] as slices; an ERROR names the first NULL one.
pub fn elements<'a>(data: impl Iterator<Item = Option<&'a [u8]>>, what: &str) -> Vec<&'a [u8]> {
    data.enumerate()
        .map(|(i, b)| {
            b.unwrap_or_else(|| {
                raise(
                    PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("element {} of the {what} is NULL", i + 1),
                )
            })
        })
        .collect()
}
