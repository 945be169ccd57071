//! `ballast attach` / `ballast detach`: a volume as a block device on the
//! daemon's host, through the same driver code that attaches Docker
//! volumes.

use ballast_docker::DriverError;
use hyper::StatusCode;

use super::error::ApiError;
use super::state::{Answer, ApiReply, ApiState};
use super::types::Attached;
use crate::driver::DockerDriver;

fn driver(state: &ApiState) -> Result<&DockerDriver, ApiError> {
    state.attach.as_deref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "attaching volumes needs a daemon running as root".into(),
    })
}

fn failed(e: DriverError) -> ApiError {
    let status = match &e {
        DriverError::InvalidName(_) | DriverError::InvalidOption(_) => StatusCode::BAD_REQUEST,
        DriverError::NotFound(_) => StatusCode::NOT_FOUND,
        DriverError::Mounted { .. }
        | DriverError::AttachedAlone { .. }
        | DriverError::MountedForDocker(_) => StatusCode::CONFLICT,
        DriverError::Provider(_)
        | DriverError::Host { .. }
        | DriverError::State { .. }
        | DriverError::NoSpace { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError {
        status,
        message: e.to_string(),
    }
}

pub async fn attach(state: &ApiState, name: &str) -> Answer {
    let attachment = driver(state)?.attach(name).await.map_err(failed)?;
    let path = attachment.to_string();
    ApiReply::ok(&Attached {
        device: attachment.device,
        via: path.split(' ').next().unwrap_or_default().to_string(),
    })
}

pub async fn detach(state: &ApiState, name: &str) -> Answer {
    driver(state)?.detach_alone(name).await.map_err(failed)?;
    ApiReply::no_content()
}
