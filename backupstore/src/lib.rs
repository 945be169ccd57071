//! ballast-backupstore: deduplicated incremental volume backups to S3 and
//! filesystem targets, with restore, verify and gc.
//!
//! A store ([`BackupStore`]) lives at a destination URL ([`StoreUrl`]):
//! `file:///path` (alias `vfs:///path`) or `s3://bucket/prefix`. Volumes are
//! cut into fixed chunks (a store-wide power of two, 1 MiB by default),
//! content-addressed by BLAKE3, zstd-compressed and framed; all-zero chunks
//! are not stored. A store initialised with a [`BackupKey`] is encrypted:
//! chunk ids are a keyed BLAKE3 and every chunk and manifest is sealed with
//! AES-256-GCM (XChaCha20-Poly1305 in stores initialised by earlier builds;
//! `aead.rs`, `sealing.rs`, `frame.rs`). A backup is a manifest listing every chunk's digest,
//! written after all its chunks, so it is visible only when complete. Dedup
//! is global across all volumes in a store. See `manifest.rs` for the layout.
//!
//! # Use (the daemon owns the pool and runs these on its tokio runtime)
//!
//! ```text
//! backup create VOL[@SNAP] --dest URL  BackupStore::open(&URL.parse()?, opts).backup(&pool, VOL, SNAP, &progress) -> BackupInfo (.url)
//! backup list --dest URL [--volume V]  store.list(V) -> Vec<BackupInfo>
//! backup inspect BACKUP_URL            b: BackupUrl = s.parse()?; open(&b.dest).inspect(&b.volume, &b.id)
//! backup delete BACKUP_URL             open(&b.dest).delete(&b.volume, &b.id)
//! backup verify BACKUP_URL | --dest U  store.verify(VerifyScope::Backup{..} | VerifyScope::All, &p) -> VerifyReport
//! backup gc --dest URL                 store.gc(&GcOptions::default(), &p) -> GcReport
//! backup prune --dest URL --keep-...   store.prune(V, &KeepOptions{..}, dry_run) -> PruneReport
//! create VOL --backup BACKUP_URL       open(&b.dest).restore(&pool, &b.volume, &b.id, VOL, &p) -> VolumeInfo
//! ```

mod aead;
mod backup;
mod clock;
mod error;
mod frame;
mod gc;
mod hydrate;
mod key;
mod lock;
mod manifest;
pub mod objects;
mod progress;
mod prune;
mod restore;
mod sealing;
mod store;
mod url;
mod verify;

pub use error::{Error, Result};
pub use gc::{GcOptions, GcReport};
pub use hydrate::BackupHold;
pub use key::{key_path, BackupKey, KdfParams};
pub use manifest::{Encryption, Manifest, StoreConfig, DEFAULT_CHUNK_SIZE};
pub use progress::{
    for_terminal, NoProgress, Progress, ProgressCounter, ProgressSnapshot, TerminalProgress,
};
pub use prune::{Decision, KeepOptions, PruneReport, PrunedBackup, Rule};
pub use store::{BackupInfo, BackupStore, StoreOptions};
pub use url::{BackupUrl, StoreUrl};
pub use verify::{DamagedBackup, VerifyReport, VerifyScope};

#[cfg(test)]
mod tests {
    use crate::{BackupStore, GcOptions, NoProgress, VerifyScope};

    fn assert_send<T: Send>(_: &T) {}

    /// The daemon spawns these operations on its runtime: their futures
    /// must be `Send`.
    #[test]
    fn operation_futures_are_send() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ballast_engine::Pool::open(ballast_engine::PoolConfig::new(dir.path())).unwrap();
        let url = format!("file://{}", dir.path().join("b").display())
            .parse()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = rt
            .block_on(BackupStore::open(&url, Default::default()))
            .unwrap();
        let gc = GcOptions::default();
        assert_send(&store.backup(&pool, "v", None, &NoProgress));
        assert_send(&store.restore(&pool, "v", "i", "n", &NoProgress));
        assert_send(&store.verify(VerifyScope::All, &NoProgress));
        assert_send(&store.gc(&gc, &NoProgress));
        assert_send(&store.list(None));
        assert_send(&store.inspect("v", "i"));
        assert_send(&store.delete("v", "i"));
    }
}
