//! What the driver tells Docker when a request fails. Docker shows the
//! message verbatim, so every variant reads as one complete sentence; each
//! keeps its cause as its source.

use std::io;
use std::path::{Path, PathBuf};

use crate::host::HostError;
use crate::provider::ProviderError;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    InvalidName(ballast_engine::Error),
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
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("volume {volume}: {source}")]
    Host {
        volume: String,
        #[source]
        source: HostError,
    },
    #[error("cannot save the driver state in {}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot save the driver state in {}: the filesystem is full (free space there)", path.display())]
    NoSpace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DriverError {
    /// A failure of the host's attach, mount or detach for `volume`.
    pub(crate) fn host(volume: &str) -> impl FnOnce(HostError) -> DriverError + '_ {
        move |source| DriverError::Host {
            volume: volume.to_string(),
            source,
        }
    }

    /// The one conversion of an I/O error on the driver's state: a full
    /// filesystem is [`DriverError::NoSpace`].
    pub(crate) fn state(path: &Path, source: io::Error) -> DriverError {
        let path = path.to_path_buf();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            DriverError::NoSpace { path, source }
        } else {
            DriverError::State { path, source }
        }
    }
}
