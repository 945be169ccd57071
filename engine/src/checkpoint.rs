//! The checkpoint: merges the changes journalled since the last one into
//! the on-disk maps, writes the metadata store, and trims the journal.
//!
//! # Sequence, and what a crash leaves at each step
//!
//! 1. **Cut.** A commit (see `crate::commit`) that also freezes every
//!    volume's overlay, so the frozen overlays hold exactly the changes of
//!    the records up to and including this one. Writes go on into new
//!    overlays and later records. *Crash: the previous checkpoint and the
//!    journal reopen everything up to the last durable record.*
//! 2. **Merge.** Each frozen overlay is merged into its volume's tree
//!    (`crate::tree::merge`): new nodes under new ids, written to the
//!    metadata store ahead of the checkpoint in batches of their own.
//!    *Crash: those nodes are unreachable (no superblock names them);
//!    open deletes every node at or above the superblock's `next_node`.*
//! 3. **One atomic batch**: the new roots in the volume records, the
//!    bitmap chunks with the allocations and frees of the records up to the
//!    cut, the dead runs and nodes, the nodes the merge stopped using
//!    (marked for deletion), deletions of nodes retired earlier that no
//!    read can reach any more, and the superblock with the journal position
//!    after the cut; then sled's flush. *Crash before the flush completes:
//!    as in step 2. After: the new checkpoint and the records after the cut
//!    reopen the same state.*
//! 4. **Publish.** The new roots replace the frozen overlays for readers;
//!    the journal's tail moves past the cut; replaced nodes are retired
//!    (deleted by a later checkpoint once older reads are done, or at the
//!    next open).
//!
//! A failure in steps 2-3 stops the pool's writes (see
//! `crate::shared::Inner::fail`).

use std::sync::Arc;

use crate::alloc::BitmapChange;
use crate::commit::{Commit, Frozen};
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::meta::{Batch, DeadNode, VolumeRecord};
use crate::shared::Inner;
use crate::tree::{self, node::Node, Merge};

/// New nodes queued past this many bytes are written ahead of the batch.
const NODE_BATCH_BYTES: usize = 4 << 20;

/// What a control operation adds to a checkpoint.
#[derive(Default)]
pub(crate) struct Extra {
    /// More changes for the checkpoint's atomic batch.
    pub batch: Batch,
    /// Pool blocks freed with the batch (released once it is durable and
    /// older reads are done).
    pub frees: Vec<Run>,
    /// Nodes no tree references, deleted like those a merge replaces.
    pub garbage: Vec<u64>,
    /// Volume records to write (a frozen volume's own record wins).
    pub records: Vec<VolumeRecord>,
}

impl Inner {
    /// A checkpoint, taking the control lock.
    pub(crate) async fn checkpoint(&self) -> Result<()> {
        let _c = self.control().await?;
        self.checkpoint_locked(Extra::default()).await
    }

    /// Checkpoints with writes to one volume paused at the end, the control
    /// lock held by the caller: most of its changes are merged while writes
    /// go on, then its `install` lock is taken and a second, short
    /// checkpoint leaves its overlay empty and every death of its head in
    /// the metadata store. Its writes wait until the guard is dropped.
    pub(crate) async fn checkpoint_paused<'a>(
        &self,
        install: &'a tokio::sync::Mutex<()>,
    ) -> Result<tokio::sync::MutexGuard<'a, ()>> {
        self.checkpoint_locked(Extra::default()).await?;
        let writes = install.lock().await;
        self.checkpoint_locked(Extra::default()).await?;
        Ok(writes)
    }

    /// A checkpoint, with the control lock held by the caller.
    pub(crate) async fn checkpoint_locked(&self, extra: Extra) -> Result<()> {
        self.check_writable()?;
        // 1. Cut.
        let (next, frozen, committed) = {
            let mut ring = self.commit.lock().await;
            let Commit::Done { next, frozen } = self.commit_locked(&mut ring, true).await? else {
                unreachable!("a checkpoint's commit uses the journal's reserve");
            };
            let committed = std::mem::take(&mut self.state.lock().committed);
            (next, frozen, committed)
        };
        match self.write_checkpoint(next, &frozen, committed, extra).await {
            Ok(()) => Ok(()),
            Err(e @ Error::Failed { .. }) => Err(e),
            // The frozen overlays stay readable, but without a completed
            // checkpoint the journal cannot be trimmed: stop writes.
            Err(e) => Err(self.fail("checkpoint failed", e)),
        }
    }

    async fn write_checkpoint(
        &self,
        next: crate::journal::Pos,
        frozen: &[Frozen],
        committed: crate::shared::Committed,
        extra: Extra,
    ) -> Result<()> {
        let mut sb = self.state.lock().sb.clone();
        let gen = sb.gen;
        // 2. Merge.
        let mut batch = Batch::new();
        let mut records = Vec::with_capacity(frozen.len() + extra.records.len());
        let mut garbage = extra.garbage;
        let mut dead = Vec::new();
        let mut next_node = sb.next_node;
        for f in frozen {
            let mut sink = |id: u64, node: Node| -> Result<()> {
                batch.node(id, &node);
                self.cache.insert(id, Arc::new(node));
                if batch.bytes >= NODE_BATCH_BYTES {
                    self.meta.apply(std::mem::take(&mut batch))?;
                }
                Ok(())
            };
            let mut m = Merge {
                birth: gen,
                shared_upto: f.rec.shared_upto,
                next_id: &mut next_node,
                sink: &mut sink,
                garbage: Vec::new(),
                dead: Vec::new(),
            };
            let root = tree::merge(&self.nodes(), f.rec.root, &f.overlay.edits(), &mut m)?;
            garbage.append(&mut m.garbage);
            dead.extend(m.dead.into_iter().map(|node| DeadNode {
                uid: f.rec.uid,
                death: gen,
                node,
            }));
            let mut rec = f.rec.clone();
            rec.root = root;
            records.push(rec);
        }
        // 3. The batch.
        let mut changes = committed.changes;
        changes.extend(extra.frees.iter().map(|&r| BitmapChange::Free(r)));
        let images = self.with_alloc(|a| a.persist(&changes))?;
        let (end, summary) = {
            let a = self.alloc.lock();
            (a.end(), a.summary().to_vec())
        };
        for image in &images {
            batch.chunk(image.chunk, &image.words);
        }
        batch.summary(end, &summary);
        for d in &committed.deaths {
            batch.death(d);
        }
        for d in &dead {
            batch.dead_node(d);
        }
        for &id in &garbage {
            batch.garbage(id);
        }
        let deletable = self.reclaim.lock().take_dead_nodes();
        for &id in &deletable {
            batch.remove_node(id);
        }
        for rec in &extra.records {
            if !records.iter().any(|r| r.uid == rec.uid) {
                batch.volume(rec);
            }
        }
        for rec in &records {
            batch.volume(rec);
        }
        batch.append(extra.batch);
        sb.next_node = next_node;
        sb.journal = next;
        batch.superblock(&sb);
        let written = self.write_meta(batch);
        self.alloc
            .lock()
            .unpin(images.iter().map(|image| image.chunk));
        if let Err(e) = written {
            self.reclaim.lock().keep_dead_nodes(deletable);
            return Err(e);
        }
        for &id in &deletable {
            self.cache.remove(id);
        }
        tracing::debug!(
            volumes = records.len(),
            nodes = next_node - self.state.lock().sb.next_node,
            garbage = garbage.len(),
            chunks = images.len(),
            "checkpoint written"
        );
        // 4. Publish.
        {
            let mut st = self.state.lock();
            st.sb.next_node = next_node;
            st.sb.journal = next;
            for rec in &records {
                if let Some(v) = st.catalog.by_uid_mut(rec.uid) {
                    v.rec.root = rec.root;
                    v.rec.own_blocks = rec.own_blocks;
                    v.frozen = None;
                }
            }
        }
        let released = {
            let mut reclaim = self.reclaim.lock();
            reclaim.retire_nodes(garbage);
            reclaim.free_durable(&extra.frees)
        };
        self.release(&released);
        self.commit.lock().await.trim(next);
        Ok(())
    }
}
