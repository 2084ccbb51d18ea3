//! `bytea[]` arguments (a DICOM series' slices, a video's frames): their elements,
//! with a NULL element refused by position.

use crate::error::raise;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::{pg_sys, Array, FromDatum};

/// `data` itself, refused with an ERROR when it has more than one dimension: the
/// elements of a 2-D array would otherwise be read in storage order, flattened.
pub fn one_dimensional<'mcx, 'b>(data: Array<'mcx, &'b [u8]>, what: &str) -> Array<'mcx, &'b [u8]> {
    let array = data.into_array_type();
    // SAFETY: `array` is the argument's detoasted ArrayType, valid for this call
    // (into_array_type leaves it where it is); it is read, then wrapped again as
    // the same datum, which a detoast finds already detoasted.
    unsafe {
        let ndim = (*array).ndim;
        if ndim > 1 {
            raise(
                PgSqlErrorCode::ERRCODE_ARRAY_ELEMENT_ERROR,
                format!("the {what} is a {ndim}-dimensional bytea[]: give one dimension, one element per file"),
            );
        }
        Array::from_polymorphic_datum(
            pg_sys::Datum::from(array as *mut pg_sys::ArrayType),
            false,
            pg_sys::BYTEAARRAYOID,
        )
        .expect("a non-null array")
    }
}

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
