//! `m3ret_hnsw`: an HNSW index access method whose graph lives in PostgreSQL pages.
//!
//! One file per phase, as pgvector lays out its own: `build.rs` (CREATE INDEX),
//! `insert.rs` (INSERT), `scan.rs` (ORDER BY ... LIMIT), `vacuum.rs` (VACUUM),
//! `cost.rs` (the planner's estimate), `check.rs` (`m3ret_hnsw_check`),
//! `rerank.rs` (an int8 scan's candidates re-ranked on the table's vectors); beneath them
//! `page.rs` (the layout), `buffer.rs` (page access and WAL; `recent.rs`, where
//! pages were last found), `graph.rs` (the graph
//! seen from one query, with how a value and a new element's level are prepared)
//! and `options.rs` (`WITH (m, ef_construction, quantization)`). This file is only the access
//! method's face: the handler and the opclasses' support functions. The graph
//! algorithms themselves are `m3ret_core::hnsw`'s.

mod buffer;
mod build;
mod check;
mod cost;
mod graph;
mod insert;
pub mod options;
mod page;
mod recent;
mod rerank;
mod scan;
mod update_lock;
mod vacuum;

use pgrx::pg_sys;
use pgrx::{pg_extern, Internal, PgBox};

/// The handler `CREATE ACCESS METHOD m3ret_hnsw` names.
#[pg_extern(sql = false)]
fn m3ret_hnsw_handler(_fcinfo: pg_sys::FunctionCallInfo) -> PgBox<pg_sys::IndexAmRoutine> {
    // SAFETY: allocates a zeroed node in the current memory context, which
    // PostgreSQL takes over as the handler's result.
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

// Support function 1 of each opclass says which distance the index orders by
// (page.rs: the codes, and how the meta page keeps them).
#[pg_extern(sql = false)]
fn m3ret_hnsw_l2_support(_unused: Internal) -> i32 {
    page::METRIC_L2
}

#[pg_extern(sql = false)]
fn m3ret_hnsw_ip_support(_unused: Internal) -> i32 {
    page::METRIC_IP
}

#[pg_extern(sql = false)]
fn m3ret_hnsw_cosine_support(_unused: Internal) -> i32 {
    page::METRIC_COSINE
}
