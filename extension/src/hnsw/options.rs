//! Index options (`WITH (m = 16, ef_construction = 64)`), validated by PostgreSQL's
//! reloptions machinery, which names the option and its range in its ERROR.

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
    }
}

/// `amoptions`.
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amoptions(
    reloptions: pg_sys::Datum,
    validate: bool,
) -> *mut pg_sys::bytea {
    let table = [
        pg_sys::relopt_parse_elt {
            optname: c"m".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, m) as i32,
        },
        pg_sys::relopt_parse_elt {
            optname: c"ef_construction".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, ef_construction) as i32,
        },
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

/// `(m, ef_construction)` of an index, defaults when it was created without options.
pub fn of(index: pg_sys::Relation) -> (usize, usize) {
    // SAFETY: `index` is an open relation; rd_options is null or what amoptions
    // built for it, an `Options`.
    let options = unsafe { (*index).rd_options as *const Options };
    if options.is_null() {
        (DEFAULT_M as usize, DEFAULT_EF_CONSTRUCTION as usize)
    } else {
        // SAFETY: as above, and not null.
        unsafe { ((*options).m as usize, (*options).ef_construction as usize) }
    }
}
