//! Crash-safe restores.
//!
//! A restore writes into a temporary volume and renames it to the requested
//! name only once every chunk is in: the requested name never shows a
//! half-restored volume. The temporary name is journalled first, as a
//! marker file under `<pool root>/restoring/`, so a restore cut short —
//! cancelled, failed, or the daemon killed — is cleaned up: at once when
//! the daemon is still running, at the next start otherwise.

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_backupstore::{BackupUrl, Progress};
use ballast_engine::{Pool, VolumeInfo};
use tracing::{info, warn};

use super::error::OpError;
use super::keys::{open, Key};

/// Directory of the journal, under the pool root.
const JOURNAL_DIR: &str = "restoring";

/// One restore in flight: its temporary volume and journal marker.
#[derive(Clone)]
pub struct Restore {
    temp: String,
    marker: PathBuf,
}

impl Restore {
    /// Journals a new temporary volume name (durably) before anything is
    /// created under it.
    pub fn begin(pool: &Pool) -> Result<Restore, OpError> {
        let dir = pool.root().join(JOURNAL_DIR);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp = format!("restoring-{nanos:x}-{:x}", std::process::id());
        let marker = dir.join(&temp);
        let journal = || -> std::io::Result<()> {
            fs::create_dir_all(&dir)?;
            File::create(&marker)?.sync_all()?;
            File::open(&dir)?.sync_all()
        };
        journal().map_err(|e| OpError::journal(&dir, e))?;
        Ok(Restore { temp, marker })
    }

    /// Restores `backup` into the temporary volume, then renames it to
    /// `volume`. On failure the temporary volume is removed.
    pub async fn run(
        self,
        pool: &Pool,
        backup: &BackupUrl,
        volume: &str,
        key: Key,
        progress: &dyn Progress,
    ) -> Result<VolumeInfo, OpError> {
        let result = async {
            let store = open(&backup.dest, key).await?;
            store
                .restore(pool, &backup.volume, &backup.id, &self.temp, progress)
                .await?;
            Ok(pool.rename_volume(&self.temp, volume).await?)
        }
        .await;
        match &result {
            Ok(_) => info!(%backup, volume, "restored backup"),
            Err(_) => self.abandon_volume(pool).await,
        }
        self.forget();
        result
    }

    /// Removes what a restore cut short left behind.
    pub async fn abandon(self, pool: &Pool) {
        self.abandon_volume(pool).await;
        self.forget();
    }

    async fn abandon_volume(&self, pool: &Pool) {
        if pool.volume(&self.temp).is_err() {
            return;
        }
        match pool.delete_volume(&self.temp).await {
            Ok(()) => info!(
                volume = self.temp,
                "removed the partial volume of an unfinished restore"
            ),
            Err(e) => warn!(
                volume = self.temp,
                "cannot remove the partial volume of an unfinished restore: {e}"
            ),
        }
    }

    fn forget(&self) {
        if let Err(e) = fs::remove_file(&self.marker) {
            warn!(
                "cannot remove restore journal entry {}: {e}",
                self.marker.display()
            );
        }
    }
}

/// Restores `backup` into the new volume `volume` (crash-safe, see
/// [`Restore`]): what `ballast create --backup` and the Docker driver's
/// `backup=` option run.
pub async fn restore_backup(
    pool: &Pool,
    backup: &BackupUrl,
    volume: &str,
    key: Key,
    progress: &dyn Progress,
) -> Result<VolumeInfo, OpError> {
    refuse_taken(pool, volume)?;
    Restore::begin(pool)?
        .run(pool, backup, volume, key, progress)
        .await
}

/// Fails unless `volume` is free: a restore never replaces a volume.
pub fn refuse_taken(pool: &Pool, volume: &str) -> Result<(), ballast_engine::Error> {
    match pool.volume(volume) {
        Err(ballast_engine::Error::NotFound { .. }) => Ok(()),
        Ok(_) => Err(ballast_engine::Error::AlreadyExists {
            kind: "volume",
            name: volume.to_string(),
        }),
        Err(e) => Err(e),
    }
}

/// At start-up: removes the temporary volumes of restores a crash cut short.
pub async fn clean_up_interrupted(pool: &Pool) {
    let Ok(entries) = fs::read_dir(pool.root().join(JOURNAL_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(temp) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        Restore {
            temp,
            marker: entry.path(),
        }
        .abandon(pool)
        .await;
    }
}
