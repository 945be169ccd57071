//! Everything the daemon is told at start-up.

use std::path::PathBuf;

use ballast_engine::IoMode;

use super::nbd::NbdConfig;

/// Everything `ballast daemon` can be told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub control_socket: PathBuf,
    pub pool_size: Option<u64>,
    /// The metadata memory budget in bytes.
    pub meta_cache: u64,
    pub io: IoMode,
    pub nbd: NbdConfig,
    /// Serve the Docker volume plugin under this name.
    pub docker_plugin: Option<String>,
    /// How Docker volumes are attached; `None`: the best the host has.
    pub docker_attach: Option<ballast_docker::AttachPath>,
    /// Scheduled backups that may upload at once.
    pub backup_concurrency: usize,
    /// Serve `GET /metrics` on TCP here too.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where backup keys are looked up by name.
    pub backup_key_dir: Option<PathBuf>,
}
