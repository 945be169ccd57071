//! Typed engine errors and their mapping to errno values (NBD and the
//! control API both report failures as errno-style codes).

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
    #[error("pool metadata: {0}")]
    Metadata(String),
    #[error("pool is closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
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
            Error::Checksum { .. } | Error::Metadata(_) => libc::EIO,
            Error::Closed => libc::ESHUTDOWN,
            Error::Io(e) => match e.raw_os_error() {
                Some(code) => code,
                None => libc::EIO,
            },
        }
    }

    /// An I/O error on the data file; a full filesystem is
    /// [`Error::NoSpace`].
    pub(crate) fn from_io(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Error::NoSpace("the filesystem holding the pool is full".into())
        } else {
            Error::Io(e)
        }
    }

    pub(crate) fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Error::Io(io),
            other => Error::Metadata(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
