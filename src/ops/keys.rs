//! The backup keys the daemon may use: files in the one directory it was
//! told about (`--backup-key-dir`), asked for by name. A key never comes
//! from a URL or a client, and is never logged (only its fingerprint).

use std::path::PathBuf;
use std::sync::Arc;

use ballast_backupstore::{key_path, BackupKey, BackupStore, StoreOptions, StoreUrl};

use super::error::OpError;

/// The key an operation was given, if any (its `Debug` shows the
/// fingerprint only).
pub type Key = Option<Arc<BackupKey>>;

/// A handle on the destination `dest` that uses `key`.
pub async fn open(dest: &StoreUrl, key: Key) -> Result<BackupStore, ballast_backupstore::Error> {
    let options = StoreOptions {
        key,
        ..StoreOptions::default()
    };
    BackupStore::open(dest, options).await
}

/// Where the daemon finds backup keys; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BackupKeys {
    dir: Option<PathBuf>,
}

impl BackupKeys {
    pub fn new(dir: Option<PathBuf>) -> BackupKeys {
        BackupKeys { dir }
    }

    /// Key `name` read from the key directory, or `None` without a name.
    /// Read afresh on every use, so a key file replaced on disk takes
    /// effect at once.
    pub fn load(&self, name: Option<&str>) -> Result<Key, OpError> {
        let Some(name) = name else {
            return Ok(None);
        };
        let dir = self.dir.as_ref().ok_or_else(|| OpError::NoKeyDir {
            name: name.to_string(),
        })?;
        let path = key_path(dir, name)?;
        Ok(Some(Arc::new(BackupKey::load(&path)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_name_in_the_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = BackupKey::generate();
        key.write_new(&dir.path().join("prod")).unwrap();
        let keys = BackupKeys::new(Some(dir.path().to_path_buf()));
        assert_eq!(
            keys.load(Some("prod")).unwrap().unwrap().fingerprint(),
            key.fingerprint()
        );
        assert!(keys.load(None).unwrap().is_none());
        assert!(keys.load(Some("../prod")).is_err());
        let e = keys.load(Some("other")).unwrap_err().to_string();
        assert!(e.contains("other"), "{e}");
        let e = BackupKeys::default().load(Some("prod")).unwrap_err();
        assert!(e.to_string().contains("--backup-key-dir"), "{e}");
    }
}
