//! Where each chunk of a hydrating volume stands, in memory.
//!
//! ```text
//! Pending --claim--> Busy --filled--> Written --settled--> Local
//!    ^                 |                                     ^
//!    +----failed-------+----------claimed and overwritten----+
//! ```
//!
//! * `Pending`: not in the pool; reads must fetch it.
//! * `Busy`: one task owns it (fetching it, or overwriting it whole);
//!   everyone else waits. This is the single flight per chunk.
//! * `Written`: fetched and written, not yet durable with its bit in the
//!   journal. Reads may use it; a write must wait until it is `Local`,
//!   or a crash could make a later fetch overwrite that write.
//! * `Local`: durable in the pool and in the journal's bitmap; never
//!   fetched again.

use std::ops::Range;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Pending,
    Busy,
    Written,
    Local,
}

/// The states of all chunks, and a wake-up for those waiting on a change.
pub struct ChunkTable {
    states: Mutex<Vec<Chunk>>,
    changed: Notify,
}

impl ChunkTable {
    pub fn new(local: &[bool]) -> Self {
        ChunkTable {
            states: Mutex::new(
                local
                    .iter()
                    .map(|&l| if l { Chunk::Local } else { Chunk::Pending })
                    .collect(),
            ),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Chunk>> {
        self.states.lock().expect("chunk table")
    }

    /// Runs `step` on the states until it returns `Some`, waiting for a
    /// change between tries; wakes the other waiters afterwards.
    pub async fn until<R>(&self, mut step: impl FnMut(&mut [Chunk]) -> Option<R>) -> R {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = step(&mut self.lock()) {
                self.changed.notify_waiters();
                return r;
            }
            notified.await;
        }
    }

    /// Sets `chunks` to `state` and wakes the waiters.
    pub fn set(&self, chunks: &[usize], state: Chunk) {
        {
            let mut states = self.lock();
            for &c in chunks {
                states[c] = state;
            }
        }
        self.changed.notify_waiters();
    }

    /// A look at the states, under the table's lock (no await inside).
    pub fn inspect<R>(&self, f: impl FnOnce(&[Chunk]) -> R) -> R {
        f(&self.lock())
    }

    /// The chunks in `range` that are neither written nor local.
    pub fn missing(&self, range: Range<usize>) -> Vec<usize> {
        let states = self.lock();
        range
            .filter(|&c| matches!(states.get(c), Some(Chunk::Pending | Chunk::Busy)))
            .collect()
    }
}
