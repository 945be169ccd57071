//! Garbage collection: mark every chunk any manifest references, sweep the
//! rest.
//!
//! Safety: gc holds a gc lock, so no backup runs meanwhile (a running
//! backup's chunks are referenced only by the manifest it writes last), and
//! it spares unreferenced chunks younger than the grace period (defence in
//! depth against a backup whose lock expired). A manifest that cannot be
//! read stops gc: sweeping without it could delete chunks it references.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lock::{self, Lock, LockKind};
use crate::manifest::{digest_of_key, Digest, CHUNKS_PREFIX};
use crate::progress::Progress;
use crate::store::BackupStore;

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced chunks younger than this are kept.
    pub grace: Duration,
    /// A lock not refreshed for this long belongs to a dead process.
    pub stale_lock: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            stale_lock: lock::DEFAULT_STALE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub manifests: u64,
    /// Distinct chunks referenced by the manifests.
    pub referenced_chunks: u64,
    pub deleted_chunks: u64,
    /// Stored (compressed) bytes freed.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub recent_chunks: u64,
    pub stale_locks_removed: u64,
    /// Leftovers of interrupted writes removed (directory targets).
    pub leftovers_removed: u64,
}

impl BackupStore {
    /// Removes chunks no manifest references.
    pub async fn gc(&self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        // A wrong or missing key is refused before the lock is written.
        self.sealing().await?;
        let lock = Lock::acquire(
            self.objects.clone(),
            LockKind::Gc,
            "the store",
            opts.stale_lock,
        )
        .await?;
        let result = self.gc_locked(opts, lock.key(), progress).await;
        if let Err(e) = lock.release().await {
            tracing::warn!("releasing gc lock: {e}");
        }
        result
    }

    async fn gc_locked(
        &self,
        opts: &GcOptions,
        own_lock: &str,
        progress: &dyn Progress,
    ) -> Result<GcReport> {
        let stale_locks_removed =
            lock::remove_stale(self.objects.as_ref(), opts.stale_lock, own_lock).await? as u64;
        let manifests = self.all_manifests_strict().await.map_err(|e| match e {
            Error::NotOurs { dest, key, reason } => Error::NotOurs {
                dest,
                key,
                reason: format!("{reason}; gc refuses to run until it is deleted or repaired"),
            },
            e => e,
        })?;
        let referenced: HashSet<Digest> = manifests
            .iter()
            .flat_map(|m| m.digests().map(|(_, d)| d))
            .collect();
        let now = SystemTime::now();
        let mut recent_chunks = 0;
        let mut doomed = Vec::new();
        for meta in self.objects.list(CHUNKS_PREFIX).await? {
            let Some(digest) = digest_of_key(&meta.key) else {
                tracing::warn!("ignoring unexpected object {} in {}", meta.key, self.url);
                continue;
            };
            if referenced.contains(&digest) {
                continue;
            }
            let age = now.duration_since(meta.modified).unwrap_or(Duration::ZERO);
            if age < opts.grace {
                recent_chunks += 1;
            } else {
                doomed.push(meta);
            }
        }
        progress.start("gc", doomed.iter().map(|m| m.size).sum());
        let deleted_chunks = doomed.len() as u64;
        let deleted_bytes = doomed.iter().map(|m| m.size).sum();
        futures::stream::iter(doomed)
            .map(|meta| async move {
                self.objects.delete(&meta.key).await?;
                progress.advance(meta.size);
                Ok::<(), Error>(())
            })
            .buffer_unordered(self.opts.parallel)
            .try_collect::<()>()
            .await?;
        progress.finish();
        let leftovers_removed = self.objects.remove_leftovers(opts.grace).await?;
        tracing::info!(
            "gc of {}: deleted {deleted_chunks} chunks ({deleted_bytes} bytes)",
            self.url
        );
        Ok(GcReport {
            manifests: manifests.len() as u64,
            referenced_chunks: referenced.len() as u64,
            deleted_chunks,
            deleted_bytes,
            recent_chunks,
            stale_locks_removed,
            leftovers_removed,
        })
    }
}
