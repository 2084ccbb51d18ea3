//! The on-disk layout of an `m3ret_hnsw` index, in ordinary PostgreSQL pages.
//!
//! Block 0 is the meta page ([`Meta`] in its contents). Every other block holds
//! element tuples, one per indexed row:
//!
//! ```text
//! heap tid (6) | level (1) | flags (1) | vector | neighbour slots (6 each)
//! ```
//!
//! The vector is `dims` floats, or with `quantization = int8` its 8-bit encoding
//! (`m3ret_core::vector::int8`: 12 bytes and one byte per dimension).
//!
//! Slots: 2m for layer 0, then m for each layer up to the element's capacity level;
//! a list ends at its first invalid slot. The vector comes before the slots so that
//! a tuple freed by VACUUM can take a new element of any lower level in place.
//! Element tuples never move, so a [`Tid`] (block, offset) names an element for good.

use crate::error::raise;
use m3ret_core::hnsw::{Metric, Params, MAX_LEVEL};
use m3ret_core::vector::int8::{self, Int8Vector};
use pgrx::pg_sys::{self, errcodes::PgSqlErrorCode};

pub const META_BLOCK: u32 = 0;
pub const MAGIC: u32 = 0x4D33_484E;
pub const FORMAT_VERSION: u32 = 1;
/// In each page's special space, so that tools can tell our pages apart.
pub const PAGE_ID: u16 = 0x4D33;
const HEADER_BYTES: usize = 8;
const SLOT_BYTES: usize = 6;
const FLAG_DELETED: u8 = 1;
const BLCKSZ: usize = pg_sys::BLCKSZ as usize;

/// Where an element tuple is, or a heap tuple an element points at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tid {
    pub block: u32,
    pub offset: u16,
}

impl Tid {
    pub const INVALID: Tid = Tid {
        block: pg_sys::InvalidBlockNumber,
        offset: 0,
    };

    pub fn is_valid(self) -> bool {
        self.block != pg_sys::InvalidBlockNumber && self.offset != 0
    }

    /// One integer per tid, for hash sets.
    pub fn key(self) -> u64 {
        ((self.block as u64) << 16) | self.offset as u64
    }

    /// The tid of a [`Tid::key`].
    pub fn from_key(key: u64) -> Tid {
        Tid {
            block: (key >> 16) as u32,
            offset: key as u16,
        }
    }

    fn read(bytes: &[u8]) -> Tid {
        Tid {
            block: u32::from_le_bytes(bytes[0..4].try_into().unwrap()),
            offset: u16::from_le_bytes(bytes[4..6].try_into().unwrap()),
        }
    }

    fn write(self, bytes: &mut [u8]) {
        bytes[0..4].copy_from_slice(&self.block.to_le_bytes());
        bytes[4..6].copy_from_slice(&self.offset.to_le_bytes());
    }

    pub fn from_item_pointer(p: &pg_sys::ItemPointerData) -> Tid {
        Tid {
            block: ((p.ip_blkid.bi_hi as u32) << 16) | p.ip_blkid.bi_lo as u32,
            offset: p.ip_posid,
        }
    }

    pub fn to_item_pointer(self) -> pg_sys::ItemPointerData {
        pg_sys::ItemPointerData {
            ip_blkid: pg_sys::BlockIdData {
                bi_hi: (self.block >> 16) as u16,
                bi_lo: self.block as u16,
            },
            ip_posid: self.offset,
        }
    }
}

/// The meta page: what every operation reads first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub magic: u32,
    pub version: u32,
    pub dims: u32,
    pub m: u16,
    pub ef_construction: u16,
    /// `Metric` as stored: 0 L2, 1 inner product, 2 cosine.
    pub metric: u8,
    /// `Quantization` as stored: 0 none, 1 int8 (indexes of format 1 made before
    /// the option existed hold 0 here).
    pub quantization: u8,
    /// Level of the entry element; -1 while the index is empty.
    pub entry_level: i16,
    pub entry: Tid,
    /// Where an insert starts looking for room (VACUUM moves it back to freed space).
    pub insert_page: u32,
}

impl Meta {
    pub fn entry(&self) -> Option<(Tid, usize)> {
        (self.entry_level >= 0 && self.entry.is_valid())
            .then_some((self.entry, self.entry_level as usize))
    }

    pub fn params(&self) -> Params {
        Params {
            m: self.m as usize,
            ef_construction: self.ef_construction as usize,
        }
    }

    pub fn layout(&self) -> Layout {
        Layout {
            dims: self.dims as usize,
            params: self.params(),
            quantization: self.quantization(),
        }
    }

    /// How elements keep their vectors (`read_meta` has checked the code).
    pub fn quantization(&self) -> Quantization {
        Quantization::from_code(self.quantization).expect("checked by read_meta")
    }

    /// The distance the index orders by (`read_meta` has checked the code).
    pub fn metric(&self) -> m3ret_core::hnsw::Metric {
        metric_from_code(self.metric).expect("checked by read_meta")
    }
}

/// Marks our pages in their special space.
#[repr(C)]
pub struct Special {
    pub flags: u16,
    pub page_id: u16,
}

/// Bytes available for items on an empty element page (one line pointer each).
pub fn page_capacity() -> usize {
    // SAFETY: size arithmetic on constants; nothing is read or written.
    let header = unsafe { pg_sys::SizeOfPageHeaderData() };
    // SAFETY: as above.
    BLCKSZ - header - unsafe { pg_sys::MAXALIGN(std::mem::size_of::<Special>()) }
}

/// Space one tuple of `len` bytes takes on a page, line pointer included.
pub fn space_for(len: usize) -> usize {
    // SAFETY: alignment arithmetic only.
    (unsafe { pg_sys::MAXALIGN(len) }) + std::mem::size_of::<pg_sys::ItemIdData>()
}

/// How element tuples keep their vectors (`WITH (quantization = ...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantization {
    /// The vector as given, 4 bytes per dimension.
    None,
    /// 8-bit codes with a per-vector range, 1 byte per dimension; scans return
    /// lower bounds of the distance and the executor re-ranks on the table's vectors.
    Int8,
}

impl Quantization {
    pub fn code(self) -> u8 {
        match self {
            Quantization::None => 0,
            Quantization::Int8 => 1,
        }
    }

    /// The option's value that names it.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
        }
    }

    pub fn from_code(code: u8) -> Option<Quantization> {
        match code {
            0 => Some(Quantization::None),
            1 => Some(Quantization::Int8),
            _ => None,
        }
    }
}

/// Sizes of element tuples for one index.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub dims: usize,
    pub params: Params,
    pub quantization: Quantization,
}

impl Layout {
    pub fn tuple_len(&self, level: usize) -> usize {
        self.slots_start() + SLOT_BYTES * self.params.slots(level)
    }

    /// Bytes of an element's vector.
    pub fn vector_len(&self) -> usize {
        match self.quantization {
            Quantization::None => 4 * self.dims,
            Quantization::Int8 => int8::encoded_len(self.dims),
        }
    }

    /// Writes a prepared vector as an element keeps it (`out`: [`Layout::vector_len`]
    /// bytes).
    pub fn write_vector(&self, vector: &[f32], out: &mut [u8]) {
        match self.quantization {
            Quantization::None => {
                for (chunk, v) in out.chunks_exact_mut(4).zip(vector) {
                    chunk.copy_from_slice(&v.to_ne_bytes());
                }
            }
            Quantization::Int8 => int8::encode(vector, out),
        }
    }

    /// Where the neighbour slots begin in an element tuple.
    fn slots_start(&self) -> usize {
        HEADER_BYTES + self.vector_len()
    }

    /// The highest level whose tuple fits on a page; None if not even level 0 does.
    pub fn max_level(&self) -> Option<usize> {
        (0..=MAX_LEVEL)
            .rev()
            .find(|&l| space_for(self.tuple_len(l)) <= page_capacity())
    }

    /// The level a tuple of `len` bytes has room for, if `len` is a valid size.
    pub fn capacity_level(&self, len: usize) -> Option<usize> {
        let slot_bytes = len.checked_sub(self.slots_start())?;
        if slot_bytes % SLOT_BYTES != 0 {
            return None;
        }
        let slots = slot_bytes / SLOT_BYTES;
        let above = slots.checked_sub(2 * self.params.m)?;
        (above % self.params.m == 0).then_some(above / self.params.m)
    }

    fn slot_range(&self, level: usize) -> std::ops::Range<usize> {
        let m = self.params.m;
        let (start, count) = if level == 0 {
            (0, 2 * m)
        } else {
            (2 * m + (level - 1) * m, m)
        };
        let base = self.slots_start();
        base + SLOT_BYTES * start..base + SLOT_BYTES * (start + count)
    }

    /// A new element tuple: `links[l]` are its neighbours on layer l.
    pub fn encode(
        &self,
        heap: Tid,
        level: usize,
        capacity: usize,
        vector: &[f32],
        links: &[Vec<Tid>],
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; self.tuple_len(capacity)];
        ElementMut {
            bytes: &mut bytes,
            layout: *self,
        }
        .write(heap, level, vector, links);
        bytes
    }
}

/// An element tuple, read in place.
pub struct Element<'a> {
    bytes: &'a [u8],
    layout: Layout,
    capacity: usize,
}

impl<'a> Element<'a> {
    /// Checks the tuple's size and level before anything reads it.
    pub fn parse(bytes: &'a [u8], layout: Layout) -> Result<Self, String> {
        let capacity = layout
            .capacity_level(bytes.len())
            .ok_or_else(|| format!("element tuple of {} bytes", bytes.len()))?;
        let e = Element {
            bytes,
            layout,
            capacity,
        };
        if e.level() > capacity {
            return Err(format!(
                "element level {} above its capacity {capacity}",
                e.level()
            ));
        }
        Ok(e)
    }

    pub fn heap_tid(&self) -> Tid {
        Tid::read(&self.bytes[0..6])
    }

    pub fn level(&self) -> usize {
        self.bytes[6] as usize
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_deleted(&self) -> bool {
        self.bytes[7] & FLAG_DELETED != 0
    }

    /// The vector's bytes as stored (floats or an 8-bit encoding).
    pub fn vector_bytes(&self) -> &'a [u8] {
        &self.bytes[HEADER_BYTES..self.layout.slots_start()]
    }

    pub fn vector(&self) -> StoredVector<'a> {
        let bytes = self.vector_bytes();
        match self.layout.quantization {
            Quantization::None => {
                // Items start MAXALIGNed and the header is 8 bytes, so the floats are aligned.
                assert_eq!(bytes.as_ptr() as usize % 4, 0, "misaligned element vector");
                // SAFETY: `bytes` holds exactly `dims` floats (its length is checked
                // when the element is parsed), aligned as asserted, and lives as long
                // as `self`.
                StoredVector::Float32(unsafe {
                    std::slice::from_raw_parts(bytes.as_ptr() as *const f32, self.layout.dims)
                })
            }
            Quantization::Int8 => StoredVector::Int8(
                Int8Vector::parse(bytes, self.layout.dims).expect("length checked by parse"),
            ),
        }
    }

    /// Neighbours on `level` (none above the element's level).
    pub fn neighbors(&self, level: usize) -> impl Iterator<Item = Tid> + 'a {
        let range = if level <= self.level() {
            self.layout.slot_range(level)
        } else {
            0..0
        };
        self.bytes[range]
            .chunks_exact(SLOT_BYTES)
            .map(Tid::read)
            .take_while(|t| t.is_valid())
    }
}

/// An element's vector as its tuple keeps it.
pub enum StoredVector<'a> {
    Float32(&'a [f32]),
    Int8(Int8Vector<'a>),
}

impl StoredVector<'_> {
    /// The graph's distance from a prepared query (an estimate under int8).
    #[inline]
    pub fn graph_distance(&self, metric: Metric, query: &[f32]) -> f32 {
        match self {
            StoredVector::Float32(v) => metric.graph_distance(query, v),
            StoredVector::Int8(v) => metric.graph_distance_int8(query, v),
        }
    }

    /// The vector as floats (decoded under int8), for distances between elements.
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            StoredVector::Float32(v) => v.to_vec(),
            StoredVector::Int8(v) => v.decode(),
        }
    }
}

/// An element tuple, changed in place (inside a GenericXLog-registered page).
pub struct ElementMut<'a> {
    bytes: &'a mut [u8],
    layout: Layout,
}

impl<'a> ElementMut<'a> {
    pub fn new(bytes: &'a mut [u8], layout: Layout) -> Self {
        ElementMut { bytes, layout }
    }

    /// Makes the tuple a fresh element with no links.
    pub fn reset(&mut self, heap: Tid, level: usize, vector: &[f32]) {
        heap.write(&mut self.bytes[0..6]);
        self.bytes[6] = level as u8;
        self.bytes[7] = 0;
        let slots = self.layout.slots_start();
        self.layout
            .write_vector(vector, &mut self.bytes[HEADER_BYTES..slots]);
        for slot in self.bytes[slots..].chunks_exact_mut(SLOT_BYTES) {
            Tid::INVALID.write(slot);
        }
    }

    /// Makes the tuple the element `heap` at `level` with `links[l]` on layer l.
    pub fn write(&mut self, heap: Tid, level: usize, vector: &[f32], links: &[Vec<Tid>]) {
        self.reset(heap, level, vector);
        self.set_links(links);
    }

    /// Sets the links of layers 0..links.len().
    pub fn set_links(&mut self, links: &[Vec<Tid>]) {
        for (l, list) in links.iter().enumerate() {
            self.set_neighbors(l, list);
        }
    }

    pub fn set_neighbors(&mut self, level: usize, links: &[Tid]) {
        let range = self.layout.slot_range(level);
        for (i, slot) in self.bytes[range].chunks_exact_mut(SLOT_BYTES).enumerate() {
            links.get(i).copied().unwrap_or(Tid::INVALID).write(slot);
        }
    }

    /// Frees the tuple for reuse: no heap row, no links.
    pub fn mark_deleted(&mut self) {
        Tid::INVALID.write(&mut self.bytes[0..6]);
        self.bytes[7] |= FLAG_DELETED;
        let slots = self.layout.slots_start();
        for slot in self.bytes[slots..].chunks_exact_mut(SLOT_BYTES) {
            Tid::INVALID.write(slot);
        }
    }
}

// The distance codes: what support function 1 of each opclass returns (mod.rs)
// and what the meta page stores.
pub const METRIC_L2: i32 = 0;
pub const METRIC_IP: i32 = 1;
pub const METRIC_COSINE: i32 = 2;

/// The distance of an index's opclass (its support function 1).
pub fn metric_of(index: pg_sys::Relation) -> Metric {
    // SAFETY: `index` is open; every m3ret_hnsw opclass has support function 1,
    // which takes an unused argument and returns an int4.
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
pub fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::L2 => METRIC_L2 as u8,
        Metric::InnerProduct => METRIC_IP as u8,
        Metric::Cosine => METRIC_COSINE as u8,
    }
}

pub fn metric_from_code(code: u8) -> Option<Metric> {
    match code as i32 {
        METRIC_L2 => Some(Metric::L2),
        METRIC_IP => Some(Metric::InnerProduct),
        METRIC_COSINE => Some(Metric::Cosine),
        _ => None,
    }
}

/// ERROR unless an element of `dims` dimensions fits on a page.
pub fn check_fits(dims: usize, params: Params, quantization: Quantization) {
    let layout = |dims| Layout {
        dims,
        params,
        quantization,
    };
    if layout(dims).max_level().is_none() {
        let most = (0..dims)
            .rev()
            .find(|&d| layout(d).max_level().is_some())
            .unwrap_or(0);
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "m3ret_hnsw indexes at most {most} dimensions with m = {} and quantization {}, not {dims}",
                params.m,
                quantization.name()
            ),
        );
    }
}
