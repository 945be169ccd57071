//! Fences: volumes made read-only for a while by their owner above the
//! engine (a standby volume follows its backups and must not diverge from
//! them until it is activated).
//!
//! A fence is not persisted: its owner sets it again when the pool is next
//! opened, before the volume is served. Handles see it at every write (a
//! handle opened before the fence went up is refused too) and report
//! themselves read-only while it stands, so NBD exports a fenced volume
//! read-only. The owner writes through [`crate::Volume::ungated`]
//! handles, which pass it. Snapshots of a fenced volume are allowed: a
//! fence changes who may write, not what the volume holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

/// The fenced volumes of a pool, by uid, each with the reason writes are
/// refused. A leaf lock, like [`crate::gate`]'s table.
#[derive(Default)]
pub(crate) struct Fences {
    table: RwLock<HashMap<u64, String>>,
    /// How many fences there are: zero spares every write the lookup.
    count: AtomicUsize,
}

impl Fences {
    /// Why writes to volume `uid` are refused, if they are.
    pub(crate) fn get(&self, uid: u64) -> Option<String> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.table.read().get(&uid).cloned()
    }

    pub(crate) fn set(&self, uid: u64, reason: Option<String>) {
        let mut table = self.table.write();
        match reason {
            Some(r) => {
                table.insert(uid, r);
            }
            None => {
                table.remove(&uid);
            }
        }
        self.count.store(table.len(), Ordering::Release);
    }
}
