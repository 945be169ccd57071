//! Attaching through `nbdfuse` and a loop device, for hosts without the
//! kernel NBD driver: nbdfuse (libnbd) exposes the export as the file
//! `DIR/nbd` on a FUSE mount, and `losetup` makes a block device of it.

use std::fmt::Write;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tracing::warn;

use super::command::{self, not_runnable};
use super::mountinfo::is_mount_point;
use super::HostError;

/// How long nbdfuse gets to connect and mount.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a FUSE mount may stay busy (the loop device letting go).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A running nbdfuse and the loop device on its file.
pub struct Attached {
    pub child: Child,
    pub pid: u32,
    pub device: PathBuf,
}

/// `nbd+unix:///EXPORT?socket=PATH` (libnbd's URI form).
pub fn unix_uri(socket: &Path, export: &str) -> String {
    let mut uri = format!("nbd+unix:///{export}?socket=");
    for &b in socket.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(b as char);
        } else {
            let _ = write!(uri, "%{b:02X}");
        }
    }
    uri
}

/// Starts nbdfuse on `dir` for `uri` and attaches a loop device to its file.
pub async fn attach(dir: &Path, uri: &str) -> Result<Attached, HostError> {
    fs::create_dir_all(dir)
        .map_err(|e| HostError(format!("cannot create {}: {e}", dir.display())))?;
    let log_path = dir.with_extension("log");
    let log = File::create(&log_path)
        .map_err(|e| HostError(format!("cannot create {}: {e}", log_path.display())))?;
    let mut child = Command::new("nbdfuse")
        .arg(format!("{}/", dir.display()))
        .arg(uri)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| not_runnable("nbdfuse", e))?;
    let pid = child.id().unwrap_or_default();
    let file = dir.join("nbd");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(HostError(format!(
                "nbdfuse exited ({status}): {}",
                log.lines().last().unwrap_or("no message")
            )));
        }
        if is_mount_point(dir) && file.is_file() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            let _ = command::run("umount", [dir]).await;
            return Err(HostError(format!(
                "nbdfuse did not mount {} within {START_TIMEOUT:?}",
                dir.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match loop_attach(&file).await {
        Ok(device) => Ok(Attached { child, pid, device }),
        Err(e) => {
            release(dir, Some(child)).await;
            Err(e)
        }
    }
}

/// A loop device on `file`, with direct I/O when the kernel allows it on
/// FUSE (no double caching), else without.
async fn loop_attach(file: &Path) -> Result<PathBuf, HostError> {
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

/// Detaches loop `device` (deferred by the kernel while it is still open)
/// and stops nbdfuse.
pub async fn detach(device: &Path, dir: &Path, child: Option<Child>) -> Result<(), HostError> {
    if let Err(e) = command::run("losetup", ["-d".as_ref(), device.as_os_str()]).await {
        if loop_backing_file(device).is_some() {
            return Err(e);
        }
    }
    release(dir, child).await;
    Ok(())
}

/// Unmounts the FUSE mount (which ends nbdfuse) and reaps `child`.
async fn release(dir: &Path, child: Option<Child>) {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    while is_mount_point(dir) {
        if Instant::now() > deadline {
            warn!(dir = %dir.display(), "FUSE mount still busy; detaching it lazily");
            let _ = command::run("umount", ["-l".as_ref(), dir.as_os_str()]).await;
            break;
        }
        if command::run("umount", [dir]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if let Some(mut child) = child {
        if tokio::time::timeout(BUSY_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            warn!("nbdfuse did not exit after its unmount; killing it");
            let _ = child.kill().await;
        }
    }
}

/// The file behind loop `device`, if it is attached.
pub fn loop_backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    let text = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("loop"))
        .map(|name| PathBuf::from("/dev").join(name))
        .filter(|dev| loop_backing_file(dev).is_some_and(|f| f.starts_with(dir)))
        .collect()
}

/// Whether process `pid` is an nbdfuse serving `dir` (guards against the
/// PID having been reused since it was recorded).
pub fn is_our_nbdfuse(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let dir_arg = format!("{}/", dir.display());
    args.first().is_some_and(|a| a.ends_with(b"nbdfuse")) && args.contains(&dir_arg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_libnbd_unix_uris() {
        assert_eq!(
            unix_uri(Path::new("/var/lib/ballast/nbd.sock"), "db"),
            "nbd+unix:///db?socket=/var/lib/ballast/nbd.sock"
        );
        assert_eq!(
            unix_uri(Path::new("/tmp/a b&c"), "v"),
            "nbd+unix:///v?socket=/tmp/a%20b%26c"
        );
    }

    #[test]
    fn recognises_only_nbdfuse_processes() {
        assert!(!is_our_nbdfuse(std::process::id(), Path::new("/x")));
        assert!(!is_our_nbdfuse(u32::MAX, Path::new("/x")));
    }
}
