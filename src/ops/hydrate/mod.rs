//! Instant restore: a volume created from a backup is served at once and
//! hydrated behind an engine gate (`hydration.rs`): reads fetch the chunks
//! they need, a background job (`background.rs`) fetches the rest, and
//! the journal (`journal.rs`) lets a restarted daemon carry on where the
//! last one stopped. [`Hydrations`] owns every hydration of the daemon.
//!
//! The "not yet local" state lives here, not in the engine: the engine's
//! maps know data and holes only, and the chunk table, the manifest and
//! the store are the backup's business. The engine only consults the gate.

mod background;
mod chunks;
mod demand;
mod hydration;
mod journal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ballast_backupstore::BackupUrl;
use ballast_engine::{Pool, VolumeInfo};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::OpError;
use super::jobs::{Jobs, Outcome};
use super::keys::{self, BackupKeys};
use super::restore::refuse_taken;
use background::Ended;
use hydration::{Hydration, StoreKey};
use journal::Journal;

/// How far a volume's hydration is (`ballast inspect`, `GET /v1/volumes/V`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrationStatus {
    /// The backup the volume is restored from.
    pub backup: String,
    /// The background job (`GET /v1/jobs/{job}`).
    pub job: u64,
    pub chunks_local: usize,
    pub chunks: usize,
    pub bytes_local: u64,
    /// Bytes the backup stores for this volume (zero chunks take none).
    pub bytes: u64,
    /// The last failure to fetch, until a later pass succeeds.
    pub error: Option<String>,
}

struct Running {
    hydration: Arc<Hydration>,
    job: u64,
}

/// The daemon's hydrating volumes, by name; cheap to clone.
#[derive(Clone)]
pub struct Hydrations {
    pool: Pool,
    jobs: Jobs,
    keys: BackupKeys,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl Hydrations {
    pub fn new(pool: Pool, jobs: Jobs, keys: BackupKeys) -> Self {
        Hydrations {
            pool,
            jobs,
            keys,
            running: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().expect("hydrations")
    }

    /// Creates `volume` from `backup` and returns once it is served: the
    /// manifest read, the backup held, the journal written and the volume
    /// gated. `key` names the backup key of an encrypted store (read from
    /// the key directory now and whenever the store is opened again).
    /// Returns the volume and the background job's id.
    pub async fn start(
        &self,
        backup: &BackupUrl,
        volume: &str,
        key: Option<&str>,
    ) -> Result<(VolumeInfo, u64), OpError> {
        ballast_engine::validate_name(volume)?;
        refuse_taken(&self.pool, volume)?;
        let store = keys::open(&backup.dest, self.keys.load(key)?).await?;
        let (hold, manifest) = store.hold(&backup.volume, &backup.id).await?;
        let begun = async {
            let local: Vec<bool> = manifest.chunks.iter().map(Option::is_none).collect();
            let journal =
                Journal::create(self.pool.root(), volume, backup, &manifest, &local, key)?;
            let size = manifest.size;
            let h = Arc::new(Hydration::new(
                volume,
                backup.clone(),
                manifest,
                &local,
                journal,
                Some(store),
                StoreKey {
                    name: key.map(str::to_owned),
                    keys: self.keys.clone(),
                },
            ));
            match self.pool.create_gated_volume(volume, size, h.clone()).await {
                Ok(info) => Ok((h, info)),
                Err(e) => {
                    if let Err(r) = h.journal.remove() {
                        warn!(
                            volume,
                            "removing the hydration journal of a failed restore: {r}"
                        );
                    }
                    Err(OpError::from(e))
                }
            }
        }
        .await;
        let (h, info) = match begun {
            Ok(v) => v,
            Err(e) => {
                if let Err(r) = hold.release().await {
                    warn!("releasing the hold on backup {backup}: {r}");
                }
                return Err(e);
            }
        };
        if let Err(e) = h.journal.save_hold(hold.key()) {
            warn!(volume, "recording the hold on {backup}: {e}");
        }
        *h.hold.lock().await = Some(hold);
        h.attach(self.pool.open_volume(volume)?);
        let job = self.spawn(h);
        info!(volume, %backup, job, "volume restored instantly; hydrating in the background");
        Ok((info, job))
    }

    /// At start-up, before anything is served: gates every volume a
    /// journal names and resumes its hydration; removes journals whose
    /// volume is gone (deleted, or never created before a crash).
    pub async fn resume_all(&self) {
        for (volume, dir) in Journal::list(self.pool.root()) {
            if self.pool.volume(&volume).is_err() {
                info!(
                    volume,
                    "removing the hydration journal of a volume that no longer exists"
                );
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    warn!("cannot remove {}: {e}", dir.display());
                }
                continue;
            }
            let loaded = match Journal::load(dir) {
                Ok(l) => l,
                Err(e) => {
                    // Left gated by nothing would read unfetched chunks as
                    // zeros: refuse to serve it instead.
                    warn!(volume, "{e}");
                    let refused = RefusedGate {
                        reason: e.to_string(),
                    };
                    let _ = self.pool.set_gate(&volume, Some(Arc::new(refused)));
                    continue;
                }
            };
            let h = Arc::new(Hydration::new(
                &volume,
                loaded.backup,
                loaded.manifest,
                &loaded.local,
                loaded.journal,
                None,
                StoreKey {
                    name: loaded.key,
                    keys: self.keys.clone(),
                },
            ));
            match self
                .pool
                .set_gate(&volume, Some(h.clone()))
                .and_then(|()| self.pool.open_volume(&volume))
            {
                Ok(handle) => h.attach(handle),
                Err(e) => {
                    warn!(volume, "cannot resume hydration: {e}");
                    continue;
                }
            }
            let (local, total, _, _) = h.counts();
            let job = self.spawn(h);
            info!(volume, job, local, total, "resuming hydration");
        }
    }

    fn spawn(&self, h: Arc<Hydration>) -> u64 {
        let this = self.clone();
        let hydration = h.clone();
        // Held across the spawn: the job cannot finish (and forget the
        // entry) before the entry exists.
        let mut running = self.lock();
        let job = self
            .jobs
            .spawn("hydrate", move |progress, cancel| async move {
                match background::run(h.clone(), progress, cancel).await {
                    Ended::Cancelled => Outcome::Cancelled,
                    Ended::Complete => match this.finish(&h).await {
                        Ok(()) => Outcome::Done(serde_json::json!({
                            "volume": h.volume,
                            "backup": h.backup.to_string(),
                        })),
                        Err(e) => Outcome::Failed(e.into()),
                    },
                }
            });
        running.insert(hydration.volume.clone(), Running { hydration, job });
        job
    }

    /// Every chunk is local: the gate goes, then the journal, then the
    /// hold on the backup. A crash before the journal is gone resumes a
    /// hydration with nothing left to fetch.
    async fn finish(&self, h: &Hydration) -> Result<(), OpError> {
        self.pool.set_gate(&h.volume, None)?;
        h.journal
            .remove()
            .map_err(|e| OpError::journal(h.journal.dir(), e))?;
        self.lock().remove(&h.volume);
        if let Some(hold) = h.hold.lock().await.take() {
            if let Err(e) = hold.release().await {
                warn!("releasing the hold on backup {}: {e}", h.backup);
            }
        }
        Ok(())
    }

    /// How far `volume`'s hydration is; `None` when it is not hydrating.
    pub fn status(&self, volume: &str) -> Option<HydrationStatus> {
        let (h, job) = {
            let running = self.lock();
            let r = running.get(volume)?;
            (r.hydration.clone(), r.job)
        };
        let error = h.last_error.lock().expect("last error").clone();
        let (chunks_local, chunks, bytes_local, bytes) = h.counts();
        Some(HydrationStatus {
            backup: h.backup.to_string(),
            job,
            chunks_local,
            chunks,
            bytes_local,
            bytes,
            error,
        })
    }

    /// Deletes `volume`, stopping its hydration first if it has one:
    /// `delete` deletes the volume itself (with whatever metadata goes
    /// with it) and runs once the hydration has stopped; then the journal
    /// and the hold on the backup go.
    pub async fn delete_volume<T>(
        &self,
        volume: &str,
        delete: impl std::future::Future<Output = Result<T, ballast_engine::Error>>,
    ) -> Result<T, OpError> {
        let running = self
            .lock()
            .get(volume)
            .map(|r| (r.hydration.clone(), r.job));
        if let Some((_, job)) = &running {
            self.jobs.cancel(*job).await;
        }
        let deleted = delete.await?;
        let dir = self.pool.root().join(journal::DIR).join(volume);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", dir.display());
            }
        }
        if let Some((h, _)) = running {
            self.lock().remove(volume);
            if let Some(hold) = h.hold.lock().await.take() {
                if let Err(e) = hold.release().await {
                    warn!("releasing the hold on backup {}: {e}", h.backup);
                }
            }
        }
        Ok(deleted)
    }
}

/// The gate of a volume whose hydration journal cannot be read: every
/// access fails, since what is local is unknown.
struct RefusedGate {
    reason: String,
}

impl RefusedGate {
    fn error(&self) -> ballast_engine::Error {
        ballast_engine::Error::NotLocal {
            what: "the volume's hydration state is lost".into(),
            source: self.reason.clone().into(),
        }
    }
}

impl ballast_engine::Gate for RefusedGate {
    fn readable(
        &self,
        _: u64,
        _: u64,
    ) -> futures::future::BoxFuture<'_, ballast_engine::Result<()>> {
        Box::pin(std::future::ready(Err(self.error())))
    }

    fn write<'a>(
        &'a self,
        _: u64,
        _: u64,
        _: futures::future::BoxFuture<'a, ballast_engine::Result<()>>,
    ) -> futures::future::BoxFuture<'a, ballast_engine::Result<()>> {
        Box::pin(std::future::ready(Err(self.error())))
    }

    fn missing(&self, offset: u64, len: u64) -> Vec<std::ops::Range<u64>> {
        std::iter::once(offset..offset + len).collect()
    }

    fn busy(&self) -> String {
        self.reason.clone()
    }
}
