//! The driver's behaviour, independent of HTTP: volumes come from the
//! [`VolumeProvider`], block devices and filesystems from the [`Host`], and the
//! mount IDs Docker hands out are counted in a persistent state file.
//!
//! Operations on one volume are serialised by a per-volume async mutex;
//! nothing global is held across slow work (mkfs, attach, mount). The
//! in-memory state is only ever replaced by a copy that has been saved.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ballast_engine::validate_name;
use tracing::{error, info, warn};

use crate::error::DriverError;
use crate::host::{Attachment, FsType, Host, MountRequest};
use crate::options::{CreateOptions, Source};
use crate::provider::{VolumeProvider, VolumeSummary};
use crate::state::{State, StateFile};

/// Where the driver keeps its files: `DIR/state.json` and one mount
/// target per volume under `DIR/mounts/`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: PathBuf) -> Layout {
        Layout { dir }
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn mounts(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    /// Where volume `name`'s filesystem is mounted.
    fn target(&self, name: &str) -> PathBuf {
        self.mounts().join(name)
    }
}

/// The directory handed to containers: `data/` inside the filesystem, so
/// `lost+found` never shows up in, say, a database's data directory.
pub(crate) fn mountpoint(target: &Path) -> PathBuf {
    target.join("data")
}

/// A volume as Docker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    pub summary: VolumeSummary,
    /// Present while the volume is mounted.
    pub mountpoint: Option<PathBuf>,
    /// How it is attached, while it is.
    pub attachment: Option<Attachment>,
}

pub struct Driver<P, H> {
    provider: P,
    host: H,
    layout: Layout,
    state_file: StateFile,
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<P: VolumeProvider, H: Host> Driver<P, H> {
    /// Loads the saved state. Call [`Driver::recover`] before serving.
    pub fn open(provider: P, host: H, layout: Layout) -> Result<Self, DriverError> {
        let state_file = StateFile::new(layout.state_file());
        let state = fs::create_dir_all(layout.mounts())
            .and_then(|()| state_file.load())
            .map_err(|e| DriverError::state(state_file.path(), e))?;
        Ok(Driver {
            provider,
            host,
            layout,
            state_file,
            state: Mutex::new(state),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Start-up reconciliation. Attachments an earlier daemon recorded are
    /// taken over where the host can (a FUSE connection kept across the
    /// restart: containers using the volume carry on); the others, and
    /// whatever else it left behind, are torn down, and volumes Docker still
    /// has mounted are attached and mounted afresh, so containers started
    /// from now on get a working filesystem.
    pub async fn recover(&self) {
        let recorded: Vec<(String, Attachment, bool)> = {
            let state = self.state.lock().unwrap();
            state
                .volumes
                .iter()
                .filter_map(|(name, v)| {
                    let a = v.attachment.clone()?;
                    Some((name.clone(), a, !v.mount_ids.is_empty()))
                })
                .collect()
        };
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (name, attachment, held) in recorded {
            if self.host.resume(&name, &attachment).await {
                live.push((name, attachment, held));
            } else {
                stale.push(attachment);
            }
        }
        let kept: Vec<Attachment> = live.iter().map(|(_, a, _)| a.clone()).collect();
        self.host.clear_stale(&stale, &kept, &self.layout.dir).await;
        let result = self.update(|state| {
            for (name, volume) in state.volumes.iter_mut() {
                if !live.iter().any(|(n, _, _)| n == name) {
                    volume.attachment = None;
                }
            }
        });
        if let Err(e) = result {
            error!("{e}");
        }
        // A daemon killed between Docker's last Unmount and the detach.
        for (name, attachment, held) in &live {
            if !held && attachment.target.is_some() {
                let lock = self.lock(name);
                let _guard = lock.lock().await;
                if let Err(e) = self.detach(name, attachment).await {
                    warn!(volume = %name, "cannot detach a volume no container uses: {e}");
                }
            }
        }
        let held: Vec<String> = {
            let state = self.state.lock().unwrap();
            state
                .volumes
                .iter()
                .filter(|(_, v)| !v.mount_ids.is_empty() && v.attachment.is_none())
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in held {
            let lock = self.lock(&name);
            let _guard = lock.lock().await;
            match self.ensure_mounted(&name).await {
                Ok(target) => {
                    info!(volume = %name, target = %target.display(), "remounted after restart")
                }
                Err(e) => {
                    warn!(volume = %name, "cannot remount after restart (the next Mount retries): {e}")
                }
            }
        }
    }

    /// At daemon shutdown: the host stops serving attachments it can hand
    /// to the next daemon; filesystems stay mounted for the containers.
    pub async fn shutdown(&self) {
        self.host.suspend().await;
    }

    pub async fn create(
        &self,
        name: &str,
        opts: Option<&HashMap<String, String>>,
    ) -> Result<(), DriverError> {
        check_name(name)?;
        let options = CreateOptions::parse(opts)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        if self.provider.volume(name)?.is_some() {
            // Docker calls Create again for volumes it already knows.
            return Ok(());
        }
        if !self.host.supports(options.fstype) {
            return Err(DriverError::InvalidOption(format!(
                "fstype={} needs {} on the host, which is not installed",
                options.fstype,
                options.fstype.mkfs()
            )));
        }
        match &options.source {
            Source::Empty { size } => {
                self.provider.create_volume(name, *size).await?;
                self.update(|state| {
                    state.volumes.entry(name.to_string()).or_default().format_as =
                        Some(options.fstype);
                })?;
            }
            Source::Snapshot { volume, snapshot } => {
                self.provider.clone_volume(name, volume, snapshot).await?
            }
            Source::Backup { url, key, wait } => {
                self.provider
                    .restore_backup(name, url, key.as_deref(), *wait)
                    .await?
            }
        }
        info!(volume = name, source = ?options.source, "volume created for Docker");
        Ok(())
    }

    /// Removing a volume that is already gone succeeds, so Docker can drop
    /// its own record of it.
    pub async fn remove(&self, name: &str) -> Result<(), DriverError> {
        check_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let (mounts, attachment) =
            self.with_volume(name, |v| (v.mount_ids.len(), v.attachment.clone()));
        if mounts > 0 {
            return Err(DriverError::Mounted {
                name: name.to_string(),
                mounts,
            });
        }
        if let Some(a) = attachment.as_ref().filter(|a| a.target.is_none()) {
            return Err(DriverError::AttachedAlone {
                name: name.to_string(),
                device: a.device.display().to_string(),
            });
        }
        if let Some(attachment) = attachment {
            self.detach(name, &attachment).await?;
        }
        if self.provider.volume(name)?.is_some() {
            self.provider.delete_volume(name).await?;
        }
        self.update(|state| {
            state.volumes.remove(name);
        })?;
        let _ = fs::remove_dir(self.layout.target(name));
        info!(volume = name, "volume removed by Docker");
        Ok(())
    }

    /// Counts mount `id` and returns the directory for the container.
    pub async fn mount(&self, name: &str, id: &str) -> Result<PathBuf, DriverError> {
        check_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let target = self.ensure_mounted(name).await?;
        self.update(|state| {
            state
                .volumes
                .entry(name.to_string())
                .or_default()
                .mount_ids
                .insert(id.to_string());
        })?;
        Ok(mountpoint(&target))
    }

    /// Forgets mount `id`; the last one unmounts and detaches the volume.
    /// An unknown ID succeeds: Docker may repeat an Unmount.
    pub async fn unmount(&self, name: &str, id: &str) -> Result<(), DriverError> {
        check_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let (known, remaining, attachment) = self.with_volume(name, |v| {
            let known = v.mount_ids.contains(id);
            (
                known,
                v.mount_ids.len() - usize::from(known),
                v.attachment.clone(),
            )
        });
        if !known {
            return Ok(());
        }
        self.update(|state| {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.mount_ids.remove(id);
            }
        })?;
        if remaining == 0 {
            if let Some(attachment) = attachment {
                self.detach(name, &attachment).await?;
            }
        }
        Ok(())
    }

    /// The volume's mountpoint, `None` while it is not mounted.
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>, DriverError> {
        Ok(self.get(name)?.mountpoint)
    }

    pub fn get(&self, name: &str) -> Result<VolumeView, DriverError> {
        check_name(name)?;
        let summary = self
            .provider
            .volume(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        Ok(self.view(summary))
    }

    pub fn list(&self) -> Result<Vec<VolumeView>, DriverError> {
        Ok(self
            .provider
            .volumes()?
            .into_iter()
            .map(|summary| self.view(summary))
            .collect())
    }

    fn view(&self, summary: VolumeSummary) -> VolumeView {
        let attachment = self.with_volume(&summary.name, |v| v.attachment.clone());
        VolumeView {
            mountpoint: attachment
                .as_ref()
                .and_then(|a| a.target.as_deref())
                .map(mountpoint),
            attachment,
            summary,
        }
    }

    /// How volume `name` is attached, if it is (for Docker or alone).
    pub fn attachment(&self, name: &str) -> Option<Attachment> {
        self.with_volume(name, |v| v.attachment.clone())
    }

    /// `ballast attach`: the volume as a block device on this host, by the
    /// path Docker volumes take, not mounted. Attaching an attached volume
    /// answers its device again.
    pub async fn attach(&self, name: &str) -> Result<Attachment, DriverError> {
        check_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let existing = self.with_volume(name, |v| v.attachment.clone());
        if let Some(attachment) = existing {
            if attachment.target.is_some() {
                return Err(DriverError::MountedForDocker(name.to_string()));
            }
            if self.host.is_alive(&attachment) {
                return Ok(attachment);
            }
            self.host.release(&attachment).await;
        }
        if self.provider.volume(name)?.is_none() {
            return Err(DriverError::NotFound(name.to_string()));
        }
        let request = MountRequest {
            volume: name.to_string(),
            nbd_socket: self.provider.nbd_socket(),
            target: self.layout.target(name),
            format: None,
        };
        let attachment = self
            .host
            .attach(&request)
            .await
            .map_err(DriverError::host(name))?;
        self.update(|state| {
            state
                .volumes
                .entry(name.to_string())
                .or_default()
                .attachment = Some(attachment.clone());
        })?;
        info!(volume = name, device = %attachment.device.display(), "volume attached");
        Ok(attachment)
    }

    /// `ballast detach`: undoes [`Driver::attach`]; a volume not attached
    /// is fine.
    pub async fn detach_alone(&self, name: &str) -> Result<(), DriverError> {
        check_name(name)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        match self.with_volume(name, |v| v.attachment.clone()) {
            None => Ok(()),
            Some(a) if a.target.is_some() => Err(DriverError::MountedForDocker(name.to_string())),
            Some(a) => self.detach(name, &a).await,
        }
    }

    /// Attaches and mounts the volume unless it already is; returns the
    /// mount target. The caller holds the volume's lock.
    async fn ensure_mounted(&self, name: &str) -> Result<PathBuf, DriverError> {
        let target = self.layout.target(name);
        let (attachment, format_as) =
            self.with_volume(name, |v| (v.attachment.clone(), v.format_as));
        if let Some(attachment) = attachment {
            if attachment.target.is_none() {
                return Err(DriverError::AttachedAlone {
                    name: name.to_string(),
                    device: attachment.device.display().to_string(),
                });
            }
            if self.host.is_alive(&attachment) {
                return Ok(target);
            }
            warn!(
                volume = name,
                "the volume's mount is dead (its device is no longer served); mounting it again"
            );
            self.host.release(&attachment).await;
            self.update(|state| {
                if let Some(volume) = state.volumes.get_mut(name) {
                    volume.attachment = None;
                }
            })?;
        }
        let summary = self
            .provider
            .volume(name)?
            .ok_or_else(|| DriverError::NotFound(name.to_string()))?;
        // A volume nobody ever wrote to holds nothing a format could destroy.
        let format = format_as.or((summary.allocated == 0).then_some(FsType::Ext4));
        let request = MountRequest {
            volume: name.to_string(),
            nbd_socket: self.provider.nbd_socket(),
            target: target.clone(),
            format,
        };
        let attachment = self
            .host
            .mount(&request)
            .await
            .map_err(DriverError::host(name))?;
        self.update(|state| {
            let volume = state.volumes.entry(name.to_string()).or_default();
            volume.attachment = Some(attachment);
            volume.format_as = None;
        })?;
        info!(volume = name, target = %target.display(), "volume mounted");
        Ok(target)
    }

    async fn detach(&self, name: &str, attachment: &Attachment) -> Result<(), DriverError> {
        self.host
            .unmount(attachment)
            .await
            .map_err(DriverError::host(name))?;
        self.update(|state| {
            if let Some(volume) = state.volumes.get_mut(name) {
                volume.attachment = None;
            }
        })?;
        info!(volume = name, "volume unmounted");
        Ok(())
    }

    fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn with_volume<R>(&self, name: &str, f: impl FnOnce(&crate::state::VolumeState) -> R) -> R {
        let state = self.state.lock().unwrap();
        match state.volumes.get(name) {
            Some(volume) => f(volume),
            None => f(&Default::default()),
        }
    }

    /// Applies `change` to a copy of the state, saves it, then makes it
    /// current; on a save failure nothing changes.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> Result<R, DriverError> {
        let mut state = self.state.lock().unwrap();
        let mut next = state.clone();
        let result = change(&mut next);
        self.state_file
            .save(&next)
            .map_err(|e| DriverError::state(self.state_file.path(), e))?;
        *state = next;
        Ok(result)
    }
}

fn check_name(name: &str) -> Result<(), DriverError> {
    validate_name(name).map_err(DriverError::InvalidName)
}
