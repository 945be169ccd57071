//! What an instant restore needs of a store: its backup held against
//! deletion, and single chunks fetched and checked on demand.

use crate::error::Result;
use crate::lock::{self, Lock, LockKind};
use crate::manifest::{parse_digest, Manifest};
use crate::store::BackupStore;
use crate::Error;

/// A backup held against deletion while a volume hydrates from it
/// (`lock.rs`); refreshed in the background until released or dropped.
#[derive(Debug)]
pub struct BackupHold {
    lock: Lock,
}

impl BackupHold {
    /// Lets the backup be deleted again.
    pub async fn release(self) -> Result<()> {
        self.lock.release().await
    }

    /// The lock object's key, for [`BackupStore::drop_hold`] after a crash.
    pub fn key(&self) -> &str {
        self.lock.key()
    }
}

impl BackupStore {
    /// Holds backup `id` of `volume`: refused while it is being deleted,
    /// and then it cannot be deleted until the hold is released (or its
    /// holder stops refreshing it for the stale period). Reads (and
    /// checks) its manifest once held, so it still exists: returned with
    /// the hold, for the holder that needs it.
    pub async fn hold(&self, volume: &str, id: &str) -> Result<(BackupHold, Manifest)> {
        let what = format!("{volume}/{id}");
        let lock = Lock::acquire(
            self.objects.clone(),
            LockKind::Hold,
            &what,
            lock::DEFAULT_STALE,
        )
        .await?;
        let hold = BackupHold { lock };
        match self.manifest(volume, id).await {
            Ok(manifest) => Ok((hold, manifest)),
            Err(e) => {
                hold.release().await?;
                Err(e)
            }
        }
    }

    /// Removes the hold `key` a killed daemon left behind (its successor
    /// holds the backup anew first). Only hold locks are removed.
    pub async fn drop_hold(&self, key: &str) -> Result<()> {
        if !key.starts_with(&format!("{}hold-", lock::LOCKS_PREFIX)) {
            return Err(Error::Locked(format!("{key} is not a hold lock")));
        }
        self.objects.delete(key).await
    }

    /// Fetches chunk `index` of `manifest` and checks its frame, length
    /// and digest; `None` for an all-zero chunk (nothing is stored).
    pub async fn fetch_chunk_of(
        &self,
        manifest: &Manifest,
        index: usize,
    ) -> Result<Option<Vec<u8>>> {
        let Some(hex) = manifest.chunks.get(index).and_then(|c| c.as_deref()) else {
            return Ok(None);
        };
        let digest = parse_digest(hex).ok_or_else(|| Error::DamagedChunk {
            digest: hex.to_string(),
            reason: "the manifest names it by a malformed digest".into(),
        })?;
        let raw = self
            .fetch_chunk(digest, Some(manifest.chunk_len(index)))
            .await?;
        Ok(Some(raw))
    }
}
