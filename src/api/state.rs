//! What every handler reaches and answers with: the daemon's state and the
//! reply of a handled request. Handlers use this module; it uses none of
//! them.

use ballast_engine::Pool;
use hyper::StatusCode;
use serde::Serialize;

use super::error::ApiError;
use super::types::NbdEndpoints;
use crate::driver::DockerDriver;
use crate::ops::hydrate::Hydrations;
use crate::ops::jobs::Jobs;
use crate::ops::keys::BackupKeys;
use crate::ops::schedule::Scheduler;
use crate::ops::standby::Standbys;

/// Everything the handlers can reach. Services that add API routes add
/// their handles here.
pub struct ApiState {
    pub pool: Pool,
    pub nbd: NbdEndpoints,
    /// Running and recently finished backup jobs.
    pub jobs: Jobs,
    /// Volumes restored instantly and still hydrating.
    pub hydrations: Hydrations,
    /// The backup schedules and their runs.
    pub schedules: Scheduler,
    /// The standby volumes and their applies.
    pub standbys: Standbys,
    /// The backup keys requests may name (`--backup-key-dir`).
    pub keys: BackupKeys,
    /// Attaches volumes as block devices (`ballast attach`): the Docker
    /// driver, present when the daemon runs as root.
    pub attach: Option<std::sync::Arc<DockerDriver>>,
}

/// A successful answer of the control API: status and JSON body (empty
/// for 204).
#[derive(Debug)]
pub struct ApiReply {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// `None`: JSON.
    pub content_type: Option<&'static str>,
}

impl ApiReply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Answer {
        let body = serde_json::to_vec(value).map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot encode response: {e}"),
        })?;
        Ok(ApiReply {
            status,
            body,
            content_type: None,
        })
    }

    /// 200 with `value` as its body.
    pub fn ok(value: &impl Serialize) -> Answer {
        ApiReply::json(StatusCode::OK, value)
    }

    pub fn no_content() -> Answer {
        Ok(ApiReply {
            status: StatusCode::NO_CONTENT,
            body: Vec::new(),
            content_type: None,
        })
    }
}

/// What a handler returns.
pub type Answer = Result<ApiReply, ApiError>;
