//! Where the daemon keeps its pool and control socket when nothing says otherwise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

/// File name of the control socket inside the daemon's root directory.
const CONTROL_SOCKET: &str = "control.sock";

/// The default root: `/var/lib/ballast` for root, `$XDG_DATA_HOME/ballast`
/// (or `~/.local/share/ballast`) for everyone else.
pub fn default_root() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    root_for(
        euid,
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
    .ok_or_else(|| {
        anyhow!("cannot find a data directory: HOME is not set (pass --root DIR or --socket PATH)")
    })
}

/// The control socket of a daemon running on `root`.
pub fn control_socket(root: &Path) -> PathBuf {
    root.join(CONTROL_SOCKET)
}

fn root_for(euid: u32, xdg_data_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    if euid == 0 {
        return Some(PathBuf::from("/var/lib/ballast"));
    }
    // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    let xdg = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute());
    let data_home = match xdg {
        Some(dir) => dir,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".local/share"),
    };
    Some(data_home.join("ballast"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_uses_system_directory() {
        let root = root_for(0, Some("/x".into()), Some("/root".into())).unwrap();
        assert_eq!(root, PathBuf::from("/var/lib/ballast"));
    }

    #[test]
    fn users_prefer_xdg_data_home() {
        let root = root_for(1000, Some("/data".into()), Some("/home/u".into())).unwrap();
        assert_eq!(root, PathBuf::from("/data/ballast"));
    }

    #[test]
    fn users_fall_back_to_home() {
        let root = root_for(1000, None, Some("/home/u".into())).unwrap();
        assert_eq!(root, PathBuf::from("/home/u/.local/share/ballast"));
        let relative_xdg = root_for(1000, Some("data".into()), Some("/home/u".into())).unwrap();
        assert_eq!(relative_xdg, PathBuf::from("/home/u/.local/share/ballast"));
    }

    #[test]
    fn users_without_home_have_no_default() {
        assert_eq!(root_for(1000, None, None), None);
        assert_eq!(root_for(1000, None, Some("".into())), None);
    }

    #[test]
    fn socket_lives_in_root() {
        assert_eq!(
            control_socket(Path::new("/r")),
            PathBuf::from("/r/control.sock")
        );
    }
}
