//! The daemon's unix sockets (control API, NBD): stale-socket cleanup,
//! bind, permissions.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::UnixListener;
use tracing::info;

/// Who may connect to a socket besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The daemon's own user only (mode 0600).
    Owner,
    /// Members of this group too (mode 0660).
    Group(libc::gid_t),
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Owner => 0o600,
            Access::Group(_) => 0o660,
        }
    }
}

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
/// daemon still answers on. The socket is never connectable by anyone
/// `access` does not allow, not even for a moment.
pub async fn bind(
    path: &Path,
    what: &str,
    flag: &str,
    access: Access,
) -> Result<(UnixListener, SocketFile)> {
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
    let listener = bind_with_mode(path, access.mode())
        .with_context(|| format!("cannot bind {what} socket {}", path.display()))?;
    let file = SocketFile {
        path: path.to_path_buf(),
    };
    if let Access::Group(gid) = access {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(access.mode()))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    Ok((listener, file))
}

/// Binds `path` with the socket file created at `mode` (never wider), by
/// narrowing the umask around bind(2): a socket chmod-ed after bind could
/// be connected to, and its connection served, in between.
///
/// The umask is process-wide: this runs at start-up, before any service
/// that creates files, and restores the umask at once.
fn bind_with_mode(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    let mask = !mode & 0o777;
    // SAFETY: umask(2) only swaps the process's file mode creation mask.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the mask found.
    unsafe { libc::umask(old) };
    bound
}

/// The id of group `name` (or a numeric id as is).
pub fn group_id(name: &str) -> Result<libc::gid_t> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| anyhow!("{name:?} is not a group name"))?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes the
    // entry's strings into `buf`, which outlives the use of `group`.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc))
            .with_context(|| format!("cannot look up group {name:?}"));
    }
    if found.is_null() {
        bail!("no group named {name:?}");
    }
    Ok(group.gr_gid)
}

/// Whether users other than the owner can read `path` (a key file should
/// not be readable by them).
pub fn readable_by_others(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("4242").unwrap(), 4242);
        let err = group_id("no-such-group-ballast").unwrap_err().to_string();
        assert_eq!(err, r#"no group named "no-such-group-ballast""#);
    }

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
        for (name, mode) in [("owner.sock", 0o600), ("group.sock", 0o660)] {
            let path = dir.path().join(name);
            let _listener = {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _guard = rt.enter();
                bind_with_mode(&path, mode).unwrap()
            };
            let created = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(created, mode, "{name}");
        }
        assert_eq!(umask(), before);
    }
}
