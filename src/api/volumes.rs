//! The pool, its volumes and snapshots, and where they are exported: one
//! small function per API operation (validate, call the engine, answer).
//! The engine commits every control operation before it returns, so
//! whatever a client was told succeeded survives a crash of the daemon.

use ballast_engine::{format_size, parse_snapshot_ref, validate_name, Pool, BLOCK_SIZE};
use hyper::StatusCode;
use tracing::{info, warn};

use super::error::ApiError;
use super::state::{Answer, ApiReply, ApiState};
use super::types::{CreateSnapshot, CreateVolume, DeletedVolume, GrowVolume, VolumeDetails};
use crate::ops;

pub async fn pool_stats(state: &ApiState) -> Answer {
    ApiReply::ok(&state.pool.stats())
}

pub async fn nbd_endpoints(state: &ApiState) -> Answer {
    ApiReply::ok(&state.nbd)
}

pub async fn list_volumes(state: &ApiState) -> Answer {
    ApiReply::ok(&state.pool.volumes())
}

pub async fn get_volume(state: &ApiState, name: &str) -> Answer {
    ApiReply::ok(&VolumeDetails {
        info: state.pool.volume(name)?,
        hydration: state.hydrations.status(name),
        standby: state.standbys.status(name),
    })
}

pub async fn create_volume(state: &ApiState, req: CreateVolume) -> Answer {
    validate_name(&req.name)?;
    if let Some(url) = &req.backup {
        return restore_instantly(state, &req, url).await;
    }
    if req.key.is_some() {
        return Err(ApiError::bad_request(
            "key goes with backup: it is the key of the destination a volume is restored from",
        ));
    }
    let pool = &state.pool;
    let info = match &req.from_snapshot {
        None => {
            let size = req
                .size
                .ok_or_else(|| ApiError::bad_request("size is required for a new volume"))?;
            pool.create_volume(&req.name, size).await?
        }
        Some(origin) => clone_volume(pool, &req.name, origin, req.size).await?,
    };
    match &info.origin {
        Some(origin) => {
            info!(volume = %info.name, %origin, size = %format_size(info.size), "cloned volume")
        }
        None => info!(volume = %info.name, size = %format_size(info.size), "created volume"),
    }
    ApiReply::json(StatusCode::CREATED, &info)
}

/// `backup` given: creates the volume behind its hydration and answers
/// once it is served.
async fn restore_instantly(state: &ApiState, req: &CreateVolume, url: &str) -> Answer {
    if req.size.is_some() || req.from_snapshot.is_some() {
        return Err(ApiError::bad_request(
            "backup cannot be combined with size or from_snapshot: the volume takes the backup's size",
        ));
    }
    let backup = url
        .parse()
        .map_err(|e: ballast_backupstore::Error| ApiError::bad_request(e.to_string()))?;
    let (info, _job) = state
        .hydrations
        .start(&backup, &req.name, req.key.as_deref())
        .await?;
    ApiReply::json(
        StatusCode::CREATED,
        &VolumeDetails {
            hydration: state.hydrations.status(&info.name),
            standby: None,
            info,
        },
    )
}

/// Clones `origin` (`VOL@SNAP`) and grows the clone to `size` if that is larger.
async fn clone_volume(
    pool: &Pool,
    name: &str,
    origin: &str,
    size: Option<u64>,
) -> Result<ballast_engine::VolumeInfo, ApiError> {
    let (volume, snapshot) = parse_snapshot_ref(origin)?;
    if let Some(size) = size {
        // Checked up front so a refused size never leaves a clone behind.
        let snapshot_size = pool
            .snapshots(volume)?
            .into_iter()
            .find(|s| s.name == snapshot)
            .map(|s| s.size)
            .ok_or_else(|| ballast_engine::Error::NotFound {
                kind: "snapshot",
                name: origin.to_string(),
            })?;
        if size < snapshot_size || !size.is_multiple_of(BLOCK_SIZE) {
            return Err(ApiError::bad_request(format!(
                "invalid size {size} for a clone of {origin}: it must be a multiple of {BLOCK_SIZE} and at least the snapshot's size ({snapshot_size} bytes)"
            )));
        }
    }
    let clone = pool.clone_volume(name, volume, snapshot).await?;
    match size {
        Some(size) if size > clone.size => match pool.grow_volume(name, size).await {
            Ok(grown) => Ok(grown),
            Err(grow_error) => {
                if let Err(e) = pool.delete_volume(name).await {
                    warn!(volume = %name, "cannot remove clone after failed grow: {e}");
                }
                Err(grow_error.into())
            }
        },
        _ => Ok(clone),
    }
}

pub async fn delete_volume(state: &ApiState, name: &str) -> Answer {
    if let Some(attached) = state.attach.as_ref().and_then(|d| d.attachment(name)) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "volume {name} is attached ({attached}); detach it (or stop its containers) first"
            ),
        });
    }
    let removed_schedules =
        ops::volumes::delete_volume(&state.hydrations, &state.schedules, &state.standbys, name)
            .await?;
    info!(
        volume = %name,
        schedules = removed_schedules.len(),
        "deleted volume and its backup schedules"
    );
    ApiReply::ok(&DeletedVolume {
        volume: name.to_string(),
        removed_schedules,
    })
}

pub async fn grow_volume(state: &ApiState, name: &str, req: GrowVolume) -> Answer {
    state.standbys.refuse(name, "grown")?;
    let info = state.pool.grow_volume(name, req.size).await?;
    info!(volume = %name, size = %format_size(info.size), "grew volume");
    ApiReply::ok(&info)
}

pub async fn list_snapshots(state: &ApiState, volume: &str) -> Answer {
    ApiReply::ok(&state.pool.snapshots(volume)?)
}

pub async fn create_snapshot(state: &ApiState, volume: &str, req: CreateSnapshot) -> Answer {
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    // Its applies take its snapshots: one taken meanwhile could hold half
    // an apply, and would stop an undo from reverting to the last one.
    state.standbys.refuse(volume, "snapshotted")?;
    let snapshot = state
        .pool
        .create_snapshot(volume, req.name.as_deref())
        .await?;
    info!(volume = %volume, snapshot = %snapshot.name, "created snapshot");
    ApiReply::json(StatusCode::CREATED, &snapshot)
}

pub async fn delete_snapshot(state: &ApiState, volume: &str, snapshot: &str) -> Answer {
    state.standbys.refuse(volume, "pruned of snapshots")?;
    state.pool.delete_snapshot(volume, snapshot).await?;
    info!(volume = %volume, snapshot = %snapshot, "deleted snapshot");
    ApiReply::no_content()
}
