//! Deleting a volume with everything that belongs to it: the one delete of
//! the control API (`ballast delete`) and the Docker driver (`docker volume
//! rm`).

use super::error::OpError;
use super::hydrate::Hydrations;
use super::schedule::{Schedule, Scheduler};
use super::standby::Standbys;

/// Deletes `volume`, refused for a standby (it changes only by its applies
/// until it is activated): stops its hydration if it has one, and removes
/// it together with its backup schedules and backup-chain records in one
/// pool transaction. Returns the schedules removed.
pub async fn delete_volume(
    hydrations: &Hydrations,
    schedules: &Scheduler,
    standbys: &Standbys,
    volume: &str,
) -> Result<Vec<Schedule>, OpError> {
    standbys.refuse(volume, "deleted")?;
    hydrations
        .delete_volume(volume, schedules.delete_volume(volume))
        .await
}
