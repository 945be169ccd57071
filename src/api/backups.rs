//! Backups through the control API, the quick calls that answer at once:
//! list, inspect, delete. Backup, restore, verify and gc run as jobs
//! (`jobs.rs`).

use ballast_backupstore::{BackupStore, BackupUrl, StoreOptions, StoreUrl};
use ballast_engine::validate_name;
use tracing::info;

use super::query;
use super::state::{Answer, ApiReply};

/// `GET /v1/backups?dest=URL[&volume=VOL]`.
pub async fn list_backups(query: &str) -> Answer {
    let dest: StoreUrl = query::required(query, "dest")?.parse()?;
    let volume = query::param(query, "volume")?;
    if let Some(volume) = &volume {
        validate_name(volume)?;
    }
    ApiReply::ok(&open(&dest).await?.list(volume.as_deref()).await?)
}

/// `GET /v1/backups/inspect?backup=URL`.
pub async fn inspect_backup(query: &str) -> Answer {
    let b: BackupUrl = query::required(query, "backup")?.parse()?;
    ApiReply::ok(&open(&b.dest).await?.inspect(&b.volume, &b.id).await?)
}

/// `DELETE /v1/backups?backup=URL`.
pub async fn delete_backup(query: &str) -> Answer {
    let b: BackupUrl = query::required(query, "backup")?.parse()?;
    open(&b.dest).await?.delete(&b.volume, &b.id).await?;
    info!(backup = %b, "deleted backup");
    ApiReply::no_content()
}

async fn open(dest: &StoreUrl) -> Result<BackupStore, ballast_backupstore::Error> {
    BackupStore::open(dest, StoreOptions::default()).await
}
