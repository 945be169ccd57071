//! The real host: kernel NBD or nbdfuse + loop, mkfs, mount.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::process::Child;
use tracing::{info, warn};

use super::command::{self, installed};
use super::mountinfo::{is_mount_point, mounts};
use super::{fuse, kernel, Attachment, FsType, Host, HostError, MountRequest, Via};

/// Attaches volumes on this machine. FUSE mounts live under `DIR/fuse/VOL`.
pub struct LinuxHost {
    fuse_dir: PathBuf,
    kernel_nbd: bool,
    /// nbdfuse processes started by this daemon, by PID, to be reaped.
    children: Mutex<HashMap<u32, Child>>,
}

impl LinuxHost {
    /// Uses kernel NBD when `/dev/nbd*` exists, nbdfuse otherwise.
    pub fn new(dir: &Path) -> LinuxHost {
        let kernel_nbd = kernel::available();
        info!(
            attach = if kernel_nbd {
                "kernel NBD"
            } else {
                "nbdfuse + loop"
            },
            "Docker volumes attach through"
        );
        LinuxHost {
            fuse_dir: dir.join("fuse"),
            kernel_nbd,
            children: Mutex::new(HashMap::new()),
        }
    }

    async fn attach(&self, request: &MountRequest) -> Result<(PathBuf, Via), HostError> {
        if self.kernel_nbd {
            let socket = request.nbd_socket.clone();
            let volume = request.volume.clone();
            let index = tokio::task::spawn_blocking(move || kernel::attach(&socket, &volume))
                .await
                .map_err(|e| HostError(format!("kernel NBD attach failed: {e}")))??;
            return Ok((kernel::device(index), Via::KernelNbd { index }));
        }
        let dir = self.fuse_dir.join(&request.volume);
        let uri = fuse::unix_uri(&request.nbd_socket, &request.volume);
        let attached = fuse::attach(&dir, &uri).await?;
        self.children
            .lock()
            .unwrap()
            .insert(attached.pid, attached.child);
        Ok((
            attached.device,
            Via::Fuse {
                pid: attached.pid,
                dir,
            },
        ))
    }

    async fn detach(&self, device: &Path, via: &Via) -> Result<(), HostError> {
        match via {
            Via::KernelNbd { index } => {
                let index = *index;
                tokio::task::spawn_blocking(move || kernel::detach(index))
                    .await
                    .map_err(|e| HostError(format!("kernel NBD detach failed: {e}")))?
            }
            Via::Fuse { pid, dir } => {
                let child = self.children.lock().unwrap().remove(pid);
                fuse::detach(device, dir, child).await
            }
        }
    }

    /// Formats if needed, mounts, creates `data/`.
    async fn mount_filesystem(
        &self,
        device: &Path,
        request: &MountRequest,
    ) -> Result<(), HostError> {
        let existing = probe(device).await?;
        let fstype = match (existing, request.format) {
            (Some(fstype), _) => fstype,
            (None, Some(fstype)) => {
                format(device, fstype).await?;
                fstype.to_string()
            }
            (None, None) => return Err(HostError(
                "the volume holds no filesystem and was not created empty by the Docker driver; \
                     refusing to format it"
                    .into(),
            )),
        };
        let target = &request.target;
        fs::create_dir_all(target)
            .map_err(|e| HostError(format!("cannot create {}: {e}", target.display())))?;
        let mut args = vec!["-t".to_string(), fstype.clone()];
        if fstype == "xfs" {
            // Clones share their origin's UUID, which XFS refuses by default.
            args.extend(["-o".into(), "nouuid".into()]);
        }
        args.push(device.display().to_string());
        args.push(target.display().to_string());
        command::run("mount", &args).await?;
        // Never touch the volume's filesystem from an async worker: its I/O
        // is served by the NBD server, possibly on this very runtime.
        let data = target.join("data");
        let created = tokio::task::spawn_blocking({
            let data = data.clone();
            move || fs::create_dir_all(data)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = created {
            let _ = command::run("umount", [target]).await;
            return Err(HostError(format!("cannot create {}: {e}", data.display())));
        }
        Ok(())
    }
}

impl Host for LinuxHost {
    fn supports(&self, fstype: FsType) -> bool {
        installed(fstype.mkfs())
    }

    async fn mount(&self, request: &MountRequest) -> Result<Attachment, HostError> {
        let (device, via) = self.attach(request).await?;
        if let Err(e) = self.mount_filesystem(&device, request).await {
            if let Err(d) = self.detach(&device, &via).await {
                warn!(volume = %request.volume, "cleaning up a failed mount: {d}");
            }
            return Err(e);
        }
        Ok(Attachment {
            target: request.target.clone(),
            device,
            via,
        })
    }

    async fn unmount(&self, attachment: &Attachment) -> Result<(), HostError> {
        let target = &attachment.target;
        if is_mount_point(target) && command::run("umount", [target]).await.is_err() {
            // Docker has let go; whatever still holds the mount (a shell
            // cd'ed into it) must not keep the device attached forever.
            warn!(target = %target.display(), "filesystem busy; unmounting lazily");
            command::run("umount", ["-l".as_ref(), target.as_os_str()]).await?;
        }
        self.detach(&attachment.device, &attachment.via).await
    }

    fn is_alive(&self, attachment: &Attachment) -> bool {
        if !is_mount_point(&attachment.target) {
            return false;
        }
        match &attachment.via {
            // Only an nbdfuse started by this daemon can still be connected.
            Via::Fuse { pid, dir } => {
                let mut children = self.children.lock().unwrap();
                children
                    .get_mut(pid)
                    .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
                    && is_mount_point(dir)
            }
            Via::KernelNbd { index } => Path::new(&format!("/sys/block/nbd{index}/pid")).exists(),
        }
    }

    async fn release(&self, attachment: &Attachment) {
        // Cut the I/O path first, so nothing blocks on a dead connection.
        match &attachment.via {
            Via::Fuse { pid, dir } => {
                let child = self.children.lock().unwrap().remove(pid);
                if fuse::is_our_nbdfuse(*pid, dir) {
                    // SAFETY: kill(2) on a PID just checked to be our nbdfuse.
                    unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                    info!(pid, "stopped a disconnected nbdfuse");
                }
                if let Some(mut child) = child {
                    let _ = child.wait().await;
                }
            }
            Via::KernelNbd { index } => {
                let index = *index;
                let _ = tokio::task::spawn_blocking(move || kernel::detach(index)).await;
            }
        }
        if is_mount_point(&attachment.target) {
            lazy_unmount(&attachment.target).await;
        }
        if let Via::Fuse { dir, .. } = &attachment.via {
            // Once its FUSE mount is gone the kernel shows the loop's backing
            // file relative to the detached mount, as "/nbd".
            let backing = fuse::loop_backing_file(&attachment.device);
            if backing.is_some_and(|f| f.starts_with(dir) || f == Path::new("/nbd")) {
                let device = attachment.device.as_os_str();
                if let Err(e) = command::run("losetup", ["-d".as_ref(), device]).await {
                    warn!(device = %attachment.device.display(), "cannot detach a stale loop device: {e}");
                }
            }
            if is_mount_point(dir) {
                lazy_unmount(dir).await;
            }
        }
    }

    async fn clear_stale(&self, attachments: &[Attachment], dir: &Path) {
        for attachment in attachments {
            self.release(attachment).await;
        }
        // Leftovers nobody recorded: filesystems first, then their loop
        // devices, then the FUSE mounts (a loop's backing file is only
        // recognisable while its FUSE mount is attached under `dir`).
        let (fuse_mounts, filesystems): (Vec<PathBuf>, Vec<PathBuf>) = mounts()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(dir))
            .map(|m| m.mount_point)
            .partition(|p| p.starts_with(&self.fuse_dir));
        for point in filesystems {
            lazy_unmount(&point).await;
        }
        let mut loops = fuse::loops_under(dir);
        loops.sort();
        loops.dedup();
        for device in loops {
            match command::run("losetup", ["-d".as_ref(), device.as_os_str()]).await {
                Ok(_) => info!(device = %device.display(), "detached a stale loop device"),
                Err(e) => {
                    warn!(device = %device.display(), "cannot detach a stale loop device: {e}")
                }
            }
        }
        for point in fuse_mounts {
            lazy_unmount(&point).await;
        }
    }
}

async fn lazy_unmount(point: &Path) {
    match command::run("umount", ["-l".as_ref(), point.as_os_str()]).await {
        Ok(_) => info!(mount = %point.display(), "removed a stale mount"),
        Err(e) => warn!(mount = %point.display(), "cannot remove a stale mount: {e}"),
    }
}

/// The filesystem type on `device`, `None` if it holds no signature.
async fn probe(device: &Path) -> Result<Option<String>, HostError> {
    let output = command::output(
        "blkid",
        [
            "-p".as_ref(),
            "-o".as_ref(),
            "value".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            device.as_os_str(),
        ],
    )
    .await?;
    match output.status.code() {
        Some(0) => {
            let kind = String::from_utf8_lossy(&output.stdout).trim().to_string();
            if kind.is_empty() {
                // A signature that is not a filesystem (a partition table...).
                Err(HostError(format!(
                    "{} holds data blkid cannot name; refusing to touch it",
                    device.display()
                )))
            } else {
                Ok(Some(kind))
            }
        }
        // blkid: 2 = nothing found.
        Some(2) => Ok(None),
        _ => Err(command::failure("blkid", &output)),
    }
}

/// Creates `fstype` on `device` quickly: lazy inode-table and journal
/// initialisation, no discard (a fresh volume reads as zeros already).
async fn format(device: &Path, fstype: FsType) -> Result<(), HostError> {
    info!(device = %device.display(), %fstype, "formatting");
    let device = device.display().to_string();
    match fstype {
        FsType::Ext4 => {
            command::run(
                "mkfs.ext4",
                [
                    "-q",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                    &device,
                ],
            )
            .await?
        }
        FsType::Xfs => command::run("mkfs.xfs", ["-q", "-K", &device]).await?,
    };
    Ok(())
}
