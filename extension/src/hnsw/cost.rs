//! The planner's estimate (`amcostestimate`): cheap to start for ORDER BY ... LIMIT,
//! costly to read to the end, and unusable without an ORDER BY on the index.

use crate::settings;
use pgrx::pg_sys;

// The signature is PostgreSQL's.
#[allow(clippy::too_many_arguments)]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn amcostestimate(
    _root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    _loop_count: f64,
    startup_cost: *mut pg_sys::Cost,
    total_cost: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY (every block of this function): the planner passes a valid path and
    // output pointers, and the cost settings are plain globals of this backend.
    let path = unsafe { &*path };
    unsafe {
        *selectivity = 1.0;
        *correlation = 0.0;
    }
    if path.indexorderbys.is_null() {
        // The index answers nothing but nearest-neighbour orderings.
        unsafe {
            *startup_cost = f64::INFINITY;
            *total_cost = f64::INFINITY;
            *pages = 0.0;
        }
        return;
    }
    let info = unsafe { &*path.indexinfo };
    let tuples = info.tuples.max(1.0);
    let index_pages = (info.pages as f64).max(1.0);
    let m = index_m(info.indexoid);
    // A search visits about ef_search x 2m elements (each one a page read and a
    // distance) before the first row comes out.
    let visited = (settings::EF_SEARCH.get() as f64 * 2.0 * m as f64).min(tuples);
    let per_element = unsafe { pg_sys::cpu_index_tuple_cost + pg_sys::cpu_operator_cost };
    let page_share = (visited / tuples * index_pages).max(1.0);
    let start = visited * per_element + page_share * unsafe { pg_sys::random_page_cost };
    unsafe {
        *startup_cost = start;
        // Reading every row through the graph would be far slower than a sort.
        *total_cost = start + tuples * pg_sys::random_page_cost;
        *pages = page_share;
    }
}

/// The index's `m` (the planner already holds a lock on it).
fn index_m(oid: pg_sys::Oid) -> usize {
    // SAFETY: the planner holds a lock on the index, so it can be opened without one.
    unsafe {
        let index = pg_sys::index_open(oid, pg_sys::NoLock as i32);
        let m = super::options::of(index).m;
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        m
    }
}
