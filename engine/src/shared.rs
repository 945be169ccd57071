//! What a pool shares with its clones and every volume handle ([`Inner`]):
//! the catalog and the journal's pending operations ([`State`]), the
//! allocator, the journal ring, the node cache, the deferred frees, the
//! writes in flight and the locks over them, and the helpers every
//! operation uses on them. The operations themselves live with what they
//! do: `crate::commit`, `crate::checkpoint`, `crate::space`,
//! `crate::volume`, and the public face, `crate::pool`.
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
//! `gates` (`crate::gate`) is a leaf too: a gate is looked up and cloned
//! (under `state` at most), and called with no lock held. `fences`
//! (`crate::fence`) likewise: looked up and cloned, under `state` at most.
//!
//! `alloc` is taken on its own, never with another lock held; so is `grow`
//! (one file growth at a time).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::alloc::{Allocator, BitmapChange, NeedChunk, Placement};
use crate::catalog::{Catalog, VolumeState};
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::fence::Fences;
use crate::gate::Gates;
use crate::io::{Backend, BufPool};
use crate::iostats::IoStats;
use crate::journal::{Death, Op, Ring};
use crate::meta::{Batch, Meta, SnapshotRecord, Superblock, VolumeRecord};
use crate::reclaim::Reclaim;
use crate::tree::cache::NodeCache;
use crate::tree::node::Node;
use crate::tree::NodeSource;
use crate::write_behind::WriteBehind;
use crate::{SnapshotInfo, VolumeInfo, BLOCK_SIZE};

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

/// The state of one open pool, shared by every [`crate::Pool`] clone and
/// [`crate::Volume`] handle on it.
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
    /// timer tick ([`crate::Pool::maintenance_wanted`]).
    pub(crate) wanted: tokio::sync::Notify,
    /// A checkpoint was asked for (overlays or the journal filling up).
    pub(crate) checkpoint_wanted: AtomicBool,
    /// Held across a partial-block read-modify-write so two writers to
    /// different bytes of one block cannot lose each other's bytes.
    rmw_locks: Vec<tokio::sync::Mutex<()>>,
    pub budget: Budget,
    budget_total: u64,
    pub max_size: Option<u64>,
    pub(crate) closed: AtomicBool,
    /// Why the pool stopped accepting writes, once it has.
    failed: Mutex<Option<String>>,
    /// Volume deletions a crash interrupted, to finish.
    pub(crate) unfinished: Mutex<Vec<Unfinished>>,
    /// Bytes read ahead for sequential streams.
    pub read_ahead: AtomicU64,
    /// Of those, bytes a read then used.
    pub read_ahead_used: AtomicU64,
    /// Writes acknowledged and still on their way to the disk.
    pub behind: Arc<WriteBehind>,
    /// Gates of volumes not all local yet (`crate::gate`).
    pub(crate) gates: Gates,
    /// Volumes made read-only by their owner (`crate::fence`).
    pub(crate) fences: Fences,
    /// Each volume's I/O counters, by uid (`iostats.rs`).
    pub io_stats: Mutex<std::collections::HashMap<u64, Arc<IoStats>>>,
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
    /// Allocations and frees, in order, for the persisted bitmap.
    pub changes: Vec<BitmapChange>,
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
                    .push(BitmapChange::Alloc(Run::new(*pstart, crcs.len() as u64)));
                self.data_blocks += crcs.len() as u64;
            }
            Op::Free { run, .. } => self.changes.push(BitmapChange::Free(*run)),
            Op::Dead(d) => self.deaths.push(*d),
            Op::Unmap { .. } => {}
        }
    }
}

/// What a checkpoint persists besides the maps.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    pub changes: Vec<BitmapChange>,
    pub deaths: Vec<Death>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    pub unfinished: Vec<Unfinished>,
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
            gates: Gates::default(),
            fences: Fences::default(),
            io_stats: Mutex::default(),
            #[cfg(feature = "test-seams")]
            faults: p.faults,
        }
    }

    pub(crate) fn budget_total(&self) -> u64 {
        self.budget_total
    }
}

/// A deletion a crash interrupted.
pub(crate) enum Unfinished {
    Volume(VolumeRecord, Vec<SnapshotRecord>),
    Snapshot { uid: u64, gen: u64 },
}
