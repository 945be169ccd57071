//! The daemon's own unix sockets (control API, NBD), bound by the shared
//! unix-socket code: a stale socket is replaced, a live one refused.

use std::path::Path;

use anyhow::{anyhow, Result};
use ballast_unix_http::{BindError, BindOptions};
use tokio::net::UnixListener;

pub use ballast_unix_http::SocketFile;

/// The daemon's sockets are only for its own user.
const SOCKET_MODE: u32 = 0o600;

/// Binds the `what` socket (set by `flag`) at `path`, replacing a stale
/// socket left by a dead daemon but refusing to steal one that a live
/// daemon still answers on.
pub async fn bind(
    path: &Path,
    what: &'static str,
    flag: &str,
) -> Result<(UnixListener, SocketFile)> {
    let options = BindOptions {
        name: what,
        mode: SOCKET_MODE,
        dir_mode: None,
    };
    ballast_unix_http::bind(path, &options).map_err(|e| match e {
        BindError::InUse { path, .. } => anyhow!(
            "another ballast daemon is already listening on {}: stop it first or pass a different {flag}",
            path.display()
        ),
        other => other.into(),
    })
}
