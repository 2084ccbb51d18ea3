//! Converting between `embedding` datums and Rust slices.

use crate::error::raise;
use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{FromDatum, IntoDatum};

/// Bytes before the first value: varlena length, dim, unused.
const HEADER_BYTES: usize = 8;

/// The fixed part of the on-disk layout.
#[repr(C)]
struct Header {
    vl_len: i32,
    dim: i16,
    unused: i16,
}

/// An `embedding` argument, detoasted, borrowed for the length of the call.
pub struct EmbeddingRef<'a> {
    values: &'a [f32],
}

impl<'a> EmbeddingRef<'a> {
    pub fn values(&self) -> &'a [f32] {
        self.values
    }

    /// # Safety
    /// `datum` must be a non-null `embedding` datum.
    unsafe fn from_datum_unchecked(datum: pg_sys::Datum) -> Self {
        // SAFETY: the caller's promise: a varlena datum (PostgreSQL detoasts or
        // decompresses it, ERRORing on a bad one).
        let mut ptr = unsafe { pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) };
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<f32>()) {
            // A datum inside a tuple is only as aligned as the tuple; copy it out.
            // SAFETY: as above.
            ptr = unsafe { pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr()) };
        }
        // SAFETY: a detoasted varlena; its header says its length.
        let total = unsafe { pgrx::varlena::varsize_any(ptr) };
        if total < HEADER_BYTES {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("corrupt embedding datum: {total} bytes"),
            );
        }
        // SAFETY: at least HEADER_BYTES long (checked) and aligned for f32 (so for
        // the header's i16 fields).
        let header = unsafe { &*(ptr as *const Header) };
        let dim = header.dim.max(0) as usize;
        if total != HEADER_BYTES + dim * 4 || dim == 0 {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("corrupt embedding datum: {total} bytes for {dim} dimensions"),
            );
        }
        // SAFETY: `dim` floats follow the header (the length was checked against
        // them), aligned; the memory lives as long as the call's memory context.
        let first = unsafe { (ptr as *const u8).add(HEADER_BYTES) as *const f32 };
        EmbeddingRef {
            // SAFETY: as above.
            values: unsafe { std::slice::from_raw_parts(first, dim) },
        }
    }
}

impl FromDatum for EmbeddingRef<'_> {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            // SAFETY: PostgreSQL calls this for a column or argument of type
            // embedding only, and the datum is not null.
            Some(unsafe { Self::from_datum_unchecked(datum) })
        }
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for EmbeddingRef<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: an argument declared `embedding` in SQL.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("embedding argument {index} must not be null"))
    }
}

/// An `embedding` value built in Rust, returned to PostgreSQL.
pub struct Embedding(pub Vec<f32>);

impl Embedding {
    /// Writes the on-disk layout into memory allocated in the current memory context.
    fn into_varlena(self) -> *mut pg_sys::varlena {
        let dim = self.0.len();
        debug_assert!(dim > 0 && dim <= m3ret_core::vector::MAX_DIMS);
        let size = HEADER_BYTES + dim * 4;
        // SAFETY: palloc0 gives `size` zeroed, maximally aligned bytes (or ERRORs),
        // written inside that size: the header, then `dim` floats.
        unsafe {
            let ptr = pg_sys::palloc0(size) as *mut u8;
            pgrx::varlena::set_varsize_4b(ptr as *mut pg_sys::varlena, size as i32);
            let header = &mut *(ptr as *mut Header);
            header.dim = dim as i16;
            header.unused = 0;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), ptr.add(HEADER_BYTES) as *mut f32, dim);
            ptr as *mut pg_sys::varlena
        }
    }
}

impl IntoDatum for Embedding {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.into_varlena()))
    }

    fn type_oid() -> pg_sys::Oid {
        pgrx::wrappers::regtypein("embedding")
    }
}

unsafe impl BoxRet for Embedding {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
        // SAFETY: a varlena in the function's memory context, as a return value must be.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.into_varlena())) }
    }
}

/// Both wrappers are the SQL type `embedding`, created by `sql/embedding.sql`.
macro_rules! sql_is_embedding {
    ($ty:ty) => {
        unsafe impl SqlTranslatable for $ty {
            const TYPE_IDENT: &'static str = "m3ret::embedding";
            const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
            const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> =
                Ok(SqlMappingRef::literal("embedding"));
            const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
                Ok(ReturnsRef::One(SqlMappingRef::literal("embedding")));
        }
    };
}
sql_is_embedding!(EmbeddingRef<'_>);
sql_is_embedding!(Embedding);
