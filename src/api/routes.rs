//! The route table: which handler answers which method and path.
//!
//! Paths are matched segment by segment under [`PREFIX`]. A known path with
//! the wrong method answers 405; anything else 404. Names in paths are not
//! percent-decoded: valid names never need it, and anything else is refused.

use ballast_engine::validate_name;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::de::DeserializeOwned;

use super::attach;
use super::backups;
use super::error::ApiError;
use super::handlers::{self, Reply};
use super::server::ApiState;
use super::PREFIX;

/// Largest request body accepted; every API body is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

pub async fn route(state: &ApiState, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = match path.strip_prefix(PREFIX).and_then(|p| p.strip_prefix('/')) {
        Some(rest) => rest.split('/').collect(),
        None => return Err(ApiError::no_route(&method, &path)),
    };
    validate_names(&segments)?;
    match (segments.as_slice(), &method) {
        (["pool"], &Method::GET) => handlers::pool_stats(state).await,
        (["nbd"], &Method::GET) => handlers::nbd_endpoints(state).await,
        (["volumes"], &Method::GET) => handlers::list_volumes(state).await,
        (["volumes"], &Method::POST) => handlers::create_volume(state, json_body(req).await?).await,
        (["volumes", name], &Method::GET) => handlers::get_volume(state, name).await,
        (["volumes", name], &Method::DELETE) => handlers::delete_volume(state, name).await,
        (["volumes", name, "grow"], &Method::POST) => {
            handlers::grow_volume(state, name, json_body(req).await?).await
        }
        (["volumes", name, "attach"], &Method::POST) => attach::attach(state, name).await,
        (["volumes", name, "detach"], &Method::POST) => attach::detach(state, name).await,
        (["volumes", volume, "snapshots"], &Method::GET) => {
            handlers::list_snapshots(state, volume).await
        }
        (["volumes", volume, "snapshots"], &Method::POST) => {
            let body = optional_json_body(req).await?;
            handlers::create_snapshot(state, volume, body).await
        }
        (["volumes", volume, "snapshots", snapshot], &Method::DELETE) => {
            handlers::delete_snapshot(state, volume, snapshot).await
        }
        (["backups"], &Method::GET) => backups::list_backups(&query).await,
        (["backups"], &Method::DELETE) => backups::delete_backup(&query).await,
        (["backups", "inspect"], &Method::GET) => backups::inspect_backup(&query).await,
        (["jobs"], &Method::POST) => backups::start_job(state, json_body(req).await?).await,
        (["jobs", id], &Method::GET) => backups::job_status(state, id, &query).await,
        (["jobs", id], &Method::DELETE) => backups::cancel_job(state, id).await,
        (
            ["pool"]
            | ["nbd"]
            | ["backups"]
            | ["backups", "inspect"]
            | ["jobs"]
            | ["jobs", _]
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
    if let ["volumes", volume, rest @ ..] = segments {
        validate_name(volume)?;
        if let ["snapshots", snapshot] = rest {
            validate_name(snapshot)?;
        }
    }
    Ok(())
}

/// An oversize body is still read, and dropped, up to this much: closing a
/// connection with unread input resets it, and the client would lose the
/// answer. Past this the connection is just closed.
const DRAIN_LIMIT: usize = 16 << 20;

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let mut body = req.into_body();
    let mut kept = Vec::new();
    let mut seen = 0;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::bad_request(format!(
            "request body larger than {MAX_BODY} bytes"
        )));
    }
    Ok(Bytes::from(kept))
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON request body: {e}")))
}

async fn json_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    parse_json(&read_body(req).await?)
}

/// Like [`json_body`], but an empty body means `T::default()`.
async fn optional_json_body<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = read_body(req).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(&body)
    }
}
