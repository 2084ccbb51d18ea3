//! Re-ranking of an int8 index's candidates on the table's vectors.
//!
//! The graph of `quantization = int8` knows each vector only within its encoding
//! error, so a scan orders its candidates by a lower bound of the real distance
//! (`Metric::lower_bound`), fetches their rows in that order and computes the SQL
//! operator's own distance on the column's value. A row leaves the scan once no
//! candidate still to be fetched can be nearer (its bound is no smaller), so rows
//! come out exactly ordered, and usually only a few more rows than the LIMIT are
//! fetched.
//!
//! The scan fetches rows itself rather than letting the executor re-rank them
//! (`xs_recheckorderby`): the executor would evaluate the whole ORDER BY expression
//! once per row, and in `ORDER BY emb <=> m3ret_embed(...)` that is a forward pass
//! of the model per candidate.

use super::page::Tid;
use crate::embedding::EmbeddingRef;
use m3ret_core::hnsw::Metric;
use m3ret_core::vector::distance;
use pgrx::pg_sys;
use pgrx::FromDatum;

/// The table side of a scan: fetches rows under the scan's snapshot.
pub struct TableVectors {
    heap: pg_sys::Relation,
    fetch: *mut pg_sys::IndexFetchTableData,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    column: i32,
    /// For the values a fetch detoasts: reset after each row.
    scratch: pg_sys::MemoryContext,
}

impl TableVectors {
    /// Opens fetches on the scan's table. Must be ended by [`TableVectors::end`]
    /// (amendscan), not merely dropped: an ERROR's cleanup releases the buffer pin
    /// itself, so only the normal end may.
    pub fn begin(scan: &pg_sys::IndexScanDescData) -> Self {
        let heap = scan.heapRelation;
        // SAFETY: an open index has its pg_index row cached, with one key column.
        let column = unsafe { *(*(*scan.indexRelation).rd_index).indkey.values.as_ptr() } as i32;
        if heap.is_null() || column == 0 {
            crate::error::raise(
                pg_sys::errcodes::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "m3ret_hnsw with quantization = int8 re-ranks on a table column: it needs a scan of the table and an index on a column, not on an expression",
            );
        }
        // SAFETY: `heap` is open for the scan; the table AM's callbacks and
        // table_slot_create allocate in the current (the scan's) memory context.
        unsafe {
            let begin = (*(*heap).rd_tableam).index_fetch_begin.expect("table AM");
            TableVectors {
                heap,
                fetch: begin(heap),
                slot: pg_sys::table_slot_create(heap, std::ptr::null_mut()),
                snapshot: scan.xs_snapshot,
                column,
                scratch: pg_sys::AllocSetContextCreateExtended(
                    pg_sys::CurrentMemoryContext,
                    c"m3ret_hnsw re-rank".as_ptr(),
                    pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                    pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                    pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
                ),
            }
        }
    }

    /// The SQL operator's distance from `query` (as given, not prepared) to the
    /// row's vector; None when the scan's snapshot does not see the row.
    pub fn distance(&mut self, metric: Metric, query: &[f32], row: Tid) -> Option<f64> {
        let mut tid = row.to_item_pointer();
        let (mut call_again, mut all_dead) = (false, false);
        // SAFETY: the fetch and slot were made for this table by `begin`; the
        // snapshot is the scan's (MVCC, checked when the scan started); the value
        // is read and detoasted in `scratch`, which is reset before returning.
        unsafe {
            let fetch_tuple = (*(*self.heap).rd_tableam)
                .index_fetch_tuple
                .expect("table AM");
            let found = fetch_tuple(
                self.fetch,
                &mut tid,
                self.snapshot,
                self.slot,
                &mut call_again,
                &mut all_dead,
            );
            if !found {
                return None;
            }
            let old = pg_sys::MemoryContextSwitchTo(self.scratch);
            let mut isnull = false;
            let datum = pg_sys::slot_getattr(self.slot, self.column, &mut isnull);
            let value = (!isnull)
                .then(|| EmbeddingRef::from_polymorphic_datum(datum, false, pg_sys::InvalidOid))
                .flatten();
            let result = value.map(|v| {
                let v = v.values();
                match metric {
                    Metric::L2 => distance::l2_distance(query, v),
                    Metric::InnerProduct => distance::negative_inner_product(query, v),
                    Metric::Cosine => distance::cosine_distance(query, v),
                }
            });
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::ExecClearTuple(self.slot);
            pg_sys::MemoryContextReset(self.scratch);
            result
        }
    }

    /// Releases the fetch's buffer pin and the slot (the normal end of a scan).
    pub fn end(self) {
        // SAFETY: made by `begin` and not used after.
        unsafe {
            let end = (*(*self.heap).rd_tableam)
                .index_fetch_end
                .expect("table AM");
            end(self.fetch);
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::MemoryContextDelete(self.scratch);
        }
    }
}
