//! The Docker volume plugin service: the pool as a [`Backend`] for the
//! ballast-docker driver, its socket in `/run/docker/plugins/`, start-up
//! recovery of mounts left by an earlier daemon; the same driver attaches
//! volumes for `ballast attach`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ballast_backupstore::NoProgress;
use ballast_docker::{
    AttachPath, Backend, BackendError, Driver, Layout, LinuxHost, VolumeSummary, PLUGIN_DIR,
};
use ballast_engine::{Error, Pool, VolumeInfo};
use ballast_fuse::holder::Holder;
use tokio::net::UnixListener;
use tracing::info;

use super::services::Services;

/// Driver state and mounts live in `ROOT/docker/`.
const DOCKER_DIR: &str = "docker";
/// The FUSE descriptor holder's socket, in `ROOT/docker/`.
const HOLDER_SOCKET: &str = "fuse-holder.sock";

/// The pool, as the driver sees it.
pub struct PoolBackend {
    pool: Pool,
    nbd_socket: PathBuf,
}

impl Backend for PoolBackend {
    async fn create_volume(&self, name: &str, size: u64) -> Result<(), BackendError> {
        self.pool
            .create_volume(name, size)
            .await
            .map(drop)
            .map_err(message)
    }

    async fn clone_volume(
        &self,
        name: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<(), BackendError> {
        self.pool
            .clone_volume(name, volume, snapshot)
            .await
            .map(drop)
            .map_err(message)
    }

    async fn restore_backup(&self, name: &str, url: &str) -> Result<(), BackendError> {
        restore_from_backup(&self.pool, name, url).await
    }

    async fn delete_volume(&self, name: &str) -> Result<(), BackendError> {
        self.pool.delete_volume(name).await.map_err(message)
    }

    fn volume(&self, name: &str) -> Result<Option<VolumeSummary>, BackendError> {
        match self.pool.volume(name) {
            Ok(info) => Ok(Some(summary(info))),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(message(e)),
        }
    }

    fn volumes(&self) -> Result<Vec<VolumeSummary>, BackendError> {
        Ok(self.pool.volumes().into_iter().map(summary).collect())
    }

    fn nbd_socket(&self) -> PathBuf {
        self.nbd_socket.clone()
    }
}

/// `docker volume create -o backup=URL`: restores volume `name` from a
/// backup, the same way `ballast create NAME --backup URL` does.
async fn restore_from_backup(pool: &Pool, name: &str, url: &str) -> Result<(), BackendError> {
    let restore = async {
        let backup = url.parse()?;
        crate::api::backups::restore_backup(pool, &backup, name, &NoProgress).await
    };
    restore
        .await
        .map(drop)
        .map_err(|e| BackendError(e.to_string()))
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

fn message(e: Error) -> BackendError {
    BackendError(e.to_string())
}

/// The plugin socket for plugin `name`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(PLUGIN_DIR).join(format!("{name}.sock"))
}

/// Binds the plugin socket (replacing a stale one) before the pool opens,
/// so a taken plugin name stops start-up early.
pub fn bind(name: &str) -> Result<(UnixListener, PathBuf)> {
    let path = socket_path(name);
    let listener = ballast_docker::bind(&path).with_context(|| {
        format!(
            "cannot serve the Docker plugin {name:?} on {} (pick another name with --docker-plugin NAME{})",
            path.display(),
            if name == "ballast" { ", or pass --no-docker-plugin" } else { "" }
        )
    })?;
    Ok((listener, path))
}

/// The holder that keeps FUSE connections open across restarts: this
/// binary's hidden `fuse-holder` command.
fn holder(dir: &Path) -> Result<Holder> {
    let socket = dir.join(HOLDER_SOCKET);
    let exe = std::env::current_exe().context("cannot find the ballast binary")?;
    let command = vec![
        exe.into_os_string(),
        "fuse-holder".into(),
        "--socket".into(),
        socket.clone().into_os_string(),
    ];
    Ok(Holder::new(socket, command))
}

/// The Docker driver as the daemon runs it.
pub type DockerDriver = Driver<PoolBackend, LinuxHost>;

/// The driver and, when the Docker plugin is served, its socket.
pub struct DockerService {
    driver: Arc<DockerDriver>,
    plugin: Option<(UnixListener, PathBuf)>,
}

/// The driver over `pool`, for the Docker plugin (`plugin`: its bound
/// socket) and for `ballast attach`. `None` unless the daemon runs as root:
/// only root can attach and mount.
pub fn prepare(
    plugin: Option<(UnixListener, PathBuf)>,
    pool: Pool,
    root: &Path,
    nbd_socket: &Path,
    attach: Option<AttachPath>,
) -> Result<Option<DockerService>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let dir = root.join(DOCKER_DIR);
    let backend = PoolBackend {
        pool: pool.clone(),
        nbd_socket: nbd_socket.to_path_buf(),
    };
    let host = LinuxHost::new(&dir, pool, holder(&dir)?, attach);
    let driver = Arc::new(Driver::open(backend, host, Layout::new(dir))?);
    Ok(Some(DockerService { driver, plugin }))
}

impl DockerService {
    pub fn driver(&self) -> Arc<DockerDriver> {
        Arc::clone(&self.driver)
    }

    /// Recovers earlier attachments (taking over the FUSE connections an
    /// earlier daemon left), serves the plugin (if any) until shutdown,
    /// then pauses the FUSE connections for the next daemon.
    pub fn spawn(self, services: &mut Services) {
        let DockerService { driver, plugin } = self;
        services.spawn("Docker volumes", move |shutdown| async move {
            driver.recover().await;
            match plugin {
                Some((listener, path)) => {
                    info!(socket = %path.display(), "serving the Docker volume plugin");
                    ballast_docker::serve(
                        listener,
                        Arc::clone(&driver),
                        shutdown.cancelled_owned(),
                    )
                    .await;
                    let _ = fs::remove_file(&path);
                }
                None => shutdown.cancelled().await,
            }
            driver.shutdown().await;
            Ok(())
        });
    }
}
