//! The daemon's long operations, below any protocol: backup, restore,
//! verify and gc as jobs ([`jobs`], [`operation`]), and crash-safe
//! restores ([`restore`]), with the backup keys the daemon may use
//! ([`keys`]), and standby volumes that follow another host's backups
//! ([`standby`]). The control API starts them; the Docker volume
//! driver restores through [`restore::restore_backup`] the same way, and
//! both delete volumes through [`volumes::delete_volume`].
//!
//! Nothing here knows HTTP: failures are [`error::OpError`]s, and the
//! callers decide what each becomes on their protocol.

pub mod chain;
pub mod error;
pub mod hydrate;
pub mod jobs;
pub mod keys;
pub mod operation;
pub mod restore;
pub mod schedule;
pub mod standby;
pub mod volumes;
