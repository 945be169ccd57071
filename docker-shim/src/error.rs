//! What the driver tells Docker when a request fails. Docker shows the
//! message verbatim, so every variant reads as one complete sentence.

use crate::backend::BackendError;
use crate::host::HostError;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is mounted by {mounts} container(s); stop them before removing it")]
    Mounted { name: String, mounts: usize },
    #[error("volume {name} is attached as {device} with `ballast attach`; run `ballast detach {name}` first")]
    AttachedAlone { name: String, device: String },
    #[error(
        "volume {0} is mounted for Docker; stop its containers before attaching it on its own"
    )]
    MountedForDocker(String),
    #[error("{0}")]
    Backend(#[from] BackendError),
    #[error("volume {volume}: {source}")]
    Host {
        volume: String,
        #[source]
        source: HostError,
    },
    #[error("cannot save the driver state in {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
