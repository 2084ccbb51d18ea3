//! `m3ret_hnsw`: an HNSW index access method whose graph lives in PostgreSQL pages.
//!
//! One file per phase, as pgvector lays out its own: `build.rs` (CREATE INDEX),
//! `insert.rs` (INSERT), `scan.rs` (ORDER BY ... LIMIT), `vacuum.rs` (VACUUM),
//! `cost.rs` (the planner's estimate), `check.rs` (`m3ret_hnsw_check`); beneath them
//! `page.rs` (the layout), `buffer.rs` (page access and WAL), `graph.rs` (the graph
//! seen from one query) and `options.rs` (`WITH (m, ef_construction)`). The graph
//! algorithms themselves are `m3ret_core::hnsw`'s.

mod buffer;
mod build;
mod check;
mod cost;
mod graph;
mod insert;
pub mod options;
mod page;
mod scan;
mod update_lock;
mod vacuum;

use crate::embedding::EmbeddingRef;
use crate::error::raise;
use m3ret_core::hnsw::Metric;
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};
use pgrx::{pg_extern, FromDatum, Internal, PgBox};

/// The handler `CREATE ACCESS METHOD m3ret_hnsw` names.
#[pg_extern(sql = false)]
fn m3ret_hnsw_handler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::IndexAmRoutine> {
    let mut am =
        unsafe { PgBox::<pg_sys::IndexAmRoutine>::alloc_node(pg_sys::NodeTag::T_IndexAmRoutine) };
    am.amstrategies = 0;
    am.amsupport = 1;
    am.amcanorderbyop = true;
    am.amoptionalkey = true;
    am.amkeytype = pg_sys::InvalidOid;
    am.ambuild = Some(build::ambuild);
    am.ambuildempty = Some(build::ambuildempty);
    am.aminsert = Some(insert::aminsert);
    am.ambulkdelete = Some(vacuum::ambulkdelete);
    am.amvacuumcleanup = Some(vacuum::amvacuumcleanup);
    am.amcostestimate = Some(cost::amcostestimate);
    am.amoptions = Some(options::amoptions);
    am.ambuildphasename = Some(build::ambuildphasename);
    am.amvalidate = Some(amvalidate);
    am.ambeginscan = Some(scan::ambeginscan);
    am.amrescan = Some(scan::amrescan);
    am.amgettuple = Some(scan::amgettuple);
    am.amendscan = Some(scan::amendscan);
    am.into_pg_boxed()
}

/// The opclasses are created by our own SQL script; nothing to check.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn amvalidate(_opclass: pg_sys::Oid) -> bool {
    true
}

// Support function 1 of each opclass says which distance the index orders by.
const METRIC_L2: i32 = 0;
const METRIC_IP: i32 = 1;
const METRIC_COSINE: i32 = 2;

#[pg_extern(sql = false)]
fn m3ret_hnsw_l2_support(_unused: Internal) -> i32 {
    METRIC_L2
}

#[pg_extern(sql = false)]
fn m3ret_hnsw_ip_support(_unused: Internal) -> i32 {
    METRIC_IP
}

#[pg_extern(sql = false)]
fn m3ret_hnsw_cosine_support(_unused: Internal) -> i32 {
    METRIC_COSINE
}

/// The distance of an index's opclass (its support function 1).
fn metric_of(index: pg_sys::Relation) -> Metric {
    let code = unsafe {
        let proc = pg_sys::index_getprocinfo(index, 1, 1);
        pg_sys::FunctionCall1Coll(proc, pg_sys::InvalidOid, pg_sys::Datum::from(0)).value() as i32
    };
    u8::try_from(code)
        .ok()
        .and_then(metric_from_code)
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("m3ret_hnsw: unknown distance {code} in the operator class"),
            )
        })
}

/// How the meta page stores an index's distance (fixed at CREATE INDEX: later
/// operations read it there instead of calling the opclass's support function).
fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::L2 => METRIC_L2 as u8,
        Metric::InnerProduct => METRIC_IP as u8,
        Metric::Cosine => METRIC_COSINE as u8,
    }
}

fn metric_from_code(code: u8) -> Option<Metric> {
    match code as i32 {
        METRIC_L2 => Some(Metric::L2),
        METRIC_IP => Some(Metric::InnerProduct),
        METRIC_COSINE => Some(Metric::Cosine),
        _ => None,
    }
}

/// An `embedding` datum as the graph stores it; ERROR on a wrong dimension count
/// (`dims` 0: any) or, under cosine, a zero vector.
fn prepare_value(datum: pg_sys::Datum, metric: Metric, dims: usize) -> Vec<f32> {
    let value = unsafe { EmbeddingRef::from_polymorphic_datum(datum, false, pg_sys::InvalidOid) }
        .expect("not null");
    let mut vector = value.values().to_vec();
    if dims != 0 && vector.len() != dims {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("expected {dims} dimensions, not {}", vector.len()),
        );
    }
    if let Err(e) = metric.prepare(&mut vector) {
        raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, e);
    }
    vector
}
