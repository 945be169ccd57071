//! Failures of API requests and the HTTP status each one answers with.

use ballast_backupstore::objects::ObjectError;
use ballast_backupstore::Error as StoreError;
use ballast_docker::DriverError;
use ballast_engine::Error as EngineError;
use hyper::StatusCode;

use crate::ops::error::OpError;

/// A request that failed: an HTTP status and a one-line message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn no_route(method: &hyper::Method, path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no route for {method} {path}"),
        }
    }

    pub fn method_not_allowed(method: &hyper::Method, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {path}"),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::InvalidName(_)
            | EngineError::InvalidArgument(_)
            | EngineError::OutOfRange { .. } => StatusCode::BAD_REQUEST,
            EngineError::NotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::AlreadyExists { .. }
            | EngineError::InUse(_)
            | EngineError::ReadOnly(_) => StatusCode::CONFLICT,
            EngineError::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            EngineError::Closed | EngineError::Failed { .. } | EngineError::NotLocal { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EngineError::Checksum { .. }
            | EngineError::Corrupt(_)
            | EngineError::Unsupported(_)
            | EngineError::MetaStore { .. }
            | EngineError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
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
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let e = match e {
            // Same message (the variant is transparent), the engine's status.
            StoreError::Engine(engine) => return engine.into(),
            other => other,
        };
        let status = match &e {
            StoreError::InvalidUrl { .. }
            | StoreError::InvalidBackupId(_)
            | StoreError::NotOurs { .. }
            | StoreError::ChunkSizeMismatch { .. }
            | StoreError::InvalidChunkSize(_)
            | StoreError::InvalidKey(_)
            | StoreError::KeyFile { .. }
            | StoreError::NotEncrypted { .. } => StatusCode::BAD_REQUEST,
            StoreError::KeyRequired { .. } | StoreError::WrongKey { .. } => StatusCode::FORBIDDEN,
            StoreError::KeyFileIo { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                StatusCode::BAD_REQUEST
            }
            StoreError::KeyFileIo { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            StoreError::BackupNotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Locked(_) => StatusCode::CONFLICT,
            StoreError::Store { source, .. } if matches!(**source, ObjectError::NoSpace { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            StoreError::Store { .. } => StatusCode::BAD_GATEWAY,
            StoreError::DamagedChunk { .. }
            | StoreError::MissingChunk { .. }
            | StoreError::Worker(_)
            | StoreError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Store(e) => e.into(),
            OpError::Engine(e) => e.into(),
            e @ OpError::NoSpace { .. } => ApiError {
                status: StatusCode::INSUFFICIENT_STORAGE,
                message: e.to_string(),
            },
            e @ (OpError::Journal { .. }
            | OpError::BadJournal { .. }
            | OpError::StandbyFiles { .. }
            | OpError::StandbyFileDamaged { .. }) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
            },
            e @ (OpError::NoKeyDir { .. } | OpError::StandbyMismatch { .. }) => {
                ApiError::bad_request(e.to_string())
            }
            e @ (OpError::NotStandby { .. } | OpError::NoSourceBackup { .. }) => ApiError {
                status: StatusCode::NOT_FOUND,
                message: e.to_string(),
            },
            e @ (OpError::StandbyNotReady { .. } | OpError::IsStandby { .. }) => ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
            },
            e @ OpError::BackupRunning { .. } => ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_fitting_statuses() {
        let cases = [
            (
                EngineError::InvalidName("../x".into()),
                StatusCode::BAD_REQUEST,
            ),
            (
                EngineError::InvalidArgument("size".into()),
                StatusCode::BAD_REQUEST,
            ),
            (
                EngineError::NotFound {
                    kind: "volume",
                    name: "v".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                EngineError::AlreadyExists {
                    kind: "volume",
                    name: "v".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                EngineError::InUse("v has clones".into()),
                StatusCode::CONFLICT,
            ),
            (
                EngineError::NoSpace("full".into()),
                StatusCode::INSUFFICIENT_STORAGE,
            ),
            (
                EngineError::Corrupt("bad".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            let message = err.to_string();
            let api = ApiError::from(err);
            assert_eq!(api.status, status, "{message}");
            assert_eq!(api.message, message);
        }
    }

    #[test]
    fn store_errors_map_to_fitting_statuses() {
        let bad: StoreError = "ftp://x"
            .parse::<ballast_backupstore::StoreUrl>()
            .unwrap_err();
        assert_eq!(ApiError::from(bad).status, StatusCode::BAD_REQUEST);
        let missing = StoreError::BackupNotFound {
            dest: "file:///b".into(),
            volume: "v".into(),
            id: "i".into(),
        };
        let message = missing.to_string();
        let api = ApiError::from(missing);
        assert_eq!(api.status, StatusCode::NOT_FOUND);
        assert_eq!(api.message, message);
        let engine = StoreError::Engine(EngineError::NotFound {
            kind: "volume",
            name: "v".into(),
        });
        assert_eq!(ApiError::from(engine).status, StatusCode::NOT_FOUND);
        let full = OpError::journal(
            std::path::Path::new("/r"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(
            ApiError::from(full).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
    }
}
