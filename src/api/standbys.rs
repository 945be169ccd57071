//! Standby volumes through the control API: `GET /v1/standbys`, `POST
//! /v1/standbys` (create one), `POST /v1/standbys/VOL/activate`. The
//! standbys (`crate::ops::standby`) keep their records in the pool's
//! metadata and apply new backups in the background.

use ballast_backupstore::StoreUrl;
use ballast_engine::validate_name;
use hyper::StatusCode;
use tracing::info;

use super::error::ApiError;
use super::state::{Answer, ApiReply, ApiState};
use super::types::CreateStandby;
use crate::ops::standby::Standby;

/// Shortest interval accepted.
const MIN_EVERY_SECS: u64 = 1;

pub async fn list_standbys(state: &ApiState) -> Answer {
    ApiReply::ok(&state.standbys.list())
}

pub async fn create_standby(state: &ApiState, req: CreateStandby) -> Answer {
    validate_name(&req.volume)?;
    validate_name(&req.source)?;
    let dest: StoreUrl = req.dest.parse()?;
    if req.every_secs < MIN_EVERY_SECS {
        return Err(ApiError::bad_request(format!(
            "the interval must be at least {MIN_EVERY_SECS} s"
        )));
    }
    let status = state
        .standbys
        .create(Standby {
            volume: req.volume,
            dest: dest.to_string(),
            source: req.source,
            every: req.every_secs,
            key: req.key,
        })
        .await?;
    ApiReply::json(StatusCode::CREATED, &status)
}

pub async fn activate_standby(state: &ApiState, volume: &str) -> Answer {
    let started = std::time::Instant::now();
    let status = state.standbys.activate(volume).await?;
    info!(volume, backup = ?status.applied_backup, ms = started.elapsed().as_millis() as u64, "standby activated through the API");
    ApiReply::ok(&status)
}
