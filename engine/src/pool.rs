//! The pool: volumes, snapshots and clones over one data file, and the
//! state every volume handle shares.
//!
//! # Locks
//!
//! Taken in this order, never the other way round:
//!
//! 1. `control` (async): one control operation or checkpoint at a time.
//! 2. a volume's `install` lock (async, `crate::catalog`).
//! 3. `commit` (async): one journal commit at a time; owns the ring.
//! 4. `state`: the catalog, the generation, the journal's pending
//!    operations. In-memory work only: no I/O and no metadata reads happen
//!    under it.
//! 5. `reclaim`, then leaf locks: the node cache's shards, the write-behind
//!    flights, the buffer pool.
//!
//! `alloc` is taken on its own, never with another lock held; so is `grow`
//! (one file growth at a time).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::alloc::{Allocator, NeedChunk, Placement};
use crate::catalog::{Catalog, VolumeState};
use crate::checkpoint::Extra;
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::io::{Backend, BufPool};
use crate::journal::{Death, Op, Ring};
use crate::meta::{Batch, Meta, Origin, SnapshotRecord, Superblock, VolumeRecord};
use crate::name::validate_name;
use crate::reclaim::Reclaim;
use crate::tree::cache::NodeCache;
use crate::tree::node::Node;
use crate::tree::NodeSource;
use crate::write_behind::WriteBehind;
use crate::{PoolStats, SnapshotInfo, Volume, VolumeInfo, BLOCK_SIZE};

/// Stripes of the read-modify-write locks for partial-block writes.
const RMW_STRIPES: usize = 64;
/// Blocks awaiting deferred free (64 MiB) past which an early commit is
/// asked for, however small the data file.
const COMMIT_PRESSURE: u64 = 16 * 1024;
/// Journal bytes pending past which an install commits first: bounds one
/// record.
pub(crate) const MAX_PENDING_BYTES: usize = 4 << 20;
/// Data blocks mapped by pending operations (256 MiB) past which a commit
/// is asked for: bounds what replay checks of the last record.
const MAX_PENDING_DATA: u64 = 64 * 1024;

/// How the metadata memory budget (`--meta-cache`) is shared out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub nodes: usize,
    /// Overlays past this ask for a checkpoint ...
    pub overlay_soft: usize,
    /// ... and past this, writers run one themselves before they go on.
    pub overlay_hard: usize,
    pub alloc_chunks: usize,
    pub sled: u64,
}

impl Budget {
    pub(crate) fn new(total: u64) -> Self {
        let total = total.max(4 << 20) as usize;
        Budget {
            nodes: total / 2,
            overlay_soft: total / 4,
            overlay_hard: total / 4 + total / 8,
            alloc_chunks: (total / 16) / (8 << 10),
            sled: (total / 16) as u64,
        }
    }
}

/// A storage pool: one data file and its metadata. Cheap to clone; every
/// clone and every [`Volume`] handle shares the same state.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub root: PathBuf,
    pub io: Backend,
    /// Recycled I/O buffers for the data path.
    pub bufs: Arc<BufPool>,
    /// The data file, for growing it (I/O goes through `io`).
    pub(crate) file: File,
    pub meta: Meta,
    pub cache: NodeCache,
    pub state: Mutex<State>,
    pub alloc: Mutex<Allocator>,
    pub reclaim: Mutex<Reclaim>,
    pub(crate) commit: tokio::sync::Mutex<Ring>,
    pub(crate) control: tokio::sync::Mutex<()>,
    pub(crate) grow: tokio::sync::Mutex<()>,
    /// Notified when a commit or a checkpoint should run before the next
    /// timer tick ([`Pool::maintenance_wanted`]).
    pub(crate) wanted: tokio::sync::Notify,
    /// A checkpoint was asked for (overlays or the journal filling up).
    pub(crate) checkpoint_wanted: AtomicBool,
    /// Held across a partial-block read-modify-write so two writers to
    /// different bytes of one block cannot lose each other's bytes.
    rmw_locks: Vec<tokio::sync::Mutex<()>>,
    pub budget: Budget,
    budget_total: u64,
    pub max_size: Option<u64>,
    closed: AtomicBool,
    /// Why the pool stopped accepting writes, once it has.
    failed: Mutex<Option<String>>,
    /// Volume deletions a crash interrupted, to finish.
    pub(crate) unfinished: Mutex<Vec<crate::space::Unfinished>>,
    /// Bytes read ahead for sequential streams.
    pub read_ahead: AtomicU64,
    /// Of those, bytes a read then used.
    pub read_ahead_used: AtomicU64,
    /// Writes acknowledged and still on their way to the disk.
    pub behind: Arc<WriteBehind>,
    #[cfg(feature = "test-seams")]
    pub faults: Option<Arc<crate::io::Faults>>,
}

pub(crate) struct State {
    pub sb: Superblock,
    pub catalog: Catalog,
    /// Journal operations since the last commit began.
    pub pending: Pending,
    /// Effects of the records committed since the last checkpoint began,
    /// for the next one to write.
    pub committed: Committed,
}

/// Journal operations not yet in a record, and their effects.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub payload: Vec<u8>,
    /// Allocations (`true`) and frees, in order, for the persisted bitmap.
    pub changes: Vec<(Run, bool)>,
    pub deaths: Vec<Death>,
    /// Data blocks the operations map.
    pub data_blocks: u64,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    pub(crate) fn push(&mut self, op: &Op) {
        op.encode(&mut self.payload);
        match op {
            Op::Map { pstart, crcs, .. } => {
                self.changes
                    .push((Run::new(*pstart, crcs.len() as u64), true));
                self.data_blocks += crcs.len() as u64;
            }
            Op::Free { run, .. } => self.changes.push((*run, false)),
            Op::Dead(d) => self.deaths.push(*d),
            Op::Unmap { .. } => {}
        }
    }
}

/// What a checkpoint persists besides the maps.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    pub changes: Vec<(Run, bool)>,
    pub deaths: Vec<Death>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Largest volume size accepted (1 PiB): far beyond any real thin volume,
/// far below where byte offsets could overflow.
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(Error::InvalidArgument(format!(
            "invalid volume size {size}: must be a positive multiple of {BLOCK_SIZE} bytes"
        )));
    }
    if size > MAX_VOLUME_SIZE {
        return Err(Error::InvalidArgument(format!(
            "invalid volume size {size}: the largest volume is 1 PiB"
        )));
    }
    Ok(())
}

/// Extends the data file from `from` to `to` bytes, reserving the space
/// where the filesystem supports it.
fn grow_file(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = (to - from) as libc::off_t;
    // SAFETY: fallocate on an open descriptor with a valid range.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, from as libc::off_t, len) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return file.set_len(to);
    }
    Err(e)
}

/// Reads map nodes through the cache.
pub(crate) struct Nodes<'a> {
    pub cache: &'a NodeCache,
    pub meta: &'a Meta,
}

impl NodeSource for Nodes<'_> {
    fn node(&self, id: u64) -> Result<Arc<Node>> {
        self.cache.get_or_load(id, || self.meta.node(id))
    }
}

impl Inner {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Refuses changes once the pool has failed.
    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        match &*self.failed.lock() {
            Some(reason) => Err(Error::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Stops accepting writes: a data sync or a metadata write failed, and
    /// after a failed `fdatasync` the kernel may have dropped the data it
    /// was to write, so retrying as if nothing happened could acknowledge
    /// writes that are gone. Returns the error to report.
    pub(crate) fn fail(&self, what: &str, e: Error) -> Error {
        let reason = format!("{what}: {e}");
        let mut failed = self.failed.lock();
        if failed.is_none() {
            tracing::error!(
                root = %self.root.display(),
                "{reason}; the pool refuses writes from now on (restart to recover from the last commit)"
            );
            *failed = Some(reason.clone());
        }
        Error::Failed { reason }
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    pub(crate) fn nodes(&self) -> Nodes<'_> {
        Nodes {
            cache: &self.cache,
            meta: &self.meta,
        }
    }

    pub(crate) fn rmw_lock(&self, uid: u64, vblock: u64) -> usize {
        (uid.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ vblock) as usize % RMW_STRIPES
    }

    pub(crate) fn rmw_stripe(&self, i: usize) -> &tokio::sync::Mutex<()> {
        &self.rmw_locks[i]
    }

    /// Runs `f` on the allocator, loading the bitmap chunks it asks for
    /// (outside the allocator's lock) until it has what it needs.
    pub(crate) fn with_alloc<T>(
        &self,
        mut f: impl FnMut(&mut Allocator) -> Result<T, NeedChunk>,
    ) -> Result<T> {
        loop {
            let need = {
                let mut a = self.alloc.lock();
                match f(&mut a) {
                    Ok(t) => return Ok(t),
                    Err(NeedChunk(idx)) => idx,
                }
            };
            self.load_chunk(need)?;
        }
    }

    /// Brings bitmap chunk `idx` into the allocator.
    pub(crate) fn load_chunk(&self, idx: u64) -> Result<()> {
        let image = self.meta.chunk(idx)?;
        let mut a = self.alloc.lock();
        let image = image.unwrap_or_else(|| a.blank_image(idx));
        a.load(idx, image);
        Ok(())
    }

    /// Gives blocks nothing references back to the allocator.
    pub(crate) fn release(&self, runs: &[Run]) {
        for &run in runs {
            if let Err(e) = self.with_alloc(|a| a.release(run)) {
                // The chunk could not be read: the blocks stay busy (space
                // is lost until the next open, never handed out twice).
                tracing::error!("cannot release pool blocks {run:?}: {e}");
            }
        }
    }

    /// Allocates `n` blocks, growing the data file if needed; `None` when
    /// the pool is full.
    ///
    /// Growth reserves the filesystem's space at once (`fallocate`) where
    /// the filesystem can, so a full filesystem is found here, before any
    /// write is acknowledged, and never by a write in flight (see
    /// [`crate::write_behind`]).
    pub(crate) async fn allocate(&self, n: u64) -> Result<Option<Vec<Run>>> {
        loop {
            match self.with_alloc(|a| a.allocate(n))? {
                Placement::Runs(runs) => return Ok(Some(runs)),
                Placement::Full => return Ok(None),
                Placement::Grow(to) => self.grow_to(to).await?,
            }
        }
    }

    async fn grow_to(&self, to: u64) -> Result<()> {
        let _one = self.grow.lock().await;
        let end = self.alloc.lock().end();
        if end >= to {
            return Ok(());
        }
        grow_file(&self.file, end * BLOCK_SIZE, to * BLOCK_SIZE).map_err(Error::from_io)?;
        self.alloc.lock().grown(to);
        Ok(())
    }

    /// Asks for a commit or a checkpoint when pending work piles up. Call
    /// with the state after changing it.
    pub(crate) fn note_pressure(&self, st: &State) {
        let frees = self.reclaim.lock().pending_blocks();
        let file_blocks = self.alloc.try_lock().map_or(0, |a| a.end());
        if st.catalog.overlay_bytes() > self.budget.overlay_soft {
            self.checkpoint_wanted.store(true, Ordering::Release);
            self.wanted.notify_one();
        } else if frees >= COMMIT_PRESSURE.max(file_blocks / 8)
            || st.pending.data_blocks >= MAX_PENDING_DATA
            || st.pending.payload.len() >= MAX_PENDING_BYTES / 2
        {
            self.wanted.notify_one();
        }
    }

    /// Blocks until there is room for more changes: commits when the
    /// pending journal operations reach a record's bound, and checkpoints
    /// when the overlays reach their hard budget. Call before an install,
    /// holding no lock.
    pub(crate) async fn make_room(&self) -> Result<()> {
        let (pending, overlays) = {
            let st = self.state.lock();
            (st.pending.payload.len(), st.catalog.overlay_bytes())
        };
        if overlays > self.budget.overlay_hard {
            self.checkpoint().await?;
        } else if pending >= MAX_PENDING_BYTES {
            self.commit().await?;
        }
        Ok(())
    }

    /// One control operation or checkpoint at a time: the guard. Deletions
    /// a crash interrupted are finished first, so no operation ever sees a
    /// snapshot half freed.
    pub(crate) async fn control(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.control.lock().await;
        if !self.unfinished.lock().is_empty() {
            self.finish_deletions_locked().await?;
        }
        Ok(guard)
    }

    /// Writes `batch` and makes it durable; a failure stops the pool's
    /// writes.
    pub(crate) fn write_meta(&self, batch: Batch) -> Result<()> {
        #[cfg(feature = "test-seams")]
        if self.faults.as_ref().is_some_and(|f| f.meta_fails()) {
            return Err(self.fail(
                "metadata write failed",
                Error::from_io(std::io::Error::from_raw_os_error(libc::EIO)),
            ));
        }
        self.meta
            .apply(batch)
            .and_then(|()| self.meta.flush())
            .map_err(|e| self.fail("metadata write failed", e))
    }
}

impl Pool {
    /// The directory the pool lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Creates an empty (thin) volume of `size` bytes.
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name(name)?;
        check_size(size)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let (rec, sb) = {
            let st = inner.state.lock();
            if st.catalog.contains(name) {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: name.into(),
                });
            }
            let uid = st.sb.next_uid;
            let rec = VolumeRecord {
                uid,
                name: name.into(),
                size,
                created: now(),
                root: None,
                shared_upto: 0,
                own_blocks: 0,
                origin: None,
                deleting: false,
                delete_tree: 0,
                delete_cursor: 0,
            };
            let mut sb = st.sb.clone();
            sb.next_uid += 1;
            (rec, sb)
        };
        let mut batch = Batch::new();
        batch.volume(&rec);
        batch.superblock(&sb);
        inner.write_meta(batch)?;
        let mut st = inner.state.lock();
        st.sb.next_uid = sb.next_uid;
        st.catalog.insert(VolumeState::new(rec, Vec::new()));
        Ok(st.volume_info(st.catalog.get(name)?))
    }

    /// Creates a writable volume whose initial contents are the snapshot
    /// `origin_volume@origin_snapshot`. No data is copied.
    pub async fn clone_volume(
        &self,
        name: &str,
        origin_volume: &str,
        origin_snapshot: &str,
    ) -> Result<VolumeInfo> {
        validate_name(name)?;
        validate_name(origin_volume)?;
        validate_name(origin_snapshot)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let (rec, snap, origin_uid, sb) = {
            let st = inner.state.lock();
            if st.catalog.contains(name) {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: name.into(),
                });
            }
            let origin = st.catalog.get(origin_volume)?;
            let mut snap = origin.snapshot(origin_snapshot)?.clone();
            snap.clones += 1;
            let rec = VolumeRecord {
                uid: st.sb.next_uid,
                name: name.into(),
                size: snap.size,
                created: now(),
                root: snap.root,
                shared_upto: snap.gen,
                own_blocks: 0,
                origin: Some(Origin {
                    uid: origin.rec.uid,
                    gen: snap.gen,
                }),
                deleting: false,
                delete_tree: 0,
                delete_cursor: 0,
            };
            let mut sb = st.sb.clone();
            sb.next_uid += 1;
            (rec, snap, origin.rec.uid, sb)
        };
        let mut batch = Batch::new();
        batch.volume(&rec);
        batch.snapshot(origin_uid, &snap);
        batch.superblock(&sb);
        inner.write_meta(batch)?;
        let mut st = inner.state.lock();
        st.sb.next_uid = sb.next_uid;
        if let Some(v) = st.catalog.by_uid_mut(origin_uid) {
            if let Some(s) = v.snapshots.iter_mut().find(|s| s.gen == snap.gen) {
                s.clones = snap.clones;
            }
        }
        st.catalog.insert(VolumeState::new(rec, Vec::new()));
        Ok(st.volume_info(st.catalog.get(name)?))
    }

    /// Deletes a volume and all its snapshots. Refused while a clone
    /// depends on one of its snapshots. The volume disappears at once;
    /// its space is reclaimed before this returns (and, if a crash
    /// interrupts that, when the pool next opens).
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let rec = {
            let mut st = inner.state.lock();
            let v = st.catalog.get(name)?;
            if let Some(s) = v.snapshots.iter().find(|s| s.clones > 0) {
                return Err(Error::InUse(format!(
                    "volume {name} cannot be deleted: snapshot {name}@{} has {} clone(s); delete them first",
                    s.name, s.clones
                )));
            }
            let v = st.catalog.get_mut(name)?;
            v.rec.deleting = true;
            v.rec.clone()
        };
        // The volume is hidden from now on. The checkpoint merges what its
        // overlay holds and makes the mark durable, under its uid: the
        // name is free again once it is.
        let mut extra = Extra::default();
        extra.records.push(rec);
        extra.batch.remove_volume(name);
        inner.checkpoint_locked(extra).await?;
        let v = inner
            .state
            .lock()
            .catalog
            .remove(name)
            .expect("marked above");
        inner.reclaim_volume(v.rec, v.snapshots).await
    }

    /// Renames a volume. Clones keep pointing at their origin under its new
    /// name; open handles on the old name stop working. The rename is one
    /// atomic metadata write: after a crash the volume has either name,
    /// never both.
    pub async fn rename_volume(&self, name: &str, new_name: &str) -> Result<VolumeInfo> {
        validate_name(name)?;
        validate_name(new_name)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let rec = {
            let st = inner.state.lock();
            let v = st.catalog.get(name)?;
            if st.catalog.contains(new_name) {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: new_name.into(),
                });
            }
            let mut rec = v.rec.clone();
            rec.name = new_name.into();
            rec
        };
        let mut batch = Batch::new();
        batch.remove_volume(name);
        batch.volume(&rec);
        inner.write_meta(batch)?;
        let mut st = inner.state.lock();
        let mut v = st.catalog.remove(name).expect("checked above");
        v.rec.name = new_name.into();
        st.catalog.insert(v);
        Ok(st.volume_info(st.catalog.get(new_name)?))
    }

    /// Grows a volume to `size` bytes. Shrinking is refused.
    pub async fn grow_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name(name)?;
        check_size(size)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let rec = {
            let st = inner.state.lock();
            let v = st.catalog.get(name)?;
            if size < v.rec.size {
                return Err(Error::InvalidArgument(format!(
                    "volume {name} is {} bytes; shrinking to {size} is not supported",
                    v.rec.size
                )));
            }
            let mut rec = v.rec.clone();
            rec.size = size;
            rec
        };
        let mut batch = Batch::new();
        batch.volume(&rec);
        inner.write_meta(batch)?;
        let mut st = inner.state.lock();
        st.catalog.get_mut(name)?.rec.size = size;
        Ok(st.volume_info(st.catalog.get(name)?))
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let st = self.inner.state.lock();
        st.catalog.iter().map(|v| st.volume_info(v)).collect()
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let st = self.inner.state.lock();
        Ok(st.volume_info(st.catalog.get(name)?))
    }

    /// Freezes the volume's current contents as snapshot `name` (generated
    /// when `None`). No data is copied: the snapshot shares the volume's
    /// map, which the volume then changes copy-on-write.
    pub async fn create_snapshot(&self, volume: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        validate_name(volume)?;
        if let Some(n) = name {
            validate_name(n)?;
        }
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let install = {
            let st = inner.state.lock();
            let v = st.catalog.get(volume)?;
            if let Some(n) = name {
                if v.snapshots.iter().any(|s| s.name == n) {
                    return Err(Error::AlreadyExists {
                        kind: "snapshot",
                        name: format!("{volume}@{n}"),
                    });
                }
            }
            v.install.clone()
        };
        // Most of the volume's changes are merged while writes go on; then
        // writes to it pause for a second, short checkpoint, so the
        // snapshot holds exactly what was written before it.
        inner.checkpoint_locked(Default::default()).await?;
        let _writes = install.lock().await;
        inner.checkpoint_locked(Default::default()).await?;
        let (rec, snap, sb) = {
            let st = inner.state.lock();
            let v = st.catalog.get(volume)?;
            let name = match name {
                Some(n) => n.to_string(),
                None => {
                    let base = format!("snap-{}", now());
                    let mut n = base.clone();
                    let mut i = 1;
                    while v.snapshots.iter().any(|s| s.name == n) {
                        i += 1;
                        n = format!("{base}-{i}");
                    }
                    n
                }
            };
            let gen = st.sb.gen;
            let snap = SnapshotRecord {
                name,
                gen,
                root: v.rec.root,
                created: now(),
                size: v.rec.size,
                clones: 0,
                allocated_blocks: v.rec.own_blocks,
                deleting: false,
            };
            let mut rec = v.rec.clone();
            rec.shared_upto = gen;
            rec.own_blocks = 0;
            let mut sb = st.sb.clone();
            sb.gen += 1;
            (rec, snap, sb)
        };
        let mut batch = Batch::new();
        batch.snapshot(rec.uid, &snap);
        batch.volume(&rec);
        batch.superblock(&sb);
        inner.write_meta(batch)?;
        let mut st = inner.state.lock();
        st.sb.gen = sb.gen;
        let v = st.catalog.get_mut(volume)?;
        v.rec.shared_upto = rec.shared_upto;
        v.rec.own_blocks = 0;
        v.snapshots.push(snap.clone());
        let v = st.catalog.get(volume)?;
        Ok(st.snapshot_info(v, &snap))
    }

    /// Deletes a snapshot. Blocks only it still uses are freed. Refused
    /// while clones depend on the snapshot.
    pub async fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        validate_name(volume)?;
        validate_name(snapshot)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        let (uid, snap, install) = {
            let st = inner.state.lock();
            let v = st.catalog.get(volume)?;
            let snap = v.snapshot(snapshot)?.clone();
            if snap.clones > 0 {
                return Err(Error::InUse(format!(
                    "snapshot {volume}@{snapshot} has {} clone(s); delete them first",
                    snap.clones
                )));
            }
            (v.rec.uid, snap, v.install.clone())
        };
        inner.delete_snapshot_locked(uid, snap, &install).await
    }

    /// A volume's snapshots, oldest first.
    pub fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        Ok(self.volume(volume)?.snapshots)
    }

    /// A read-write handle on a volume.
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        validate_name(name)?;
        self.inner.check_open()?;
        let uid = self.inner.state.lock().catalog.get(name)?.rec.uid;
        Ok(Volume::new(self.inner.clone(), name, uid, None))
    }

    /// A read-only handle on a snapshot.
    pub fn open_snapshot(&self, volume: &str, snapshot: &str) -> Result<Volume> {
        validate_name(volume)?;
        validate_name(snapshot)?;
        self.inner.check_open()?;
        let st = self.inner.state.lock();
        let v = st.catalog.get(volume)?;
        let gen = v.snapshot(snapshot)?.gen;
        Ok(Volume::new(
            self.inner.clone(),
            volume,
            v.rec.uid,
            Some((snapshot, gen)),
        ))
    }

    /// Makes everything written so far durable: one journal record and
    /// one sync of the data file.
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.commit().await
    }

    /// Merges the changes since the last checkpoint into the on-disk maps
    /// and trims the journal. Runs by itself when the overlays or the
    /// journal fill up; the daemon also runs it on a timer.
    pub async fn checkpoint(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.checkpoint().await
    }

    /// Commits, and checkpoints if one was asked for: what a timer calls.
    pub async fn maintain(&self) -> Result<()> {
        self.inner.check_open()?;
        if self.inner.checkpoint_wanted.swap(false, Ordering::AcqRel)
            || self.inner.journal_filling().await
        {
            self.inner.checkpoint().await
        } else {
            self.inner.commit().await
        }
    }

    /// Completes when work piles up faster than the caller's timer
    /// handles it: overwritten blocks waiting for a commit to be reused,
    /// or changes waiting for a checkpoint. Run [`Pool::maintain`] then.
    pub async fn maintenance_wanted(&self) {
        self.inner.wanted.notified().await
    }

    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let (used, file_size) = {
            let a = inner.alloc.lock();
            (a.used() * BLOCK_SIZE, a.end() * BLOCK_SIZE)
        };
        let overlays = inner.state.lock().catalog.overlay_bytes() as u64;
        let (cached, hits, misses) = inner.cache.stats();
        PoolStats {
            used,
            file_size,
            max_size: inner.max_size,
            io: inner.io.mode().to_string(),
            read_ahead: inner.read_ahead.load(Ordering::Relaxed),
            read_ahead_used: inner.read_ahead_used.load(Ordering::Relaxed),
            failed: inner.failure(),
            meta_cache: crate::types::MetaCacheStats {
                budget: inner.budget_total(),
                nodes: cached,
                overlays,
                hits,
                misses,
            },
            metadata_size: inner.meta.size_on_disk(),
        }
    }

    /// How many keys of each kind the metadata store holds (a test seam:
    /// `N` map nodes, `D`/`E` dead runs and nodes, `P` snapshots, `V`/`X`
    /// volumes, `G` nodes awaiting deletion, `B` bitmap chunks).
    #[cfg(feature = "test-seams")]
    pub fn metadata_keys(&self) -> std::collections::BTreeMap<char, usize> {
        self.inner.meta.key_counts()
    }

    /// Commits, checkpoints, and refuses every later operation with
    /// [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let r = if inner.failure().is_some() {
            Ok(())
        } else {
            inner.checkpoint().await
        };
        inner.closed.store(true, Ordering::Release);
        r
    }
}

impl State {
    pub(crate) fn snapshot_info(&self, v: &VolumeState, s: &SnapshotRecord) -> SnapshotInfo {
        SnapshotInfo {
            volume: v.rec.name.clone(),
            name: s.name.clone(),
            size: s.size,
            allocated: s.allocated_blocks * BLOCK_SIZE,
            created: s.created,
            clones: s.clones,
        }
    }

    pub(crate) fn volume_info(&self, v: &VolumeState) -> VolumeInfo {
        let own: u64 =
            v.rec.own_blocks + v.snapshots.iter().map(|s| s.allocated_blocks).sum::<u64>();
        VolumeInfo {
            name: v.rec.name.clone(),
            size: v.rec.size,
            allocated: own * BLOCK_SIZE,
            created: v.rec.created,
            origin: v
                .rec
                .origin
                .as_ref()
                .and_then(|o| self.catalog.describe(o.uid, o.gen)),
            snapshots: v
                .snapshots
                .iter()
                .map(|s| self.snapshot_info(v, s))
                .collect(),
        }
    }
}

/// The pieces of [`Inner`] that open assembles.
pub(crate) struct Parts {
    pub root: PathBuf,
    pub io: Backend,
    pub file: File,
    pub meta: Meta,
    pub state: State,
    pub alloc: Allocator,
    pub ring: Ring,
    pub budget: Budget,
    pub budget_total: u64,
    pub max_size: Option<u64>,
    pub unfinished: Vec<crate::space::Unfinished>,
    #[cfg(feature = "test-seams")]
    pub faults: Option<Arc<crate::io::Faults>>,
}

impl Inner {
    pub(crate) fn assemble(p: Parts) -> Inner {
        Inner {
            root: p.root,
            io: p.io,
            bufs: Arc::default(),
            file: p.file,
            meta: p.meta,
            cache: NodeCache::new(p.budget.nodes),
            state: Mutex::new(p.state),
            alloc: Mutex::new(p.alloc),
            reclaim: Mutex::default(),
            commit: tokio::sync::Mutex::new(p.ring),
            control: tokio::sync::Mutex::new(()),
            grow: tokio::sync::Mutex::new(()),
            wanted: tokio::sync::Notify::new(),
            checkpoint_wanted: AtomicBool::new(false),
            rmw_locks: (0..RMW_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            budget: p.budget,
            budget_total: p.budget_total,
            max_size: p.max_size,
            closed: AtomicBool::new(false),
            failed: Mutex::new(None),
            unfinished: Mutex::new(p.unfinished),
            read_ahead: AtomicU64::new(0),
            read_ahead_used: AtomicU64::new(0),
            behind: Arc::default(),
            #[cfg(feature = "test-seams")]
            faults: p.faults,
        }
    }

    pub(crate) fn budget_total(&self) -> u64 {
        self.budget_total
    }
}
