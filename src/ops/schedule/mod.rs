//! Backup schedules: per volume and destination, a backup every
//! `every` seconds, then a prune with the schedule's keep options and, at
//! most once a day per destination, a gc.
//!
//! [`Scheduler`] is the one owner of the schedules and their state, in
//! memory and in the pool's metadata (`record.rs`); the daemon runs its
//! loop (`runner.rs`) as a service and the control API calls its
//! set/list/remove. Times are seconds since the Unix epoch (UTC); clients
//! show them in local time.
//!
//! Rules (the invariants live in `runner.rs`):
//! - a run missed while the daemon was down (or cut short by a crash) runs
//!   once at start-up, not once per missed slot;
//! - one run per schedule at a time: a slot that comes while its run is
//!   still going is skipped and the skip counted, not queued;
//! - a failed run is retried with a growing delay, never later than the
//!   next regular slot, and never holds up other schedules;
//! - at most `concurrency` runs upload at once.

mod record;
mod runner;

pub use record::{Schedule, ScheduleStatus};
pub use runner::Scheduler;
