//! The Docker volume service: the driver over the pool
//! ([`crate::driver`]), the plugin socket in `/run/docker/plugins/`,
//! start-up recovery of attachments left by an earlier daemon (taking
//! their FUSE connections over), and the same driver for `ballast attach`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ballast_docker::{AttachPath, Driver, Layout, LinuxHost, PLUGIN_DIR};
use ballast_fuse::holder::Holder;
use ballast_unix_http::SocketFile;
use tokio::net::UnixListener;
use tracing::info;

use super::services::Services;
use crate::driver::{DockerDriver, PoolProvider};

/// Driver state and mounts live in `ROOT/docker/`.
const DOCKER_DIR: &str = "docker";
/// The FUSE descriptor holder's socket, in `ROOT/docker/`.
const HOLDER_SOCKET: &str = "fuse-holder.sock";

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

/// Whether this daemon runs the driver: only root can attach and mount.
pub fn driver_runs() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

/// The driver and, when the Docker plugin is served, its socket.
pub struct DockerService {
    driver: Arc<DockerDriver>,
    plugin: Option<(UnixListener, SocketFile)>,
}

/// The driver over `provider`'s pool, for the Docker plugin (`plugin`:
/// its bound socket) and for `ballast attach`; `None` unless
/// [`driver_runs`].
pub fn prepare(
    plugin: Option<(UnixListener, SocketFile)>,
    provider: PoolProvider,
    root: &Path,
    attach: Option<AttachPath>,
) -> Result<Option<DockerService>> {
    if !driver_runs() {
        return Ok(None);
    }
    let dir = root.join(DOCKER_DIR);
    let host = LinuxHost::new(&dir, provider.pool.clone(), holder(&dir)?, attach);
    let driver = Arc::new(Driver::open(provider, host, Layout::new(dir))?);
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
                Some((listener, socket_file)) => {
                    info!(socket = %socket_file.path().display(), "serving the Docker volume plugin");
                    ballast_docker::serve(
                        listener,
                        Arc::clone(&driver),
                        shutdown.cancelled_owned(),
                    )
                    .await;
                    drop(socket_file);
                }
                None => shutdown.cancelled().await,
            }
            driver.shutdown().await;
            Ok(())
        });
    }
}
