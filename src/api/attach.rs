//! `ballast attach` / `ballast detach`: a volume as a block device on the
//! daemon's host, through the same driver code that attaches Docker
//! volumes.

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

pub async fn attach(state: &ApiState, name: &str) -> Answer {
    let attachment = driver(state)?.attach(name).await?;
    ApiReply::ok(&Attached {
        via: attachment.path().to_string(),
        device: attachment.device,
    })
}

pub async fn detach(state: &ApiState, name: &str) -> Answer {
    driver(state)?.detach_alone(name).await?;
    ApiReply::no_content()
}
