//! A standby and its state as the pool's metadata keeps them: one JSON
//! record per standby under `standby/VOL` (its long lists are files,
//! `files.rs`), written (durably) before and
//! after every apply, so a restart or a `kill -9` knows which backup the
//! volume last held complete and which apply was in flight.

use ballast_engine::Pool;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ops::error::OpError;

const PREFIX: &str = "standby/";

/// What the user set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standby {
    /// The standby volume in this pool.
    pub volume: String,
    /// The destination URL, as the store prints it.
    pub dest: String,
    /// The volume whose backups it follows.
    pub source: String,
    /// Seconds between polls of the destination.
    pub every: u64,
    /// The backup key of an encrypted destination, by name in the
    /// daemon's key directory (read at every poll; never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The backup the volume holds complete, frozen as snapshot `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub backup: String,
    /// When the backup was taken (seconds since the epoch).
    pub created: u64,
    /// When its apply completed.
    pub at: u64,
    pub snapshot: String,
    pub chunk_size: u32,
    /// Its chunk digests are in `digests-{generation}` (`files.rs`), so
    /// the next apply compares against them without the store, even once
    /// the backup is deleted.
    pub generation: u64,
}

/// An apply in flight, recorded before its first write: while it is set,
/// the head may differ from `applied`, and undoing the apply reverts the
/// head to `applied`'s snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applying {
    pub backup: String,
    pub since: u64,
    /// The generation the apply makes (its snapshot `standby.N`).
    pub generation: u64,
    /// The hold lock on the backup in the store, dropped after a crash.
    pub hold: Option<String>,
}

/// What the last completed apply did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastApply {
    pub backup: String,
    pub chunks_fetched: u64,
    pub bytes_fetched: u64,
    /// Chunks that became zeros (nothing fetched).
    pub chunks_zeroed: u64,
    pub duration_ms: u64,
}

/// The last failure, until an apply succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub at: u64,
    pub error: String,
}

/// A standby and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRecord {
    #[serde(flatten)]
    pub standby: Standby,
    pub created: u64,
    /// Snapshots taken so far (names the next one: `standby.N`).
    pub generation: u64,
    pub applied: Option<Applied>,
    pub applying: Option<Applying>,
    pub last_check: Option<u64>,
    pub last_apply: Option<LastApply>,
    pub last_error: Option<LastError>,
    /// Failures since the last successful poll (drives the retry delay).
    #[serde(default)]
    pub consecutive_failures: u32,
}

/// Seconds since the Unix epoch, as every time in a record is.
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn key(volume: &str) -> String {
    format!("{PREFIX}{volume}")
}

pub(super) async fn save(pool: &Pool, rec: &StandbyRecord) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(rec).expect("a standby serialises");
    pool.put_record(&key(&rec.standby.volume), &bytes).await?;
    Ok(())
}

pub(super) async fn remove(pool: &Pool, volume: &str) -> Result<(), OpError> {
    pool.delete_record(&key(volume)).await?;
    Ok(())
}

/// Every standby in the pool; a record that cannot be read is skipped
/// with a warning (and kept, for a later build that can).
pub(super) fn load_all(pool: &Pool) -> Result<Vec<StandbyRecord>, OpError> {
    let mut out = Vec::new();
    for (key, bytes) in pool.records(PREFIX)? {
        match serde_json::from_slice(&bytes) {
            Ok(s) => out.push(s),
            Err(e) => warn!("ignoring unreadable standby record {key}: {e}"),
        }
    }
    Ok(out)
}
