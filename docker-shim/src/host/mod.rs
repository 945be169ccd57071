//! The host side of a mount: turning a volume into a block device (the
//! daemon's FUSE file + a loop device, or kernel NBD), a mounted filesystem,
//! and back.

// The attach paths are being reworked (issue 16); their `pub` items become
// `pub(super)` with that work.
#[allow(unreachable_pub)]
mod command;
#[allow(unreachable_pub)]
mod fuse;
#[allow(unreachable_pub)]
mod kernel;
mod linux;
mod loopdev;
pub mod mountinfo;
pub mod nbd_handshake;
pub mod netlink;

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use linux::LinuxHost;

/// Filesystems the driver can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// The program that creates this filesystem.
    pub fn mkfs(self) -> &'static str {
        match self {
            FsType::Ext4 => "mkfs.ext4",
            FsType::Xfs => "mkfs.xfs",
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        })
    }
}

impl FromStr for FsType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(format!("fstype={s}: supported filesystems are ext4, xfs")),
        }
    }
}

/// How volumes become block devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachPath {
    /// The daemon serves the volume as a file over FUSE (direct I/O, FUSE
    /// connections that survive a daemon restart) and a loop device with
    /// direct I/O makes a block device of it.
    Fuse,
    /// The kernel's NBD driver, connected to the daemon's NBD socket.
    KernelNbd,
}

impl fmt::Display for AttachPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachPath::Fuse => "fuse",
            AttachPath::KernelNbd => "kernel-nbd",
        })
    }
}

impl FromStr for AttachPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fuse" => Ok(AttachPath::Fuse),
            "kernel-nbd" | "nbd" => Ok(AttachPath::KernelNbd),
            _ => Err(format!("{s:?}: attach paths are fuse, kernel-nbd")),
        }
    }
}

/// What to mount where.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub volume: String,
    /// The daemon's NBD socket; the export is named after the volume.
    pub nbd_socket: PathBuf,
    /// Where the filesystem goes; `data/` inside it is created if missing.
    pub target: PathBuf,
    /// Format with this filesystem if the device holds none. `None`: a
    /// device without a filesystem is an error (its data is not ours to
    /// overwrite).
    pub format: Option<FsType>,
}

/// How a volume is attached, recorded so that a restarted daemon can take
/// it over or tear it down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the filesystem is mounted; `None` for a block device attached
    /// on its own (`ballast attach`).
    pub target: Option<PathBuf>,
    /// The block device holding it (`/dev/nbdN` or `/dev/loopN`).
    pub device: PathBuf,
    pub via: Via,
}

impl Attachment {
    /// The attach path this attachment took.
    pub fn path(&self) -> AttachPath {
        match self.via {
            Via::Fuse { .. } => AttachPath::Fuse,
            Via::KernelNbd { .. } => AttachPath::KernelNbd,
        }
    }
}

impl fmt::Display for Attachment {
    /// How the volume is attached, as `docker volume inspect` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path(), self.device.display())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Kernel NBD device number `index`, configured over netlink.
    KernelNbd { index: u32 },
    /// The daemon's FUSE mount on `dir` serving the volume as `dir/disk`,
    /// under a loop device.
    Fuse { dir: PathBuf },
}

/// A failed host operation; the message names the step and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// Attaching, formatting and mounting. [`LinuxHost`] is the real one.
pub trait Host: Send + Sync + 'static {
    /// Whether filesystems of `fstype` can be created here.
    fn supports(&self, fstype: FsType) -> bool;

    /// Attaches the volume as a block device only (`request.target` and
    /// `request.format` unused).
    fn attach(
        &self,
        request: &MountRequest,
    ) -> impl Future<Output = Result<Attachment, HostError>> + Send;

    /// Attaches the volume, formats it if asked and needed, mounts it on
    /// `request.target` and creates `data/` in it.
    fn mount(
        &self,
        request: &MountRequest,
    ) -> impl Future<Output = Result<Attachment, HostError>> + Send;

    /// Unmounts (if mounted) and detaches.
    fn unmount(
        &self,
        attachment: &Attachment,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Whether the filesystem (if any) is still mounted and its device
    /// still served by this daemon.
    fn is_alive(&self, attachment: &Attachment) -> bool;

    /// At start-up: takes over `attachment` of volume `volume`, recorded by
    /// an earlier daemon, if its device is still there to serve (a FUSE
    /// connection kept across the restart); the containers using it carry
    /// on. False if it cannot be taken over.
    fn resume(&self, volume: &str, attachment: &Attachment) -> impl Future<Output = bool> + Send;

    /// Tears down a dead attachment, best effort: whatever still holds its
    /// filesystem gets I/O errors from now on, nothing reaches the volume.
    fn release(&self, attachment: &Attachment) -> impl Future<Output = ()> + Send;

    /// At start-up: tears down the `stale` attachments an earlier daemon
    /// recorded and anything else it left under `dir` (mounts, FUSE mounts,
    /// loop devices) that is not one of the `live` ones. Best effort;
    /// failures are logged.
    fn clear_stale(
        &self,
        stale: &[Attachment],
        live: &[Attachment],
        dir: &Path,
    ) -> impl Future<Output = ()> + Send;

    /// At shutdown: stops serving the attachments, leaving them to the next
    /// daemon where they can be taken over.
    fn suspend(&self) -> impl Future<Output = ()> + Send;
}
