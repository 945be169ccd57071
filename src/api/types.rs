//! JSON bodies of the control API, shared by server and client.
//!
//! Volume, snapshot and pool descriptions are the engine's own serialisable
//! types, so `--json` output and the API speak the same shapes.

use serde::{Deserialize, Serialize};

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
}

/// `ballast export --json`: the URIs of one export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportUris {
    pub export: String,
    pub read_only: bool,
    pub unix: String,
    pub tcp: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
