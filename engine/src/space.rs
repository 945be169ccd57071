//! Whose blocks are whose: freeing what a deleted snapshot or volume
//! alone used, and diffs between snapshots. Everything here is
//! proportional to what changed, never to the volume's size or the number
//! of snapshots (except deleting a whole volume, which visits what it
//! holds).
//!
//! # Generations
//!
//! The pool's generation increases by one at each snapshot. Everything a
//! volume's head writes (data extents and map nodes) is born in the
//! current generation; a snapshot taken at generation `g` holds exactly
//! what was born at or before `g` and still mapped then. So for a volume
//! whose newest snapshot has generation `s` (`shared_upto`):
//!
//! * a block or node the head stops using that was born after `s` is the
//!   head's alone and is freed (after the commit, see `crate::reclaim`);
//! * one born at or before `s` is still a snapshot's: it is recorded as
//!   *dead* in the current generation instead (`D` and `E` keys in
//!   `crate::meta`).
//!
//! Deleting snapshot `S` (previous snapshot `P`, next one `N` or the head)
//! then frees exactly the dead entries of `N`'s interval `(S, N]` born
//! after `P`: born after `P` they were never `P`'s, dead by `N` they are
//! not `N`'s or any later tree's, and clones of `S` refuse its deletion.
//! The entries it keeps need no moving: `N`'s interval becomes `(P, N]`.
//!
//! A diff from snapshot `A` to a later snapshot `B` is what `B` holds
//! born after `A` (a pruned walk of `B`'s tree) plus what died in `(A, B]`
//! and was born at or before `A` (overwritten or trimmed since `A`).
//!
//! Deleting a whole volume walks each of its trees once: snapshot `i`'s
//! tree frees what was born in its interval, the head's what was born after
//! the newest snapshot. Each block or node is freed exactly once, by the
//! tree at the end of the interval it was born in (one born there and gone
//! before that tree was taken was freed when it went).

use std::ops::Range;
use std::sync::Arc;

use crate::catalog::VolumeState;
use crate::checkpoint::Extra;
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::meta::{Batch, SnapshotRecord, VolumeRecord};
use crate::pool::Pool;
use crate::shared::{Inner, Unfinished};
use crate::tree::node::{Node, NodeRef};
use crate::tree::{self, NodeSource};
use crate::BLOCK_SIZE;

/// Dead entries, or extents of a deleted volume, handled per checkpoint.
const PAGE: usize = 64 * 1024;

impl Inner {
    /// Deletes snapshot `snap` of volume `uid`; the control lock is held.
    pub(crate) async fn delete_snapshot_locked(
        &self,
        uid: u64,
        snap: SnapshotRecord,
        install: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<()> {
        // 1. Hide it. If it is the newest, blocks the head shares with it
        //    alone become the head's own: writes over them free them from
        //    now on.
        let (prev, upto) = {
            let _writes = install.lock().await;
            let (rec, srec, prev, upto) = {
                let mut st = self.state.lock();
                let v = st
                    .catalog
                    .by_uid_mut(uid)
                    .ok_or_else(|| Error::not_found("volume", uid.to_string()))?;
                let prev = v.gen_before(snap.gen);
                let upto = next_gen(v, snap.gen);
                let s = v
                    .snapshots
                    .iter_mut()
                    .find(|s| s.gen == snap.gen)
                    .ok_or_else(|| Error::not_found("snapshot", snap.name.clone()))?;
                s.deleting = true;
                let srec = s.clone();
                if upto == u64::MAX {
                    v.rec.shared_upto = prev;
                }
                (v.rec.clone(), srec, prev, upto)
            };
            let mut batch = Batch::new();
            batch.snapshot(uid, &srec);
            batch.volume(&rec);
            self.write_meta(batch)?;
            (prev, upto)
        };
        self.finish_snapshot_delete(uid, snap.gen, prev, upto).await
    }

    /// Steps 2 to 4 of a snapshot delete (also resumed at open).
    async fn finish_snapshot_delete(&self, uid: u64, gen: u64, prev: u64, upto: u64) -> Result<()> {
        // 2. Every death so far into the metadata store, where step 3
        //    finds them (after a crash, replay left some in memory).
        self.checkpoint_locked(Extra::default()).await?;
        // 3. Free what only it used.
        let freed = self.release_interval(uid, gen, upto, prev).await?;
        // 4. Forget it. What it held and outlives it now counts for the
        //    next snapshot or the head.
        let mut batch = Batch::new();
        {
            let mut st = self.state.lock();
            let Some(v) = st.catalog.by_uid_mut(uid) else {
                return Ok(());
            };
            let Some(i) = v.snapshots.iter().position(|s| s.gen == gen) else {
                return Ok(());
            };
            let gone = v.snapshots.remove(i);
            let kept = gone.allocated_blocks.saturating_sub(freed);
            batch.remove_snapshot(uid, gen);
            match v.snapshots.iter_mut().find(|s| s.gen == upto) {
                Some(next) => {
                    next.allocated_blocks += kept;
                    batch.snapshot(uid, next);
                }
                None => {
                    v.rec.own_blocks += kept;
                    batch.volume(&v.rec);
                }
            }
        }
        self.write_meta(batch)
    }

    /// Frees the dead entries of volume `uid` that died in `(after, upto]`
    /// and were born after `prev`, a page per checkpoint; returns the data
    /// blocks freed.
    async fn release_interval(&self, uid: u64, after: u64, upto: u64, prev: u64) -> Result<u64> {
        let mut freed = 0;
        let mut from = None;
        loop {
            let deaths = self.meta.deaths(uid, after, upto, from, PAGE)?;
            let mut extra = Extra::default();
            for d in &deaths {
                if d.birth > prev {
                    extra.frees.push(d.run);
                    extra.batch.remove_death(d);
                    freed += d.run.len;
                }
            }
            let done = deaths.len() < PAGE;
            from = deaths.last().map(|d| (d.death, d.run.start));
            self.checkpoint_locked(extra).await?;
            if done {
                break;
            }
        }
        let mut from = None;
        loop {
            let nodes = self.meta.dead_nodes(uid, after, upto, from, PAGE)?;
            let mut extra = Extra::default();
            for d in &nodes {
                if d.node.birth > prev {
                    extra.garbage.push(d.node.id);
                    extra.batch.remove_dead_node(d);
                }
            }
            let done = nodes.len() < PAGE;
            from = nodes.last().map(|d| (d.death, d.node.id));
            if !extra.garbage.is_empty() || !done {
                self.checkpoint_locked(extra).await?;
            }
            if done {
                break;
            }
        }
        Ok(freed)
    }

    /// Frees everything volume `rec` (already hidden, marked deleting)
    /// alone holds and forgets it; the control lock is held. A crash
    /// resumes where the record says (`delete_tree`, `delete_cursor`).
    pub(crate) async fn reclaim_volume(
        &self,
        mut rec: VolumeRecord,
        snapshots: Vec<SnapshotRecord>,
    ) -> Result<()> {
        let origin = rec.origin.as_ref().map_or(0, |o| o.gen);
        // Tree i frees what was born in its interval.
        let mut trees: Vec<(Option<NodeRef>, u64, u64)> = Vec::new();
        let mut after = origin;
        for s in &snapshots {
            trees.push((s.root, after, s.gen));
            after = s.gen;
        }
        trees.push((rec.root, after, u64::MAX));
        let nodes = self.nodes();
        for (i, &(root, after, upto)) in trees.iter().enumerate().skip(rec.delete_tree as usize) {
            loop {
                let chunk = walk_chunk(&nodes, root, after, upto, rec.delete_cursor, PAGE)?;
                let mut extra = Extra {
                    frees: chunk.runs,
                    garbage: chunk.leaves,
                    ..Extra::default()
                };
                match chunk.next {
                    Some(next) => rec.delete_cursor = next,
                    None => {
                        extra
                            .garbage
                            .extend(branches_born_after(&nodes, root, after)?);
                        rec.delete_tree = i as u32 + 1;
                        rec.delete_cursor = 0;
                    }
                }
                extra.records.push(rec.clone());
                self.checkpoint_locked(extra).await?;
                if chunk.next.is_none() {
                    break;
                }
            }
        }
        // Its dead lists and snapshot records, a page at a time, then the
        // record itself (and its origin's clone count).
        loop {
            let mut batch = Batch::new();
            let n = self.meta.forget_volume_page(rec.uid, PAGE, &mut batch)?;
            if n == 0 {
                break;
            }
            self.write_meta(batch)?;
        }
        let mut batch = Batch::new();
        batch.remove_deleting_volume(rec.uid);
        if let Some(o) = &rec.origin {
            let mut st = self.state.lock();
            if let Some(s) = st
                .catalog
                .by_uid_mut(o.uid)
                .and_then(|v| v.snapshots.iter_mut().find(|s| s.gen == o.gen))
            {
                s.clones = s.clones.saturating_sub(1);
                batch.snapshot(o.uid, s);
            }
        }
        self.write_meta(batch)
    }

    /// Finishes the snapshot and volume deletions a crash interrupted; the
    /// control lock is held.
    pub(crate) async fn finish_deletions_locked(&self) -> Result<()> {
        loop {
            let Some(item) = self.unfinished.lock().pop() else {
                return Ok(());
            };
            match item {
                Unfinished::Volume(rec, snapshots) => {
                    tracing::info!(uid = rec.uid, volume = %rec.name, "finishing an interrupted volume delete");
                    self.reclaim_volume(rec, snapshots).await?;
                }
                Unfinished::Snapshot { uid, gen } => {
                    let bounds = {
                        let st = self.state.lock();
                        st.catalog
                            .by_uid(uid)
                            .map(|v| (v.gen_before(gen), next_gen(v, gen)))
                    };
                    if let Some((prev, upto)) = bounds {
                        tracing::info!(uid, gen, "finishing an interrupted snapshot delete");
                        self.finish_snapshot_delete(uid, gen, prev, upto).await?;
                    }
                }
            }
        }
    }
}

/// The generation of the visible snapshot after `gen`, or `u64::MAX` for
/// the head.
fn next_gen(v: &VolumeState, gen: u64) -> u64 {
    v.snapshots
        .iter()
        .filter(|s| !s.deleting && s.gen > gen)
        .map(|s| s.gen)
        .min()
        .unwrap_or(u64::MAX)
}

/// A bounded part of a deleted tree's walk.
struct Chunk {
    runs: Vec<Run>,
    leaves: Vec<u64>,
    /// Where the next part starts; `None` when the walk is done.
    next: Option<u64>,
}

/// From volume block `cursor` on, the data runs born in `(after, upto]`
/// of the tree at `root` and the leaves born after `after`, until about
/// `limit` extents.
fn walk_chunk(
    src: &impl NodeSource,
    root: Option<NodeRef>,
    after: u64,
    upto: u64,
    cursor: u64,
    limit: usize,
) -> Result<Chunk> {
    let mut chunk = Chunk {
        runs: Vec::new(),
        leaves: Vec::new(),
        next: None,
    };
    if let Some(root) = root.filter(|r| r.birth > after) {
        walk_from(
            src,
            root,
            0,
            u64::MAX,
            after,
            upto,
            cursor,
            limit,
            &mut chunk,
        )?;
    }
    Ok(chunk)
}

/// Walks the subtree at `at` covering `[lo, hi)`; stops (setting
/// `chunk.next`) once `limit` extents are collected.
#[allow(clippy::too_many_arguments)]
fn walk_from(
    src: &impl NodeSource,
    at: NodeRef,
    lo: u64,
    hi: u64,
    after: u64,
    upto: u64,
    cursor: u64,
    limit: usize,
    chunk: &mut Chunk,
) -> Result<()> {
    match &*src.node(at.id)? {
        Node::Leaf(leaf) => {
            chunk.runs.extend(
                leaf.extents()
                    .filter(|e| e.birth > after && e.birth <= upto)
                    .map(|e| Run::new(e.pstart, e.len())),
            );
            chunk.leaves.push(at.id);
            if chunk.runs.len() >= limit && hi != u64::MAX {
                chunk.next = Some(hi);
            }
        }
        Node::Branch(b) => {
            for (i, c) in b.children.iter().enumerate() {
                let c_lo = if i == 0 { lo } else { c.key };
                let c_hi = b.children.get(i + 1).map_or(hi, |n| n.key);
                if c_hi <= cursor || c.node.birth <= after {
                    continue;
                }
                walk_from(src, c.node, c_lo, c_hi, after, upto, cursor, limit, chunk)?;
                if chunk.next.is_some() {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Every branch node of the tree at `root` born after `after` (leaves are
/// not read).
fn branches_born_after(
    src: &impl NodeSource,
    root: Option<NodeRef>,
    after: u64,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let Some(root) = root.filter(|r| r.birth > after) else {
        return Ok(out);
    };
    let mut stack = vec![root];
    while let Some(at) = stack.pop() {
        if let Node::Branch(b) = &*src.node(at.id)? {
            out.push(at.id);
            if b.level > 1 {
                stack.extend(
                    b.children
                        .iter()
                        .map(|c| c.node)
                        .filter(|n| n.birth > after),
                );
            }
        }
    }
    Ok(out)
}

impl Pool {
    /// The byte ranges that differ between snapshot `from` (`None`: an
    /// empty volume) and snapshot `to` of `volume`. Nothing is read from
    /// the data file, and the cost follows what changed. Ranges are
    /// block-aligned, sorted and coalesced; a range may hold zeros (data
    /// that was trimmed counts as changed).
    pub fn diff(&self, volume: &str, from: Option<&str>, to: &str) -> Result<Vec<Range<u64>>> {
        crate::name::validate_name(volume)?;
        let inner = &self.inner;
        let (uid, to_snap, from_gen) = {
            let st = inner.state.lock();
            let v = st.catalog.get(volume)?;
            let to_snap = v.snapshot(to)?.clone();
            let from_gen = from.map(|f| v.snapshot(f).map(|s| s.gen)).transpose()?;
            if from_gen.is_some_and(|g| g >= to_snap.gen) {
                return Err(Error::InvalidArgument(format!(
                    "snapshot {volume}@{} is not older than {volume}@{to}",
                    from.unwrap_or_default()
                )));
            }
            (v.rec.uid, to_snap, from_gen)
        };
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        tree::walk_born_after(
            &inner.nodes(),
            to_snap.root,
            from_gen.unwrap_or(0),
            &mut |_| {},
            &mut |e| blocks.push((e.vstart, e.len())),
        )?;
        if let Some(from_gen) = from_gen {
            let mut cursor = None;
            loop {
                let deaths = inner
                    .meta
                    .deaths(uid, from_gen, to_snap.gen, cursor, PAGE)?;
                blocks.extend(
                    deaths
                        .iter()
                        .filter(|d| d.birth <= from_gen)
                        .map(|d| (d.vstart, d.run.len)),
                );
                if deaths.len() < PAGE {
                    break;
                }
                cursor = deaths.last().map(|d| (d.death, d.run.start));
            }
        }
        blocks.sort_unstable();
        let mut out: Vec<Range<u64>> = Vec::new();
        for (start, len) in blocks {
            let (s, e) = (start * BLOCK_SIZE, (start + len) * BLOCK_SIZE);
            match out.last_mut() {
                Some(last) if last.end >= s => last.end = last.end.max(e),
                _ => out.push(s..e),
            }
        }
        Ok(out)
    }
}
