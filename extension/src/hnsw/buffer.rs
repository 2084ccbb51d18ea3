//! Reading and changing index pages through the buffer manager. Every change goes
//! through GenericXLog, so crash recovery and streaming replicas need nothing else.
//!
//! Rule: a backend holds at most one buffer lock at a time, except the meta page
//! taken before one element page; so two backends can never wait on each other.

use super::page::{self, Element, ElementMut, Layout, Meta, Special, Tid};
use super::recent;
use crate::error::raise;
use m3ret_core::vector::prefetch::prefetch;
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};

/// How a page is locked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Share,
    Exclusive,
}

/// A pinned and locked buffer, released when dropped (also when an ERROR unwinds
/// through Rust frames; after a longjmp PostgreSQL's abort releases it anyway).
pub struct Locked {
    pub buffer: pg_sys::Buffer,
}

impl Locked {
    pub fn new(index: pg_sys::Relation, block: u32, lock: Lock) -> Locked {
        Locked::lock_pinned(pin(index, block), lock)
    }

    /// Locks a buffer this backend pinned; the pin is released with the lock.
    pub fn lock_pinned(buffer: pg_sys::Buffer, lock: Lock) -> Locked {
        let mode = if lock == Lock::Share {
            pg_sys::BUFFER_LOCK_SHARE
        } else {
            pg_sys::BUFFER_LOCK_EXCLUSIVE
        };
        // SAFETY: the caller pinned `buffer`; the lock is released in Drop.
        unsafe { pg_sys::LockBuffer(buffer, mode as i32) };
        Locked { buffer }
    }

    /// A new page at the end of the index, locked exclusively, not yet initialised.
    pub fn extend(index: pg_sys::Relation) -> Locked {
        // SAFETY: `index` is open; the extension lock is held only while the new
        // block is added, and the new buffer's pin and lock go with the guard.
        unsafe {
            pg_sys::LockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            let buffer = pg_sys::ReadBufferExtended(
                index,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                pg_sys::InvalidBlockNumber,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
            );
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            pg_sys::UnlockRelationForExtension(index, pg_sys::ExclusiveLock as i32);
            Locked { buffer }
        }
    }

    pub fn block(&self) -> u32 {
        // SAFETY: the guard holds a pin on its buffer.
        unsafe { pg_sys::BufferGetBlockNumber(self.buffer) }
    }

    pub fn page(&self) -> pg_sys::Page {
        // SAFETY: the guard holds a pin on its buffer.
        unsafe { pg_sys::BufferGetPage(self.buffer) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the guard holds this buffer's pin and lock, and drops them once.
        unsafe { pg_sys::UnlockReleaseBuffer(self.buffer) };
    }
}

fn pin(index: pg_sys::Relation, block: u32) -> pg_sys::Buffer {
    if let Some(buffer) = recent::pin_recent(index, block) {
        return buffer;
    }
    // SAFETY: `index` is open; callers check `block` against the index size
    // first, and ReadBufferExtended raises an ERROR past the end anyway.
    let buffer = unsafe {
        pg_sys::ReadBufferExtended(
            index,
            pg_sys::ForkNumber::MAIN_FORKNUM,
            block,
            pg_sys::ReadBufferMode::RBM_NORMAL,
            std::ptr::null_mut(),
        )
    };
    recent::remember(index, block, buffer);
    buffer
}

/// Changes one locked page (or two: meta first) as one WAL record. The guards are
/// borrowed mutably so that no item read through them before (a shared borrow)
/// can still be in use once GenericXLogFinish has rewritten the pages.
pub fn change_pages<R>(
    index: pg_sys::Relation,
    pages: &mut [&mut Locked],
    new_page: bool,
    f: impl FnOnce(&mut [PageCopy]) -> R,
) -> R {
    // SAFETY: every page is locked exclusively by the caller's guards, which
    // outlive the record; `f` changes only the registered copies, and an ERROR
    // inside it aborts the record with the transaction.
    unsafe {
        let state = pg_sys::GenericXLogStart(index);
        let flags = if new_page {
            pg_sys::GENERIC_XLOG_FULL_IMAGE as i32
        } else {
            0
        };
        let mut registered: Vec<PageCopy> = pages
            .iter()
            .map(|p| PageCopy(pg_sys::GenericXLogRegisterBuffer(state, p.buffer, flags)))
            .collect();
        let result = f(&mut registered);
        pg_sys::GenericXLogFinish(state);
        result
    }
}

/// Formats an empty page of ours.
pub fn init_page(page: pg_sys::Page) {
    // SAFETY: `page` is a whole, exclusively locked page (or its WAL copy), and
    // PageInit reserves room for `Special` before it is written.
    unsafe {
        pg_sys::PageInit(
            page,
            pg_sys::BLCKSZ as usize,
            std::mem::size_of::<Special>(),
        );
        let special = pg_sys::PageGetSpecialPointer(page) as *mut Special;
        (*special).flags = 0;
        (*special).page_id = page::PAGE_ID;
    }
}

pub fn corrupt(index: pg_sys::Relation, what: impl std::fmt::Display) -> ! {
    // SAFETY: an open relation's name is a NUL-terminated NameData.
    let name = unsafe { std::ffi::CStr::from_ptr((*(*index).rd_rel).relname.data.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    raise(
        PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
        format!("m3ret_hnsw index \"{name}\" is corrupt: {what}"),
    )
}

/// The meta page's contents.
pub fn meta_of(page: pg_sys::Page) -> *mut Meta {
    // SAFETY: pointer arithmetic only; callers read or write through it under the
    // meta page's lock.
    unsafe { pg_sys::PageGetContents(page) as *mut Meta }
}

pub fn read_meta(index: pg_sys::Relation) -> Meta {
    let locked = Locked::new(index, page::META_BLOCK, Lock::Share);
    // SAFETY: the meta page is share-locked, and `Meta` is plain data read by copy.
    let meta = unsafe { *meta_of(locked.page()) };
    drop(locked);
    if meta.magic != page::MAGIC || meta.version != page::FORMAT_VERSION {
        corrupt(
            index,
            format_args!(
                "meta page has magic {:#x} version {}",
                meta.magic, meta.version
            ),
        );
    }
    if !(2..=100).contains(&meta.m)
        || meta.dims as usize > m3ret_core::vector::MAX_DIMS
        || super::page::metric_from_code(meta.metric).is_none()
        || super::page::Quantization::from_code(meta.quantization).is_none()
    {
        corrupt(
            index,
            format_args!(
                "meta page has m {}, {} dimensions, distance {}, quantization {}",
                meta.m, meta.dims, meta.metric, meta.quantization
            ),
        );
    }
    meta
}

/// Writes `f`'s changes to the meta page.
pub fn update_meta(index: pg_sys::Relation, f: impl FnOnce(&mut Meta)) {
    let mut locked = Locked::new(index, page::META_BLOCK, Lock::Exclusive);
    change_pages(index, &mut [&mut locked], false, |pages| {
        f(pages[0].meta_mut())
    });
}

/// Number of item slots on a page.
pub fn max_offset(page: pg_sys::Page) -> u16 {
    // SAFETY: callers hold at least a pin on the page.
    unsafe { pg_sys::PageGetMaxOffsetNumber(page) }
}

/// Bytes a new item (with its line pointer) can still take on a page.
fn free_space(page: pg_sys::Page) -> usize {
    // SAFETY: callers hold the page pinned and locked (or its WAL copy); the call
    // only reads the page header.
    unsafe { pg_sys::PageGetFreeSpace(page) }
}

/// Where the bytes of item `offset` lie on `page`, if it is a live item.
fn item_span(page: pg_sys::Page, offset: u16) -> Option<(*mut u8, usize)> {
    // SAFETY: the offset is checked against the page's line pointers before its
    // line pointer is read; callers hold the page pinned and locked (or its WAL
    // copy).
    unsafe {
        if offset == 0 || offset > max_offset(page) {
            return None;
        }
        let id = pg_sys::PageGetItemId(page, offset);
        if (*id).lp_flags() != pg_sys::LP_NORMAL {
            return None;
        }
        Some((
            pg_sys::PageGetItem(page, id) as *mut u8,
            (*id).lp_len() as usize,
        ))
    }
}

fn parse_element<'p>(index: pg_sys::Relation, bytes: &'p [u8], layout: Layout) -> Element<'p> {
    match Element::parse(bytes, layout) {
        Ok(e) => e,
        Err(what) => corrupt(index, what),
    }
}

/// Reads of a locked page. What they return borrows the guard, so it cannot
/// outlive the lock, and is shared (`&[u8]`) whatever the lock: writes go through
/// [`change_pages`].
impl Locked {
    /// Bytes a new item (with its line pointer) can still take on the page.
    pub fn free_space(&self) -> usize {
        free_space(self.page())
    }

    /// The bytes of item `offset`, if it is a live item.
    pub fn item(&self, offset: u16) -> Option<&[u8]> {
        let (ptr, len) = item_span(self.page(), offset)?;
        // SAFETY: a normal item's bytes lie inside the page, which the guard keeps
        // pinned and locked for as long as the borrow of `self` lasts.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The element at `offset`; ERROR if the tuple is malformed.
    pub fn element(
        &self,
        index: pg_sys::Relation,
        offset: u16,
        layout: Layout,
    ) -> Option<Element<'_>> {
        self.item(offset)
            .map(|bytes| parse_element(index, bytes, layout))
    }

    /// Every element tuple on the page, with its offset.
    pub fn elements(
        &self,
        index: pg_sys::Relation,
        layout: Layout,
    ) -> impl Iterator<Item = (u16, Element<'_>)> {
        (1..=max_offset(self.page()))
            .filter_map(move |offset| self.element(index, offset, layout).map(|e| (offset, e)))
    }
}

/// The copy of a locked page that a WAL record is being made of (see
/// [`change_pages`]): every change goes to it, and what its methods return
/// borrows it, so no slice of it outlives the record.
pub struct PageCopy(pg_sys::Page);

impl PageCopy {
    /// Formats it as an empty page of ours.
    pub fn init(&mut self) {
        init_page(self.0);
    }

    pub fn free_space(&self) -> usize {
        free_space(self.0)
    }

    /// Adds an element tuple, checked to fit; returns its offset.
    pub fn add_item(&mut self, index: pg_sys::Relation, bytes: &[u8]) -> u16 {
        add_item(index, self.0, bytes)
    }

    /// Removes item `offset` and leaves its line pointer unused, so the offsets of
    /// the other items stay.
    pub fn delete_item_keeping_offsets(&mut self, offset: u16) {
        // SAFETY: the copy of an exclusively locked page; PostgreSQL ERRORs on an
        // offset that is not an item of it.
        unsafe { pg_sys::PageIndexTupleDeleteNoCompact(self.0, offset) }
    }

    /// The element at `offset`, to change in place.
    pub fn element_mut(&mut self, offset: u16, layout: Layout) -> Option<ElementMut<'_>> {
        let (ptr, len) = item_span(self.0, offset)?;
        // SAFETY: a normal item inside the copy, which `&mut self` holds alone for
        // as long as the borrow lasts.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        Some(ElementMut::new(bytes, layout))
    }

    /// The meta page's contents, when this is the meta page.
    pub fn meta_mut(&mut self) -> &mut Meta {
        // SAFETY: the meta page (callers register it as such) holds a `Meta` at the
        // start of its contents, and `&mut self` holds the copy alone.
        unsafe { &mut *meta_of(self.0) }
    }
}

/// Runs `f` on the element at `tid` under a share lock; None if there is none.
/// `nblocks` is the caller's idea of the index size, refreshed when the index grew.
pub fn with_element<R>(
    index: pg_sys::Relation,
    tid: Tid,
    layout: Layout,
    nblocks: &mut u32,
    f: impl FnOnce(&Element) -> R,
) -> Option<R> {
    if tid.block >= *nblocks {
        *nblocks = block_count(index);
    }
    if tid.block == page::META_BLOCK || tid.block >= *nblocks {
        corrupt(
            index,
            format_args!("link to block {} of {}", tid.block, *nblocks),
        );
    }
    read_element(
        index,
        Locked::new(index, tid.block, Lock::Share),
        tid.offset,
        layout,
        f,
    )
}

/// [`with_element`] through a pin taken by [`prefetch_elements`].
pub fn with_prefetched_element<R>(
    index: pg_sys::Relation,
    buffer: pg_sys::Buffer,
    tid: Tid,
    layout: Layout,
    f: impl FnOnce(&Element) -> R,
) -> Option<R> {
    read_element(
        index,
        Locked::lock_pinned(buffer, Lock::Share),
        tid.offset,
        layout,
        f,
    )
}

fn read_element<R>(
    index: pg_sys::Relation,
    locked: Locked,
    offset: u16,
    layout: Layout,
    f: impl FnOnce(&Element) -> R,
) -> Option<R> {
    let element = locked.element(index, offset, layout)?;
    Some(f(&element))
}

/// Element pages pinned ahead of their reads by [`prefetch_elements`]: the read of
/// each tid takes its pin over ([`Prefetched::take`]) and releases it, so no pin
/// outlives the search step that made it. No `Drop` on purpose: after an ERROR,
/// PostgreSQL's abort has released every pin before a scan's state is freed.
#[derive(Default)]
pub struct Prefetched(Vec<(Tid, pg_sys::Buffer)>);

impl Prefetched {
    pub fn take(&mut self, tid: Tid) -> Option<pg_sys::Buffer> {
        let at = self.0.iter().position(|(t, _)| *t == tid)?;
        Some(self.0.swap_remove(at).1)
    }
}

/// Pins the pages of the element tuples at `tids` and starts loading the tuples
/// into the CPU caches: the distances to them come next, and their loads then
/// overlap instead of waiting one after another (as hnswlib's prefetch does).
/// Line pointers are read under the pin alone, no lock: one that changes
/// meanwhile only spoils the hint, and the addresses hinted stay inside the page.
/// Tids outside `nblocks` are left to the ordinary read, which reports them.
pub fn prefetch_elements(
    index: pg_sys::Relation,
    tids: &[Tid],
    nblocks: u32,
    prefetched: &mut Prefetched,
) {
    // Every pin is normally taken over by its read; any left are released here.
    for (_, buffer) in prefetched.0.drain(..) {
        // SAFETY: each was pinned below by this backend and not yet released.
        unsafe { pg_sys::ReleaseBuffer(buffer) };
    }
    for &tid in tids
        .iter()
        .filter(|t| t.block != page::META_BLOCK && t.block < nblocks)
    {
        let buffer = pin(index, tid.block);
        // SAFETY (this loop and the next): the buffers are pinned, so their pages
        // stay in memory; line pointers are only read, and a hint from one that
        // changes meanwhile prefetches harmless bytes inside the same page.
        let page = unsafe { pg_sys::BufferGetPage(buffer) };
        prefetch(
            unsafe { pg_sys::PageGetItemId(page, tid.offset) } as *const u8,
            std::mem::size_of::<pg_sys::ItemIdData>(),
        );
        prefetched.0.push((tid, buffer));
    }
    for &(tid, buffer) in &prefetched.0 {
        let page = unsafe { pg_sys::BufferGetPage(buffer) };
        if tid.offset >= 1 && tid.offset <= max_offset(page) {
            let id = unsafe { std::ptr::read_volatile(pg_sys::PageGetItemId(page, tid.offset)) };
            let (start, len) = (id.lp_off() as usize, id.lp_len() as usize);
            if start + len <= pg_sys::BLCKSZ as usize {
                prefetch((page as *const u8).wrapping_add(start), len);
            }
        }
    }
}

/// Blocks in the index's main fork.
pub fn block_count(index: pg_sys::Relation) -> u32 {
    // SAFETY: `index` is open.
    unsafe { pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) }
}

/// Adds an element tuple to a page that was checked to have room for it.
pub fn add_item(index: pg_sys::Relation, page: pg_sys::Page, bytes: &[u8]) -> u16 {
    // SAFETY: the caller holds the page's exclusive lock (or its WAL copy) and
    // checked the room; `bytes` is copied into the page.
    let offset = unsafe {
        pg_sys::PageAddItemExtended(
            page,
            bytes.as_ptr() as pg_sys::Item,
            bytes.len(),
            pg_sys::InvalidOffsetNumber,
            0,
        )
    };
    if offset == pg_sys::InvalidOffsetNumber {
        corrupt(index, "no room for an element on a page that had room");
    }
    offset
}
