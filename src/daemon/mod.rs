//! The daemon: opens the pool, starts the services, stops them cleanly.
//!
//! Start-up order matters: the root lock first (one daemon per root), then
//! the control socket (so a second daemon on the same socket is refused
//! before it touches the pool), then the pool, then the services. On
//! SIGINT/SIGTERM every service stops, then the pool gets its final commit.

mod commit;
pub mod docker;
mod lock;
mod nbd;
mod services;
mod socket;

use std::fs::DirBuilder;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ballast_engine::{format_size, IoMode, Pool, PoolConfig};
use tracing::info;

use crate::api::{self, ApiState};
use services::Services;

/// How often the commit timer makes recent writes durable.
const COMMIT_PERIOD: Duration = Duration::from_secs(5);

/// Everything `ballast daemon` can be told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub control_socket: PathBuf,
    pub pool_size: Option<u64>,
    pub io: IoMode,
    pub nbd_socket: PathBuf,
    pub nbd_listen: NbdListen,
    /// Serve the Docker volume plugin under this name.
    pub docker_plugin: Option<String>,
    /// How Docker volumes are attached; `None`: the best the host has.
    pub docker_attach: Option<ballast_docker::AttachPath>,
}

/// Where the NBD server listens on TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NbdListen {
    /// The default address: if it is taken (another daemon), serve NBD on
    /// the unix socket only and say so.
    Default(SocketAddr),
    /// An address the user asked for: failing to bind it stops start-up.
    Explicit(SocketAddr),
    Off,
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(config: DaemonConfig) -> Result<()> {
    let mut services = Services::new()?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.root)
        .with_context(|| format!("cannot create root directory {}", config.root.display()))?;
    let _root_lock = lock::RootLock::acquire(&config.root)?;
    let (listener, _socket_file) =
        socket::bind(&config.control_socket, "control", "--control-socket").await?;
    let nbd = nbd::bind(&config.nbd_socket, config.nbd_listen).await?;
    let docker_socket = config
        .docker_plugin
        .as_deref()
        .map(docker::bind)
        .transpose()?;

    let pool_config = PoolConfig {
        root: config.root.clone(),
        max_size: config.pool_size,
        io: config.io,
        runtime: Some(tokio::runtime::Handle::current()),
    };
    let pool = tokio::task::spawn_blocking(move || Pool::open(pool_config))
        .await?
        .with_context(|| format!("cannot open the pool in {}", config.root.display()))?;
    if let Some(max) = config.pool_size {
        info!(max_size = %format_size(max), "pool size capped");
    }

    api::restore::clean_up_interrupted(&pool).await;
    let jobs = api::jobs::Jobs::default();
    let docker = docker::prepare(
        docker_socket,
        pool.clone(),
        &config.root,
        &config.nbd_socket,
        config.docker_attach,
    )?;
    let state = Arc::new(ApiState {
        pool: pool.clone(),
        nbd: nbd.endpoints(),
        jobs: jobs.clone(),
        attach: docker.as_ref().map(docker::DockerService::driver),
    });
    services.spawn("control API", move |shutdown| {
        api::server::serve(listener, state, shutdown.cancelled_owned())
    });
    services.spawn("commit timer", {
        let pool = pool.clone();
        move |shutdown| commit::run(pool, COMMIT_PERIOD, shutdown)
    });
    nbd.spawn(&mut services, pool.clone());
    if let Some(docker) = docker {
        docker.spawn(&mut services);
    }
    // Further services are
    // spawned here the same way: `services.spawn(name, |token| future)`,
    // the future returning soon after `token` is cancelled.
    info!(control_socket = %config.control_socket.display(), "ballast daemon ready");

    let served = services.run().await;
    // Backup jobs use the pool: they stop (a restore removing its partial
    // volume) before the final commit.
    jobs.cancel_all().await;
    let closed = pool
        .close()
        .await
        .context("final commit of the pool failed");
    info!("ballast daemon stopped");
    served.and(closed)
}
