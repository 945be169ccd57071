//! The route table: which handler answers which method and path.
//!
//! Paths are matched segment by segment under [`PREFIX`]. A known path with
//! the wrong method answers 405; anything else 404. Names in paths are not
//! percent-decoded: valid names never need it, and anything else is refused.
//! Bodies arrive read in full and size-checked by the server.

use ballast_engine::validate_name;
use bytes::Bytes;
use hyper::{Method, Request};
use serde::de::DeserializeOwned;

use super::attach;
use super::error::ApiError;
use super::state::{Answer, ApiReply, ApiState};
use super::{backups, jobs, metrics, schedules, standbys, volumes, PREFIX};

pub async fn route(state: &ApiState, req: Request<Bytes>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if path == "/metrics" {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(&method, &path));
        }
        return Ok(ApiReply {
            status: hyper::StatusCode::OK,
            body: metrics::render(state).await.into_bytes(),
            content_type: Some(metrics::CONTENT_TYPE),
        });
    }
    let segments: Vec<&str> = match path.strip_prefix(PREFIX).and_then(|p| p.strip_prefix('/')) {
        Some(rest) => rest.split('/').collect(),
        None => return Err(ApiError::no_route(&method, &path)),
    };
    validate_names(&segments)?;
    match (segments.as_slice(), &method) {
        (["pool"], &Method::GET) => volumes::pool_stats(state).await,
        (["nbd"], &Method::GET) => volumes::nbd_endpoints(state).await,
        (["volumes"], &Method::GET) => volumes::list_volumes(state).await,
        (["volumes"], &Method::POST) => volumes::create_volume(state, json_body(req.body())?).await,
        (["volumes", name], &Method::GET) => volumes::get_volume(state, name).await,
        (["volumes", name], &Method::DELETE) => volumes::delete_volume(state, name).await,
        (["volumes", name, "grow"], &Method::POST) => {
            volumes::grow_volume(state, name, json_body(req.body())?).await
        }
        (["volumes", name, "attach"], &Method::POST) => attach::attach(state, name).await,
        (["volumes", name, "detach"], &Method::POST) => attach::detach(state, name).await,
        (["volumes", volume, "snapshots"], &Method::GET) => {
            volumes::list_snapshots(state, volume).await
        }
        (["volumes", volume, "snapshots"], &Method::POST) => {
            let body = optional_json_body(req.body())?;
            volumes::create_snapshot(state, volume, body).await
        }
        (["volumes", volume, "snapshots", snapshot], &Method::DELETE) => {
            volumes::delete_snapshot(state, volume, snapshot).await
        }
        (["backups"], &Method::GET) => backups::list_backups(state, &query).await,
        (["backups"], &Method::DELETE) => backups::delete_backup(&query).await,
        (["backups", "inspect"], &Method::GET) => backups::inspect_backup(state, &query).await,
        (["jobs"], &Method::POST) => jobs::start_job(state, json_body(req.body())?).await,
        (["jobs", id], &Method::GET) => jobs::job_status(state, id, &query).await,
        (["jobs", id], &Method::DELETE) => jobs::cancel_job(state, id).await,
        (["schedules"], &Method::GET) => schedules::list_schedules(state).await,
        (["schedules"], &Method::PUT) => {
            schedules::set_schedule(state, json_body(req.body())?).await
        }
        (["schedules"], &Method::DELETE) => schedules::remove_schedule(state, &query).await,
        (["standbys"], &Method::GET) => standbys::list_standbys(state).await,
        (["standbys"], &Method::POST) => {
            standbys::create_standby(state, json_body(req.body())?).await
        }
        (["standbys", volume, "activate"], &Method::POST) => {
            standbys::activate_standby(state, volume).await
        }
        (
            ["pool"]
            | ["nbd"]
            | ["backups"]
            | ["backups", "inspect"]
            | ["jobs"]
            | ["jobs", _]
            | ["schedules"]
            | ["standbys"]
            | ["standbys", _, "activate"]
            | ["volumes"]
            | ["volumes", _]
            | ["volumes", _, "grow"]
            | ["volumes", _, "attach"]
            | ["volumes", _, "detach"]
            | ["volumes", _, "snapshots"]
            | ["volumes", _, "snapshots", _],
            _,
        ) => Err(ApiError::method_not_allowed(&method, &path)),
        _ => Err(ApiError::no_route(&method, &path)),
    }
}

/// Names in paths are checked before any handler runs, whatever the engine
/// would make of them.
fn validate_names(segments: &[&str]) -> Result<(), ApiError> {
    if let ["standbys", volume, ..] = segments {
        validate_name(volume)?;
    }
    if let ["volumes", volume, rest @ ..] = segments {
        validate_name(volume)?;
        if let ["snapshots", snapshot] = rest {
            validate_name(snapshot)?;
        }
    }
    Ok(())
}

fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON request body: {e}")))
}

/// Like [`json_body`], but an empty body means `T::default()`.
fn optional_json_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(body)
    }
}
