//! The Docker volume plugin service: the pool as a [`VolumeProvider`] for
//! the ballast-docker driver, its socket in `/run/docker/plugins/`,
//! start-up recovery of mounts left by an earlier daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ballast_backupstore::NoProgress;
use ballast_docker::{
    Driver, Layout, LinuxHost, ProviderError, VolumeProvider, VolumeSummary, PLUGIN_DIR,
};
use ballast_engine::{Error, Pool, VolumeInfo};
use ballast_unix_http::SocketFile;
use tokio::net::UnixListener;
use tracing::info;

use super::services::Services;
use crate::ops::error::OpError;
use crate::ops::restore::restore_backup;

/// Driver state and mounts live in `ROOT/docker/`.
const DOCKER_DIR: &str = "docker";

/// The pool, as the driver sees it.
pub struct PoolProvider {
    pool: Pool,
    nbd_socket: PathBuf,
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

    async fn restore_backup(&self, name: &str, url: &str) -> Result<(), ProviderError> {
        restore_from_backup(&self.pool, name, url).await
    }

    async fn delete_volume(&self, name: &str) -> Result<(), ProviderError> {
        self.pool
            .delete_volume(name)
            .await
            .map_err(ProviderError::Pool)
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

/// `docker volume create -o backup=URL`: restores volume `name` from a
/// backup, the same way `ballast create NAME --backup URL` does.
async fn restore_from_backup(pool: &Pool, name: &str, url: &str) -> Result<(), ProviderError> {
    let restore = async {
        let backup = url.parse().map_err(OpError::Store)?;
        restore_backup(pool, &backup, name, &NoProgress).await
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

/// The plugin socket for plugin `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{name}.sock"))
}

/// Binds the plugin socket (replacing a stale one) before the pool opens,
/// so a taken plugin name stops start-up early.
pub fn bind(name: &str) -> Result<(UnixListener, SocketFile)> {
    let path = socket_path(name);
    ballast_docker::bind(&path).with_context(|| {
        format!(
            "cannot serve the Docker plugin {name:?} on {} (pick another name with --docker-plugin NAME{})",
            path.display(),
            if name == "ballast" { ", or pass --no-docker-plugin" } else { "" }
        )
    })
}

/// Recovers earlier mounts, then serves Docker until shutdown.
pub fn spawn(
    services: &mut Services,
    (listener, socket_file): (UnixListener, SocketFile),
    pool: Pool,
    root: &Path,
    nbd_socket: &Path,
) -> Result<()> {
    let dir = root.join(DOCKER_DIR);
    let backend = PoolProvider {
        pool,
        nbd_socket: nbd_socket.to_path_buf(),
    };
    let host = LinuxHost::new(&dir);
    let driver = Driver::open(backend, host, Layout::new(dir))?;
    services.spawn("Docker plugin", move |shutdown| async move {
        let driver = Arc::new(driver);
        driver.recover().await;
        info!(socket = %socket_file.path().display(), "serving the Docker volume plugin");
        ballast_docker::serve(listener, driver, shutdown.cancelled_owned()).await;
        drop(socket_file);
        Ok(())
    });
    Ok(())
}
