//! Backup schedules through the control API: `GET /v1/schedules`,
//! `PUT /v1/schedules` (add or change one), `DELETE
//! /v1/schedules?volume=VOL&dest=URL`. The scheduler (`crate::ops::schedule`)
//! keeps them in the pool's metadata and runs them.

use ballast_backupstore::StoreUrl;
use ballast_engine::validate_name;
use hyper::StatusCode;
use tracing::info;

use super::error::ApiError;
use super::query;
use super::state::{Answer, ApiReply, ApiState};
use super::types::SetSchedule;
use crate::ops::schedule::Schedule;

/// Shortest interval accepted.
const MIN_EVERY_SECS: u64 = 1;

pub async fn list_schedules(state: &ApiState) -> Answer {
    ApiReply::ok(&state.schedules.list().await)
}

pub async fn set_schedule(state: &ApiState, req: SetSchedule) -> Answer {
    validate_name(&req.volume)?;
    state
        .standbys
        .refuse(&req.volume, "backed up on a schedule")?;
    let dest: StoreUrl = req.dest.parse()?;
    if req.every_secs < MIN_EVERY_SECS {
        return Err(ApiError::bad_request(format!(
            "the interval must be at least {MIN_EVERY_SECS} s"
        )));
    }
    let schedule = Schedule {
        volume: req.volume,
        dest: dest.to_string(),
        every: req.every_secs,
        keep: req.keep,
        key: req.key,
    };
    // A key that cannot be read is refused now, not at the first run.
    state.keys.load(schedule.key.as_deref())?;
    let status = state.schedules.set(schedule).await?;
    info!(volume = %status.schedule.volume, dest = %status.schedule.dest, every = status.schedule.every, "backup schedule set");
    ApiReply::ok(&status)
}

pub async fn remove_schedule(state: &ApiState, query: &str) -> Answer {
    let volume = query::required(query, "volume")?;
    validate_name(&volume)?;
    let dest: StoreUrl = query::required(query, "dest")?.parse()?;
    let dest = dest.to_string();
    if !state.schedules.remove(&volume, &dest).await? {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no backup schedule for volume {volume:?} to {dest}"),
        });
    }
    info!(volume, dest, "backup schedule removed");
    ApiReply::no_content()
}
