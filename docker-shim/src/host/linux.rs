//! The real host: the daemon's FUSE file + a loop device, or kernel NBD;
//! mkfs, mount.

use std::fs;
use std::path::{Path, PathBuf};

use ballast_engine::Pool;
use ballast_fuse::holder::Holder;
use tracing::{info, warn};

use super::command::{self, installed};
use super::fuse::FuseAttacher;
use super::mountinfo::{is_mount_point, mounts};
use super::{kernel, loopdev, AttachPath, Attachment, FsType, Host, HostError, MountRequest, Via};

/// Attaches volumes on this machine. FUSE files are served under
/// `DIR/fuse/VOL`.
pub struct LinuxHost {
    path: AttachPath,
    fuse: FuseAttacher,
}

impl LinuxHost {
    /// Attaches through `path`, or the best this host has: the daemon's own
    /// FUSE server where `/dev/fuse` exists (it survives daemon restarts),
    /// else kernel NBD where `/dev/nbd*` exists. `holder` keeps FUSE
    /// connections across restarts.
    pub fn new(dir: &Path, pool: Pool, holder: Holder, path: Option<AttachPath>) -> LinuxHost {
        let path = path.unwrap_or_else(|| {
            if !Path::new("/dev/fuse").exists() && kernel::available() {
                AttachPath::KernelNbd
            } else {
                AttachPath::Fuse
            }
        });
        info!(attach = %path, "Docker volumes attach through");
        LinuxHost {
            path,
            fuse: FuseAttacher::new(dir.join("fuse"), pool, holder),
        }
    }

    /// The attach path in use.
    pub fn path(&self) -> AttachPath {
        self.path
    }

    /// Attaches volume `request.volume` as a block device.
    async fn attach_device(&self, request: &MountRequest) -> Result<(PathBuf, Via), HostError> {
        match self.path {
            AttachPath::KernelNbd => {
                let socket = request.nbd_socket.clone();
                let volume = request.volume.clone();
                let index = tokio::task::spawn_blocking(move || kernel::attach(&socket, &volume))
                    .await
                    .map_err(|e| HostError(format!("kernel NBD attach failed: {e}")))??;
                Ok((kernel::device(index), Via::KernelNbd { index }))
            }
            AttachPath::Fuse => {
                let (device, dir) = self.fuse.attach(&request.volume).await?;
                Ok((device, Via::Fuse { dir }))
            }
        }
    }

    /// Detaches a block device made by [`LinuxHost::attach_device`].
    async fn detach(&self, device: &Path, via: &Via) -> Result<(), HostError> {
        match via {
            Via::KernelNbd { index } => {
                let index = *index;
                tokio::task::spawn_blocking(move || kernel::detach(index))
                    .await
                    .map_err(|e| HostError(format!("kernel NBD detach failed: {e}")))?
            }
            Via::Fuse { dir } => self.fuse.detach(device, dir).await,
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
        // is served by this daemon, possibly on this very runtime.
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

    /// Tears down a dead attachment's device side.
    async fn release_device(&self, attachment: &Attachment) {
        match &attachment.via {
            Via::Fuse { dir } => {
                // Cut the I/O path first, so nothing blocks on a dead
                // connection.
                self.fuse.release(dir).await;
                if let Some(target) = attachment.target.as_deref().filter(|t| is_mount_point(t)) {
                    lazy_unmount(target).await;
                }
                // Once its FUSE mount is gone the kernel shows the loop's
                // backing file relative to the detached mount, as "/disk".
                let backing = loopdev::backing_file(&attachment.device);
                let ours = Path::new("/").join(ballast_fuse::FILE_NAME);
                if backing.is_some_and(|f| f.starts_with(dir) || f == ours) {
                    if let Err(e) = loopdev::detach(&attachment.device).await {
                        warn!(device = %attachment.device.display(), "cannot detach a stale loop device: {e}");
                    }
                }
            }
            Via::KernelNbd { index } => {
                let index = *index;
                let _ = tokio::task::spawn_blocking(move || kernel::detach(index)).await;
                if let Some(target) = attachment.target.as_deref().filter(|t| is_mount_point(t)) {
                    lazy_unmount(target).await;
                }
            }
        }
    }
}

impl Host for LinuxHost {
    fn supports(&self, fstype: FsType) -> bool {
        installed(fstype.mkfs())
    }

    async fn attach(&self, request: &MountRequest) -> Result<Attachment, HostError> {
        let (device, via) = self.attach_device(request).await?;
        Ok(Attachment {
            target: None,
            device,
            via,
        })
    }

    async fn mount(&self, request: &MountRequest) -> Result<Attachment, HostError> {
        let (device, via) = self.attach_device(request).await?;
        if let Err(e) = self.mount_filesystem(&device, request).await {
            if let Err(d) = self.detach(&device, &via).await {
                warn!(volume = %request.volume, "cleaning up a failed mount: {d}");
            }
            return Err(e);
        }
        Ok(Attachment {
            target: Some(request.target.clone()),
            device,
            via,
        })
    }

    async fn unmount(&self, attachment: &Attachment) -> Result<(), HostError> {
        if let Some(target) = attachment.target.as_deref().filter(|t| is_mount_point(t)) {
            if command::run("umount", [target]).await.is_err() {
                // Docker has let go; whatever still holds the mount (a
                // shell cd'ed into it) must not keep the device attached
                // forever.
                warn!(target = %target.display(), "filesystem busy; unmounting lazily");
                command::run("umount", ["-l".as_ref(), target.as_os_str()]).await?;
            }
        }
        self.detach(&attachment.device, &attachment.via).await
    }

    fn is_alive(&self, attachment: &Attachment) -> bool {
        if !attachment.target.as_deref().is_none_or(is_mount_point) {
            return false;
        }
        match &attachment.via {
            Via::Fuse { dir } => self.fuse.is_alive(dir),
            Via::KernelNbd { index } => Path::new(&format!("/sys/block/nbd{index}/pid")).exists(),
        }
    }

    async fn resume(&self, volume: &str, attachment: &Attachment) -> bool {
        match &attachment.via {
            Via::Fuse { dir } => {
                attachment.target.as_deref().is_none_or(is_mount_point)
                    && self.fuse.resume(volume, &attachment.device, dir).await
            }
            // Its NBD connection died with the daemon that made it.
            Via::KernelNbd { .. } => false,
        }
    }

    async fn release(&self, attachment: &Attachment) {
        self.release_device(attachment).await;
    }

    async fn clear_stale(&self, stale: &[Attachment], live: &[Attachment], dir: &Path) {
        for attachment in stale {
            self.release_device(attachment).await;
        }
        let live_dirs: Vec<PathBuf> = live
            .iter()
            .filter_map(|a| match &a.via {
                Via::Fuse { dir } => Some(dir.clone()),
                Via::KernelNbd { .. } => None,
            })
            .collect();
        self.fuse.forget_unrecorded(&live_dirs).await;
        // Leftovers nobody recorded: filesystems first, then their loop
        // devices, then the FUSE mounts (a loop's backing file is only
        // recognisable while its FUSE mount is attached under `dir`).
        let keep = |p: &Path| {
            live.iter().any(|a| {
                a.target.as_deref() == Some(p) || matches!(&a.via, Via::Fuse { dir } if dir == p)
            })
        };
        let (fuse_mounts, filesystems): (Vec<PathBuf>, Vec<PathBuf>) = mounts()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(dir) && !keep(&m.mount_point))
            .map(|m| m.mount_point)
            .partition(|p| p.starts_with(self.fuse.dir()));
        for point in filesystems {
            lazy_unmount(&point).await;
        }
        for device in loopdev::under(self.fuse.dir()) {
            if live.iter().any(|a| a.device == device) {
                continue;
            }
            match loopdev::detach(&device).await {
                Ok(()) => info!(device = %device.display(), "detached a stale loop device"),
                Err(e) => {
                    warn!(device = %device.display(), "cannot detach a stale loop device: {e}")
                }
            }
        }
        for point in fuse_mounts {
            lazy_unmount(&point).await;
        }
    }

    async fn suspend(&self) {
        self.fuse.suspend_all().await;
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
