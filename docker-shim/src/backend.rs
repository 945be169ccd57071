//! What the shim needs from the daemon: volumes and where they are exported.

use std::future::Future;
use std::path::PathBuf;

/// A failed backend operation, as a message fit for the `docker` CLI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

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

/// The daemon side of the driver. Names reaching these methods have been
/// validated already.
pub trait Backend: Send + Sync + 'static {
    fn create_volume(
        &self,
        name: &str,
        size: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    fn clone_volume(
        &self,
        name: &str,
        origin_volume: &str,
        origin_snapshot: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Creates `name` from the backup at `url`.
    fn restore_backup(
        &self,
        name: &str,
        url: &str,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    fn delete_volume(&self, name: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// `None` when there is no such volume.
    fn volume(&self, name: &str) -> Result<Option<VolumeSummary>, BackendError>;

    fn volumes(&self) -> Result<Vec<VolumeSummary>, BackendError>;

    /// The unix socket on which the daemon serves volume `name` over NBD
    /// (read-write, export name = volume name).
    fn nbd_socket(&self) -> PathBuf;
}
