//! ballast-engine: a copy-on-write extent engine for block volumes.
//!
//! A [`Pool`] is one data file plus metadata in sled. It holds volumes and
//! their snapshots. Data lives in 4 KiB blocks, each with a crc32 kept in
//! its map and verified on every read. Every volume and snapshot has a
//! complete map, a copy-on-write B-tree of extents that a snapshot shares
//! with its volume (`tree`); the maps live in the metadata store and are
//! read through a cache of fixed size, so memory and open time do not grow
//! with the data written or the number of snapshots.
//!
//! # Invariants
//!
//! * **Redirect-on-write.** A write never overwrites a pool block that
//!   durable metadata references; new data always goes to a freshly
//!   allocated block and the map changes in memory (the volume's overlay).
//! * **Commit.** Map changes become durable at [`Pool::flush`] (NBD FLUSH /
//!   FUA, control operations, and the daemon's timer): one journal record
//!   in the data file and one `fdatasync` (`commit`). A checkpoint later
//!   merges them into the on-disk maps (`checkpoint`). A crash reopens the
//!   last durable commit.
//! * **Deferred free.** A block unreferenced by a map change is reused only
//!   after the commit that unreferences it is durable *and* every read that
//!   could still be looking at it has finished (`reclaim`).
//! * **Checksums.** A read whose crc32 does not match fails with
//!   [`Error::Checksum`] (EIO); it never returns the bad bytes.
//! * **Write-behind.** A write is acknowledged once its data is handed to
//!   the disk and its mapping installed. Reads of its blocks and every
//!   commit wait for it (`write_behind`).
//! * **Fail safe.** A failed data sync, journal write or metadata write
//!   stops the pool's writes with [`Error::Failed`]; it is never retried as
//!   if nothing happened.
//!
//! # Locks
//!
//! See `shared` for the order.

mod alloc;
mod catalog;
mod checkpoint;
mod codec;
mod commit;
mod error;
mod extent;
mod fence;
mod gate;
pub mod io;
mod iostats;
mod journal;
mod meta;
mod name;
mod overlay;
mod pool;
mod readahead;
mod reclaim;
mod records;
mod recovery;
mod revert;
mod shared;
mod space;
mod tree;
mod types;
mod units;
mod volume;
mod write_behind;

pub use error::{Error, Result};
pub use gate::Gate;
pub use io::IoMode;
pub use iostats::{DirectionStats, VolumeIo, LATENCY_BUCKETS};
pub use name::{parse_snapshot_ref, validate_name, MAX_NAME_LEN};
pub use pool::{Pool, MAX_VOLUME_SIZE};
pub use recovery::RESERVED_BYTES;
pub use types::{
    BlockState, Extent, MetaCacheStats, PoolConfig, PoolStats, SnapshotInfo, VolumeInfo,
    DEFAULT_META_CACHE,
};
pub use units::{format_size, parse_size};
pub use volume::{PooledBuf, Volume};

/// The engine's allocation and checksum unit.
pub const BLOCK_SIZE: u64 = 4096;
