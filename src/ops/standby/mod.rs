//! Standby volumes: a volume on this host that follows another volume's
//! backups in a destination, read-only (fenced in the engine) until it is
//! activated, and then an ordinary volume holding the newest backup it
//! had applied complete.
//!
//! [`Standbys`] is the one owner of the standbys and their state, in
//! memory and in the pool's metadata (`record.rs`); its loop (`run`)
//! polls each destination every `every` seconds as a daemon service and
//! applies a new backup incrementally (`apply.rs`). Activation takes the
//! apply's lock from it: it cancels the apply, undoes what it wrote (local
//! copies from the last complete snapshot) and lifts the fence, without
//! reaching the store.
//!
//! Rules:
//! - the head changes only under the standby's apply lock, by an apply or
//!   an undo; an apply names every chunk it may change in the record first;
//! - an apply cut short (cancelled, failed, crashed) is undone before
//!   anything else happens to the standby, so the next apply or the
//!   activation starts from the last complete backup;
//! - a failed poll is retried with a doubling delay (at most `every`) and
//!   recorded as `last_error` until one succeeds.

mod apply;
mod files;
mod record;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ballast_backupstore::StoreUrl;
use ballast_engine::{Pool, VolumeInfo};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::OpError;
use super::keys::{self, BackupKeys};
use super::restore::refuse_taken;
use apply::{Polled, Shown};
use record::{now, StandbyRecord};
pub use record::{LastApply, LastError, Standby};

/// How often the loop looks for standbys due a poll.
const TICK: Duration = Duration::from_millis(500);
const FIRST_BACKOFF_SECS: u64 = 1;

/// A standby and where it stands, as `standby list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    #[serde(flatten)]
    pub standby: Standby,
    /// `waiting` (no backup applied yet), `applying`, `following`, or
    /// `failing` (the last poll failed; the volume keeps its last
    /// complete backup).
    pub state: String,
    /// The newest backup the volume holds complete, and when it was taken.
    pub applied_backup: Option<String>,
    pub applied_created: Option<u64>,
    /// Seconds from the applied backup's creation to now.
    pub lag_secs: Option<u64>,
    pub applying_backup: Option<String>,
    pub last_check: Option<u64>,
    pub last_apply: Option<LastApply>,
    pub last_error: Option<LastError>,
}

impl StandbyStatus {
    fn of(rec: &StandbyRecord) -> Self {
        let state = if rec.applying.is_some() {
            "applying"
        } else if rec.last_error.is_some() {
            "failing"
        } else if rec.applied.is_some() {
            "following"
        } else {
            "waiting"
        };
        StandbyStatus {
            standby: rec.standby.clone(),
            state: state.into(),
            applied_backup: rec.applied.as_ref().map(|a| a.backup.clone()),
            applied_created: rec.applied.as_ref().map(|a| a.created),
            lag_secs: rec
                .applied
                .as_ref()
                .map(|a| now().saturating_sub(a.created)),
            applying_backup: rec.applying.as_ref().map(|a| a.backup.clone()),
            last_check: rec.last_check,
            last_apply: rec.last_apply.clone(),
            last_error: rec.last_error.clone(),
        }
    }
}

/// One standby in memory. `record` is the copy `list` reads; the apply
/// lock's holder owns the head and writes the record.
struct Entry {
    record: std::sync::Mutex<StandbyRecord>,
    apply: Arc<tokio::sync::Mutex<()>>,
    /// Set by an activation before it cancels: no new poll starts.
    activating: std::sync::atomic::AtomicBool,
    /// Cancels the apply in flight (replaced at each poll).
    cancel: std::sync::Mutex<CancellationToken>,
    /// When the next poll is due (seconds since the epoch).
    next_poll: std::sync::Mutex<u64>,
}

/// The daemon's standbys, by volume; cheap to clone.
#[derive(Clone)]
pub struct Standbys {
    pool: Pool,
    keys: BackupKeys,
    entries: Arc<std::sync::Mutex<HashMap<String, Arc<Entry>>>>,
}

fn fence_reason(s: &Standby) -> String {
    format!(
        "it is a standby of {} in {}; `ballast standby activate {}` makes it writable",
        s.source, s.dest, s.volume
    )
}

impl Standbys {
    /// At start-up, before anything serves a volume: every standby's
    /// volume is fenced again; a record whose volume is gone is removed.
    pub async fn load(pool: Pool, keys: BackupKeys) -> Result<Standbys, OpError> {
        let this = Standbys {
            pool,
            keys,
            entries: Arc::default(),
        };
        for rec in record::load_all(&this.pool)? {
            let volume = rec.standby.volume.clone();
            if this.pool.volume(&volume).is_err() {
                info!(
                    volume,
                    "removing the standby record of a volume that no longer exists"
                );
                record::remove(&this.pool, &volume).await?;
                files::remove(&files::dir(this.pool.root(), &volume));
                continue;
            }
            this.pool
                .set_read_only(&volume, Some(fence_reason(&rec.standby)))?;
            if let Some(a) = &rec.applying {
                info!(
                    volume,
                    backup = a.backup,
                    "an apply was cut short; it is undone at the next poll or activation"
                );
            }
            this.insert(rec);
        }
        Ok(this)
    }

    fn insert(&self, rec: StandbyRecord) {
        let volume = rec.standby.volume.clone();
        let entry = Arc::new(Entry {
            record: std::sync::Mutex::new(rec),
            apply: Arc::default(),
            activating: Default::default(),
            cancel: std::sync::Mutex::new(CancellationToken::new()),
            next_poll: std::sync::Mutex::new(0),
        });
        self.lock().insert(volume, entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.lock().expect("standbys")
    }

    fn entry(&self, volume: &str) -> Result<Arc<Entry>, OpError> {
        self.lock()
            .get(volume)
            .cloned()
            .ok_or_else(|| OpError::NotStandby {
                volume: volume.to_string(),
            })
    }

    /// Whether `volume` is a standby (its writes, grows and deletes are
    /// refused until it is activated).
    pub fn is_standby(&self, volume: &str) -> bool {
        self.lock().contains_key(volume)
    }

    /// Refuses to change `volume` (`what`: "deleted", "grown") if it is a
    /// standby: it changes only by its applies until it is activated.
    pub fn refuse(&self, volume: &str, what: &'static str) -> Result<(), OpError> {
        if self.is_standby(volume) {
            return Err(OpError::IsStandby {
                volume: volume.to_string(),
                what,
            });
        }
        Ok(())
    }

    /// Creates the standby volume `s.volume`, the size of the newest
    /// backup of `s.source` in `s.dest` (refused when there is none), and
    /// lets the loop apply it at once. The record is written before the
    /// volume exists: a crash between leaves a record the next start
    /// removes, never an unfenced volume.
    pub async fn create(&self, s: Standby) -> Result<StandbyStatus, OpError> {
        ballast_engine::validate_name(&s.volume)?;
        ballast_engine::validate_name(&s.source)?;
        refuse_taken(&self.pool, &s.volume)?;
        let dest: StoreUrl = s.dest.parse()?;
        let store = keys::open(&dest, self.keys.load(s.key.as_deref())?).await?;
        let newest =
            store
                .list(Some(&s.source))
                .await?
                .pop()
                .ok_or_else(|| OpError::NoSourceBackup {
                    source_volume: s.source.clone(),
                    dest: s.dest.clone(),
                })?;
        let rec = StandbyRecord {
            standby: s.clone(),
            created: now(),
            generation: 0,
            applied: None,
            applying: None,
            last_check: None,
            last_apply: None,
            last_error: None,
            consecutive_failures: 0,
        };
        // What an earlier standby of the name left, if its removal failed.
        files::remove(&files::dir(self.pool.root(), &s.volume));
        record::save(&self.pool, &rec).await?;
        let created: Result<VolumeInfo, OpError> = async {
            let info = self.pool.create_volume(&s.volume, newest.size).await?;
            self.pool.set_read_only(&s.volume, Some(fence_reason(&s)))?;
            Ok(info)
        }
        .await;
        if let Err(e) = created {
            if let Err(r) = record::remove(&self.pool, &s.volume).await {
                warn!(
                    volume = s.volume,
                    "removing the record of a standby not created: {r}"
                );
            }
            return Err(e);
        }
        let status = StandbyStatus::of(&rec);
        self.insert(rec);
        info!(
            volume = s.volume,
            source = s.source,
            dest = s.dest,
            "standby created"
        );
        Ok(status)
    }

    pub fn list(&self) -> Vec<StandbyStatus> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let mut out: Vec<StandbyStatus> = entries
            .iter()
            .map(|e| StandbyStatus::of(&e.record.lock().expect("record")))
            .collect();
        out.sort_by(|a, b| a.standby.volume.cmp(&b.standby.volume));
        out
    }

    pub fn status(&self, volume: &str) -> Option<StandbyStatus> {
        let entry = self.lock().get(volume).cloned()?;
        let rec = entry.record.lock().expect("record");
        Some(StandbyStatus::of(&rec))
    }

    /// Makes `volume` an ordinary writable volume holding the newest
    /// backup it applied complete: an apply in flight is cancelled and
    /// undone from the local snapshot; the store is not reached. Refused
    /// before the first backup is applied.
    pub async fn activate(&self, volume: &str) -> Result<StandbyStatus, OpError> {
        let entry = self.entry(volume)?;
        if entry.record.lock().expect("record").applied.is_none() {
            return Err(OpError::StandbyNotReady {
                volume: volume.to_string(),
            });
        }
        entry.activating.store(true, Ordering::SeqCst);
        entry.cancel.lock().expect("cancel").cancel();
        let _apply = entry.apply.lock().await;
        let mut rec = entry.record.lock().expect("record").clone();
        let held_by = rec.applying.as_ref().and_then(|a| a.hold.clone());
        let shown = Shown {
            pool: &self.pool,
            record: &entry.record,
        };
        if let Err(e) = apply::undo(&shown, &mut rec, None).await {
            entry.activating.store(false, Ordering::SeqCst);
            return Err(e);
        }
        let applied = rec.applied.clone().expect("checked above; never unset");
        // The record goes first: once it is gone a restart no longer
        // fences the volume, and the head already holds `applied`.
        record::remove(&self.pool, volume).await?;
        self.pool.set_read_only(volume, None)?;
        self.lock().remove(volume);
        apply::drop_older_snapshots(&self.pool, volume, "").await;
        files::remove(&files::dir(self.pool.root(), volume));
        info!(volume, backup = applied.backup, "standby activated");
        if let Some(key) = held_by {
            self.drop_hold_later(&rec.standby, key);
        }
        Ok(StandbyStatus::of(&rec))
    }

    /// Removes a hold a cut-short apply left, in the background: the
    /// activation does not wait for the store (the hold goes stale anyway).
    fn drop_hold_later(&self, s: &Standby, key: String) {
        let keys = self.keys.clone();
        let s = s.clone();
        tokio::spawn(async move {
            let dropped = async {
                let store = keys::open(&s.dest.parse()?, keys.load(s.key.as_deref())?).await?;
                store.drop_hold(&key).await?;
                Ok::<_, OpError>(())
            };
            if let Err(e) = dropped.await {
                warn!(volume = s.volume, "removing the hold {key}: {e}");
            }
        });
    }

    /// Polls every standby when it is due until `shutdown`; one poll per
    /// standby at a time, each in its own task.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut polls = tokio::task::JoinSet::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                Some(_) = polls.join_next(), if !polls.is_empty() => continue,
            }
            let due: Vec<(String, Arc<Entry>)> = self
                .lock()
                .iter()
                .filter(|(_, e)| *e.next_poll.lock().expect("next poll") <= now())
                .map(|(v, e)| (v.clone(), e.clone()))
                .collect();
            for (volume, entry) in due {
                let Ok(guard) = entry.apply.clone().try_lock_owned() else {
                    continue;
                };
                let this = self.clone();
                let stop = shutdown.clone();
                polls.spawn(async move { this.poll_one(&volume, &entry, guard, stop).await });
            }
        }
        for e in self.lock().values() {
            e.cancel.lock().expect("cancel").cancel();
        }
        while polls.join_next().await.is_some() {}
        Ok(())
    }

    async fn poll_one(
        &self,
        volume: &str,
        entry: &Entry,
        _apply: tokio::sync::OwnedMutexGuard<()>,
        shutdown: CancellationToken,
    ) {
        let cancel = shutdown.child_token();
        *entry.cancel.lock().expect("cancel") = cancel.clone();
        if entry.activating.load(Ordering::SeqCst) || !self.is_standby(volume) {
            return;
        }
        if let Err(ballast_engine::Error::NotFound { .. }) = self.pool.volume(volume) {
            // Deleted by a path that does not ask the standbys (the
            // Docker driver): the standby goes with it.
            info!(
                volume,
                "the standby's volume was deleted; forgetting the standby"
            );
            self.lock().remove(volume);
            if let Err(e) = record::remove(&self.pool, volume).await {
                warn!(volume, "removing the standby record: {e}");
            }
            files::remove(&files::dir(self.pool.root(), volume));
            return;
        }
        let mut rec = entry.record.lock().expect("record").clone();
        let shown = Shown {
            pool: &self.pool,
            record: &entry.record,
        };
        let polled = apply::poll(&shown, &self.keys, &mut rec, &cancel).await;
        let at = now();
        rec.last_check = Some(at);
        let every = rec.standby.every;
        let next = match polled {
            // Activation or shutdown: the apply in flight is undone by the
            // activation, or at the next start.
            Ok(Polled::Cancelled) => return,
            Ok(Polled::UpToDate | Polled::Applied) => {
                rec.last_error = None;
                rec.consecutive_failures = 0;
                at + every
            }
            Err(e) => {
                warn!(volume, "standby poll failed: {e}");
                rec.last_error = Some(LastError {
                    at,
                    error: e.to_string(),
                });
                rec.consecutive_failures += 1;
                let backoff =
                    FIRST_BACKOFF_SECS.saturating_mul(1 << (rec.consecutive_failures - 1).min(16));
                at + backoff.min(every)
            }
        };
        if let Err(e) = shown.save(&rec).await {
            warn!(volume, "recording the standby's poll: {e}");
        }
        *entry.next_poll.lock().expect("next poll") = next;
    }
}
