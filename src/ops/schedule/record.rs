//! A schedule and its state as the pool's metadata keeps them: one JSON
//! record per schedule under `schedule/VOL/DEST`, written (durably) at
//! every change of state, so a restart or a `kill -9` loses nothing but a
//! run in flight, which the next start runs again.

use ballast_backupstore::KeepOptions;
use ballast_engine::Pool;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ops::error::OpError;

const PREFIX: &str = "schedule/";

/// What the user set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub volume: String,
    /// The destination URL, as the store prints it.
    pub dest: String,
    /// Seconds between runs.
    pub every: u64,
    #[serde(default)]
    pub keep: KeepOptions,
    /// The backup key of an encrypted destination, by name in the
    /// daemon's key directory (read at every run; never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The last successful run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSuccess {
    /// When it finished.
    pub at: u64,
    pub backup: String,
    pub duration_ms: u64,
    /// Bytes of new chunks the backup uploaded (before compression).
    pub uploaded_bytes: u64,
    /// Backups the prune after it removed.
    pub pruned: u64,
}

/// The last failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastFailure {
    pub at: u64,
    pub error: String,
}

/// A schedule and where it stands, as `schedule list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    #[serde(flatten)]
    pub schedule: Schedule,
    pub created: u64,
    /// When the next run is due (a retry after a failure comes earlier
    /// than the next regular slot).
    pub next_run: u64,
    /// The next regular slot: runs are due at `slot`, `slot + every`, ...
    pub slot: u64,
    /// Set while a run is going (in the record too: a start that finds
    /// it set after a crash runs again at once).
    pub running_since: Option<u64>,
    pub last_success: Option<LastSuccess>,
    pub last_failure: Option<LastFailure>,
    /// The last run's duration in milliseconds, whatever its outcome.
    #[serde(default)]
    pub last_duration_ms: Option<u64>,
    /// Runs started, runs whose backup succeeded, failures (of a backup,
    /// or of the prune or gc after one).
    #[serde(default)]
    pub runs: u64,
    #[serde(default)]
    pub successes: u64,
    #[serde(default)]
    pub failures: u64,
    /// Failures since the last success (drives the retry delay).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Slots skipped because the previous run was still going.
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub last_skip: Option<u64>,
    /// Bytes uploaded by all successful runs.
    #[serde(default)]
    pub uploaded_bytes: u64,
}

pub(super) fn key(volume: &str, dest: &str) -> String {
    format!("{PREFIX}{volume}/{dest}")
}

/// When the daemon last ran gc on `dest` for a schedule.
pub(super) fn gc_key(dest: &str) -> String {
    format!("schedule-gc/{dest}")
}

pub(super) async fn save(pool: &Pool, status: &ScheduleStatus) -> Result<(), OpError> {
    let bytes = serde_json::to_vec(status).expect("a schedule serialises");
    let key = key(&status.schedule.volume, &status.schedule.dest);
    pool.put_record(&key, &bytes).await?;
    Ok(())
}

pub(super) async fn remove(pool: &Pool, volume: &str, dest: &str) -> Result<(), OpError> {
    pool.delete_record(&key(volume, dest)).await?;
    Ok(())
}

/// Every schedule in the pool; a record that cannot be read is skipped
/// with a warning (and kept, for a later build that can).
pub(super) fn load_all(pool: &Pool) -> Result<Vec<ScheduleStatus>, OpError> {
    let mut out = Vec::new();
    for (key, bytes) in pool.records(PREFIX)? {
        match serde_json::from_slice(&bytes) {
            Ok(s) => out.push(s),
            Err(e) => warn!("ignoring unreadable schedule record {key}: {e}"),
        }
    }
    Ok(out)
}

pub(super) fn last_gc(pool: &Pool, dest: &str) -> Result<Option<u64>, OpError> {
    Ok(pool
        .record(&gc_key(dest))?
        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()))
}

pub(super) async fn set_last_gc(pool: &Pool, dest: &str, at: u64) -> Result<(), OpError> {
    pool.put_record(&gc_key(dest), at.to_string().as_bytes())
        .await?;
    Ok(())
}
