//! Plain data types of the engine's public API.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::io::IoMode;

/// How to open a pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Directory holding `pool.data` and `meta/` (created if missing).
    pub root: PathBuf,
    /// Cap in bytes on the data file's space for volume data (the file also
    /// holds a header and a 32 MiB journal); writes that need more space
    /// fail with [`crate::Error::NoSpace`]. `None` = limited by the
    /// filesystem.
    pub max_size: Option<u64>,
    /// I/O backend selection.
    pub io: IoMode,
    /// Reap io_uring completions on this tokio runtime (which must have I/O
    /// enabled) rather than on a thread of the pool's own: I/O is then
    /// submitted straight from the threads that ask for it, with no
    /// hand-off between threads. The pool may only do I/O while that
    /// runtime runs. `None` suits pools used from several runtimes or none.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Memory for metadata in bytes: the map node cache, the changes
    /// since the last checkpoint, the allocator's bitmap and sled's own
    /// cache share it.
    pub meta_cache: u64,
    /// Failures to inject (a test seam).
    #[cfg(feature = "test-seams")]
    pub faults: Option<std::sync::Arc<crate::io::Faults>>,
}

/// The default metadata memory budget (64 MiB).
pub const DEFAULT_META_CACHE: u64 = 64 << 20;

impl PoolConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PoolConfig {
            root: root.into(),
            max_size: None,
            io: IoMode::Auto,
            runtime: None,
            meta_cache: DEFAULT_META_CACHE,
            #[cfg(feature = "test-seams")]
            faults: None,
        }
    }
}

/// A volume as reported by list/inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes of pool space the volume and its snapshots hold (what a clone
    /// shares with its origin is counted with the origin volume).
    pub allocated: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// `VOL@SNAP` this volume was cloned from, if any.
    pub origin: Option<String>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
}

/// A snapshot as reported by list/inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub volume: String,
    pub name: String,
    /// Volume size when the snapshot was taken.
    pub size: u64,
    /// Bytes of pool space written between the previous snapshot and this
    /// one that this snapshot still holds.
    pub allocated: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Number of volumes cloned from this snapshot.
    pub clones: u32,
}

/// Pool-wide space accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Bytes of blocks in use by any volume or snapshot.
    pub used: u64,
    /// Current size of the data file.
    pub file_size: u64,
    /// The configured cap, if any.
    pub max_size: Option<u64>,
    /// The I/O backend actually in use.
    pub io: String,
    /// Bytes read ahead for sequential streams since the pool was opened.
    #[serde(default)]
    pub read_ahead: u64,
    /// Of those, bytes a read then used.
    #[serde(default)]
    pub read_ahead_used: u64,
    /// Why the pool stopped accepting writes, if it has.
    #[serde(default)]
    pub failed: Option<String>,
    /// The metadata cache.
    #[serde(default)]
    pub meta_cache: MetaCacheStats,
    /// Bytes the metadata store takes on disk.
    #[serde(default)]
    pub metadata_size: u64,
}

/// What the metadata cache holds and how well it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaCacheStats {
    /// The budget, in bytes.
    pub budget: u64,
    /// Bytes of map nodes cached.
    pub nodes: u64,
    /// Bytes of map changes not yet checkpointed.
    pub overlays: u64,
    /// Node lookups served from the cache.
    pub hits: u64,
    /// Node lookups that read the metadata store.
    pub misses: u64,
}

/// What a range of a volume holds, for allocation queries (NBD block status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockState {
    /// Mapped to pool blocks.
    Data,
    /// Unmapped (never written, trimmed or zeroed): reads as zeros and
    /// holds no pool space.
    Hole,
}

/// A run of bytes with one [`BlockState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub state: BlockState,
}
