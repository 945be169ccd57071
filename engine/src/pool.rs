//! The pool: volumes, snapshots and clones over one data file, and the
//! commit that makes their metadata durable.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use parking_lot::Mutex;

use crate::alloc::{Allocator, Run};
use crate::error::{Error, Result};
use crate::io::{Backend, BufPool};
use crate::layer::{Layer, Layers, Mapping};
use crate::meta::{
    Change, LayerRecord, Meta, Origin, SnapshotRecord, Superblock, VolumeRecord, MAP_GROUP,
};
use crate::name::validate_name;
use crate::reclaim::Reclaim;
use crate::write_behind::WriteBehind;
use crate::{PoolConfig, PoolStats, SnapshotInfo, Volume, VolumeInfo, BLOCK_SIZE};

/// Stripes of the read-modify-write locks for partial-block writes.
const RMW_STRIPES: usize = 64;
/// Blocks awaiting deferred free (64 MiB) past which an early commit is
/// asked for, however small the data file.
const COMMIT_PRESSURE: u64 = 16 * 1024;

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
    file: File,
    meta: Arc<Meta>,
    pub state: Mutex<State>,
    /// Serialises commits: each one must see every change acknowledged
    /// before it started.
    commit_lock: tokio::sync::Mutex<()>,
    /// Notified when enough blocks await deferred free that a commit
    /// should run before the next timer tick ([`Pool::commit_wanted`]).
    commit_wanted: tokio::sync::Notify,
    /// Held across a partial-block read-modify-write so two writers to
    /// different bytes of one block cannot lose each other's bytes.
    rmw_locks: Vec<tokio::sync::Mutex<()>>,
    max_size: Option<u64>,
    closed: AtomicBool,
    /// Bytes read ahead for sequential streams.
    pub read_ahead: AtomicU64,
    /// Of those, bytes a read then used.
    pub read_ahead_used: AtomicU64,
    /// Writes acknowledged and still on their way to the disk.
    pub behind: Arc<WriteBehind>,
}

pub(crate) struct State {
    sb: Superblock,
    pub volumes: BTreeMap<String, VolumeRecord>,
    pub layers: Layers,
    pub alloc: Allocator,
    pub reclaim: Reclaim,
    pub dirty: Dirty,
}

/// What changed since the last commit began.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    superblock: bool,
    volumes: BTreeSet<String>,
    layers: BTreeSet<u64>,
    dropped: BTreeSet<u64>,
    /// `(layer, map group)` pairs whose map changed.
    maps: HashSet<(u64, u64)>,
}

impl Dirty {
    /// Notes that block `vblock` of `layer` changed its mapping.
    pub fn mark_block(&mut self, layer: u64, vblock: u64) {
        self.maps.insert((layer, vblock / MAP_GROUP));
    }

    /// Notes that every block of `vblocks` of `layer` changed its mapping.
    pub fn mark_blocks(&mut self, layer: u64, vblocks: Range<u64>) {
        if !vblocks.is_empty() {
            let groups = vblocks.start / MAP_GROUP..=(vblocks.end - 1) / MAP_GROUP;
            self.maps.extend(groups.map(|g| (layer, g)));
        }
    }
}

fn now() -> u64 {
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

fn open_data_file(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "{} does not support O_DIRECT; using the page cache (flushes still fsync)",
                path.display()
            );
            Ok(opts.open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Extends the data file from `from` to `to` bytes, reserving the space
/// where the filesystem supports it.
fn grow(file: &File, from: u64, to: u64) -> std::io::Result<()> {
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

/// Coalesces sorted block numbers into runs.
pub(crate) fn runs_of(sorted: impl IntoIterator<Item = u64>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for b in sorted {
        match runs.last_mut() {
            Some((s, l)) if *s + *l == b => *l += 1,
            _ => runs.push((b, 1)),
        }
    }
    runs
}

impl State {
    fn next_id(&mut self) -> u64 {
        let id = self.sb.next_id;
        self.sb.next_id += 1;
        self.dirty.superblock = true;
        id
    }

    pub fn volume(&self, name: &str) -> Result<&VolumeRecord> {
        self.volumes
            .get(name)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut VolumeRecord> {
        self.dirty.volumes.insert(name.to_string());
        self.volumes
            .get_mut(name)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    fn new_layer(&mut self, parent: Option<u64>) -> u64 {
        let id = self.next_id();
        if let Some(p) = parent {
            self.layers.get_mut(p).children += 1;
        }
        self.layers.0.insert(id, Layer::new(parent));
        self.dirty.layers.insert(id);
        id
    }

    /// Drops a layer and defers the free of its blocks.
    fn drop_layer(&mut self, id: u64) {
        let layer = self.layers.0.remove(&id).expect("dropping a known layer");
        if let Some(p) = layer.parent {
            self.layers.get_mut(p).children -= 1;
        }
        let mut blocks: Vec<u64> = layer
            .map
            .values()
            .filter_map(|m| match m {
                Mapping::Data { pblock, .. } => Some(*pblock),
                Mapping::Zero => None,
            })
            .collect();
        blocks.sort_unstable();
        for run in runs_of(blocks) {
            self.reclaim.free(run);
        }
        self.dirty.layers.remove(&id);
        self.dirty.dropped.insert(id);
    }

    fn snapshot_info(&self, vol: &VolumeRecord, s: &SnapshotRecord) -> SnapshotInfo {
        let layer = self.layers.get(s.layer);
        SnapshotInfo {
            volume: vol.name.clone(),
            name: s.name.clone(),
            size: s.size,
            allocated: layer.data_blocks * BLOCK_SIZE,
            created: s.created,
            // Every snapshot layer has its own volume's next layer as a child.
            clones: layer.children.saturating_sub(1),
        }
    }

    fn volume_info(&self, vol: &VolumeRecord) -> VolumeInfo {
        let own_blocks: u64 = std::iter::once(vol.head)
            .chain(vol.snapshots.iter().map(|s| s.layer))
            .map(|l| self.layers.get(l).data_blocks)
            .sum();
        VolumeInfo {
            name: vol.name.clone(),
            size: vol.size,
            allocated: own_blocks * BLOCK_SIZE,
            created: vol.created,
            origin: vol
                .origin
                .as_ref()
                .map(|o| format!("{}@{}", o.volume, o.snapshot)),
            snapshots: vol
                .snapshots
                .iter()
                .map(|s| self.snapshot_info(vol, s))
                .collect(),
        }
    }

    /// Collects the metadata changes since the last commit, with their
    /// current values, and clears the dirty marks.
    fn take_change(&mut self) -> Change {
        let dirty = std::mem::take(&mut self.dirty);
        let mut change = Change::default();
        if dirty.superblock {
            change.superblock = Some(self.sb.clone());
        }
        for name in dirty.volumes {
            let rec = self.volumes.get(&name).cloned();
            change.volumes.push((name, rec));
        }
        for id in dirty.layers {
            if let Some(l) = self.layers.0.get(&id) {
                change
                    .layers
                    .push((id, Some(LayerRecord { parent: l.parent })));
            }
        }
        for &(layer, group) in &dirty.maps {
            if let Some(l) = self.layers.0.get(&layer) {
                let first = group * MAP_GROUP;
                let entries = l
                    .map
                    .range(first..first + MAP_GROUP)
                    .map(|(&vb, &m)| ((vb - first) as u8, m))
                    .collect();
                change.maps.push((layer, group, entries));
            }
        }
        for id in dirty.dropped {
            change.layers.push((id, None));
        }
        change
    }

    /// Puts back the dirty marks of a change that failed to commit.
    fn remark(&mut self, change: &Change) {
        self.dirty.superblock |= change.superblock.is_some();
        for (name, _) in &change.volumes {
            self.dirty.volumes.insert(name.clone());
        }
        for (id, rec) in &change.layers {
            match rec {
                Some(_) => self.dirty.layers.insert(*id),
                None => self.dirty.dropped.insert(*id),
            };
        }
        for &(layer, group, _) in &change.maps {
            self.dirty.maps.insert((layer, group));
        }
    }

    fn snapshot<'a>(vol: &'a VolumeRecord, snap: &str) -> Result<&'a SnapshotRecord> {
        vol.snapshots
            .iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| Error::not_found("snapshot", format!("{}@{snap}", vol.name)))
    }
}

impl Inner {
    pub fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub fn rmw_lock(&self, uid: u64, vblock: u64) -> usize {
        (uid.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ vblock) as usize % RMW_STRIPES
    }

    pub fn rmw_stripe(&self, i: usize) -> &tokio::sync::Mutex<()> {
        &self.rmw_locks[i]
    }

    /// Asks for an early commit if frees pile up: blocks a commit would
    /// release are at least [`COMMIT_PRESSURE`] blocks or an eighth of the
    /// data file. Call after recording frees.
    pub fn note_frees(&self, st: &mut State) {
        let threshold = COMMIT_PRESSURE.max(st.alloc.end() / 8);
        if st.reclaim.wants_commit(threshold) {
            self.commit_wanted.notify_one();
        }
    }

    /// Allocates `n` blocks, growing the data file if needed.
    ///
    /// Growth reserves the filesystem's space at once (`fallocate`) where
    /// the filesystem can, so a full filesystem is found here, before any
    /// write is acknowledged, and never by a write in flight (see
    /// [`crate::write_behind`]).
    pub fn allocate(&self, st: &mut State, n: u64) -> Result<Option<Vec<Run>>> {
        let old_end = st.alloc.end();
        let Some((runs, grown)) = st.alloc.allocate(n) else {
            return Ok(None);
        };
        if grown {
            if let Err(e) = grow(
                &self.file,
                old_end * BLOCK_SIZE,
                st.alloc.end() * BLOCK_SIZE,
            ) {
                st.alloc.release_runs(&runs);
                st.alloc.shrink(old_end);
                return Err(Error::from_io(e));
            }
        }
        Ok(Some(runs))
    }

    /// Makes every change acknowledged so far durable.
    ///
    /// Order matters: the change set is captured first (under the state
    /// lock), then the writes in flight at that moment are waited for, then
    /// the data file is synced, then the metadata is written. Any mapping
    /// in the change was installed after its data write completed or while
    /// it was in flight (see [`crate::write_behind`]), so the sync covers
    /// it.
    pub async fn commit(&self) -> Result<()> {
        let _serial = self.commit_lock.lock().await;
        let (change, freed, writes) = {
            let mut st = self.state.lock();
            (
                st.take_change(),
                st.reclaim.begin_commit(),
                self.behind.all(),
            )
        };
        join_all(writes).await;
        if change.is_empty() && freed.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            map_groups = change.maps.len(),
            volumes = change.volumes.len(),
            layers = change.layers.len(),
            freed = freed.len(),
            "commit"
        );
        let started = std::time::Instant::now();
        let (change, result) = self.write_change(change).await;
        tracing::debug!(elapsed = ?started.elapsed(), "commit written");
        let mut st = self.state.lock();
        match result {
            Ok(()) => {
                let released = st.reclaim.commit_done(freed);
                st.alloc.release_runs(&released);
                Ok(())
            }
            Err(e) => {
                tracing::error!("commit failed: {e}");
                st.remark(&change);
                st.reclaim.commit_failed(freed);
                Err(e)
            }
        }
    }

    async fn write_change(&self, change: Change) -> (Change, Result<()>) {
        if let Err(e) = self.io.sync_data().await {
            return (change, Err(e.into()));
        }
        let meta = self.meta.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("ballast-commit".into())
            .spawn(move || {
                let r = meta.commit(&change);
                // Release the metadata before answering, so a close followed by
                // a reopen never finds sled's lock still held by this thread.
                drop(meta);
                let _ = tx.send((change, r));
            });
        if let Err(e) = spawned {
            return (Change::default(), Err(e.into()));
        }
        rx.await.unwrap_or_else(|_| {
            (
                Change::default(),
                Err(Error::Metadata("commit thread died".into())),
            )
        })
    }
}

impl Pool {
    /// Opens (or creates) the pool under `config.root`. Blocking.
    pub fn open(config: PoolConfig) -> Result<Pool> {
        std::fs::create_dir_all(&config.root)?;
        let meta = Meta::open(&config.root.join("meta"))?;
        let loaded = meta.load()?;
        let file = open_data_file(&config.root.join("pool.data"))?;
        let file_blocks = file.metadata()?.len() / BLOCK_SIZE;

        let mut layers = Layers(loaded.layers);
        let parents: Vec<u64> = layers.0.values().filter_map(|l| l.parent).collect();
        for p in parents {
            layers
                .0
                .get_mut(&p)
                .ok_or_else(|| Error::Metadata(format!("layer parent {p} is missing")))?
                .children += 1;
        }
        let mut volumes = BTreeMap::new();
        for v in loaded.volumes {
            let known = |l: u64| layers.0.contains_key(&l);
            if !known(v.head) || !v.snapshots.iter().all(|s| known(s.layer)) {
                return Err(Error::Metadata(format!(
                    "volume {:?} names a missing layer",
                    v.name
                )));
            }
            volumes.insert(v.name.clone(), v);
        }
        let mut used: Vec<u64> = layers
            .0
            .values()
            .flat_map(|l| l.map.values())
            .filter_map(|m| match m {
                Mapping::Data { pblock, .. } => Some(*pblock),
                Mapping::Zero => None,
            })
            .collect();
        used.sort_unstable();
        if used.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Metadata("a pool block is mapped twice".into()));
        }
        let cap = config
            .max_size
            .map_or(u64::MAX / BLOCK_SIZE, |m| m / BLOCK_SIZE);
        let alloc = Allocator::new(&used, file_blocks, cap);

        let io = Backend::start(file.try_clone()?, config.io, config.runtime.as_ref())?;
        tracing::info!(
            root = %config.root.display(),
            volumes = volumes.len(),
            io = %io.mode(),
            "pool open"
        );
        let state = State {
            sb: loaded.superblock,
            volumes,
            layers,
            alloc,
            reclaim: Reclaim::default(),
            dirty: Dirty::default(),
        };
        Ok(Pool {
            inner: Arc::new(Inner {
                root: config.root,
                io,
                bufs: Arc::default(),
                file,
                meta: Arc::new(meta),
                state: Mutex::new(state),
                commit_lock: tokio::sync::Mutex::new(()),
                commit_wanted: tokio::sync::Notify::new(),
                rmw_locks: (0..RMW_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                max_size: config.max_size,
                closed: AtomicBool::new(false),
                read_ahead: AtomicU64::new(0),
                read_ahead_used: AtomicU64::new(0),
                behind: Arc::default(),
            }),
        })
    }

    /// The directory the pool lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Creates an empty (thin) volume of `size` bytes.
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name(name)?;
        check_size(size)?;
        self.add_volume(name, |_| Ok((None, size))).await
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
        self.add_volume(name, |st| {
            let snap = State::snapshot(st.volume(origin_volume)?, origin_snapshot)?;
            let origin = Origin {
                volume: origin_volume.into(),
                snapshot: origin_snapshot.into(),
                layer: snap.layer,
            };
            Ok((Some(origin), snap.size))
        })
        .await
    }

    /// Adds volume `name` with a new head layer, on top of the origin
    /// snapshot's layer when `base` names one, and commits.
    async fn add_volume(
        &self,
        name: &str,
        base: impl FnOnce(&State) -> Result<(Option<Origin>, u64)>,
    ) -> Result<VolumeInfo> {
        self.inner.check_open()?;
        let info = {
            let mut st = self.inner.state.lock();
            if st.volumes.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: name.into(),
                });
            }
            let (origin, size) = base(&st)?;
            let uid = st.next_id();
            let head = st.new_layer(origin.as_ref().map(|o| o.layer));
            let rec = VolumeRecord {
                uid,
                name: name.into(),
                size,
                created: now(),
                head,
                snapshots: Vec::new(),
                origin,
            };
            let info = st.volume_info(&rec);
            st.volumes.insert(name.into(), rec);
            st.dirty.volumes.insert(name.into());
            info
        };
        self.inner.commit().await?;
        Ok(info)
    }

    /// Deletes a volume and all its snapshots. Refused while a clone
    /// depends on one of its snapshots.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.inner.check_open()?;
        {
            let mut st = self.inner.state.lock();
            let vol = st.volume(name)?.clone();
            for s in &vol.snapshots {
                let clones = st.layers.get(s.layer).children.saturating_sub(1);
                if clones > 0 {
                    return Err(Error::InUse(format!(
                        "volume {name} cannot be deleted: snapshot {name}@{} has {clones} clone(s); delete them first",
                        s.name
                    )));
                }
            }
            // Top down, so each layer has no children left when dropped.
            st.drop_layer(vol.head);
            for s in vol.snapshots.iter().rev() {
                st.drop_layer(s.layer);
            }
            st.volumes.remove(name);
            st.dirty.volumes.insert(name.into());
        }
        self.inner.commit().await
    }

    /// Renames a volume. Clones keep pointing at their origin under its new
    /// name; open handles on the old name stop working. The rename is one
    /// commit: after a crash the volume has either name, never both.
    pub async fn rename_volume(&self, name: &str, new_name: &str) -> Result<VolumeInfo> {
        validate_name(name)?;
        validate_name(new_name)?;
        self.inner.check_open()?;
        let info = {
            let mut st = self.inner.state.lock();
            st.volume(name)?;
            if st.volumes.contains_key(new_name) {
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: new_name.into(),
                });
            }
            let mut rec = st.volumes.remove(name).expect("checked above");
            rec.name = new_name.into();
            let info = st.volume_info(&rec);
            st.volumes.insert(new_name.into(), rec);
            st.dirty.volumes.insert(name.into());
            st.dirty.volumes.insert(new_name.into());
            let State { volumes, dirty, .. } = &mut *st;
            for clone in volumes.values_mut() {
                if let Some(origin) = clone.origin.as_mut().filter(|o| o.volume == name) {
                    origin.volume = new_name.into();
                    dirty.volumes.insert(clone.name.clone());
                }
            }
            info
        };
        self.inner.commit().await?;
        Ok(info)
    }

    /// Grows a volume to `size` bytes. Shrinking is refused.
    pub async fn grow_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        validate_name(name)?;
        check_size(size)?;
        self.inner.check_open()?;
        let info = {
            let mut st = self.inner.state.lock();
            let vol = st.volume_mut(name)?;
            if size < vol.size {
                return Err(Error::InvalidArgument(format!(
                    "volume {name} is {} bytes; shrinking to {size} is not supported",
                    vol.size
                )));
            }
            vol.size = size;
            let vol = vol.clone();
            st.volume_info(&vol)
        };
        self.inner.commit().await?;
        Ok(info)
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let st = self.inner.state.lock();
        st.volumes.values().map(|v| st.volume_info(v)).collect()
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let st = self.inner.state.lock();
        Ok(st.volume_info(st.volume(name)?))
    }

    /// Freezes the volume's current contents as snapshot `name` (generated
    /// when `None`). O(1): the head layer becomes the snapshot and a new
    /// empty head is stacked on it.
    pub async fn create_snapshot(&self, volume: &str, name: Option<&str>) -> Result<SnapshotInfo> {
        validate_name(volume)?;
        if let Some(n) = name {
            validate_name(n)?;
        }
        self.inner.check_open()?;
        let info = {
            let mut st = self.inner.state.lock();
            let vol = st.volume(volume)?;
            let name = match name {
                Some(n) => {
                    if vol.snapshots.iter().any(|s| s.name == n) {
                        return Err(Error::AlreadyExists {
                            kind: "snapshot",
                            name: format!("{volume}@{n}"),
                        });
                    }
                    n.to_string()
                }
                None => {
                    let base = format!("snap-{}", now());
                    let mut n = base.clone();
                    let mut i = 1;
                    while vol.snapshots.iter().any(|s| s.name == n) {
                        i += 1;
                        n = format!("{base}-{i}");
                    }
                    n
                }
            };
            let old_head = vol.head;
            let size = vol.size;
            let new_head = st.new_layer(Some(old_head));
            let rec = SnapshotRecord {
                name,
                layer: old_head,
                created: now(),
                size,
            };
            let vol = st.volume_mut(volume)?;
            vol.snapshots.push(rec.clone());
            vol.head = new_head;
            let vol = vol.clone();
            st.snapshot_info(&vol, &rec)
        };
        self.inner.commit().await?;
        Ok(info)
    }

    /// Deletes a snapshot by merging its layer into its only child. Blocks
    /// the child already overwrote are freed. Refused while clones depend
    /// on the snapshot.
    pub async fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> {
        validate_name(volume)?;
        validate_name(snapshot)?;
        self.inner.check_open()?;
        {
            let mut st = self.inner.state.lock();
            let vol = st.volume(volume)?;
            let idx = vol
                .snapshots
                .iter()
                .position(|s| s.name == snapshot)
                .ok_or_else(|| Error::not_found("snapshot", format!("{volume}@{snapshot}")))?;
            let layer_id = vol.snapshots[idx].layer;
            let child_id = vol.snapshots.get(idx + 1).map_or(vol.head, |s| s.layer);
            let clones = st.layers.get(layer_id).children.saturating_sub(1);
            if clones > 0 {
                return Err(Error::InUse(format!(
                    "snapshot {volume}@{snapshot} has {clones} clone(s); delete them first"
                )));
            }
            let layer = st
                .layers
                .0
                .remove(&layer_id)
                .expect("snapshot layer exists");
            let mut overwritten = Vec::new();
            let State { layers, dirty, .. } = &mut *st;
            let child = layers.get_mut(child_id);
            child.parent = layer.parent;
            for (vb, m) in layer.map {
                if child.map.contains_key(&vb) {
                    if let Mapping::Data { pblock, .. } = m {
                        overwritten.push(pblock);
                    }
                } else {
                    child.insert(vb, m);
                    dirty.mark_block(child_id, vb);
                }
            }
            overwritten.sort_unstable();
            for run in runs_of(overwritten) {
                st.reclaim.free(run);
            }
            st.dirty.layers.insert(child_id);
            st.dirty.dropped.insert(layer_id);
            st.volume_mut(volume)?.snapshots.remove(idx);
        }
        self.inner.commit().await
    }

    /// A volume's snapshots, oldest first.
    pub fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> {
        Ok(self.volume(volume)?.snapshots)
    }

    /// The byte ranges that differ between snapshot `from` (`None`: an
    /// empty volume) and snapshot `to` of `volume`: the union of the layers
    /// above `from` up to `to`. Nothing is read from the data file. Ranges
    /// are block-aligned, sorted and coalesced; a range may hold zeros
    /// (data that was trimmed counts as changed).
    pub fn diff(&self, volume: &str, from: Option<&str>, to: &str) -> Result<Vec<Range<u64>>> {
        let st = self.inner.state.lock();
        let vol = st.volume(volume)?;
        let to_layer = State::snapshot(vol, to)?.layer;
        let from_layer = from
            .map(|f| State::snapshot(vol, f).map(|s| s.layer))
            .transpose()?;
        let mut blocks = BTreeSet::new();
        let mut reached = from_layer.is_none();
        for (id, layer) in st.layers.chain(to_layer) {
            if Some(id) == from_layer {
                reached = true;
                break;
            }
            blocks.extend(layer.map.keys().copied());
        }
        if !reached {
            return Err(Error::InvalidArgument(format!(
                "snapshot {volume}@{} is not older than {volume}@{to}",
                from.unwrap_or_default()
            )));
        }
        Ok(runs_of(blocks)
            .into_iter()
            .map(|(s, l)| s * BLOCK_SIZE..(s + l) * BLOCK_SIZE)
            .collect())
    }

    /// A read-write handle on a volume.
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        validate_name(name)?;
        self.inner.check_open()?;
        let uid = self.inner.state.lock().volume(name)?.uid;
        Ok(Volume::new(self.inner.clone(), name, uid, None))
    }

    /// A read-only handle on a snapshot.
    pub fn open_snapshot(&self, volume: &str, snapshot: &str) -> Result<Volume> {
        validate_name(volume)?;
        validate_name(snapshot)?;
        self.inner.check_open()?;
        let st = self.inner.state.lock();
        let vol = st.volume(volume)?;
        let layer = State::snapshot(vol, snapshot)?.layer;
        Ok(Volume::new(
            self.inner.clone(),
            volume,
            vol.uid,
            Some((snapshot, layer)),
        ))
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.commit().await
    }

    /// Completes when overwritten and trimmed blocks pile up faster than
    /// the caller's commit schedule releases them; a commit then keeps the
    /// data file from growing to hold them. Deferred free holds a block
    /// until the commit that drops it, so between commits every write of a
    /// mapped block takes fresh space.
    pub async fn commit_wanted(&self) {
        self.inner.commit_wanted.notified().await
    }

    pub fn stats(&self) -> PoolStats {
        let st = self.inner.state.lock();
        PoolStats {
            used: st.alloc.used() * BLOCK_SIZE,
            file_size: st.alloc.end() * BLOCK_SIZE,
            max_size: self.inner.max_size,
            io: self.inner.io.mode().to_string(),
            read_ahead: self.inner.read_ahead.load(Ordering::Relaxed),
            read_ahead_used: self.inner.read_ahead_used.load(Ordering::Relaxed),
        }
    }

    /// Commits and refuses every later operation with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        self.inner.check_open()?;
        let r = self.inner.commit().await;
        self.inner.closed.store(true, Ordering::Release);
        r
    }
}
