//! Gates: volumes whose contents are not all local yet.
//!
//! A volume restored instantly from a backup is served before its chunks
//! are in the pool. Its owner (the daemon's hydration, outside the engine)
//! registers a [`Gate`] on it; every read, write, write-zeroes, trim and
//! block-status query of a handle on that volume consults the gate first,
//! and the gate makes the range local (fetching what is missing) or fails
//! the request. The engine keeps no "not yet local" state itself: its maps
//! only know data and holes, and a hole that is not fetched yet must never
//! read as zeros, so the gate answers for those ranges.
//!
//! The gate's own fills go through [`crate::Volume::ungated`] handles.
//! Snapshots of a gated volume are refused: a snapshot would freeze the
//! unfetched holes as zeros.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;

use crate::error::Result;

/// What a volume's owner does before its ranges are used.
pub trait Gate: Send + Sync + 'static {
    /// Returns once `[offset, offset + len)` reads what the volume holds
    /// (fetching what is missing); an error fails the read.
    fn readable(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;

    /// Runs `write`, which changes `[offset, offset + len)` (a write,
    /// write-zeroes or trim), so that nothing the gate fills later
    /// overwrites it.
    fn write<'a>(
        &'a self,
        offset: u64,
        len: u64,
        write: BoxFuture<'a, Result<()>>,
    ) -> BoxFuture<'a, Result<()>>;

    /// The parts of `[offset, offset + len)` not local yet (block status
    /// reports them as data, whatever the pool holds there).
    fn missing(&self, offset: u64, len: u64) -> Vec<Range<u64>>;

    /// Why the volume cannot be snapshotted now, in one line.
    fn busy(&self) -> String;
}

/// The gates of a pool's volumes, by volume uid. A leaf lock: taken alone,
/// only to look a gate up or change the table.
#[derive(Default)]
pub(crate) struct Gates {
    table: RwLock<HashMap<u64, Arc<dyn Gate>>>,
    /// How many gates there are: zero spares every I/O the lookup.
    count: AtomicUsize,
}

impl Gates {
    pub(crate) fn get(&self, uid: u64) -> Option<Arc<dyn Gate>> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.table.read().get(&uid).cloned()
    }

    pub(crate) fn set(&self, uid: u64, gate: Option<Arc<dyn Gate>>) {
        let mut table = self.table.write();
        match gate {
            Some(g) => {
                table.insert(uid, g);
            }
            None => {
                table.remove(&uid);
            }
        }
        self.count.store(table.len(), Ordering::Release);
    }
}
