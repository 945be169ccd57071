//! What the shim needs from the daemon: volumes and where they are exported.

use std::future::Future;
use std::path::PathBuf;

/// A failed provider operation. The message is fit for the `docker` CLI
/// (one line); the cause is kept for whoever needs more than the message.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The pool refused or failed the operation.
    #[error(transparent)]
    Pool(#[from] ballast_engine::Error),
    /// An operation of the daemon's beyond the pool failed: a restore
    /// from a backup, or a delete the daemon refused (a standby). The
    /// operation's own error, message unchanged.
    #[error(transparent)]
    Operation(Box<dyn std::error::Error + Send + Sync>),
}

/// A volume as the driver reports it to Docker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSummary {
    pub name: String,
    pub size: u64,
    /// Bytes actually written; 0 means the volume was never touched.
    pub allocated: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// `VOL@SNAP` for a clone.
    pub origin: Option<String>,
}

/// The daemon side of the driver: where volumes come from. Names reaching
/// these methods have been validated already.
pub trait VolumeProvider: Send + Sync + 'static {
    fn create_volume(
        &self,
        name: &str,
        size: u64,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    fn clone_volume(
        &self,
        name: &str,
        origin_volume: &str,
        origin_snapshot: &str,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// Creates `name` from the backup at `url`, opened with the backup key
    /// named `key` if the destination is encrypted: served at once and
    /// hydrated in the background, or (`wait`) once every chunk is local.
    fn restore_backup(
        &self,
        name: &str,
        url: &str,
        key: Option<&str>,
        wait: bool,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;

    fn delete_volume(&self, name: &str) -> impl Future<Output = Result<(), ProviderError>> + Send;

    /// `None` when there is no such volume.
    fn volume(&self, name: &str) -> Result<Option<VolumeSummary>, ProviderError>;

    fn volumes(&self) -> Result<Vec<VolumeSummary>, ProviderError>;

    /// The unix socket on which the daemon serves volume `name` over NBD
    /// (read-write, export name = volume name).
    fn nbd_socket(&self) -> PathBuf;
}
