//! The daemon: opens the pool, starts the services, stops them cleanly.
//!
//! Start-up order matters: the root lock first (one daemon per root), then
//! the control socket (so a second daemon on the same socket is refused
//! before it touches the pool), then the pool, then the services. On
//! SIGINT/SIGTERM every service stops, then the pool gets its final commit.

mod commit;
mod config;
mod docker;
mod lock;
mod metrics;
mod nbd;
mod services;
mod socket;

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ballast_engine::{format_size, Pool, PoolConfig};
use tracing::info;

use crate::api::{self, state::ApiState};
use crate::driver::PoolProvider;
use crate::ops;
pub use config::DaemonConfig;
pub use nbd::{NbdConfig, TlsFiles};
use services::Services;
pub use socket::group_id;

/// How often the commit timer makes recent writes durable.
const COMMIT_PERIOD: Duration = Duration::from_secs(5);

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(config: DaemonConfig) -> Result<()> {
    let tls = nbd::load_tls(&config.nbd)?;
    let mut services = Services::new()?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.root)
        .with_context(|| format!("cannot create root directory {}", config.root.display()))?;
    let _root_lock = lock::RootLock::acquire(&config.root)?;
    let (listener, _socket_file) = socket::bind(
        &config.control_socket,
        "control",
        "--control-socket",
        socket::Access::Owner,
    )
    .await?;
    let nbd = nbd::bind(&config.nbd, tls, &config.root, docker::driver_runs()).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let docker_socket = config
        .docker_plugin
        .as_deref()
        .map(docker::bind)
        .transpose()?;

    let mut pool_config = PoolConfig::new(&config.root);
    pool_config.max_size = config.pool_size;
    pool_config.meta_cache = config.meta_cache;
    pool_config.io = config.io;
    pool_config.runtime = Some(tokio::runtime::Handle::current());
    let pool = tokio::task::spawn_blocking(move || Pool::open(pool_config))
        .await?
        .with_context(|| format!("cannot open the pool in {}", config.root.display()))?;
    if let Some(max) = config.pool_size {
        info!(max_size = %format_size(max), "pool size capped");
    }

    ops::restore::clean_up_interrupted(&pool).await;
    let jobs = ops::jobs::Jobs::default();
    let keys = ops::keys::BackupKeys::new(config.backup_key_dir.clone());
    // Before anything serves a volume: a hydrating volume is gated again.
    let hydrations = ops::hydrate::Hydrations::new(pool.clone(), jobs.clone(), keys.clone());
    hydrations.resume_all().await;
    let schedules = ops::schedule::Scheduler::load(
        pool.clone(),
        jobs.clone(),
        keys.clone(),
        config.backup_concurrency,
    )
    .await
    .context("cannot load the backup schedules")?;
    // Before anything serves a volume: every standby is fenced again.
    let standbys = ops::standby::Standbys::load(pool.clone(), keys.clone())
        .await
        .context("cannot load the standby volumes")?;
    let provider = PoolProvider {
        pool: pool.clone(),
        hydrations: hydrations.clone(),
        nbd_socket: nbd.driver_socket(),
        keys: keys.clone(),
        schedules: schedules.clone(),
        standbys: standbys.clone(),
    };
    let docker = docker::prepare(docker_socket, provider, &config.root, config.docker_attach)?;
    let state = Arc::new(ApiState {
        pool: pool.clone(),
        nbd: nbd.endpoints(),
        jobs: jobs.clone(),
        hydrations,
        schedules: schedules.clone(),
        standbys: standbys.clone(),
        keys,
        attach: docker.as_ref().map(docker::DockerService::driver),
    });
    if let Some(listener) = metrics_listener {
        let state = state.clone();
        services.spawn("metrics listener", move |shutdown| {
            metrics::serve(listener, state, shutdown)
        });
    }
    services.spawn("control API", move |shutdown| {
        api::server::serve(listener, state, shutdown.cancelled_owned())
    });
    services.spawn("commit timer", {
        let pool = pool.clone();
        move |shutdown| commit::run(pool, COMMIT_PERIOD, shutdown)
    });
    services.spawn("backup schedules", move |shutdown| schedules.run(shutdown));
    services.spawn("standby volumes", move |shutdown| standbys.run(shutdown));
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
