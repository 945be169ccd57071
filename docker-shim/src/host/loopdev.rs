//! Loop devices over the daemon's FUSE files (`losetup`), and finding the
//! ones an earlier daemon left.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::command;
use super::HostError;

/// A loop device on `file` with direct I/O, so that no page cache sits
/// between the filesystem on the device and the FUSE server (the file is
/// served without a page cache either way; direct I/O lets the loop driver
/// keep many requests in flight instead of one).
pub(super) async fn attach(file: &Path) -> Result<PathBuf, HostError> {
    let direct = command::run(
        "losetup",
        [
            "--find".as_ref(),
            "--show".as_ref(),
            "--direct-io=on".as_ref(),
            file.as_os_str(),
        ],
    )
    .await;
    let out = match direct {
        Ok(out) => out,
        Err(e) => {
            warn!("losetup with direct I/O failed ({e}); retrying without");
            command::run(
                "losetup",
                ["--find".as_ref(), "--show".as_ref(), file.as_os_str()],
            )
            .await?
        }
    };
    Ok(PathBuf::from(out.trim()))
}

/// Detaches loop `device` (deferred by the kernel while it is still open).
/// A device already gone is fine.
pub(super) async fn detach(device: &Path) -> Result<(), HostError> {
    match command::run("losetup", ["-d".as_ref(), device.as_os_str()]).await {
        Err(e) if backing_file(device).is_some() => Err(e),
        _ => Ok(()),
    }
}

/// The file behind loop `device`, if it is attached.
pub(super) fn backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Loop devices whose backing file lies under `dir`.
pub(super) fn under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("loop"))
        .map(|name| PathBuf::from("/dev").join(name))
        .filter(|dev| backing_file(dev).is_some_and(|f| f.starts_with(dir)))
        .collect();
    found.sort();
    found
}
