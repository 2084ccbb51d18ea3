//! Index options (`WITH (m = 16, ef_construction = 64, quantization = int8)`),
//! validated by PostgreSQL's reloptions machinery, which names the option and its
//! range (or its values) in its ERROR.
//!
//! `quantization` left unset means int8 for an index on a column and none for an
//! index on an expression (int8 re-ranks on the table's column, which an
//! expression index does not have); `CREATE INDEX` stores the choice in the meta
//! page.

use super::page::Quantization;
use pgrx::pg_sys;
use std::sync::OnceLock;

pub const DEFAULT_M: i32 = 16;
pub const DEFAULT_EF_CONSTRUCTION: i32 = 64;

/// The parsed options, as `build_reloptions` lays them out.
#[repr(C)]
pub struct Options {
    vl_len: i32,
    pub m: i32,
    pub ef_construction: i32,
    /// A `Quantization` code, or [`UNSET`].
    pub quantization: i32,
}

/// `quantization`'s value when the index was created without it (not one of the
/// listed values, so it cannot be given).
const UNSET: i32 = -1;

/// An index's options, defaults filled in.
#[derive(Clone, Copy, Debug)]
pub struct IndexOptions {
    pub m: usize,
    pub ef_construction: usize,
    /// None where the index was created without the option.
    pub quantization: Option<Quantization>,
}

impl IndexOptions {
    /// The quantization an index gets: as given, else int8 on a column and none on
    /// an expression.
    pub fn quantization_for(&self, index: pg_sys::Relation) -> Quantization {
        self.quantization.unwrap_or_else(|| {
            if on_expression(index) {
                Quantization::None
            } else {
                Quantization::Int8
            }
        })
    }
}

/// Whether the index's key is an expression rather than a column.
pub fn on_expression(index: pg_sys::Relation) -> bool {
    // SAFETY: an open index has its pg_index row cached, with one key column.
    unsafe { *(*(*index).rd_index).indkey.values.as_ptr() == 0 }
}

static KIND: OnceLock<pg_sys::relopt_kind::Type> = OnceLock::new();

/// Registers the options; called from `_PG_init`.
pub fn register() {
    // SAFETY: called once from _PG_init, in the postmaster or a backend's own
    // start, with static C strings; PostgreSQL keeps the options for the process.
    let kind = *KIND.get_or_init(|| unsafe { pg_sys::add_reloption_kind() });
    unsafe {
        pg_sys::add_int_reloption(
            kind,
            c"m".as_ptr(),
            c"Links per element on the upper layers (twice as many on layer 0)".as_ptr(),
            DEFAULT_M,
            2,
            100,
            pg_sys::AccessExclusiveLock as i32,
        );
        pg_sys::add_int_reloption(
            kind,
            c"ef_construction".as_ptr(),
            c"Candidates considered when linking an element".as_ptr(),
            DEFAULT_EF_CONSTRUCTION,
            4,
            1000,
            pg_sys::AccessExclusiveLock as i32,
        );
        // PostgreSQL keeps the pointer for the life of the process: leaked on purpose.
        let members = Box::leak(Box::new([
            pg_sys::relopt_enum_elt_def {
                string_val: c"none".as_ptr(),
                symbol_val: Quantization::None.code() as i32,
            },
            pg_sys::relopt_enum_elt_def {
                string_val: c"int8".as_ptr(),
                symbol_val: Quantization::Int8.code() as i32,
            },
            pg_sys::relopt_enum_elt_def {
                string_val: std::ptr::null(),
                symbol_val: 0,
            },
        ]));
        pg_sys::add_enum_reloption(
            kind,
            c"quantization".as_ptr(),
            c"How the graph keeps vectors: none (4 bytes per dimension) or int8 (1 byte, re-ranked on the table's vectors)".as_ptr(),
            members.as_mut_ptr(),
            UNSET,
            c"Valid values are \"none\" and \"int8\".".as_ptr(),
            pg_sys::AccessExclusiveLock as i32,
        );
    }
}

/// `amoptions`.
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amoptions(
    reloptions: pg_sys::Datum,
    validate: bool,
) -> *mut pg_sys::bytea {
    use crate::pg_compat::relopt;
    use pg_sys::relopt_type::{RELOPT_TYPE_ENUM, RELOPT_TYPE_INT};
    let table = [
        relopt(c"m", RELOPT_TYPE_INT, std::mem::offset_of!(Options, m)),
        relopt(
            c"ef_construction",
            RELOPT_TYPE_INT,
            std::mem::offset_of!(Options, ef_construction),
        ),
        relopt(
            c"quantization",
            RELOPT_TYPE_ENUM,
            std::mem::offset_of!(Options, quantization),
        ),
    ];
    let kind = *KIND.get().expect("reloptions registered in _PG_init");
    // SAFETY: `table` describes the fields of `Options`, which matches the struct
    // build_reloptions fills (its size is passed with it).
    unsafe {
        pg_sys::build_reloptions(
            reloptions,
            validate,
            kind,
            std::mem::size_of::<Options>(),
            table.as_ptr(),
            table.len() as i32,
        ) as *mut pg_sys::bytea
    }
}

/// The options of an index, defaults where it was created without them.
pub fn of(index: pg_sys::Relation) -> IndexOptions {
    // SAFETY: `index` is an open relation; rd_options is null or what amoptions
    // built for it, an `Options`.
    let options = unsafe { (*index).rd_options as *const Options };
    if options.is_null() {
        return IndexOptions {
            m: DEFAULT_M as usize,
            ef_construction: DEFAULT_EF_CONSTRUCTION as usize,
            quantization: None,
        };
    }
    // SAFETY: as above, and not null.
    let options = unsafe { &*options };
    IndexOptions {
        m: options.m as usize,
        ef_construction: options.ef_construction as usize,
        quantization: (options.quantization != UNSET).then(|| {
            u8::try_from(options.quantization)
                .ok()
                .and_then(Quantization::from_code)
                .expect("reloptions accept only the listed values")
        }),
    }
}
