//! Backups through the control API: quick calls (list, inspect, delete)
//! answer at once; backup, restore, verify and gc run as jobs.
//!
//! All backup work happens in the daemon, which owns the pool. S3
//! credentials come from the daemon's standard AWS chain (environment,
//! profile, instance metadata), never from a URL or a client.

use std::sync::Arc;
use std::time::Duration;

use ballast_backupstore::{
    BackupStore, BackupUrl, Error as StoreError, GcOptions, Progress, ProgressCounter,
    StoreOptions, StoreUrl, VerifyScope,
};
use ballast_engine::{validate_name, Pool, VolumeInfo};
use hyper::StatusCode;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::error::ApiError;
use super::handlers::Reply;
use super::jobs::Outcome;
use super::restore::Restore;
use super::server::ApiState;
use super::types::{JobRequest, JobStarted};

type Answer = Result<Reply, ApiError>;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let e = match e {
            // Same message (the variant is transparent), the engine's status.
            StoreError::Engine(engine) => return engine.into(),
            other => other,
        };
        let status = match &e {
            StoreError::InvalidUrl { .. }
            | StoreError::InvalidBackupId(_)
            | StoreError::NotOurs { .. }
            | StoreError::ChunkSizeMismatch { .. }
            | StoreError::InvalidChunkSize(_) => StatusCode::BAD_REQUEST,
            StoreError::BackupNotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Locked(_) => StatusCode::CONFLICT,
            StoreError::Store { .. } => StatusCode::BAD_GATEWAY,
            StoreError::DamagedChunk { .. }
            | StoreError::MissingChunk { .. }
            | StoreError::Interrupted(_)
            | StoreError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

fn json(value: &impl Serialize) -> Answer {
    Reply::json(StatusCode::OK, value)
}

/// One query parameter, percent-decoded; `None` if absent.
pub fn query_param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == name {
            if found.is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name:?} given twice"
                )));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

fn required_param(query: &str, name: &str) -> Result<String, ApiError> {
    query_param(query, name)?
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {name:?} is required")))
}

pub(super) async fn open(dest: &StoreUrl) -> Result<BackupStore, StoreError> {
    BackupStore::open(dest, StoreOptions::default()).await
}

/// `GET /v1/backups?dest=URL[&volume=VOL]`.
pub async fn list_backups(query: &str) -> Answer {
    let dest: StoreUrl = required_param(query, "dest")?.parse()?;
    let volume = query_param(query, "volume")?;
    if let Some(volume) = &volume {
        validate_name(volume)?;
    }
    json(&open(&dest).await?.list(volume.as_deref()).await?)
}

/// `GET /v1/backups/inspect?backup=URL`.
pub async fn inspect_backup(query: &str) -> Answer {
    let b: BackupUrl = required_param(query, "backup")?.parse()?;
    json(&open(&b.dest).await?.inspect(&b.volume, &b.id).await?)
}

/// `DELETE /v1/backups?backup=URL`.
pub async fn delete_backup(query: &str) -> Answer {
    let b: BackupUrl = required_param(query, "backup")?.parse()?;
    open(&b.dest).await?.delete(&b.volume, &b.id).await?;
    info!(backup = %b, "deleted backup");
    Ok(Reply {
        status: StatusCode::NO_CONTENT,
        body: Vec::new(),
    })
}

/// `POST /v1/jobs`: checks the request, then starts it as a job (202).
/// Bad URLs and names are refused here, before any job exists.
pub async fn start_job(state: &ApiState, req: JobRequest) -> Answer {
    let op = req.op();
    let job = check(&state.pool, req)?;
    let pool = state.pool.clone();
    let id = state
        .jobs
        .spawn(op, move |progress, cancel| run(pool, job, progress, cancel));
    Reply::json(StatusCode::ACCEPTED, &JobStarted { id })
}

/// `GET /v1/jobs/{id}[?wait_ms=N]`: the job's status, after waiting up to
/// N ms for it to finish.
pub async fn job_status(state: &ApiState, id: &str, query: &str) -> Answer {
    let id = job_id(id)?;
    let wait = match query_param(query, "wait_ms")? {
        None => Duration::ZERO,
        Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "wait_ms must be a number of milliseconds, not {ms:?}"
            ))
        })?),
    };
    json(
        &state
            .jobs
            .status_after(id, wait)
            .await
            .ok_or_else(|| no_job(id))?,
    )
}

/// `DELETE /v1/jobs/{id}`: cancels the job and answers once it has unwound.
pub async fn cancel_job(state: &ApiState, id: &str) -> Answer {
    let id = job_id(id)?;
    if !state.jobs.cancel(id).await {
        return Err(no_job(id));
    }
    json(&state.jobs.status(id).ok_or_else(|| no_job(id))?)
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

/// A job request with its URLs parsed and names checked.
enum Job {
    Backup {
        dest: StoreUrl,
        volume: String,
        snapshot: Option<String>,
    },
    Restore {
        backup: BackupUrl,
        volume: String,
    },
    Verify {
        dest: StoreUrl,
        backup: Option<(String, String)>,
    },
    Gc {
        dest: StoreUrl,
        options: GcOptions,
    },
}

fn check(pool: &Pool, req: JobRequest) -> Result<Job, ApiError> {
    Ok(match req {
        JobRequest::Backup {
            volume,
            snapshot,
            dest,
        } => {
            let dest = dest.parse()?;
            validate_name(&volume)?;
            if let Some(snapshot) = &snapshot {
                validate_name(snapshot)?;
            }
            pool.volume(&volume)?;
            Job::Backup {
                dest,
                volume,
                snapshot,
            }
        }
        JobRequest::Restore { backup, volume } => {
            let backup = backup.parse()?;
            validate_name(&volume)?;
            refuse_taken(pool, &volume)?;
            Job::Restore { backup, volume }
        }
        JobRequest::Verify { backup, dest } => match (backup, dest) {
            (Some(backup), None) => {
                let b: BackupUrl = backup.parse()?;
                Job::Verify {
                    dest: b.dest,
                    backup: Some((b.volume, b.id)),
                }
            }
            (None, Some(dest)) => Job::Verify {
                dest: dest.parse()?,
                backup: None,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "verify needs either a backup URL or a destination, not both",
                ))
            }
        },
        JobRequest::Gc { dest, grace_secs } => {
            let mut options = GcOptions::default();
            if let Some(secs) = grace_secs {
                options.grace = Duration::from_secs(secs);
            }
            Job::Gc {
                dest: dest.parse()?,
                options,
            }
        }
    })
}

fn refuse_taken(pool: &Pool, volume: &str) -> Result<(), ApiError> {
    match pool.volume(volume) {
        Err(ballast_engine::Error::NotFound { .. }) => Ok(()),
        Ok(_) => Err(ballast_engine::Error::AlreadyExists {
            kind: "volume",
            name: volume.to_string(),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

async fn run(
    pool: Pool,
    job: Job,
    progress: Arc<ProgressCounter>,
    cancel: CancellationToken,
) -> Outcome {
    // A cancelled operation is dropped where it stands. The store keeps
    // itself consistent (a backup's manifest is written last, its lock is
    // released on drop); only a half-restored volume is ours to remove.
    let restore = match &job {
        Job::Restore { .. } => match Restore::begin(&pool) {
            Ok(r) => Some(r),
            Err(e) => return Outcome::Failed(format!("cannot journal the restore: {e}")),
        },
        _ => None,
    };
    let temp = restore.clone();
    let outcome = tokio::select! {
        result = execute(&pool, job, restore, progress.as_ref()) => match result {
            Ok(value) => Outcome::Done(value),
            Err(e) => Outcome::Failed(e.to_string()),
        },
        () = cancel.cancelled() => Outcome::Cancelled,
    };
    if let (Outcome::Cancelled, Some(temp)) = (&outcome, temp) {
        temp.abandon(&pool).await;
    }
    outcome
}

async fn execute(
    pool: &Pool,
    job: Job,
    restore: Option<Restore>,
    progress: &dyn Progress,
) -> Result<serde_json::Value, StoreError> {
    let value = match job {
        Job::Backup {
            dest,
            volume,
            snapshot,
        } => {
            let store = open(&dest).await?;
            let info = store
                .backup(pool, &volume, snapshot.as_deref(), progress)
                .await?;
            info!(backup = %info.url, "backup complete");
            to_json(&info)
        }
        Job::Restore { backup, volume } => {
            let restore = restore.expect("restore jobs are journalled before they run");
            to_json(&restore.run(pool, &backup, &volume, progress).await?)
        }
        Job::Verify { dest, backup } => {
            let store = open(&dest).await?;
            let scope = match &backup {
                Some((volume, id)) => VerifyScope::Backup { volume, id },
                None => VerifyScope::All,
            };
            to_json(&store.verify(scope, progress).await?)
        }
        Job::Gc { dest, options } => to_json(&open(&dest).await?.gc(&options, progress).await?),
    };
    Ok(value)
}

fn to_json(value: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("backup reports always serialise")
}

/// Restores `backup` into the new volume `volume` (crash-safe, see
/// [`Restore`]). Used by the Docker driver's `backup=` option.
pub async fn restore_backup(
    pool: &Pool,
    backup: &BackupUrl,
    volume: &str,
    progress: &dyn Progress,
) -> Result<VolumeInfo, StoreError> {
    if pool.volume(volume).is_ok() {
        return Err(ballast_engine::Error::AlreadyExists {
            kind: "volume",
            name: volume.to_string(),
        }
        .into());
    }
    let restore =
        Restore::begin(pool).map_err(|e| StoreError::from(ballast_engine::Error::from_io(e)))?;
    restore.run(pool, backup, volume, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let url = "s3://b/p?endpoint=http://h:1&backup=x&volume=v";
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("backup", url)
            .append_pair("volume", "v")
            .finish();
        assert_eq!(query_param(&query, "backup").unwrap().as_deref(), Some(url));
        assert_eq!(query_param(&query, "volume").unwrap().as_deref(), Some("v"));
        assert_eq!(query_param(&query, "dest").unwrap(), None);
        assert!(query_param("a=1&a=2", "a").is_err());
        assert!(required_param("", "dest").is_err());
    }

    #[test]
    fn store_errors_map_to_fitting_statuses() {
        let bad: StoreError = "ftp://x".parse::<StoreUrl>().unwrap_err();
        assert_eq!(ApiError::from(bad).status, StatusCode::BAD_REQUEST);
        let missing = StoreError::BackupNotFound {
            dest: "file:///b".into(),
            volume: "v".into(),
            id: "i".into(),
        };
        let message = missing.to_string();
        let api = ApiError::from(missing);
        assert_eq!(api.status, StatusCode::NOT_FOUND);
        assert_eq!(api.message, message);
        let engine = StoreError::Engine(ballast_engine::Error::NotFound {
            kind: "volume",
            name: "v".into(),
        });
        assert_eq!(ApiError::from(engine).status, StatusCode::NOT_FOUND);
    }
}
