//! Backups through the control API, the quick calls that answer at once:
//! list, inspect, delete. Backup, restore, verify and gc run as jobs
//! (`jobs.rs`).

use ballast_backupstore::{BackupStore, BackupUrl, StoreOptions, StoreUrl};
use ballast_engine::validate_name;
use tracing::info;

use super::error::ApiError;
use super::query;
use super::state::{Answer, ApiReply, ApiState};
use crate::ops::keys;

/// `GET /v1/backups?dest=URL[&volume=VOL][&key=NAME]`: an encrypted
/// store's manifests open only with its key (named, in the key directory).
pub async fn list_backups(state: &ApiState, query: &str) -> Answer {
    let dest: StoreUrl = query::required(query, "dest")?.parse()?;
    let volume = query::param(query, "volume")?;
    if let Some(volume) = &volume {
        validate_name(volume)?;
    }
    let store = open_with_key(state, query, &dest).await?;
    ApiReply::ok(&store.list(volume.as_deref()).await?)
}

/// `GET /v1/backups/inspect?backup=URL[&key=NAME]`.
pub async fn inspect_backup(state: &ApiState, query: &str) -> Answer {
    let b: BackupUrl = query::required(query, "backup")?.parse()?;
    let store = open_with_key(state, query, &b.dest).await?;
    ApiReply::ok(&store.inspect(&b.volume, &b.id).await?)
}

async fn open_with_key(
    state: &ApiState,
    query: &str,
    dest: &StoreUrl,
) -> Result<BackupStore, ApiError> {
    let key = state.keys.load(query::param(query, "key")?.as_deref())?;
    Ok(keys::open(dest, key).await?)
}

/// `DELETE /v1/backups?backup=URL` (no key needed: only the manifest's
/// name is used).
pub async fn delete_backup(query: &str) -> Answer {
    let b: BackupUrl = query::required(query, "backup")?.parse()?;
    open(&b.dest).await?.delete(&b.volume, &b.id).await?;
    info!(backup = %b, "deleted backup");
    ApiReply::no_content()
}

async fn open(dest: &StoreUrl) -> Result<BackupStore, ballast_backupstore::Error> {
    BackupStore::open(dest, StoreOptions::default()).await
}
