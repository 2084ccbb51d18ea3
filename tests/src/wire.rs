//! The binary wire form of `embedding`, written here from the specification
//! (pgvector's `vector`: int16 dim, int16 unused = 0, float4 values, all big-endian)
//! and independently of the extension, so that tests can check the extension
//! against it.

use bytes::{BufMut, BytesMut};
use postgres::types::{FromSql, IsNull, ToSql, Type};
use std::error::Error;

type BoxError = Box<dyn Error + Sync + Send>;

/// An `embedding` sent and received in binary form.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector(pub Vec<f32>);

/// Arbitrary bytes sent as an `embedding` parameter, to feed the receive function bad input.
#[derive(Debug)]
pub struct RawEmbeddingBytes(pub Vec<u8>);

pub fn encode(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 4 * values.len());
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

pub fn decode(raw: &[u8]) -> Result<Vec<f32>, String> {
    if raw.len() < 4 {
        return Err(format!("{} bytes is shorter than the header", raw.len()));
    }
    let dim = i16::from_be_bytes([raw[0], raw[1]]) as usize;
    let unused = i16::from_be_bytes([raw[2], raw[3]]);
    if unused != 0 || raw.len() != 4 + 4 * dim {
        return Err(format!(
            "bad header: dim {dim}, unused {unused}, {} bytes",
            raw.len()
        ));
    }
    Ok(raw[4..]
        .chunks_exact(4)
        .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn is_embedding(ty: &Type) -> bool {
    ty.name() == "embedding"
}

impl ToSql for Vector {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&encode(&self.0));
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        is_embedding(ty)
    }
    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Vector {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Vector(decode(raw)?))
    }
    fn accepts(ty: &Type) -> bool {
        is_embedding(ty)
    }
}

impl ToSql for RawEmbeddingBytes {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        is_embedding(ty)
    }
    postgres::types::to_sql_checked!();
}

/// The text form of an `embedding` (Rust's shortest round-trip float text).
pub fn literal(values: &[f32]) -> String {
    format!(
        "[{}]",
        values
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}
