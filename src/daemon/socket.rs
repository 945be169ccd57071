//! The daemon's unix sockets (control API, NBD): stale-socket cleanup,
//! bind, permissions.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;
use tracing::info;

/// The daemon's sockets are only for its own user.
const SOCKET_MODE: u32 = 0o600;

/// Removes the socket file when dropped (a clean shutdown leaves nothing behind).
pub struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds the `what` socket (set by `flag`) at `path`, replacing a stale
/// socket left by a dead daemon but refusing to steal one that a live
/// daemon still answers on.
pub async fn bind(path: &Path, what: &str, flag: &str) -> Result<(UnixListener, SocketFile)> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                bail!(
                    "another ballast daemon is already listening on {}: stop it first or pass a different {flag}",
                    path.display()
                );
            }
            info!("removing stale {what} socket {}", path.display());
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind {what} socket {}", path.display()))?;
    let file = SocketFile {
        path: path.to_path_buf(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok((listener, file))
}
