//! Typed errors of the backup store. Every variant renders as one line that
//! names what was wrong; where there is an underlying error, it is the
//! source.

use crate::objects::ObjectError;

/// Everything a backup-store operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid backup URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid backup id {0:?}: ids are 1-64 characters of [A-Za-z0-9_.-]")]
    InvalidBackupId(String),
    #[error("backup {id} of volume {volume:?} not found in {dest}")]
    BackupNotFound {
        dest: String,
        volume: String,
        id: String,
    },
    #[error("{key} in {dest} is not a ballast backup object: {reason}")]
    NotOurs {
        dest: String,
        key: String,
        reason: String,
    },
    #[error("chunk {digest} is damaged: {reason}")]
    DamagedChunk { digest: String, reason: String },
    #[error("chunk {digest} is missing from {dest}")]
    MissingChunk { dest: String, digest: String },
    #[error("the store at {dest} uses {store} byte chunks; it cannot be changed to {requested}")]
    ChunkSizeMismatch {
        dest: String,
        store: u32,
        requested: u32,
    },
    #[error("the store at {dest} is encrypted (key {fingerprint}): give its key with --key")]
    KeyRequired { dest: String, fingerprint: String },
    #[error("wrong key for the store at {dest}: it is encrypted with key {store}, not {key}")]
    WrongKey {
        dest: String,
        store: String,
        key: String,
    },
    #[error("the store at {dest} is not encrypted: back up to it without --key, or use a new destination for encrypted backups")]
    NotEncrypted { dest: String },
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("key file {}: {source}", path.display())]
    KeyFileIo {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid chunk size {0}: must be a power of two from 64 KiB to 16 MiB")]
    InvalidChunkSize(u64),
    #[error("{0}")]
    Locked(String),
    /// An object-store request failed; the source says why.
    #[error("object store {dest}: {op} {key}: {source}")]
    Store {
        dest: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<ObjectError>,
    },
    #[error(transparent)]
    Engine(#[from] ballast_engine::Error),
    /// A worker task (hashing, compression, file I/O) died.
    #[error("a worker task failed: {0}")]
    Worker(#[source] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
