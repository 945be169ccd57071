//! Everything the daemon is told at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;

use ballast_engine::IoMode;

/// Everything `ballast daemon` can be told.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub control_socket: PathBuf,
    pub pool_size: Option<u64>,
    /// The metadata memory budget in bytes.
    pub meta_cache: u64,
    pub io: IoMode,
    pub nbd_socket: PathBuf,
    pub nbd_listen: NbdListen,
    /// Serve the Docker volume plugin under this name.
    pub docker_plugin: Option<String>,
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
