//! The Docker driver over the pool: [`PoolProvider`] (the pool as the
//! ballast-docker driver's [`VolumeProvider`]) and [`DockerDriver`] (that
//! driver on the Linux host). The daemon's Docker service runs it; the
//! control API's attach routes use the same driver.

use std::path::PathBuf;

use ballast_backupstore::NoProgress;
use ballast_docker::{Driver, LinuxHost, ProviderError, VolumeProvider, VolumeSummary};
use ballast_engine::{Error, Pool, VolumeInfo};

use crate::ops::error::OpError;
use crate::ops::keys::BackupKeys;
use crate::ops::restore::restore_backup;
use crate::ops::schedule::Scheduler;

/// The Docker driver as the daemon runs it.
pub type DockerDriver = Driver<PoolProvider, LinuxHost>;

/// The pool, as the driver sees it.
pub struct PoolProvider {
    pub pool: Pool,
    pub nbd_socket: PathBuf,
    /// The keys `backup_key=` names.
    pub keys: BackupKeys,
    /// A volume's backup schedules go with it (`docker volume rm`).
    pub schedules: Scheduler,
}

impl VolumeProvider for PoolProvider {
    async fn create_volume(&self, name: &str, size: u64) -> Result<(), ProviderError> {
        self.pool
            .create_volume(name, size)
            .await
            .map(drop)
            .map_err(ProviderError::Pool)
    }

    async fn clone_volume(
        &self,
        name: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<(), ProviderError> {
        self.pool
            .clone_volume(name, volume, snapshot)
            .await
            .map(drop)
            .map_err(ProviderError::Pool)
    }

    async fn restore_backup(
        &self,
        name: &str,
        url: &str,
        key: Option<&str>,
    ) -> Result<(), ProviderError> {
        restore_from_backup(&self.pool, &self.keys, name, url, key).await
    }

    async fn delete_volume(&self, name: &str) -> Result<(), ProviderError> {
        let removed = self
            .schedules
            .delete_volume(name)
            .await
            .map_err(ProviderError::Pool)?;
        for s in removed {
            tracing::info!(volume = name, dest = %s.dest, "backup schedule removed with the volume");
        }
        Ok(())
    }

    fn volume(&self, name: &str) -> Result<Option<VolumeSummary>, ProviderError> {
        match self.pool.volume(name) {
            Ok(info) => Ok(Some(summary(info))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(ProviderError::Pool(e)),
        }
    }

    fn volumes(&self) -> Result<Vec<VolumeSummary>, ProviderError> {
        Ok(self.pool.volumes().into_iter().map(summary).collect())
    }

    fn nbd_socket(&self) -> PathBuf {
        self.nbd_socket.clone()
    }
}

/// `docker volume create -o backup=URL [-o backup_key=NAME]`: restores
/// volume `name` from a backup, the same way `ballast create NAME --backup
/// URL [--key NAME]` does.
async fn restore_from_backup(
    pool: &Pool,
    keys: &BackupKeys,
    name: &str,
    url: &str,
    key: Option<&str>,
) -> Result<(), ProviderError> {
    let restore = async {
        let backup = url.parse().map_err(OpError::Store)?;
        let key = keys.load(key)?;
        restore_backup(pool, &backup, name, key, &NoProgress).await
    };
    restore
        .await
        .map(drop)
        .map_err(|e| ProviderError::Restore(Box::new(e)))
}

fn summary(info: VolumeInfo) -> VolumeSummary {
    VolumeSummary {
        name: info.name,
        size: info.size,
        allocated: info.allocated,
        created: info.created,
        origin: info.origin,
    }
}
