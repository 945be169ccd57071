//! Why an object-store request failed: a stable kind per cause, each one
//! line that names the cause and what to do about it, with the underlying
//! error (the SDK's, or the filesystem's) kept as the source. The SDK's own
//! rendering of its errors never reaches a message.

use std::io;

/// The underlying error of a failed S3 request.
pub type SdkCause = Box<dyn std::error::Error + Send + Sync>;

/// A failed object-store request.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The server rejected the credentials themselves (unknown key, wrong
    /// secret, expired token).
    #[error("the credentials were refused ({code}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the daemon's environment")]
    CredentialsRefused {
        code: String,
        #[source]
        source: SdkCause,
    },
    /// The credentials are valid but may not do this.
    #[error("access denied: the daemon's credentials lack permission on bucket {bucket:?} (they need s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket)")]
    AccessDenied {
        bucket: String,
        #[source]
        source: SdkCause,
    },
    /// The credential chain found nothing to sign with.
    #[error("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the daemon's environment")]
    NoCredentials {
        #[source]
        source: SdkCause,
    },
    #[error("bucket {bucket:?} does not exist: create it, or fix the bucket name in the URL")]
    NoSuchBucket {
        bucket: String,
        #[source]
        source: SdkCause,
    },
    #[error("bucket {bucket:?} is in another region ({code}): name its region in the URL with ?region=REGION")]
    WrongRegion {
        bucket: String,
        code: String,
        #[source]
        source: SdkCause,
    },
    /// No connection could be made, or it broke before an answer came.
    #[error("cannot reach the object store at {endpoint} ({reason}): check the endpoint (?endpoint= in the URL) and that the server is up")]
    Unreachable {
        endpoint: String,
        reason: String,
        #[source]
        source: SdkCause,
    },
    /// The server kept asking us to slow down, retries included.
    #[error("the object store is throttling requests ({code}) and the retries did not get through: try again later, or lower the load on the bucket")]
    Throttled {
        code: String,
        #[source]
        source: SdkCause,
    },
    /// The bucket's Object Lock retention refuses plain writes.
    #[error("bucket {bucket:?} has S3 Object Lock with a default retention, which ballast's backups do not support: use a bucket without Object Lock")]
    ObjectLocked {
        bucket: String,
        #[source]
        source: SdkCause,
    },
    /// Any other refusal, as the server put it.
    #[error("the object store refused the request: {code} (HTTP {status}): {message}")]
    Refused {
        code: String,
        status: u16,
        message: String,
        #[source]
        source: SdkCause,
    },
    #[error(
        "the filesystem holding the store is full: free space there or use another destination"
    )]
    NoSpace {
        #[source]
        source: io::Error,
    },
    #[error("{source}")]
    Io {
        #[source]
        source: io::Error,
    },
    #[error("invalid object key")]
    InvalidKey,
}

impl From<io::Error> for ObjectError {
    /// The one conversion of an I/O error: a full filesystem (or quota) is
    /// [`ObjectError::NoSpace`], whichever call ran into it.
    fn from(source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => ObjectError::NoSpace { source },
            _ => ObjectError::Io { source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_filesystem_is_no_space() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = ObjectError::from(io::Error::from_raw_os_error(errno));
            assert!(matches!(e, ObjectError::NoSpace { .. }), "{e}");
        }
        let e = ObjectError::from(io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, ObjectError::Io { .. }), "{e}");
        assert!(e.to_string().contains("Permission denied"), "{e}");
    }
}
