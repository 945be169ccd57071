//! One long operation, checked and ready to run as a job.
//!
//! All backup work happens in the daemon, which owns the pool. S3
//! credentials come from the daemon's standard AWS chain (environment,
//! profile, instance metadata), never from a URL or a client.

use std::sync::Arc;

use ballast_backupstore::{
    BackupUrl, GcOptions, KeepOptions, Progress, ProgressCounter, StoreUrl, VerifyScope,
};
use ballast_engine::Pool;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::chain;
use super::error::OpError;
use super::jobs::Outcome;
use super::keys::{open, Key};
use super::restore::Restore;

/// A long operation whose URLs are parsed, names checked and key read.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Back up `volume@snapshot`, or a snapshot taken now.
    Backup {
        dest: StoreUrl,
        volume: String,
        snapshot: Option<String>,
        key: Key,
    },
    /// Restore `backup` into the new volume `volume`.
    Restore {
        backup: BackupUrl,
        volume: String,
        key: Key,
    },
    /// Re-read every chunk of one backup.
    VerifyBackup { backup: BackupUrl, key: Key },
    /// Re-read every chunk of every backup in `dest`.
    VerifyAll { dest: StoreUrl, key: Key },
    /// Remove chunks no backup references.
    Gc {
        dest: StoreUrl,
        options: GcOptions,
        key: Key,
    },
    /// Delete the backups `keep` does not keep.
    Prune {
        dest: StoreUrl,
        volume: Option<String>,
        keep: KeepOptions,
        dry_run: bool,
        key: Key,
    },
}

impl Operation {
    /// What the operation is called in job listings and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Backup { .. } => "backup",
            Operation::Restore { .. } => "restore",
            Operation::VerifyBackup { .. } | Operation::VerifyAll { .. } => "verify",
            Operation::Gc { .. } => "gc",
            Operation::Prune { .. } => "prune",
        }
    }
}

/// Runs `operation` to its end or until `cancel`. A cancelled operation is
/// dropped where it stands: the store keeps itself consistent (a backup's
/// manifest is written last, its lock is released on drop); only a
/// half-restored volume is ours to remove.
pub async fn run(
    pool: Pool,
    operation: Operation,
    progress: Arc<ProgressCounter>,
    cancel: CancellationToken,
) -> Outcome {
    let restore = match &operation {
        Operation::Restore { .. } => match Restore::begin(&pool) {
            Ok(r) => Some(r),
            Err(e) => return Outcome::Failed(e.into()),
        },
        _ => None,
    };
    let temp = restore.clone();
    let outcome = tokio::select! {
        result = execute(&pool, operation, restore, progress.as_ref()) => match result {
            Ok(value) => Outcome::Done(value),
            Err(e) => Outcome::Failed(e.into()),
        },
        () = cancel.cancelled() => Outcome::Cancelled,
    };
    if let (Outcome::Cancelled, Some(temp)) = (&outcome, temp) {
        temp.abandon(&pool).await;
    }
    outcome
}

async fn execute(
    pool: &Pool,
    operation: Operation,
    restore: Option<Restore>,
    progress: &dyn Progress,
) -> Result<serde_json::Value, OpError> {
    let value = match operation {
        Operation::Backup {
            dest,
            volume,
            snapshot,
            key,
        } => {
            let store = open(&dest, key).await?;
            let info = match snapshot {
                Some(snapshot) => {
                    store
                        .backup(pool, &volume, Some(&snapshot), progress)
                        .await?
                }
                None => chain::backup_volume(pool, &store, &volume, progress).await?,
            };
            info!(backup = %info.url, "backup complete");
            to_json(&info)
        }
        Operation::Restore {
            backup,
            volume,
            key,
        } => {
            let restore = restore.expect("restore jobs are journalled before they run");
            to_json(&restore.run(pool, &backup, &volume, key, progress).await?)
        }
        Operation::VerifyBackup { backup, key } => {
            let scope = VerifyScope::Backup {
                volume: &backup.volume,
                id: &backup.id,
            };
            to_json(
                &open(&backup.dest, key)
                    .await?
                    .verify(scope, progress)
                    .await?,
            )
        }
        Operation::VerifyAll { dest, key } => to_json(
            &open(&dest, key)
                .await?
                .verify(VerifyScope::All, progress)
                .await?,
        ),
        Operation::Gc { dest, options, key } => {
            to_json(&open(&dest, key).await?.gc(&options, progress).await?)
        }
        Operation::Prune {
            dest,
            volume,
            keep,
            dry_run,
            key,
        } => to_json(
            &open(&dest, key)
                .await?
                .prune(volume.as_deref(), &keep, dry_run)
                .await?,
        ),
    };
    Ok(value)
}

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("backup reports always serialise")
}
