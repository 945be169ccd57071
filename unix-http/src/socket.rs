//! Binding a unix socket the way a daemon must: a socket file left by a dead
//! process is replaced, a live one (something still accepts on it) and any
//! other kind of file are never touched, and the socket file is created
//! with its final mode: nobody outside it can connect, not even for a moment.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::info;

/// How a socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    /// What the socket is for, in log lines ("control", "NBD", ...).
    pub name: &'static str,
    /// Permission bits of the socket file (connecting needs write access).
    pub mode: u32,
    /// Permission bits of the parent directory if it has to be created;
    /// `None` leaves them to the process umask.
    pub dir_mode: Option<u32>,
    /// The group the socket file is given (its owner stays the process's
    /// user); `None` keeps the process's group.
    pub group: Option<u32>,
}

/// Why a socket could not be bound. Each message names the path.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something accepts connections on the socket: it is not stale.
    #[error("{} is in use by another {name} server", path.display())]
    InUse { path: PathBuf, name: &'static str },
    /// The path holds a file that is not a socket; it is left alone.
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BindError {
        let path = path.to_path_buf();
        move |source| BindError::Io {
            action,
            path,
            source,
        }
    }
}

/// The socket file of a bound listener; removed when dropped, so a clean
/// shutdown leaves nothing behind. Keep it as long as the listener serves.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds `path` (creating its directory if needed), replacing a stale
/// socket. Must run inside a tokio runtime.
pub fn bind(path: &Path, options: &BindOptions) -> Result<(UnixListener, SocketFile), BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let created = !dir.exists();
        let mut builder = DirBuilder::new();
        builder.recursive(true);
        if let Some(mode) = options.dir_mode {
            builder.mode(mode);
        }
        builder
            .create(dir)
            .map_err(BindError::io("create directory", dir))?;
        // Exactly `mode` for a directory made here: the umask is process-wide,
        // and another bind may have narrowed it (`bind_with_mode`) meanwhile.
        if let (true, Some(mode)) = (created, options.dir_mode) {
            fs::set_permissions(dir, Permissions::from_mode(mode))
                .map_err(BindError::io("set permissions on", dir))?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if is_live(path) {
                return Err(BindError::InUse {
                    path: path.to_path_buf(),
                    name: options.name,
                });
            }
            info!("removing stale {} socket {}", options.name, path.display());
            fs::remove_file(path).map_err(BindError::io("remove stale socket", path))?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(BindError::io("inspect", path)(e)),
    }
    let listener =
        bind_with_mode(path, options.mode).map_err(BindError::io("bind socket", path))?;
    // From here on the file is ours: removed again if the rest fails.
    let file = SocketFile {
        path: path.to_path_buf(),
    };
    if let Some(gid) = options.group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(BindError::io("change the group of", path))?;
    }
    // Exactly `mode` even where the umask did not apply: a directory with
    // a default ACL sets a new file's mode from the ACL instead.
    fs::set_permissions(path, Permissions::from_mode(options.mode))
        .map_err(BindError::io("set permissions on", path))?;
    Ok((listener, file))
}

/// Binds `path` with the socket file created at `mode` or narrower, by
/// narrowing the umask around bind(2): a socket chmod-ed only after bind
/// could be connected to, and its connection served, in between.
///
/// The umask is process-wide: daemons bind at start-up, before any service
/// that creates files, and the umask is restored at once.
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let mask = !mode & 0o777;
    // SAFETY: umask(2) only swaps the process's file mode creation mask.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the mask found.
    unsafe { libc::umask(old) };
    bound
}

/// Whether a process accepts connections on the socket at `path`. A full
/// backlog (`EAGAIN`) is a live listener too; refused means nobody is there.
fn is_live(path: &Path) -> bool {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's umask, read without changing it.
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
    }

    #[test]
    fn sockets_are_created_with_their_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let before = umask();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        for (name, mode) in [("owner.sock", 0o600), ("group.sock", 0o660)] {
            let path = dir.path().join(name);
            let _listener = bind_with_mode(&path, mode).unwrap();
            let created = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(created, mode, "{name}");
        }
        assert_eq!(umask(), before);
    }
}
