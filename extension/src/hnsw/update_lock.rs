//! The index's update lock: a heavyweight page lock on block 0 that inserts take in
//! share mode and graph-wide changes (a new entry element, VACUUM's repairs, the
//! first row fixing the dimension count) exclusively. Block 0 is the meta page, so
//! the lock tag is ours alone. Scans take none.
//!
//! A guard: the lock is released when the guard is dropped, on every path out of a
//! function, also when an ERROR unwinds through Rust (and the transaction's abort
//! would release it anyway).

use pgrx::pg_sys;

const UPDATE_LOCK_BLOCK: u32 = 0;

pub struct UpdateLock {
    index: pg_sys::Relation,
    mode: pg_sys::LOCKMODE,
}

impl UpdateLock {
    /// Many inserts at once.
    pub fn share(index: pg_sys::Relation) -> UpdateLock {
        Self::take(index, pg_sys::ShareLock as pg_sys::LOCKMODE)
    }

    /// Alone: no insert, no other change runs meanwhile.
    pub fn exclusive(index: pg_sys::Relation) -> UpdateLock {
        Self::take(index, pg_sys::ExclusiveLock as pg_sys::LOCKMODE)
    }

    fn take(index: pg_sys::Relation, mode: pg_sys::LOCKMODE) -> UpdateLock {
        // SAFETY: a valid, open index relation; PostgreSQL's lock manager does the rest.
        unsafe { pg_sys::LockPage(index, UPDATE_LOCK_BLOCK, mode) };
        UpdateLock { index, mode }
    }

    /// Trades a share lock for an exclusive one. Not atomic: others may change the
    /// graph in between, so re-read what was read under the share lock.
    pub fn upgrade(&mut self) {
        if self.mode == pg_sys::ExclusiveLock as pg_sys::LOCKMODE {
            return;
        }
        let exclusive = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
        // SAFETY: as in take(); the share lock is ours.
        unsafe {
            pg_sys::UnlockPage(self.index, UPDATE_LOCK_BLOCK, self.mode);
            pg_sys::LockPage(self.index, UPDATE_LOCK_BLOCK, exclusive);
        }
        self.mode = exclusive;
    }
}

impl Drop for UpdateLock {
    fn drop(&mut self) {
        // SAFETY: the lock taken in take() or upgrade(), still held.
        unsafe { pg_sys::UnlockPage(self.index, UPDATE_LOCK_BLOCK, self.mode) };
    }
}
