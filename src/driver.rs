//! The Docker driver over the pool: [`PoolProvider`] (the pool as the
//! ballast-docker driver's [`VolumeProvider`]) and [`DockerDriver`] (that
//! driver on the Linux host). The daemon's Docker service runs it; the
//! control API's attach routes use the same driver. `backup=` restores
//! instantly through [`Hydrations`]; `hydrate=wait` restores fully first,
//! through `ops::restore`, as `ballast create --backup --wait` does.

use std::path::PathBuf;

use ballast_backupstore::NoProgress;
use ballast_docker::{Driver, LinuxHost, ProviderError, VolumeProvider, VolumeSummary};
use ballast_engine::{Error, Pool, VolumeInfo};

use crate::ops::error::OpError;
use crate::ops::hydrate::Hydrations;
use crate::ops::keys::BackupKeys;
use crate::ops::restore::restore_backup;
use crate::ops::schedule::Scheduler;
use crate::ops::standby::Standbys;
use crate::ops::volumes::delete_volume;

/// The Docker driver as the daemon runs it.
pub type DockerDriver = Driver<PoolProvider, LinuxHost>;

/// The pool, as the driver sees it.
pub struct PoolProvider {
    pub pool: Pool,
    /// Instant restores (`backup=`), and deletes that stop them.
    pub hydrations: Hydrations,
    pub nbd_socket: PathBuf,
    /// The keys `backup_key=` names.
    pub keys: BackupKeys,
    /// A volume's backup schedules go with it (`docker volume rm`).
    pub schedules: Scheduler,
    /// A standby is not removed (`docker volume rm` is refused).
    pub standbys: Standbys,
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

    /// `docker volume create -o backup=URL [-o backup_key=NAME]
    /// [-o hydrate=wait]`: the same as `ballast create NAME --backup URL
    /// [--key NAME] [--wait]`.
    async fn restore_backup(
        &self,
        name: &str,
        url: &str,
        key: Option<&str>,
        wait: bool,
    ) -> Result<(), ProviderError> {
        let restore = async {
            let backup = url.parse().map_err(OpError::Store)?;
            if wait {
                let key = self.keys.load(key)?;
                restore_backup(&self.pool, &backup, name, key, &NoProgress).await
            } else {
                self.hydrations
                    .start(&backup, name, key)
                    .await
                    .map(|(info, _)| info)
            }
        };
        restore
            .await
            .map(drop)
            .map_err(|e| ProviderError::Operation(Box::new(e)))
    }

    async fn delete_volume(&self, name: &str) -> Result<(), ProviderError> {
        let deleted = delete_volume(&self.hydrations, &self.schedules, &self.standbys, name).await;
        let removed = match deleted {
            Ok(removed) => removed,
            Err(OpError::Engine(e)) => return Err(ProviderError::Pool(e)),
            Err(e) => return Err(ProviderError::Operation(Box::new(e))),
        };
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

fn summary(info: VolumeInfo) -> VolumeSummary {
    VolumeSummary {
        name: info.name,
        size: info.size,
        allocated: info.allocated,
        created: info.created,
        origin: info.origin,
    }
}
