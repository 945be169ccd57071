//! One apply: the newest backup of the source, written into the standby
//! volume's head chunk by chunk where its digests differ from the backup
//! the volume holds, then frozen as the next `standby.N` snapshot. And its
//! undo: the head reverted to the last complete snapshot (the engine's
//! `revert_volume`: metadata only, nothing copied, nothing fetched).
//!
//! Invariant: outside an apply (`applying` unset in the record) the head
//! holds exactly `applied`'s backup, and `standby.N` is the volume's
//! newest snapshot (the standbys refuse other snapshots of it); during an
//! apply it differs from it only by what the apply wrote since that
//! snapshot, so an undo costs the same early or late in a long apply.

use std::time::{Duration, Instant};

use ballast_backupstore::{BackupStore, Manifest};
use ballast_engine::{Pool, Volume};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::files;
use super::record::{self, now, Applied, Applying, LastApply, StandbyRecord};
use crate::ops::error::OpError;
use crate::ops::keys::{self, BackupKeys};

/// Chunks fetched at once: memory in flight is this many chunks.
const PARALLEL: usize = 4;
/// Milliseconds each chunk's fetch waits first (default none): lets the
/// tests and the benchmark catch an apply in flight.
const DELAY_ENV: &str = "BALLAST_STANDBY_DELAY_MS";
/// Snapshots the standby takes are named `standby.N`.
pub(super) const SNAPSHOT_PREFIX: &str = "standby.";

/// Where the record is written: the pool's metadata (durably), then the
/// copy `standby list` reads.
pub(super) struct Shown<'a> {
    pub pool: &'a Pool,
    pub record: &'a std::sync::Mutex<StandbyRecord>,
}

impl Shown<'_> {
    pub(super) async fn save(&self, rec: &StandbyRecord) -> Result<(), OpError> {
        record::save(self.pool, rec).await?;
        *self.record.lock().expect("record") = rec.clone();
        Ok(())
    }
}

/// How a poll ended.
pub(super) enum Polled {
    /// The newest backup is the one applied (or there is none yet).
    UpToDate,
    Applied,
    Cancelled,
}

fn delay() -> Duration {
    std::env::var(DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Volume bytes of chunk `index` for `size` and `chunk_size`.
fn chunk_range(index: u32, size: u64, chunk_size: u64) -> (u64, u64) {
    let start = u64::from(index) * chunk_size;
    (start, (size - start).min(chunk_size))
}

/// Brings the head back to `applied` if an apply was cut short (crash,
/// activation, failure), then clears `applying` in the record: reverted
/// to `applied`'s snapshot, or zeroed (holes, no data written) when no
/// backup was applied yet. The hold the apply had is dropped when the
/// store can be reached (it goes stale on its own otherwise).
pub(super) async fn undo(
    shown: &Shown<'_>,
    rec: &mut StandbyRecord,
    store: Option<&BackupStore>,
) -> Result<(), OpError> {
    let Some(applying) = rec.applying.clone() else {
        return Ok(());
    };
    let pool = shown.pool;
    let volume = &rec.standby.volume;
    let began = Instant::now();
    // Left by an apply a crash cut short after its snapshot: not complete
    // by the record, so it goes (and `standby.N` is the newest again).
    let stray = format!("{SNAPSHOT_PREFIX}{}", applying.generation);
    if pool.snapshots(volume)?.iter().any(|x| x.name == stray) {
        pool.delete_snapshot(volume, &stray).await?;
    }
    match &rec.applied {
        Some(a) => {
            pool.revert_volume(volume, &a.snapshot).await?;
        }
        None => {
            let head = pool.open_volume(volume)?.ungated();
            head.write_zeroes(0, head.size()?).await?;
            pool.flush().await?;
        }
    }
    rec.applying = None;
    shown.save(rec).await?;
    info!(
        volume,
        backup = applying.backup,
        ms = began.elapsed().as_millis() as u64,
        "undid an unfinished apply"
    );
    if let (Some(key), Some(store)) = (applying.hold, store) {
        if let Err(e) = store.drop_hold(&key).await {
            warn!(volume, "removing the hold {key}: {e}");
        }
    }
    Ok(())
}

/// Applies the newest backup of the source if it is not the one applied.
/// `rec` is kept current (and saved) at every step.
pub(super) async fn poll(
    shown: &Shown<'_>,
    keys: &BackupKeys,
    rec: &mut StandbyRecord,
    cancel: &CancellationToken,
) -> Result<Polled, OpError> {
    let s = rec.standby.clone();
    let dest = s.dest.parse()?;
    let key = keys.load(s.key.as_deref())?;
    let Some(store) = unless_cancelled(cancel, keys::open(&dest, key)).await else {
        return Ok(Polled::Cancelled);
    };
    let store = store?;
    undo(shown, rec, Some(&store)).await?;
    let Some(listed) = unless_cancelled(cancel, store.list(Some(&s.source))).await else {
        return Ok(Polled::Cancelled);
    };
    let Some(newest) = listed?.pop() else {
        return Ok(Polled::UpToDate);
    };
    // Only forward: with the newest backups deleted, the newest left is
    // older than the one applied, and stays unapplied.
    if let Some(a) = &rec.applied {
        if (newest.created, &newest.id) <= (a.created, &a.backup) {
            return Ok(Polled::UpToDate);
        }
    }
    // A hold cut short here leaves no lock object: the store deletes one
    // whose acquire was dropped mid-write.
    let Some(hold) = unless_cancelled(cancel, store.hold(&s.source, &newest.id)).await else {
        return Ok(Polled::Cancelled);
    };
    let (hold, manifest) = hold?;
    let result = apply(
        shown,
        &store,
        rec,
        &newest.id,
        &manifest,
        hold.key(),
        cancel,
    )
    .await;
    if result.is_err() && rec.applying.is_some() {
        // A failed apply (a corrupt chunk, the store gone) leaves the
        // head as it was: back to the last complete backup at once.
        if let Err(e) = undo(shown, rec, None).await {
            warn!(volume = s.volume, "undoing the failed apply: {e}");
        }
    }
    // The hold goes whatever happened (a cut-short apply is undone from
    // the local snapshot, never resumed from this backup): before the poll
    // ends, so a backup just applied can be deleted at once, unless an
    // activation is waiting for this poll; then in the background, since
    // the activation does not wait for the store.
    let release = |hold: ballast_backupstore::BackupHold| async move {
        if let Err(e) = hold.release().await {
            warn!(
                volume = s.volume,
                "releasing the hold on {}: {e}", newest.id
            );
        }
    };
    if cancel.is_cancelled() {
        tokio::spawn(release(hold));
    } else {
        release(hold).await;
    }
    result
}

/// `fut`'s output, or `None` once `cancel` fires first: every wait on the
/// store in a poll is cut short by an activation (or shutdown); the local
/// writes are not.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        () = cancel.cancelled() => None,
    }
}

async fn apply(
    shown: &Shown<'_>,
    store: &BackupStore,
    rec: &mut StandbyRecord,
    id: &str,
    manifest: &Manifest,
    hold: &str,
    cancel: &CancellationToken,
) -> Result<Polled, OpError> {
    let started = Instant::now();
    let pool = shown.pool;
    let volume = rec.standby.volume.clone();
    let size = pool.volume(&volume)?.size;
    let held_chunk_size = rec.applied.as_ref().map(|a| a.chunk_size);
    if manifest.size != size || held_chunk_size.is_some_and(|c| c != manifest.chunk_size) {
        return Err(OpError::StandbyMismatch {
            volume,
            backup: id.to_string(),
            reason: format!(
                "its volume is {} bytes in chunks of {}, the standby's {size} bytes",
                manifest.size, manifest.chunk_size
            ),
        });
    }
    let dir = files::dir(pool.root(), &volume);
    let held = match &rec.applied {
        Some(a) => files::digests(&dir, a.generation)?,
        None => Vec::new(),
    };
    let generation = rec.generation + 1;
    let changed: Vec<u32> = manifest
        .chunks
        .iter()
        .enumerate()
        .filter(|(i, c)| held.get(*i).cloned().flatten() != **c)
        .map(|(i, _)| i as u32)
        .collect();
    rec.applying = Some(Applying {
        backup: id.to_string(),
        since: now(),
        generation,
        hold: Some(hold.to_string()),
    });
    shown.save(rec).await?;
    info!(
        volume,
        backup = id,
        chunks = changed.len(),
        "applying backup"
    );

    let head = pool.open_volume(&volume)?.ungated();
    let (fetched, bytes, zeroed) =
        match write_chunks(store, manifest, &head, &changed, cancel).await? {
            Some(counts) => counts,
            None => return Ok(Polled::Cancelled),
        };
    pool.flush().await?;
    files::write_digests(&dir, generation, &manifest.chunks)?;
    let snapshot = format!("{SNAPSHOT_PREFIX}{generation}");
    pool.create_snapshot(&volume, Some(&snapshot)).await?;
    rec.applied = Some(Applied {
        backup: id.to_string(),
        created: manifest.created,
        at: now(),
        snapshot: snapshot.clone(),
        chunk_size: manifest.chunk_size,
        generation,
    });
    rec.generation = generation;
    rec.applying = None;
    rec.last_apply = Some(LastApply {
        backup: id.to_string(),
        chunks_fetched: fetched,
        bytes_fetched: bytes,
        chunks_zeroed: zeroed,
        duration_ms: started.elapsed().as_millis() as u64,
    });
    shown.save(rec).await?;
    drop_older_snapshots(pool, &volume, &snapshot).await;
    files::keep_only(&dir, generation);
    info!(
        volume,
        backup = id,
        fetched,
        bytes,
        zeroed,
        "backup applied"
    );
    Ok(Polled::Applied)
}

/// Writes the `changed` chunks of `manifest` into `head`: fetched (and
/// verified by the store) a few at a time, written one after the other in
/// their order, so a cancel drops only fetches, never a write half done.
/// `None` when cancelled. Returns chunks fetched, their bytes, and chunks
/// zeroed.
async fn write_chunks(
    store: &BackupStore,
    manifest: &Manifest,
    head: &Volume,
    changed: &[u32],
    cancel: &CancellationToken,
) -> Result<Option<(u64, u64, u64)>, OpError> {
    let pause = delay();
    let mut fetches = futures::stream::iter(changed.iter().copied())
        .map(|index| async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let data = store.fetch_chunk_of(manifest, index as usize).await?;
            Ok::<_, OpError>((index, data))
        })
        .buffered(PARALLEL);
    let chunk_size = u64::from(manifest.chunk_size);
    let (mut fetched, mut bytes, mut zeroed) = (0, 0, 0);
    loop {
        let next = tokio::select! {
            next = fetches.next() => next,
            () = cancel.cancelled() => return Ok(None),
        };
        let Some(next) = next else { break };
        let (index, data) = next?;
        let (offset, len) = chunk_range(index, manifest.size, chunk_size);
        match data {
            Some(data) => {
                head.write(offset, &data).await?;
                fetched += 1;
                bytes += data.len() as u64;
            }
            None => {
                head.write_zeroes(offset, len).await?;
                zeroed += 1;
            }
        }
    }
    Ok(Some((fetched, bytes, zeroed)))
}

/// Deletes every `standby.N` snapshot but `keep` (the previous complete
/// one, or what a crash left); a failure only costs space until the next.
pub(super) async fn drop_older_snapshots(pool: &Pool, volume: &str, keep: &str) {
    let Ok(snapshots) = pool.snapshots(volume) else {
        return;
    };
    for s in snapshots {
        if s.name.starts_with(SNAPSHOT_PREFIX) && s.name != keep {
            if let Err(e) = pool.delete_snapshot(volume, &s.name).await {
                warn!(
                    volume,
                    snapshot = s.name,
                    "deleting an older standby snapshot: {e}"
                );
            }
        }
    }
}
