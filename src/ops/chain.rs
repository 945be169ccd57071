//! Bounded snapshot chains: a backup of a volume (not of a named snapshot)
//! takes a snapshot of its own, and once a newer backup of that volume to
//! the same destination has completed, the older snapshots backups took
//! for that destination are deleted (folded away by the engine). Only the
//! newest stays, as the base of the next incremental backup. Snapshots a
//! user made are never touched: only names recorded here are deleted.
//!
//! The record, per volume and destination, lives in the pool's metadata
//! (`backup-snapshots/VOL/DEST`, JSON) and lists every snapshot a backup to
//! that destination took and has not deleted yet. The name is recorded
//! *before* the snapshot is taken, so a crash at any step leaves no
//! unrecorded backup snapshot: a recorded name that never became a
//! snapshot, or whose backup never completed, is deleted after the next
//! successful backup like any older base.

use ballast_backupstore::{BackupInfo, BackupStore, Progress};
use ballast_engine::Pool;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::OpError;

const PREFIX: &str = "backup-snapshots/";

/// The snapshots backups of one volume to one destination took, oldest
/// first; the last is the base of the next incremental backup once its
/// backup completed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    snapshots: Vec<String>,
}

fn key(volume: &str, dest: &str) -> String {
    format!("{PREFIX}{volume}/{dest}")
}

fn load(pool: &Pool, key: &str) -> Result<Record, OpError> {
    Ok(match pool.record(key)? {
        // A record we cannot read names nothing we may delete.
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!("ignoring unreadable record {key}: {e}");
            Record::default()
        }),
        None => Record::default(),
    })
}

async fn save(pool: &Pool, key: &str, record: &Record) -> Result<(), OpError> {
    if record.snapshots.is_empty() {
        pool.delete_record(key).await?;
    } else {
        let bytes = serde_json::to_vec(record).expect("a list of names serialises");
        pool.put_record(key, &bytes).await?;
    }
    Ok(())
}

/// A snapshot name no user is likely to pick, e.g. `backup-20261201T150102Z-1a2b3c4d`.
fn new_name() -> String {
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("backup-{stamp}-{:08x}", rand::random::<u32>())
}

/// Backs up `volume` from a snapshot taken now, then deletes the older
/// snapshots earlier backups to `store` took.
pub async fn backup_volume(
    pool: &Pool,
    store: &BackupStore,
    volume: &str,
    progress: &dyn Progress,
) -> Result<BackupInfo, OpError> {
    ballast_engine::validate_name(volume)?;
    pool.volume(volume)?;
    let key = key(volume, &store.url().to_string());
    let snapshot = new_name();
    let mut record = load(pool, &key)?;
    record.snapshots.push(snapshot.clone());
    save(pool, &key, &record).await?;
    match store
        .backup_new_snapshot(pool, volume, &snapshot, progress)
        .await
    {
        Ok(info) => {
            release_older(pool, volume, &mut record, &snapshot).await;
            save(pool, &key, &record).await?;
            Ok(info)
        }
        Err(e) => {
            // The store removed the snapshot of the failed backup.
            record.snapshots.retain(|s| *s != snapshot);
            if let Err(e) = save(pool, &key, &record).await {
                warn!("recording the end of a failed backup of {volume}: {e}");
            }
            Err(e.into())
        }
    }
}

/// Deletes every recorded snapshot but `base`; one the engine refuses to
/// delete (a clone depends on it) stays recorded and is tried again after
/// the next backup.
async fn release_older(pool: &Pool, volume: &str, record: &mut Record, base: &str) {
    let mut kept = Vec::new();
    for s in std::mem::take(&mut record.snapshots) {
        if s == base {
            continue;
        }
        match pool.delete_snapshot(volume, &s).await {
            Ok(()) => info!("deleted {volume}@{s}: a newer backup replaced it as the base"),
            Err(ballast_engine::Error::NotFound { .. }) => {}
            Err(e) => {
                warn!("keeping {volume}@{s} for now: {e}");
                kept.push(s);
            }
        }
    }
    kept.push(base.to_string());
    record.snapshots = kept;
}
