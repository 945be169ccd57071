//! The jobs API: `POST /v1/jobs` checks a request and starts it as a job,
//! `GET /v1/jobs/{id}` reports it, `DELETE /v1/jobs/{id}` cancels it. The
//! jobs themselves run below the HTTP layer (`crate::ops`).

use std::time::Duration;

use ballast_backupstore::{BackupUrl, GcOptions};
use ballast_engine::validate_name;
use hyper::StatusCode;

use super::error::ApiError;
use super::query;
use super::state::{Answer, ApiReply, ApiState};
use super::types::{JobRequest, JobStarted};
use crate::ops::operation::{self, Operation};
use crate::ops::restore::refuse_taken;

/// `POST /v1/jobs`: checks the request, then starts it as a job (202).
/// Bad URLs and names are refused here, before any job exists.
pub async fn start_job(state: &ApiState, req: JobRequest) -> Answer {
    let operation = check(state, req)?;
    let pool = state.pool.clone();
    let id = state.jobs.spawn(operation.name(), move |progress, cancel| {
        operation::run(pool, operation, progress, cancel)
    });
    ApiReply::json(StatusCode::ACCEPTED, &JobStarted { id })
}

/// `GET /v1/jobs/{id}[?wait_ms=N]`: the job's status, after waiting up to
/// N ms for it to finish.
pub async fn job_status(state: &ApiState, id: &str, query: &str) -> Answer {
    let id = job_id(id)?;
    let wait = match query::param(query, "wait_ms")? {
        None => Duration::ZERO,
        Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "wait_ms must be a number of milliseconds, not {ms:?}"
            ))
        })?),
    };
    let status = state.jobs.status_after(id, wait).await;
    ApiReply::ok(&status.ok_or_else(|| no_job(id))?)
}

/// `DELETE /v1/jobs/{id}`: cancels the job and answers once it has unwound.
pub async fn cancel_job(state: &ApiState, id: &str) -> Answer {
    let id = job_id(id)?;
    if !state.jobs.cancel(id).await {
        return Err(no_job(id));
    }
    ApiReply::ok(&state.jobs.status(id).ok_or_else(|| no_job(id))?)
}

fn job_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid job id {id:?}")))
}

fn no_job(id: u64) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("job {id} not found"),
    }
}

/// Why a prune without keep options is refused (it would keep only the
/// newest backup of each volume, which nobody asks for by leaving options out).
const NO_KEEP_OPTION: &str =
    "prune needs at least one keep option above 0 (--keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly)";

/// The operation a request asks for, its URLs parsed, names checked and
/// key read (a missing or unreadable key is refused here).
fn check(state: &ApiState, req: JobRequest) -> Result<Operation, ApiError> {
    let pool = &state.pool;
    let keys = &state.keys;
    Ok(match req {
        JobRequest::Backup {
            volume,
            snapshot,
            dest,
            key,
        } => {
            let dest = dest.parse()?;
            validate_name(&volume)?;
            match &snapshot {
                Some(snapshot) => validate_name(snapshot)?,
                // A backup of a standby reads one of its snapshots.
                None => state.standbys.refuse(&volume, "snapshotted")?,
            }
            pool.volume(&volume)?;
            Operation::Backup {
                dest,
                volume,
                snapshot,
                key: keys.load(key.as_deref())?,
            }
        }
        JobRequest::Restore {
            backup,
            volume,
            key,
        } => {
            let backup = backup.parse()?;
            validate_name(&volume)?;
            refuse_taken(pool, &volume)?;
            Operation::Restore {
                backup,
                volume,
                key: keys.load(key.as_deref())?,
            }
        }
        JobRequest::Verify { backup, dest, key } => match (backup, dest) {
            (Some(backup), None) => Operation::VerifyBackup {
                backup: backup.parse::<BackupUrl>()?,
                key: keys.load(key.as_deref())?,
            },
            (None, Some(dest)) => Operation::VerifyAll {
                dest: dest.parse()?,
                key: keys.load(key.as_deref())?,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "verify needs either a backup URL or a destination, not both",
                ))
            }
        },
        JobRequest::Gc {
            dest,
            grace_secs,
            key,
        } => {
            let mut options = GcOptions::default();
            if let Some(secs) = grace_secs {
                options.grace = Duration::from_secs(secs);
            }
            Operation::Gc {
                dest: dest.parse()?,
                options,
                key: keys.load(key.as_deref())?,
            }
        }
        JobRequest::Prune {
            dest,
            volume,
            keep,
            dry_run,
            key,
        } => {
            let dest = dest.parse()?;
            if let Some(volume) = &volume {
                validate_name(volume)?;
            }
            if keep.is_empty() {
                return Err(ApiError::bad_request(NO_KEEP_OPTION));
            }
            Operation::Prune {
                dest,
                volume,
                keep,
                dry_run,
                key: keys.load(key.as_deref())?,
            }
        }
    })
}
