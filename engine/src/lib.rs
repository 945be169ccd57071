//! ballast-engine: a copy-on-write extent engine for block volumes.
//!
//! A [`Pool`] is one data file plus metadata in sled. It holds volumes; a
//! volume is a chain of layers (the writable *head* and frozen snapshot
//! layers beneath it). Data lives in 4 KiB blocks, each with a crc32 kept in
//! its map entry and verified on every read.
//!
//! # Invariants
//!
//! * **Redirect-on-write.** A write never overwrites a pool block that
//!   committed metadata references; new data always goes to a freshly
//!   allocated block and the map is switched in memory.
//! * **Commit.** Map changes become durable at [`Pool::flush`] (NBD FLUSH /
//!   FUA, control operations, and the daemon's timer): data file `fdatasync`
//!   first, then one atomic sled batch, then sled's own flush. A crash
//!   therefore always reopens the last committed state.
//! * **Deferred free.** A block unreferenced by a map change is reused only
//!   after the commit that unreferences it is durable *and* every read that
//!   could still be looking at it has finished.
//! * **Checksums.** A read whose crc32 does not match fails with
//!   [`Error::Checksum`] (EIO); it never returns the bad bytes.
//! * **Write-behind.** A write is acknowledged once its data is handed to
//!   the disk and its mapping installed. Reads of its blocks and every
//!   commit wait for it, so a commit still syncs the data of every mapping
//!   it makes durable; a write that fails afterwards is reported by the
//!   next flush (see `write_behind`).
//!
//! The allocator is not persisted: at open it is rebuilt from the committed
//! maps, so blocks written after the last commit are reclaimed by a crash.

mod alloc;
mod error;
pub mod io;
mod layer;
mod meta;
mod name;
mod pool;
mod readahead;
mod reclaim;
mod types;
mod units;
mod volume;
mod write_behind;

pub use error::{Error, Result};
pub use io::IoMode;
pub use name::{parse_snapshot_ref, validate_name, MAX_NAME_LEN};
pub use pool::{Pool, MAX_VOLUME_SIZE};
pub use types::{BlockState, Extent, PoolConfig, PoolStats, SnapshotInfo, VolumeInfo};
pub use units::{format_size, parse_size};
pub use volume::{PooledBuf, Volume};

/// The engine's allocation and checksum unit.
pub const BLOCK_SIZE: u64 = 4096;
