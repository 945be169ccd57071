//! Why an operation failed: the backup store's or the pool's own error,
//! or the restore journal's, or a standby's refusal.

use std::io;
use std::path::{Path, PathBuf};

/// A failed operation; one line, with its cause as the source.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] ballast_backupstore::Error),
    #[error(transparent)]
    Engine(#[from] ballast_engine::Error),
    #[error("a backup of {volume} to {dest} is already running; try again once it has ended")]
    BackupRunning { volume: String, dest: String },
    #[error("backup key {name:?} asked for, but the daemon was started without --backup-key-dir")]
    NoKeyDir { name: String },
    #[error("cannot journal the restore in {}: {source}", dir.display())]
    Journal {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot journal the restore in {}: the filesystem is full", dir.display())]
    NoSpace {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("volume {volume:?} is not a standby")]
    NotStandby { volume: String },
    #[error("standby {volume} has no backup applied complete yet; it can be activated once its first is")]
    StandbyNotReady { volume: String },
    #[error("no backup of volume {source_volume} in {dest} yet: a standby starts from one")]
    NoSourceBackup { source_volume: String, dest: String },
    #[error("standby {volume} cannot apply backup {backup}: {reason}")]
    StandbyMismatch {
        volume: String,
        backup: String,
        reason: String,
    },
    #[error("cannot keep the standby's chunk lists in {}: {source}", dir.display())]
    StandbyFiles {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("standby file {} is damaged ({reason}); activate or delete the standby and create it again", path.display())]
    StandbyFileDamaged { path: PathBuf, reason: String },
    #[error("volume {volume} is a standby: it cannot be {what} until `ballast standby activate {volume}`")]
    IsStandby { volume: String, what: &'static str },
    #[error("hydration journal {} is damaged ({reason}); delete the volume and restore it again", dir.display())]
    BadJournal { dir: PathBuf, reason: String },
}

impl OpError {
    /// The one conversion of an I/O error on the journal: a full
    /// filesystem is [`OpError::NoSpace`].
    pub fn journal(dir: &Path, source: io::Error) -> OpError {
        let dir = dir.to_path_buf();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            OpError::NoSpace { dir, source }
        } else {
            OpError::Journal { dir, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_filesystem_is_no_space_whatever_the_call() {
        let full = OpError::journal(Path::new("/r"), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, OpError::NoSpace { .. }), "{full}");
        assert_eq!(
            full.to_string(),
            "cannot journal the restore in /r: the filesystem is full"
        );
        let denied = OpError::journal(Path::new("/r"), io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(denied, OpError::Journal { .. }), "{denied}");
        assert!(std::error::Error::source(&denied).is_some());
    }
}
