//! The scheduler: the one owner of every schedule's state, and the loop
//! that starts their runs.
//!
//! Invariants, all kept under the `entries` lock, which is held across the
//! durable save of each change so that saves land in the order of the
//! changes:
//! - a run starts only when its schedule has none going
//!   (`running_since` is `None`); a regular slot that comes while one is
//!   going is counted in `skipped` and dropped;
//! - starting a run moves `slot` past now, so however many slots passed
//!   (the daemon was down), one run covers them all, and the next comes
//!   a whole interval after a catch-up run;
//! - a failure sets `next_run` to a retry time that grows with the
//!   failures in a row and is never later than the next regular slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_backupstore::{BackupInfo, BackupStore, GcOptions, NoProgress, StoreUrl};
use ballast_engine::Pool;
use tokio::sync::{oneshot, Mutex, RwLock, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::record::{self, LastFailure, LastSuccess, Schedule, ScheduleStatus};
use crate::ops::chain;
use crate::ops::error::OpError;
use crate::ops::jobs::{Jobs, Outcome};
use crate::ops::keys::{self, BackupKeys};
use crate::ops::operation::{self, Operation};

/// How often the loop looks for due runs.
const TICK: Duration = Duration::from_millis(250);
/// gc after scheduled runs at most this often per destination.
const GC_EVERY: u64 = 24 * 3600;
/// The longest first retry delay after a failure.
const MAX_RETRY_BASE: u64 = 300;

type Key = (String, String);

/// The daemon's backup schedules; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    jobs: Jobs,
    /// Where each run reads its schedule's backup key.
    keys: BackupKeys,
    /// Bounds the scheduled runs that upload at once.
    uploads: Semaphore,
    entries: Mutex<BTreeMap<Key, ScheduleStatus>>,
    /// Per destination: the scheduled runs backing up there (readers) and
    /// the scheduled gc (the writer). The store refuses a gc while a
    /// backup runs and a backup while a gc runs; this keeps the scheduler's
    /// own runs from refusing each other.
    stores: std::sync::Mutex<BTreeMap<String, Arc<RwLock<()>>>>,
}

impl Shared {
    fn store_turns(&self, dest: &str) -> Arc<RwLock<()>> {
        let mut stores = self.stores.lock().expect("store turns");
        stores.entry(dest.to_string()).or_default().clone()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first slot after `now` of the series `slot + k * every`.
fn slot_after(slot: u64, every: u64, now: u64) -> u64 {
    if slot > now {
        return slot;
    }
    slot + ((now - slot) / every + 1) * every
}

/// The next slot once a run starts at `now`: the next of the series, or
/// `now + every` if a whole slot was missed (the daemon was down), so the
/// catch-up run is not followed at once by the next.
fn next_slot(slot: u64, every: u64, now: u64) -> u64 {
    if now >= slot.saturating_add(every) {
        now + every
    } else {
        slot_after(slot, every, now)
    }
}

/// When to retry after `failures` failures in a row: a tenth of the
/// interval (1 s to 5 min), doubling with each failure.
fn retry_delay(every: u64, failures: u32) -> u64 {
    let base = (every / 10).clamp(1, MAX_RETRY_BASE);
    base.saturating_mul(1 << failures.saturating_sub(1).min(16))
}

impl Scheduler {
    /// Loads the schedules from the pool. A run a crash cut short is due
    /// at once.
    pub async fn load(
        pool: Pool,
        jobs: Jobs,
        keys: BackupKeys,
        concurrency: usize,
    ) -> Result<Scheduler, OpError> {
        let mut entries = BTreeMap::new();
        let t = now();
        for mut s in record::load_all(&pool)? {
            if let Some(since) = s.running_since.take() {
                info!(
                    volume = %s.schedule.volume, dest = %s.schedule.dest,
                    "the scheduled backup started at {since} did not finish; running it again"
                );
                s.next_run = t;
                record::save(&pool, &s).await?;
            }
            entries.insert((s.schedule.volume.clone(), s.schedule.dest.clone()), s);
        }
        info!("{} backup schedules loaded", entries.len());
        Ok(Scheduler {
            shared: Arc::new(Shared {
                pool,
                jobs,
                keys,
                uploads: Semaphore::new(concurrency.max(1)),
                entries: Mutex::new(entries),
                stores: Default::default(),
            }),
        })
    }

    /// Adds a schedule, or changes the interval and keep options of an
    /// existing one (its history stays). A new schedule's first run is due
    /// at once. The volume must exist.
    pub async fn set(&self, schedule: Schedule) -> Result<ScheduleStatus, OpError> {
        let t = now();
        let mut entries = self.shared.entries.lock().await;
        // Checked under the lock `delete_volume` holds: a schedule is never
        // set for a volume being deleted.
        self.shared.pool.volume(&schedule.volume)?;
        let key = (schedule.volume.clone(), schedule.dest.clone());
        let status = match entries.get(&key) {
            Some(old) => {
                let mut s = old.clone();
                s.slot = s.slot.min(t + schedule.every);
                s.next_run = s.next_run.min(s.slot);
                s.schedule = schedule;
                s
            }
            None => ScheduleStatus {
                schedule,
                created: t,
                next_run: t,
                slot: t,
                running_since: None,
                last_success: None,
                last_failure: None,
                last_duration_ms: None,
                runs: 0,
                successes: 0,
                failures: 0,
                consecutive_failures: 0,
                skipped: 0,
                last_skip: None,
                uploaded_bytes: 0,
            },
        };
        record::save(&self.shared.pool, &status).await?;
        entries.insert(key, status.clone());
        Ok(status)
    }

    pub async fn list(&self) -> Vec<ScheduleStatus> {
        self.shared.entries.lock().await.values().cloned().collect()
    }

    /// Removes a schedule; `false` if there is none. A run in flight
    /// finishes, unrecorded.
    pub async fn remove(&self, volume: &str, dest: &str) -> Result<bool, OpError> {
        let mut entries = self.shared.entries.lock().await;
        if entries
            .remove(&(volume.to_string(), dest.to_string()))
            .is_none()
        {
            return Ok(false);
        }
        record::remove(&self.shared.pool, volume, dest).await?;
        Ok(true)
    }

    /// Deletes `volume` and, in the same atomic metadata write, its
    /// schedules and the record of its backup snapshots
    /// (`ops::chain`), so neither outlives it: a later volume of the same
    /// name starts with no schedule and no incremental base. The API's and
    /// the Docker driver's deletes go through here (the daemon's own
    /// clean-ups of a failed restore or clone delete volumes it has just
    /// made). Returns the schedules removed; a run of one still going
    /// fails or finishes unrecorded.
    pub async fn delete_volume(
        &self,
        volume: &str,
    ) -> Result<Vec<Schedule>, ballast_engine::Error> {
        // Held across the delete: no run starts (and no record of one is
        // written) for the volume meanwhile.
        let mut entries = self.shared.entries.lock().await;
        let prefixes = [record::volume_prefix(volume), chain::volume_prefix(volume)];
        self.shared
            .pool
            .delete_volume_with_records(volume, &prefixes)
            .await?;
        let mut removed = Vec::new();
        entries.retain(|(v, _), s| {
            if v == volume {
                removed.push(s.schedule.clone());
            }
            v != volume
        });
        Ok(removed)
    }

    /// Starts due runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.tick(&shutdown).await {
                warn!("backup schedules: {e}");
            }
        }
    }

    async fn tick(&self, shutdown: &CancellationToken) -> Result<(), OpError> {
        let t = now();
        let mut entries = self.shared.entries.lock().await;
        for (key, s) in entries.iter_mut() {
            let every = s.schedule.every;
            // Each change is saved before it takes effect: a schedule
            // whose record cannot be written does not run (and is tried
            // again at the next tick).
            if s.running_since.is_none() && t >= s.next_run {
                let mut next = s.clone();
                next.running_since = Some(t);
                next.runs += 1;
                next.slot = next_slot(s.slot, every, t);
                next.next_run = next.slot;
                record::save(&self.shared.pool, &next).await?;
                *s = next;
                let this = self.clone();
                let (key, schedule, token) = (key.clone(), s.schedule.clone(), shutdown.clone());
                tokio::spawn(async move { this.run_one(key, schedule, t, token).await });
            } else if s.running_since.is_some() && t >= s.slot {
                let mut next = s.clone();
                next.skipped += 1;
                next.last_skip = Some(t);
                next.slot = slot_after(s.slot, every, t);
                next.next_run = next.slot;
                record::save(&self.shared.pool, &next).await?;
                *s = next;
                warn!(
                    volume = %s.schedule.volume, dest = %s.schedule.dest,
                    "scheduled backup skipped: the previous run is still going"
                );
            }
        }
        Ok(())
    }

    /// One run: backup (as a job), prune, gc when due; then its outcome
    /// recorded.
    async fn run_one(
        &self,
        key: Key,
        schedule: Schedule,
        started_at: u64,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let result = self.execute(&schedule, &shutdown).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        if shutdown.is_cancelled() {
            // Cut short by the daemon stopping: the record still says
            // running, so the next start runs it again.
            return;
        }
        let t = now();
        let mut entries = self.shared.entries.lock().await;
        // Removed meanwhile (and perhaps set again, with a run of its own).
        let Some(s) = entries
            .get_mut(&key)
            .filter(|s| s.running_since == Some(started_at))
        else {
            return;
        };
        s.running_since = None;
        s.last_duration_ms = Some(duration_ms);
        match result {
            Ok(done) => {
                info!(volume = %schedule.volume, backup = %done.info.url, "scheduled backup complete");
                s.consecutive_failures = 0;
                s.successes += 1;
                s.uploaded_bytes += done.info.new_bytes;
                s.last_success = Some(LastSuccess {
                    at: t,
                    backup: done.info.url,
                    duration_ms,
                    uploaded_bytes: done.info.new_bytes,
                    pruned: done.pruned,
                });
                if let Some(error) = done.afterwards {
                    s.failures += 1;
                    s.last_failure = Some(LastFailure { at: t, error });
                }
            }
            Err(error) => {
                warn!(volume = %schedule.volume, dest = %schedule.dest, "scheduled backup failed: {error}");
                s.failures += 1;
                s.consecutive_failures += 1;
                s.last_failure = Some(LastFailure { at: t, error });
                let retry = t + retry_delay(schedule.every, s.consecutive_failures);
                s.next_run = retry.min(s.slot);
            }
        }
        if let Err(e) = record::save(&self.shared.pool, s).await {
            warn!("recording a scheduled backup: {e}");
        }
    }

    async fn execute(
        &self,
        schedule: &Schedule,
        shutdown: &CancellationToken,
    ) -> Result<Done, String> {
        let _permit = tokio::select! {
            permit = self.shared.uploads.acquire() => permit.map_err(|e| e.to_string())?,
            () = shutdown.cancelled() => return Err("the daemon is stopping".into()),
        };
        let dest: StoreUrl = schedule
            .dest
            .parse()
            .map_err(|e: ballast_backupstore::Error| e.to_string())?;
        let key = self
            .shared
            .keys
            .load(schedule.key.as_deref())
            .map_err(|e| e.to_string())?;
        let turns = self.shared.store_turns(&schedule.dest);
        let backing_up = turns.read().await;
        let info = self
            .backup_job(&dest, &schedule.volume, key.clone())
            .await?;
        let store = keys::open(&dest, key).await.map_err(|e| e.to_string())?;
        let mut afterwards = None;
        let mut pruned = 0;
        if !schedule.keep.is_empty() {
            match store
                .prune(Some(&schedule.volume), &schedule.keep, false)
                .await
            {
                Ok(report) => pruned = report.removed,
                Err(e) => afterwards = Some(format!("prune after the backup failed: {e}")),
            }
        }
        drop(backing_up);
        // With another scheduled backup to this store running, the gc
        // waits for a later run.
        if let Ok(_alone) = turns.try_write() {
            if let Err(e) = self.gc_when_due(&store, &schedule.dest).await {
                afterwards.get_or_insert(format!("gc after the backup failed: {e}"));
            }
        }
        Ok(Done {
            info,
            pruned,
            afterwards,
        })
    }

    /// The backup as a daemon job (listed in `/v1/jobs`, cancelled at
    /// shutdown); its report once it ended.
    async fn backup_job(
        &self,
        dest: &StoreUrl,
        volume: &str,
        key: keys::Key,
    ) -> Result<BackupInfo, String> {
        let (tx, rx) = oneshot::channel();
        let operation = Operation::Backup {
            dest: dest.clone(),
            volume: volume.to_string(),
            snapshot: None,
            key,
        };
        let pool = self.shared.pool.clone();
        self.shared
            .jobs
            .spawn("backup", move |progress, cancel| async move {
                let outcome = operation::run(pool, operation, progress, cancel).await;
                let _ = tx.send(match &outcome {
                    Outcome::Done(value) => serde_json::from_value::<BackupInfo>(value.clone())
                        .map_err(|e| format!("unexpected backup report: {e}")),
                    Outcome::Failed(e) => Err(e.to_string().replace('\n', " ")),
                    Outcome::Cancelled => Err("the backup was cancelled".to_string()),
                });
                outcome
            });
        rx.await
            .unwrap_or_else(|_| Err("the backup job vanished".to_string()))
    }

    /// gc of `dest` if the scheduler has not run one there for a day.
    async fn gc_when_due(&self, store: &BackupStore, dest: &str) -> Result<(), OpError> {
        let pool = &self.shared.pool;
        let t = now();
        if record::last_gc(pool, dest)?.is_some_and(|at| t < at + GC_EVERY) {
            return Ok(());
        }
        let report = store.gc(&GcOptions::default(), &NoProgress).await?;
        info!(
            dest,
            deleted = report.deleted_chunks,
            "scheduled gc complete"
        );
        record::set_last_gc(pool, dest, t).await
    }
}

/// A successful run: the backup, what the prune removed, and a failure
/// of the prune or gc after it, if any.
struct Done {
    info: BackupInfo,
    pruned: u64,
    afterwards: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_skip_what_passed_and_retries_stay_before_the_next_slot() {
        assert_eq!(slot_after(100, 10, 50), 100);
        assert_eq!(slot_after(100, 10, 100), 110);
        // Down for 35 s with a 10 s interval: one slot, after now.
        assert_eq!(slot_after(100, 10, 135), 140);
        assert_eq!(next_slot(100, 10, 104), 110, "on time: the series goes on");
        assert_eq!(
            next_slot(100, 10, 135),
            145,
            "after missed slots: a full interval"
        );
        assert_eq!(retry_delay(600, 1), 60);
        assert_eq!(retry_delay(600, 3), 240);
        assert_eq!(retry_delay(3600, 1), MAX_RETRY_BASE);
        assert_eq!(retry_delay(2, 1), 1);
        assert_eq!(retry_delay(2, 4), 8);
        assert_eq!(retry_delay(1 << 40, 1), MAX_RETRY_BASE);
        assert!(retry_delay(60, 200) > 0);
    }
}
