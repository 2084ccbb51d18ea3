//! What differs between the PostgreSQL major versions m3ret builds for (15 and 18,
//! by the `pg15` and `pg18` features): every version difference lives here, so the
//! rest of the extension is written once.
//!
//! - 16 renamed a relation's `RelFileNode` (`rd_node`) to `RelFileLocator`
//!   (`rd_locator`), with renamed fields;
//! - 16 replaced `pg_class_ownercheck` by `object_ownercheck(class, oid, role)`;
//! - 18 moved a tuple descriptor's attributes behind its `compact_attrs`;
//! - 18 added `relopt_parse_elt.isset_offset` and `vacuum_delay_point(is_analyze)`.

use pgrx::pg_sys;

/// Which file a relation's main fork is: (tablespace, database, relation file).
pub fn relation_file(rel: &pg_sys::RelationData) -> (pg_sys::Oid, pg_sys::Oid, pg_sys::Oid) {
    #[cfg(feature = "pg15")]
    let key = (rel.rd_node.spcNode, rel.rd_node.dbNode, rel.rd_node.relNode);
    #[cfg(feature = "pg18")]
    let key = (
        rel.rd_locator.spcOid,
        rel.rd_locator.dbOid,
        rel.rd_locator.relNumber,
    );
    key
}

/// `ReadRecentBuffer` for `block` of `index`'s main fork.
///
/// # Safety
/// `index` is an open relation and `hint` a buffer number this backend pinned before.
pub unsafe fn read_recent_buffer(
    index: pg_sys::Relation,
    block: u32,
    hint: pg_sys::Buffer,
) -> bool {
    #[cfg(feature = "pg15")]
    let file = unsafe { (*index).rd_node };
    #[cfg(feature = "pg18")]
    let file = unsafe { (*index).rd_locator };
    unsafe { pg_sys::ReadRecentBuffer(file, pg_sys::ForkNumber::MAIN_FORKNUM, block, hint) }
}

/// Whether the current user owns the relation `oid` (or is a superuser).
///
/// # Safety
/// Called in a transaction, as any catalog lookup.
pub unsafe fn owns_relation(oid: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    let owns = unsafe { pg_sys::pg_class_ownercheck(oid, pg_sys::GetUserId()) };
    #[cfg(feature = "pg18")]
    let owns =
        unsafe { pg_sys::object_ownercheck(pg_sys::RelationRelationId, oid, pg_sys::GetUserId()) };
    owns
}

/// The type modifier of attribute `i` (0-based) of `desc`.
///
/// # Safety
/// `desc` is a valid tuple descriptor with more than `i` attributes.
pub unsafe fn attribute_typmod(desc: pg_sys::TupleDesc, i: usize) -> i32 {
    // SAFETY: the caller's; pgrx's PgTupleDesc knows each version's layout.
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    desc.get(i)
        .expect("attribute within the descriptor")
        .atttypmod
}

/// One reloption of a `build_reloptions` table: its name, type and offset in the
/// options struct (PostgreSQL 18's "was it set" offset unused: 0).
pub fn relopt(
    name: &'static std::ffi::CStr,
    kind: pg_sys::relopt_type::Type,
    offset: usize,
) -> pg_sys::relopt_parse_elt {
    pg_sys::relopt_parse_elt {
        optname: name.as_ptr(),
        opttype: kind,
        offset: offset as i32,
        #[cfg(feature = "pg18")]
        isset_offset: 0,
    }
}

/// VACUUM's cost-based delay (of a VACUUM, not an ANALYZE), and a point where it can
/// be cancelled.
///
/// # Safety
/// Called from VACUUM, holding no buffer lock.
pub unsafe fn vacuum_delay_point() {
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::vacuum_delay_point()
    };
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::vacuum_delay_point(false)
    };
}
