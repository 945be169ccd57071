//! JSON bodies of the control API, shared by server and client.
//!
//! Volume, snapshot and pool descriptions are the engine's own serialisable
//! types and a job's status is the job registry's, so `--json` output and
//! the API speak the same shapes.

use serde::{Deserialize, Serialize};

pub use crate::ops::hydrate::HydrationStatus;
pub use crate::ops::jobs::{JobState, JobStatus};
pub use crate::ops::schedule::{Schedule, ScheduleStatus};
pub use crate::ops::standby::StandbyStatus;
pub use ballast_backupstore::KeepOptions;
pub use ballast_engine::{PoolStats, SnapshotInfo, VolumeInfo};

/// `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    /// Size in bytes. Required for a new volume; for a clone it defaults to
    /// the snapshot's size and, when larger, grows the clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `VOL@SNAP` to clone from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// A backup URL to restore instantly: the volume is served as soon as
    /// the backup's manifest is read, and hydrates in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// With `backup`: the name of the backup key (in the daemon's
    /// `--backup-key-dir`) of an encrypted destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `GET /v1/volumes/{name}` (and the answer to a create): the volume, and
/// how far its hydration is while it restores from a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeDetails {
    #[serde(flatten)]
    pub info: VolumeInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<HydrationStatus>,
    /// Where it stands while it is a standby (read-only until activated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
}

/// `POST /v1/volumes/{name}/grow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowVolume {
    /// New size in bytes; must not be smaller than the current size.
    pub size: u64,
}

/// `POST /v1/volumes/{name}/snapshots`; an empty body asks for a generated name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `GET /v1/nbd`: where the daemon serves its NBD exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdEndpoints {
    /// The NBD unix socket.
    pub socket: std::path::PathBuf,
    /// The TCP listener, if NBD is served on TCP.
    pub tcp: Option<std::net::SocketAddr>,
    /// TLS on both.
    #[serde(default)]
    pub tls: NbdTls,
}

/// TLS on the NBD endpoints: off, on (offered) or required.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NbdTls {
    #[default]
    Off,
    On,
    Require,
}

/// `POST /v1/volumes/NAME/attach`: the volume's block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub device: std::path::PathBuf,
    /// The attach path: `fuse` or `kernel-nbd`.
    pub via: String,
}

/// `ballast export --json`: the URIs of one export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportUris {
    pub export: String,
    pub read_only: bool,
    /// TLS on the endpoints (the URIs are `nbds` ones unless off).
    #[serde(default)]
    pub tls: NbdTls,
    pub unix: String,
    pub tcp: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/jobs`: a long backup operation for the daemon to run. URLs
/// are backup destinations or backup URLs as `ballast backup` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobRequest {
    /// Back up `volume@snapshot`, or a snapshot taken now when `snapshot` is absent.
    Backup {
        volume: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<String>,
        dest: String,
        /// The name of the backup key (in the daemon's key directory) of
        /// an encrypted destination; in every request below too.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Restore `backup` into the new volume `volume`.
    Restore {
        backup: String,
        volume: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Re-read every chunk of one backup, or of every backup in `dest`.
    Verify {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dest: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Remove chunks no backup references, keeping those younger than
    /// `grace_secs` (default: the store's one hour).
    Gc {
        dest: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// Delete the backups `keep` does not keep (of `volume`, or of every
    /// volume); with `dry_run`, only report what would go.
    Prune {
        dest: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        volume: Option<String>,
        keep: KeepOptions,
        #[serde(default)]
        dry_run: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// `PUT /v1/schedules`: back up `volume` to `dest` every `every_secs`,
/// then prune its backups there with `keep` (nothing if empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSchedule {
    pub volume: String,
    pub dest: String,
    pub every_secs: u64,
    #[serde(default)]
    pub keep: KeepOptions,
    /// The backup key (by name, in the daemon's key directory) of an
    /// encrypted destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `POST /v1/standbys`: volume `volume` follows the backups of `source`
/// in `dest`, polled every `every_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStandby {
    pub volume: String,
    pub dest: String,
    pub source: String,
    pub every_secs: u64,
    /// The backup key (by name, in the daemon's key directory) of an
    /// encrypted destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Answer to `DELETE /v1/volumes/NAME`: the volume, and the backup
/// schedules that went with it (its backups in their destinations stay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedVolume {
    pub volume: String,
    pub removed_schedules: Vec<Schedule>,
}

/// Answer to `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStarted {
    pub id: u64,
}
