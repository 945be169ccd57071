//! A test seam: planned failures of data-file syncs and writes and of
//! metadata writes, so the failure paths can be driven on purpose. Built
//! only with the `test-seams` feature (the engine's own tests enable
//! it); a pool without a plan never fails on purpose.

use std::sync::atomic::{AtomicU32, Ordering};

use super::request::Op;

/// Counts of operations to fail from now on: each planned failure is used
/// once, by the next operation of its kind.
#[derive(Debug, Default)]
pub struct Faults {
    syncs: AtomicU32,
    writes: AtomicU32,
    meta: AtomicU32,
    /// Metadata writes to let through before a planned one fails.
    meta_skip: AtomicU32,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1))
        .is_ok()
}

impl Faults {
    /// The next `n` `fdatasync`s of the data file fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.syncs.fetch_add(n, Ordering::AcqRel);
    }

    /// The next `n` writes to the data file fail with EIO (data and
    /// journal records alike), without reaching the file.
    pub fn fail_writes(&self, n: u32) {
        self.writes.fetch_add(n, Ordering::AcqRel);
    }

    /// The next `n` writes of the metadata store fail.
    pub fn fail_meta(&self, n: u32) {
        self.meta.fetch_add(n, Ordering::AcqRel);
    }

    /// The metadata write after the next `skip` ones fails: a crash at
    /// that point of an operation, for a test that tries every point.
    pub fn fail_meta_after(&self, skip: u32) {
        self.meta_skip.store(skip, Ordering::Release);
        self.meta.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn fails(&self, op: Op) -> bool {
        match op {
            Op::SyncData => take(&self.syncs),
            Op::Write => take(&self.writes),
            Op::Read => false,
        }
    }

    /// Whether this metadata write is to fail.
    pub fn meta_fails(&self) -> bool {
        if self.meta.load(Ordering::Acquire) == 0 || take(&self.meta_skip) {
            return false;
        }
        take(&self.meta)
    }
}
