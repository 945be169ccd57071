//! Typed engine errors and their mapping to errno values (NBD and the
//! control API both report failures as errno-style codes).
//!
//! Every kind is stable (callers match on it); a failure of something
//! beneath the engine keeps its cause as the error's source. An
//! `io::Error` becomes an engine error in one place, [`Error::from_io`],
//! where ENOSPC is always [`Error::NoSpace`].

use std::io;

/// Everything the engine can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid name {0:?}: names are 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{0}")]
    InUse(String),
    #[error("range {offset}+{len} is beyond the end of the volume ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("pool is full: {0}")]
    NoSpace(String),
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("checksum mismatch in block at volume offset {offset} (pool block {pblock}): data is corrupt")]
    Checksum { offset: u64, pblock: u64 },
    #[error("pool metadata is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("pool metadata store: {source}")]
    MetaStore {
        #[source]
        source: sled::Error,
    },
    #[error("pool stopped accepting writes after a failure ({reason}); restart the daemon to recover from the last commit")]
    Failed { reason: String },
    /// A range of a volume that is not local yet could not be made so
    /// (its backup store is unreachable, or its chunk is damaged).
    #[error("{what}: {source}")]
    NotLocal {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("pool is closed")]
    Closed,
    #[error("I/O error: {source}")]
    Io {
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno value that best describes this error to a block-device client.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidName(_) | Error::InvalidArgument(_) | Error::OutOfRange { .. } => {
                libc::EINVAL
            }
            Error::NotFound { .. } => libc::ENOENT,
            Error::AlreadyExists { .. } => libc::EEXIST,
            Error::InUse(_) => libc::EBUSY,
            Error::NoSpace(_) => libc::ENOSPC,
            Error::ReadOnly(_) => libc::EPERM,
            Error::Unsupported(_) => libc::ENOTSUP,
            Error::Checksum { .. }
            | Error::Corrupt(_)
            | Error::MetaStore { .. }
            | Error::Failed { .. }
            | Error::NotLocal { .. } => libc::EIO,
            Error::Closed => libc::ESHUTDOWN,
            Error::Io { source } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// An I/O error beneath the engine; a full filesystem is
    /// [`Error::NoSpace`].
    pub fn from_io(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace("the filesystem holding the pool is full".into())
        } else {
            Error::Io { source: e }
        }
    }

    pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::from_io(e)
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => Error::from_io(io),
            sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
            other => Error::MetaStore { source: other },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
