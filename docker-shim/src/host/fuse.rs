//! Attaching through the daemon's own FUSE server: the volume is served as
//! the file `DIR/disk` (ballast-fuse, no second process, no socket hop),
//! and a direct-I/O loop device makes a block device of it.
//!
//! Each served file's `/dev/fuse` descriptor and redo log also go to the
//! descriptor holder, so a restarted daemon finds the connection still
//! mounted, takes it over and the containers on it carry on.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use ballast_engine::{Pool, Volume};
use ballast_fuse::holder::Holder;
use ballast_fuse::{FileExport, Handoff, FILE_NAME};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tracing::{info, warn};

use super::loopdev;
use super::mountinfo::is_mount_point;
use super::HostError;

/// What the holder keeps beside a connection's descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    volume: String,
    handoff: Handoff,
}

/// The daemon's FUSE exports for Docker volumes, under `ROOT/docker/fuse/`.
pub struct FuseAttacher {
    dir: PathBuf,
    pool: Pool,
    holder: Holder,
    /// By FUSE mount directory.
    exports: Mutex<HashMap<PathBuf, FileExport<Volume>>>,
}

impl FuseAttacher {
    pub fn new(dir: PathBuf, pool: Pool, holder: Holder) -> FuseAttacher {
        FuseAttacher {
            dir,
            pool,
            holder,
            exports: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(dir: &Path) -> String {
        dir.display().to_string()
    }

    /// Serves `volume` and attaches a loop device to it: (device, FUSE dir).
    pub async fn attach(&self, volume: &str) -> Result<(PathBuf, PathBuf), HostError> {
        let dir = self.dir.join(volume);
        let handle = self
            .pool
            .open_volume(volume)
            .map_err(|e| HostError(format!("cannot open volume {volume}: {e}")))?;
        let export = FileExport::mount(handle, &dir, volume)
            .await
            .map_err(|e| HostError(e.to_string()))?;
        let device = match loopdev::attach(&export.file()).await {
            Ok(device) => device,
            Err(e) => {
                let _ = export.unmount().await;
                return Err(e);
            }
        };
        let kept = Kept {
            volume: volume.to_string(),
            handoff: export.handoff(),
        };
        let meta = serde_json::to_string(&kept).expect("serialisable");
        let holder = self.holder.clone();
        let key = Self::key(&dir);
        let fds: Vec<OwnedFd> = export
            .fds()
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<_, _>>()
            .map_err(|e| HostError(format!("cannot duplicate the FUSE descriptors: {e}")))?;
        let kept = tokio::task::spawn_blocking(move || {
            let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
            holder.keep(&key, &meta, &borrowed)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = kept {
            // Served all the same; only a restart would cut it off.
            warn!(volume, "the FUSE descriptor holder is unavailable ({e}): this volume's containers will lose their I/O if the daemon restarts");
        }
        self.exports.lock().unwrap().insert(dir.clone(), export);
        Ok((device, dir))
    }

    /// Detaches the loop device, unmounts the FUSE file, lets the holder
    /// close its copies.
    pub async fn detach(&self, device: &Path, dir: &Path) -> Result<(), HostError> {
        loopdev::detach(device).await?;
        let export = self.exports.lock().unwrap().remove(dir);
        if let Some(export) = export {
            export
                .unmount()
                .await
                .map_err(|e| HostError(format!("cannot unmount {}: {e}", dir.display())))?;
        } else if is_mount_point(dir) {
            let _ = ballast_fuse::unmount(dir, true);
        }
        self.forget(dir).await;
        Ok(())
    }

    async fn forget(&self, dir: &Path) {
        let holder = self.holder.clone();
        let key = Self::key(dir);
        let released = tokio::task::spawn_blocking(move || holder.release(&key)).await;
        if let Ok(Err(e)) = released {
            warn!(dir = %dir.display(), "the FUSE descriptor holder did not release a connection: {e}");
        }
    }

    /// Whether this daemon serves `dir`.
    pub fn is_alive(&self, dir: &Path) -> bool {
        self.exports
            .lock()
            .unwrap()
            .get(dir)
            .is_some_and(FileExport::is_serving)
    }

    /// Takes over the connection on `dir` left by an earlier daemon, if the
    /// holder still has it and `device` is still the loop on its file.
    pub async fn resume(&self, volume: &str, device: &Path, dir: &Path) -> bool {
        let holder = self.holder.clone();
        let key = Self::key(dir);
        let taken = match tokio::task::spawn_blocking(move || holder.take(&key)).await {
            Ok(Ok(Some(taken))) => taken,
            Ok(Ok(None)) => return false,
            Ok(Err(e)) => {
                warn!(dir = %dir.display(), "cannot ask the FUSE descriptor holder: {e}");
                return false;
            }
            Err(_) => return false,
        };
        let kept: Kept = match serde_json::from_str(&taken.meta) {
            Ok(kept) => kept,
            Err(e) => {
                warn!(dir = %dir.display(), "the holder's record is unreadable: {e}");
                return false;
            }
        };
        if kept.volume != volume
            || kept.handoff.dir != dir
            || loopdev::backing_file(device) != Some(dir.join(FILE_NAME))
        {
            warn!(volume, dir = %dir.display(), "the held FUSE connection does not match the recorded attachment");
            return false;
        }
        let mut fds = taken.fds.into_iter();
        let (Some(fuse), Some(log)) = (fds.next(), fds.next()) else {
            return false;
        };
        let handle = match self.pool.open_volume(volume) {
            Ok(handle) => handle,
            Err(e) => {
                warn!(volume, "cannot take over the FUSE connection: {e}");
                return false;
            }
        };
        match FileExport::take_over(handle, &kept.handoff, fuse, log).await {
            Ok(export) => {
                self.exports
                    .lock()
                    .unwrap()
                    .insert(dir.to_path_buf(), export);
                info!(volume, dir = %dir.display(), "resumed a volume's FUSE connection; its containers carry on");
                true
            }
            Err(e) => {
                warn!(volume, "cannot take over the FUSE connection: {e}");
                false
            }
        }
    }

    /// Tears down the FUSE side of a dead attachment: the holder closes
    /// its copies (the last descriptor going aborts the connection, so
    /// whatever still uses the file gets I/O errors rather than hanging),
    /// then the mount goes.
    pub async fn release(&self, dir: &Path) {
        // Dropping an export stops it serving.
        drop(self.exports.lock().unwrap().remove(dir));
        self.forget(dir).await;
        if is_mount_point(dir) {
            let _ = ballast_fuse::unmount(dir, true);
        }
    }

    /// Lets go of connections the holder keeps that no recorded attachment
    /// names (a daemon killed between mounting and recording).
    pub async fn forget_unrecorded(&self, recorded: &[PathBuf]) {
        let holder = self.holder.clone();
        let keys = tokio::task::spawn_blocking(move || holder.keys())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for key in keys {
            let dir = PathBuf::from(&key);
            if !recorded.contains(&dir) {
                info!(dir = %dir.display(), "releasing an unrecorded FUSE connection");
                self.release(&dir).await;
            }
        }
    }

    /// At daemon shutdown: every export stops serving and commits; the
    /// connections stay mounted and held for the next daemon.
    pub async fn suspend_all(&self) {
        let exports: Vec<_> = self.exports.lock().unwrap().drain().collect();
        for (dir, export) in exports {
            export.suspend().await;
            info!(dir = %dir.display(), "paused a volume's FUSE connection for the restart");
        }
    }
}
