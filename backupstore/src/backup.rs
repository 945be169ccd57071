//! Creating a backup of one snapshot.
//!
//! The volume is cut into fixed chunks aligned to volume offsets. With a
//! parent (the newest backup of this volume whose snapshot still exists in
//! the pool), only chunks the engine diff names are read; every other chunk
//! keeps the parent's digest. Without one, every chunk that holds data is
//! read. A chunk read is hashed; zeros are not stored; a digest already in
//! the store (or seen earlier in this run) is reused; anything else is
//! compressed, framed and uploaded. The manifest is written last, so an
//! interrupted backup leaves no visible backup, only unreferenced chunks that
//! gc removes after its grace period.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Mutex;

use ballast_engine::{BlockState, Pool, SnapshotInfo, Volume};
use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::frame::Kind;
use crate::lock::{Lock, LockKind, DEFAULT_STALE};
use crate::manifest::{chunk_key, digest_hex, manifest_key, Digest, Manifest};
use crate::objects::PutBatch;
use crate::progress::Progress;
use crate::sealing::Sealing;
use crate::store::{BackupInfo, BackupStore};

/// What became of one chunk.
enum Outcome {
    Zero,
    Reused(Digest),
    New { digest: Digest, stored: u64 },
}

/// True if `buf` is all zeros (vectorises; exits early per 4 KiB).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A backup id: creation time to the millisecond (ids sort by age) plus
/// randomness, e.g. `20261122T010933123Z-1a2b3c4d`.
fn new_backup_id() -> String {
    let stamp: String = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{stamp}-{:08x}", rand::random::<u32>())
}

/// What a backup reads: a snapshot that exists, or one it takes first
/// (under a chosen name, or a generated one).
#[derive(Clone, Copy)]
enum Source<'a> {
    Existing(&'a str),
    New(Option<&'a str>),
}

/// The state of one backup run shared by its chunk tasks.
struct Run<'a> {
    store: &'a BackupStore,
    sealing: Sealing,
    vol: Volume,
    size: u64,
    chunk_size: u64,
    /// Digests known to be in the store or claimed by a task of this run.
    known: Mutex<HashSet<Digest>>,
    /// New chunks go here; committed before the manifest is written.
    chunks: Box<dyn PutBatch + 'a>,
    progress: &'a dyn Progress,
    /// Read buffers of finished chunk tasks, taken by the next ones, so a
    /// chunk is not read into fresh (zeroed, faulted-in) memory each time.
    /// Never more than the tasks that run at once.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Run<'_> {
    fn chunk_range(&self, index: usize) -> (u64, usize) {
        let offset = index as u64 * self.chunk_size;
        (offset, (self.size - offset).min(self.chunk_size) as usize)
    }

    async fn chunk(&self, index: usize) -> Result<(usize, Outcome)> {
        let (offset, len) = self.chunk_range(index);
        let outcome = self.chunk_outcome(offset, len).await?;
        self.progress.advance(len as u64);
        Ok((index, outcome))
    }

    async fn chunk_outcome(&self, offset: u64, len: usize) -> Result<Outcome> {
        let extents = self.vol.block_status(offset, len as u64)?;
        if extents.iter().all(|e| e.state != BlockState::Data) {
            return Ok(Outcome::Zero);
        }
        let mut buf = self
            .spare
            .lock()
            .expect("spare buffers")
            .pop()
            .unwrap_or_default();
        // Stale bytes of an earlier chunk are fine: the read fills it all.
        buf.resize(len, 0);
        self.vol.read(offset, &mut buf).await?;
        let (outcome, buf) = self.store_chunk(buf).await?;
        self.spare.lock().expect("spare buffers").push(buf);
        Ok(outcome)
    }

    /// Hashes the chunk in `buf` and uploads it unless it is all zeros or
    /// already known; the outcome, and `buf` back for the next chunk.
    async fn store_chunk(&self, buf: Vec<u8>) -> Result<(Outcome, Vec<u8>)> {
        let sealing = self.sealing.clone();
        let (buf, digest) = blocking(move || {
            let d = (!is_zero(&buf)).then(|| sealing.chunk_id(&buf));
            (buf, d)
        })
        .await?;
        let Some(digest) = digest else {
            return Ok((Outcome::Zero, buf));
        };
        // The first task to claim a digest uploads it; the others reuse it.
        // A failed upload fails the whole run, so no manifest can reference
        // a claimed-but-missing chunk.
        if !self.known.lock().expect("known-digest set").insert(digest) {
            return Ok((Outcome::Reused(digest), buf));
        }
        let key = chunk_key(&digest);
        if self.store.objects.exists(&key).await? {
            return Ok((Outcome::Reused(digest), buf));
        }
        let level = self.store.opts.compression_level;
        let (sealing, object_key) = (self.sealing.clone(), key.clone());
        let (framed, buf) = blocking(move || {
            let framed = sealing.encode(Kind::Chunk, &object_key, &buf, level);
            (framed, buf)
        })
        .await?;
        let stored = framed.len() as u64;
        self.chunks.put(&key, framed).await?;
        Ok((Outcome::New { digest, stored }, buf))
    }
}

/// Runs CPU work (hashing, compression) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::Worker)
}

/// Indices of the chunks overlapping any of `ranges`.
fn chunks_touched(ranges: &[Range<u64>], chunk_size: u64, count: usize) -> Vec<bool> {
    let mut touched = vec![false; count];
    for r in ranges.iter().filter(|r| r.start < r.end) {
        let first = (r.start / chunk_size) as usize;
        let last = ((r.end - 1) / chunk_size) as usize;
        for t in touched
            .iter_mut()
            .take(last.min(count.saturating_sub(1)) + 1)
            .skip(first)
        {
            *t = true;
        }
    }
    touched
}

impl BackupStore {
    /// Backs up `volume@snapshot`, or a new snapshot of `volume` taken now
    /// when `snapshot` is `None` (kept afterwards as the base of the next
    /// incremental backup; removed again if the backup fails).
    pub async fn backup(
        &self,
        pool: &Pool,
        volume: &str,
        snapshot: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<BackupInfo> {
        match snapshot {
            Some(s) => {
                self.backup_from(pool, volume, Source::Existing(s), progress)
                    .await
            }
            None => {
                self.backup_from(pool, volume, Source::New(None), progress)
                    .await
            }
        }
    }

    /// Backs up a new snapshot of `volume` taken now under the name
    /// `snapshot` (which the caller may have recorded first, to find it
    /// again whatever happens); removed again if the backup fails.
    pub async fn backup_new_snapshot(
        &self,
        pool: &Pool,
        volume: &str,
        snapshot: &str,
        progress: &dyn Progress,
    ) -> Result<BackupInfo> {
        ballast_engine::validate_name(snapshot)?;
        self.backup_from(pool, volume, Source::New(Some(snapshot)), progress)
            .await
    }

    async fn backup_from(
        &self,
        pool: &Pool,
        volume: &str,
        source: Source<'_>,
        progress: &dyn Progress,
    ) -> Result<BackupInfo> {
        let (snapshot, new_name) = match source {
            Source::Existing(s) => (Some(s), None),
            Source::New(name) => (None, name),
        };
        ballast_engine::validate_name(volume)?;
        let volume_info = pool.volume(volume)?;
        if let Some(s) = snapshot {
            ballast_engine::validate_name(s)?;
            if !volume_info.snapshots.iter().any(|i| i.name == s) {
                return Err(ballast_engine::Error::NotFound {
                    kind: "snapshot",
                    name: format!("{volume}@{s}"),
                }
                .into());
            }
        }
        // Refuses a wrong or missing key before anything is written.
        let (config, sealing) = self.init().await?;
        let lock = Lock::acquire(
            self.objects.clone(),
            LockKind::Backup,
            volume,
            DEFAULT_STALE,
        )
        .await?;
        let (snap, created_snapshot) = match snapshot {
            Some(s) => (s.to_string(), false),
            None => match pool.create_snapshot(volume, new_name).await {
                Ok(info) => (info.name, true),
                Err(e) => {
                    lock.release().await?;
                    return Err(e.into());
                }
            },
        };
        let result = self
            .backup_snapshot(pool, volume, &snap, config.chunk_size, sealing, progress)
            .await;
        if let Err(e) = lock.release().await {
            tracing::warn!("releasing backup lock: {e}");
        }
        if result.is_err() && created_snapshot {
            if let Err(e) = pool.delete_snapshot(volume, &snap).await {
                tracing::warn!("removing snapshot {volume}@{snap} of the failed backup: {e}");
            }
        }
        result
    }

    async fn backup_snapshot(
        &self,
        pool: &Pool,
        volume: &str,
        snap: &str,
        chunk_size: u32,
        sealing: Sealing,
        progress: &dyn Progress,
    ) -> Result<BackupInfo> {
        let volume_info = pool.volume(volume)?;
        let snapshots = pool.snapshots(volume)?;
        let Some(snap_info) = snapshots.iter().find(|s| s.name == snap).cloned() else {
            return Err(ballast_engine::Error::NotFound {
                kind: "snapshot",
                name: format!("{volume}@{snap}"),
            }
            .into());
        };
        let vol = pool.open_snapshot(volume, snap)?;
        let size = vol.size()?;
        let count = Manifest::chunk_count(size, chunk_size);
        let cs = u64::from(chunk_size);

        let parent = self
            .find_parent(
                volume,
                volume_info.created,
                &snapshots,
                &snap_info,
                chunk_size,
            )
            .await?;
        let mut chunks: Vec<Option<String>> = vec![None; count];
        let mut to_read = vec![true; count];
        let mut known = HashSet::new();
        let mut parent_id = None;
        if let Some(p) = &parent {
            known.extend(p.digests().map(|(_, d)| d));
            let changed = if p.snapshot == snap {
                Ok(Vec::new())
            } else {
                pool.diff(volume, Some(&p.snapshot), snap)
            };
            match changed {
                Ok(ranges) => {
                    let touched = chunks_touched(&ranges, cs, count);
                    for i in 0..count {
                        let end = (i as u64 + 1) * cs;
                        // A chunk that reaches past the parent's size (the
                        // volume grew) is read again.
                        if !touched[i] && end.min(size) <= p.size {
                            to_read[i] = false;
                            chunks[i] = p.chunks[i].clone();
                        }
                    }
                    parent_id = Some(p.id.clone());
                }
                Err(e) => tracing::warn!(
                    "diff from {volume}@{} failed ({e}); reading the whole snapshot",
                    p.snapshot
                ),
            }
        }

        let read: Vec<usize> = (0..count).filter(|&i| to_read[i]).collect();
        let total: u64 = read.iter().map(|&i| (size - i as u64 * cs).min(cs)).sum();
        tracing::info!(
            "backing up {volume}@{snap} to {}: {} of {count} chunks to read{}",
            self.url,
            read.len(),
            parent_id
                .as_deref()
                .map(|p| format!(", incremental to {p}"))
                .unwrap_or_default()
        );
        let run = Run {
            store: self,
            sealing: sealing.clone(),
            vol,
            size,
            chunk_size: cs,
            known: Mutex::new(known),
            chunks: self.objects.batch(),
            progress,
            spare: Mutex::default(),
        };
        progress.start("backup", total);
        let outcomes: Vec<(usize, Outcome)> = futures::stream::iter(read)
            .map(|i| run.chunk(i))
            .buffer_unordered(self.opts.parallel)
            .try_collect()
            .await?;
        // Every chunk the manifest names, new or reused, is durable before
        // the manifest exists.
        run.chunks.commit().await?;
        progress.finish();

        let id = new_backup_id();
        let mut m = Manifest {
            format: Manifest::new_format(),
            id: id.clone(),
            volume: volume.to_string(),
            snapshot: snap.to_string(),
            volume_created: volume_info.created,
            snapshot_created: snap_info.created,
            size,
            chunk_size,
            created: crate::clock::now_secs(),
            parent: parent_id,
            new_chunks: 0,
            new_bytes: 0,
            reused_chunks: 0,
            reused_bytes: 0,
            stored_bytes: 0,
            chunks,
        };
        let chunk_len = |i: usize| (size - i as u64 * cs).min(cs);
        for (i, o) in outcomes {
            m.chunks[i] = match o {
                Outcome::Zero => None,
                Outcome::Reused(d) => Some(digest_hex(&d)),
                Outcome::New { digest, stored } => {
                    m.new_chunks += 1;
                    m.new_bytes += chunk_len(i);
                    m.stored_bytes += stored;
                    Some(digest_hex(&digest))
                }
            };
        }
        let data_chunks = m.chunks.iter().flatten().count() as u64;
        let data_bytes: u64 = (0..count)
            .filter(|&i| m.chunks[i].is_some())
            .map(chunk_len)
            .sum();
        m.reused_chunks = data_chunks - m.new_chunks;
        m.reused_bytes = data_bytes - m.new_bytes;
        // The manifest goes last: only now does the backup exist.
        self.objects
            .put(&manifest_key(volume, &id), m.encode(&sealing))
            .await?;
        tracing::info!(
            "backup {id} of {volume}@{snap}: {} new bytes in {} chunks, {} reused",
            m.new_bytes,
            m.new_chunks,
            m.reused_bytes
        );
        Ok(BackupInfo::from_manifest(&self.url, &m))
    }

    /// The newest backup of `volume` made from a snapshot that still exists
    /// in the pool (the same snapshot, by creation time) and is not newer
    /// than the one being backed up.
    async fn find_parent(
        &self,
        volume: &str,
        volume_created: u64,
        snapshots: &[SnapshotInfo],
        current: &SnapshotInfo,
        chunk_size: u32,
    ) -> Result<Option<Manifest>> {
        let current_pos = snapshots.iter().position(|s| s.name == current.name);
        let mut keys = self.manifest_keys(Some(volume)).await?;
        keys.sort_by(|a, b| b.1.cmp(&a.1));
        for (v, id) in keys {
            let m = match self.manifest(&v, &id).await {
                Ok(m) => m,
                Err(Error::BackupNotFound { .. }) => continue,
                Err(e @ Error::NotOurs { .. }) => {
                    tracing::warn!("{e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let usable = m.chunk_size == chunk_size
                && m.volume_created == volume_created
                && snapshots
                    .iter()
                    .position(|s| s.name == m.snapshot && s.created == m.snapshot_created)
                    .is_some_and(|pos| Some(pos) <= current_pos);
            if usable {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 1 << 20];
        assert!(is_zero(&b));
        b[(1 << 20) - 1] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }

    #[test]
    fn touched_chunks() {
        let t = chunks_touched(
            &[
                0..4096,
                (3 << 20)..(3 << 20) + 1,
                (5 << 20) - 4096..(6 << 20) + 4096,
            ],
            1 << 20,
            8,
        );
        assert_eq!(t, vec![true, false, false, true, true, true, true, false]);
        let past_end = (7 << 20)..(9 << 20);
        let t = chunks_touched(std::slice::from_ref(&past_end), 1 << 20, 8);
        assert_eq!(
            t,
            vec![false, false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn ids_are_valid_and_sort_by_time() {
        let id = new_backup_id();
        crate::url::validate_backup_id(&id).unwrap();
        assert_eq!(id.len(), 19 + 1 + 8, "{id}");
        assert!(id.starts_with("20"), "{id}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = new_backup_id();
        assert!(id < later, "{id} sorts before {later}");
    }
}
