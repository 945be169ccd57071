//! The daemon's own unix sockets (control API, NBD), bound by the shared
//! unix-socket code: a stale socket is replaced, a live one refused.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ballast_unix_http::{BindError, BindOptions};
use tokio::net::UnixListener;

pub use ballast_unix_http::SocketFile;

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

/// Binds the `what` socket (set by `flag`) at `path`, replacing a stale
/// socket left by a dead daemon but refusing to steal one that a live
/// daemon still answers on. The socket is never connectable by anyone
/// `access` does not allow, not even for a moment.
pub async fn bind(
    path: &Path,
    what: &'static str,
    flag: &str,
    access: Access,
) -> Result<(UnixListener, SocketFile)> {
    let options = BindOptions {
        name: what,
        mode: access.mode(),
        dir_mode: None,
        group: match access {
            Access::Owner => None,
            Access::Group(gid) => Some(gid),
        },
    };
    ballast_unix_http::bind(path, &options).map_err(|e| match e {
        BindError::InUse { path, .. } => anyhow!(
            "another ballast daemon is already listening on {}: stop it first or pass a different {flag}",
            path.display()
        ),
        other => other.into(),
    })
}

/// The id of group `name` (or a numeric id as is).
pub fn group_id(name: &str) -> Result<libc::gid_t> {
    if let Ok(gid) = name.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| anyhow!("{name:?} is not a group name"))?;
    // SAFETY: libc::group is plain data; all-zero is a valid value.
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
}
