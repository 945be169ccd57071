//! ballast-fuse: the daemon's own FUSE server for block files.
//!
//! A volume is served as the single file `DIR/disk` of a FUSE mount, for a
//! loop device to turn into a block device, with nothing between the
//! filesystem on that device and the engine that could hold an
//! acknowledged write: the file is opened with `FOPEN_DIRECT_IO` (no page
//! cache; parallel direct writes, asynchronous direct I/O from the loop
//! driver), and every `fsync` or `flush` of the file is exactly one engine
//! flush.
//!
//! The server keeps no per-request or per-open state beyond the request at
//! hand, so a new daemon can take a running connection over: a holder
//! process keeps the `/dev/fuse` descriptor and the [redo log](redo) across
//! the restart, the new daemon replays the log and asks the kernel to
//! resend what the old one had read but not answered (`FUSE_NOTIFY_RESEND`,
//! Linux 6.9+). A container's I/O pauses while no daemon runs.
//!
//! The crate uses the engine's public volume API only.

mod abi;
mod backing;
mod dev;
mod export;
pub mod holder;
mod mount;
pub mod redo;
mod session;

pub use backing::Backing;
pub use export::{ExportError, FileExport, Handoff, LOG_CAPACITY};
pub use mount::{unmount, FSTYPE};
pub use session::{FILE_NAME, MAX_IO};
