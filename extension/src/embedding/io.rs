//! Text and binary input/output of `embedding`, and its type modifier.
//!
//! Binary form (as pgvector's `vector`): `int16 dim | int16 unused (0) | float4 values[dim]`,
//! all in network byte order.

use super::{check_typmod, Embedding, EmbeddingRef};
use crate::error::{raise, OrRaise};
use m3ret_core::vector::{self, MAX_DIMS};
use pgrx::datum::{Array, Internal};
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_in(input: &CStr, _type_oid: pg_sys::Oid, typmod: i32) -> Embedding {
    let text = input.to_str().unwrap_or_else(|_| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            "embedding literal is not valid UTF-8",
        )
    });
    let values = vector::text::parse(text).or_raise();
    check_typmod(values.len(), typmod);
    Embedding(values)
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_out(embedding: EmbeddingRef<'_>) -> CString {
    CString::new(vector::text::format(embedding.values()))
        .expect("formatted numbers contain no NUL")
}

/// `embedding(n)`: exactly one modifier, 1..=16000.
#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_typmod_in(modifiers: Array<'_, &CStr>) -> i32 {
    if modifiers.len() != 1 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "invalid type modifier: embedding takes one, its number of dimensions",
        );
    }
    let text = modifiers
        .get(0)
        .flatten()
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n <= MAX_DIMS as i64 => n as i32,
        Ok(n) if n < 1 => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "dimensions for type embedding must be at least 1",
        ),
        Ok(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("dimensions for type embedding cannot exceed {MAX_DIMS}"),
        ),
        Err(_) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid type modifier \"{text}\" for type embedding"),
        ),
    }
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_recv(mut buffer: Internal, _type_oid: pg_sys::Oid, typmod: i32) -> Embedding {
    // SAFETY: PostgreSQL passes a StringInfo as the first argument of a receive function.
    let buf = unsafe { buffer.get_mut::<pg_sys::StringInfoData>() }.expect("receive buffer");
    let mut reader = MessageReader::new(buf);
    let dim = reader.read_i16();
    let unused = reader.read_i16();
    if dim < 1 || dim as usize > MAX_DIMS {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!("invalid embedding dimensions {dim} in binary input: must be between 1 and {MAX_DIMS}"),
        );
    }
    if unused != 0 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!("embedding binary input has unused field {unused}: it must be 0"),
        );
    }
    let values = reader.read_f32s(dim as usize);
    vector::check_finite(&values).or_raise();
    check_typmod(values.len(), typmod);
    Embedding(values)
}

#[pg_extern(sql = false, immutable, strict, parallel_safe)]
fn embedding_send(embedding: EmbeddingRef<'_>) -> Vec<u8> {
    let values = embedding.values();
    let mut out = Vec::with_capacity(4 + values.len() * 4);
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// Reads big-endian fields from a receive buffer, refusing to read past its end.
struct MessageReader<'a> {
    buf: &'a mut pg_sys::StringInfoData,
}

impl<'a> MessageReader<'a> {
    fn new(buf: &'a mut pg_sys::StringInfoData) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let left = (self.buf.len - self.buf.cursor).max(0) as usize;
        if n > left {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
                format!("truncated embedding binary input: needed {n} more bytes, {left} left"),
            );
        }
        // SAFETY: cursor..cursor+n lies inside the buffer's len bytes, checked above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (self.buf.data as *const u8).add(self.buf.cursor as usize),
                n,
            )
        };
        self.buf.cursor += n as i32;
        bytes
    }

    fn read_i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).try_into().unwrap())
    }

    fn read_f32s(&mut self, count: usize) -> Vec<f32> {
        self.take(count * 4)
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes(b.try_into().unwrap()))
            .collect()
    }
}
