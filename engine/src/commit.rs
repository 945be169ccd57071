//! The commit: makes every change acknowledged so far durable with one
//! journal record and one sync of the data file.
//!
//! # Sequence, and what a crash leaves at each step
//!
//! 1. Under the state lock: take the pending journal operations, start a
//!    new reclaim epoch, note the writes in flight. (A checkpoint's commit
//!    also freezes every overlay here.) *Crash: nothing of this commit is
//!    on disk; the previous commit's state reopens.*
//! 2. Write the record, while the data writes it maps finish. *Crash: the
//!    record may be on disk with some of its data missing; replay checks
//!    the last record's data against its checksums and drops it (see
//!    `crate::journal`).*
//! 3. `fdatasync` the data file: the one device flush. *Crash after it:
//!    the record and its data are durable and replay applies them.*
//! 4. The blocks the record's operations freed are released once no read
//!    still uses them (see `crate::reclaim`).
//!
//! A failed record write or sync stops the pool's writes (see
//! [`Inner::fail`]): the changes stay in memory for reads, and a restart
//! recovers the last durable state.

use std::sync::Arc;

use futures::future::join_all;

use crate::error::{Error, Result};
use crate::journal::Pos;
use crate::meta::VolumeRecord;
use crate::overlay::Overlay;
use crate::shared::{Inner, State};
use crate::BLOCK_SIZE;

/// Journal blocks a commit leaves free for the checkpoint that makes room
/// (a record of at most `MAX_PENDING_BYTES` and one install past it).
const RESERVE_BLOCKS: u64 = ((crate::shared::MAX_PENDING_BYTES as u64) + (1 << 20)) / BLOCK_SIZE;

/// A volume's overlay frozen by a checkpoint's commit, with its record as
/// of that moment.
pub(crate) struct Frozen {
    pub overlay: Arc<Overlay>,
    pub rec: VolumeRecord,
}

/// What a commit did.
pub(crate) enum Commit {
    /// Durable; the journal continues at `next`. A checkpoint's commit
    /// returns the overlays it froze.
    Done { next: Pos, frozen: Vec<Frozen> },
    /// The journal has no room for the record until a checkpoint.
    NoRoom,
}

/// Moves every volume's changes to its frozen overlay and folds the
/// blocks it gained or lost into its record, for a checkpoint to merge.
fn freeze(st: &mut State) -> Vec<Frozen> {
    let mut out = Vec::new();
    for v in st.catalog.iter_mut() {
        debug_assert!(v.frozen.is_none(), "one checkpoint at a time");
        if v.active.is_empty() {
            continue;
        }
        let overlay = Arc::new(std::mem::take(&mut v.active));
        v.frozen = Some(overlay.clone());
        v.rec.own_blocks = v
            .rec
            .own_blocks
            .saturating_add_signed(std::mem::take(&mut v.own_delta));
        out.push(Frozen {
            overlay,
            rec: v.rec.clone(),
        });
    }
    out
}

impl Inner {
    /// Makes every change acknowledged so far durable.
    pub(crate) async fn commit(&self) -> Result<()> {
        self.check_writable()?;
        loop {
            let mut ring = self.commit.lock().await;
            match self.commit_locked(&mut ring, false).await? {
                Commit::Done { .. } => return Ok(()),
                Commit::NoRoom => {
                    drop(ring);
                    self.checkpoint().await?;
                }
            }
        }
    }

    /// Whether the journal is filling up and wants a checkpoint.
    pub(crate) async fn journal_filling(&self) -> bool {
        let ring = self.commit.lock().await;
        ring.used() > ring.capacity() / 4
    }

    /// A commit, with the commit lock held (`ring`). With `freeze`, also
    /// freezes every overlay for a checkpoint and may use the journal's
    /// reserve.
    pub(crate) async fn commit_locked(
        &self,
        ring: &mut crate::journal::Ring,
        freeze_all: bool,
    ) -> Result<Commit> {
        self.check_writable()?;
        let reserve = if freeze_all { 0 } else { RESERVE_BLOCKS };
        let (pending, freed, writes, frozen) = {
            let mut st = self.state.lock();
            if !ring.fits(st.pending.payload.len(), reserve) {
                if freeze_all {
                    return Err(Error::NoSpace(
                        "the journal is full and a checkpoint cannot make room".into(),
                    ));
                }
                return Ok(Commit::NoRoom);
            }
            let pending = std::mem::take(&mut st.pending);
            let freed = self.reclaim.lock().begin_commit();
            let writes = self.behind.all();
            let frozen = if freeze_all {
                freeze(&mut st)
            } else {
                Vec::new()
            };
            (pending, freed, writes, frozen)
        };
        if pending.is_empty() {
            join_all(writes).await;
            debug_assert!(freed.is_empty(), "frees come with journal operations");
            return Ok(Commit::Done {
                next: ring.head(),
                frozen,
            });
        }
        let (offset, bytes) = ring
            .append(&pending.payload, reserve)
            .expect("room was checked under the state lock");
        let mut buf = self.bufs.get(bytes.len());
        buf.copy_from_slice(&bytes);
        // The record goes to the disk while the data it maps finishes.
        let ((buf, written), _) = futures::join!(self.io.write(offset, buf), join_all(writes));
        self.bufs.put(buf);
        if let Err(e) = written {
            return Err(self.fail("journal write failed", Error::from_io(e)));
        }
        if let Err(e) = self.io.sync_data().await {
            return Err(self.fail("data file sync failed", Error::from_io(e)));
        }
        {
            let mut st = self.state.lock();
            st.committed.changes.extend(pending.changes);
            st.committed.deaths.extend(pending.deaths);
        }
        let released = self.reclaim.lock().commit_done(freed);
        self.release(&released);
        Ok(Commit::Done {
            next: ring.head(),
            frozen,
        })
    }
}
