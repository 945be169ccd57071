//! The pool's public face, [`Pool`]: creating, cloning, renaming, growing
//! and deleting volumes, taking and deleting snapshots, opening handles,
//! flush, checkpoint, maintenance, stats and close. The state a pool and
//! its handles share, and the order of its locks, are in `crate::shared`;
//! opening a pool is in `crate::recovery`, diffs between snapshots in
//! `crate::space`, reverting a head to its newest snapshot in
//! `crate::revert`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::VolumeState;
use crate::checkpoint::Extra;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::meta::{Batch, Origin, SnapshotRecord, VolumeRecord};
use crate::name::validate_name;
use crate::shared::{now, Inner};
use crate::{PoolStats, SnapshotInfo, Volume, VolumeInfo, BLOCK_SIZE};

/// A storage pool: one data file and its metadata. Cheap to clone; every
/// clone and every [`Volume`] handle shares the same state.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
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

impl Pool {
    /// The directory the pool lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Creates an empty (thin) volume of `size` bytes.
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        self.create(name, size, None).await
    }

    /// Creates an empty volume of `size` bytes behind `gate`, which is in
    /// place before any handle can reach the volume (see [`Gate`]).
    pub async fn create_gated_volume(
        &self,
        name: &str,
        size: u64,
        gate: Arc<dyn Gate>,
    ) -> Result<VolumeInfo> {
        self.create(name, size, Some(gate)).await
    }

    /// Puts volume `name` behind `gate`, or (`None`) takes its gate away
    /// once everything is local. A gate is not persisted: its owner sets
    /// it again when the pool is next opened, before serving the volume.
    pub fn set_gate(&self, name: &str, gate: Option<Arc<dyn Gate>>) -> Result<()> {
        validate_name(name)?;
        self.inner.check_open()?;
        let uid = self.inner.state.lock().catalog.get(name)?.rec.uid;
        self.inner.gates.set(uid, gate);
        Ok(())
    }

    /// Makes volume `name` read-only to every handle but its owner's
    /// [`Volume::ungated`] ones, with `reason` in the error writes get; or
    /// (`None`) writable again. Not persisted (see `crate::fence`).
    pub fn set_read_only(&self, name: &str, reason: Option<String>) -> Result<()> {
        validate_name(name)?;
        self.inner.check_open()?;
        let uid = self.inner.state.lock().catalog.get(name)?.rec.uid;
        self.inner.fences.set(uid, reason);
        Ok(())
    }

    async fn create(
        &self,
        name: &str,
        size: u64,
        gate: Option<Arc<dyn Gate>>,
    ) -> Result<VolumeInfo> {
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
        if let Some(gate) = gate {
            // Before the volume is in the catalog: no handle exists yet.
            inner.gates.set(rec.uid, Some(gate));
        }
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
        self.delete_volume_with_records(name, &[]).await.map(drop)
    }

    /// Deletes a volume as [`Pool::delete_volume`] does, and with it, in
    /// the same atomic metadata write, every record (see `records.rs`)
    /// whose key starts with one of `prefixes`: the layers above keep
    /// per-volume state there that must not outlive the volume. Returns
    /// the keys of the records removed.
    pub async fn delete_volume_with_records(
        &self,
        name: &str,
        prefixes: &[String],
    ) -> Result<Vec<String>> {
        validate_name(name)?;
        let inner = &self.inner;
        let _c = inner.control().await?;
        inner.check_writable()?;
        // Records change only under the control lock, which this holds
        // until the batch is durable: none is added or lost meanwhile.
        let mut removed = Vec::new();
        for prefix in prefixes {
            removed.extend(inner.meta.records(prefix)?.into_iter().map(|(k, _)| k));
        }
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
        for key in &removed {
            extra.batch.remove_record(key);
        }
        inner.checkpoint_locked(extra).await?;
        let v = inner
            .state
            .lock()
            .catalog
            .remove(name)
            .expect("marked above");
        inner.gates.set(v.rec.uid, None);
        inner.fences.set(v.rec.uid, None);
        inner.reclaim_volume(v.rec, v.snapshots).await?;
        Ok(removed)
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
            if let Some(gate) = inner.gates.get(v.rec.uid) {
                return Err(Error::InUse(format!(
                    "volume {volume} cannot be snapshotted yet: {}",
                    gate.busy()
                )));
            }
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
        // Writes to it pause, so the snapshot holds exactly what was
        // written before it.
        let _writes = inner.checkpoint_paused(&install).await?;
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

    /// Frees the I/O buffers no request needed since the previous call;
    /// returns the bytes freed. A timer calls it, so memory kept for
    /// reuse follows the I/O in flight rather than its peak.
    pub fn trim_idle_buffers(&self) -> usize {
        self.inner.bufs.trim()
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

    /// Every volume's I/O counters since the pool was opened, by name.
    pub fn io_stats(&self) -> Vec<crate::VolumeIo> {
        let volumes: Vec<(String, u64)> = {
            let st = self.inner.state.lock();
            st.catalog
                .iter()
                .map(|v| (v.rec.name.clone(), v.rec.uid))
                .collect()
        };
        let stats = self.inner.io_stats.lock();
        volumes
            .into_iter()
            .map(|(volume, uid)| {
                let (read, write) = stats
                    .get(&uid)
                    .map(|s| s.snapshot())
                    .unwrap_or_else(|| crate::iostats::IoStats::default().snapshot());
                crate::VolumeIo {
                    volume,
                    read,
                    write,
                }
            })
            .collect()
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
