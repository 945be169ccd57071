//! Lock objects that keep gc from sweeping while a backup is in flight,
//! and a backup from being deleted while a volume hydrates from it.
//!
//! A running backup may reuse chunks that no manifest references any more
//! (its parent was deleted meanwhile): only its own manifest, written last,
//! will reference them. So backups and gc exclude each other: each writes
//! its lock object first and then lists the locks; whoever sees a live lock
//! of the other kind backs off. Since both write before they look, at least
//! one of two racing parties sees the other. Backups do not exclude each
//! other. A holder refreshes its lock every [`REFRESH`]; a lock not refreshed
//! for the stale period (its holder died) is ignored and removed by gc.
//!
//! A volume restored instantly reads its backup's chunks long after the
//! restore returned: it holds the backup (a `hold` lock naming it) until
//! every chunk is local, and deleting that backup takes a `delete` lock
//! naming it first. The two exclude each other the same way, for the same
//! backup only. gc needs no lock against a hold: the held backup's
//! manifest stays, so every chunk it names stays referenced.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::objects::{ObjectMeta, ObjectStore};

pub(crate) const LOCKS_PREFIX: &str = "locks/";
/// How often a holder rewrites its lock.
pub(crate) const REFRESH: Duration = Duration::from_secs(60);
/// Default age after which an unrefreshed lock is considered dead.
pub(crate) const DEFAULT_STALE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    Backup,
    Gc,
    /// A volume hydrating from the backup `what` names.
    Hold,
    /// Deleting the backup `what` names.
    Delete,
}

impl LockKind {
    fn as_str(self) -> &'static str {
        match self {
            LockKind::Backup => "backup",
            LockKind::Gc => "gc",
            LockKind::Hold => "hold",
            LockKind::Delete => "delete",
        }
    }

    /// The kind this one excludes, and whether only for the same `what`.
    fn excludes(self) -> (LockKind, bool) {
        match self {
            LockKind::Backup => (LockKind::Gc, false),
            LockKind::Gc => (LockKind::Backup, false),
            LockKind::Hold => (LockKind::Delete, true),
            LockKind::Delete => (LockKind::Hold, true),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LockBody {
    kind: String,
    what: String,
    host: String,
    pid: u32,
    started: u64,
}

/// A held lock; released explicitly, or in the background when dropped
/// (an operation cancelled mid-way).
#[derive(Debug)]
pub(crate) struct Lock {
    objects: Arc<dyn ObjectStore>,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
}

/// A lock object written and not yet owned by a [`Lock`]: deleted in the
/// background when dropped, so an `acquire` dropped while it writes the
/// object (its caller cancelled) leaves no lock that nobody owns.
struct Written {
    objects: Arc<dyn ObjectStore>,
    /// `None` once a [`Lock`] owns the object.
    key: Option<String>,
}

impl Written {
    fn into_key(mut self) -> String {
        self.key.take().expect("owned until now")
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            delete_in_background(self.objects.clone(), key);
        }
    }
}

/// Deletes lock object `key` on the current runtime, if there is one.
fn delete_in_background(objects: Arc<dyn ObjectStore>, key: String) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if let Err(e) = objects.delete(&key).await {
                tracing::warn!("releasing lock {key}: {e}");
            }
        });
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn is_live(meta: &ObjectMeta, stale: Duration, now: SystemTime) -> bool {
    now.duration_since(meta.modified)
        .map(|age| age < stale)
        .unwrap_or(true)
}

/// A lock's body, if it can be read.
async fn read_body(objects: &dyn ObjectStore, meta: &ObjectMeta) -> Option<LockBody> {
    objects
        .get(&meta.key)
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<LockBody>(&b).ok())
}

/// Describes a lock for an error message, from its body if readable.
async fn describe(objects: &dyn ObjectStore, meta: &ObjectMeta) -> String {
    match read_body(objects, meta).await {
        Some(b) => format!(
            "{} of {} on host {} pid {} ({})",
            b.kind, b.what, b.host, b.pid, meta.key
        ),
        None => meta.key.clone(),
    }
}

impl Lock {
    /// Takes a lock of `kind`, failing if a live lock of the conflicting
    /// kind exists (`what` describes the holder in messages).
    pub(crate) async fn acquire(
        objects: Arc<dyn ObjectStore>,
        kind: LockKind,
        what: &str,
        stale: Duration,
    ) -> Result<Lock> {
        let key = format!(
            "{LOCKS_PREFIX}{}-{:016x}.lock",
            kind.as_str(),
            rand::random::<u64>()
        );
        let body = Bytes::from(
            serde_json::to_vec(&LockBody {
                kind: kind.as_str().into(),
                what: what.into(),
                host: hostname(),
                pid: std::process::id(),
                started: crate::clock::now_secs(),
            })
            .expect("lock body serialises"),
        );
        // Written by a task of its own: an acquire dropped mid-write lets
        // the write finish there, and the object is deleted after it.
        let written = tokio::spawn({
            let (objects, key, body) = (objects.clone(), key.clone(), body.clone());
            async move {
                objects.put(&key, body).await?;
                Ok::<_, Error>(Written {
                    objects,
                    key: Some(key),
                })
            }
        })
        .await
        .map_err(Error::Worker)??;
        let key = written.into_key();
        let refresher = {
            let objects = objects.clone();
            let key = key.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(REFRESH).await;
                    if let Err(e) = objects.put(&key, body.clone()).await {
                        tracing::warn!("refreshing lock {key}: {e}");
                    }
                }
            })
        };
        let lock = Lock {
            objects,
            key,
            refresher,
            released: false,
        };
        let (excluded, same_what) = kind.excludes();
        let other = format!("{}-", excluded.as_str());
        let now = SystemTime::now();
        let conflicting = lock.objects.list(LOCKS_PREFIX).await;
        let conflicting = match conflicting {
            Ok(list) => list,
            Err(e) => {
                lock.release().await?;
                return Err(e);
            }
        };
        let mut holder = None;
        for m in conflicting
            .iter()
            .filter(|m| m.key[LOCKS_PREFIX.len()..].starts_with(&other) && is_live(m, stale, now))
        {
            if !same_what
                || read_body(lock.objects.as_ref(), m)
                    .await
                    .is_none_or(|b| b.what == what)
            {
                holder = Some(m);
                break;
            }
        }
        if let Some(holder) = holder {
            let who = describe(lock.objects.as_ref(), holder).await;
            lock.release().await?;
            let expiry = stale.as_secs();
            return Err(Error::Locked(match kind {
                LockKind::Backup => format!("gc is running on this store ({who}); back up again when it has finished"),
                LockKind::Gc => format!(
                    "a backup is in progress ({who}); run gc when it has finished (a lock left by a dead process expires after {expiry}s)"
                ),
                LockKind::Hold => format!("backup {what} is being deleted ({who})"),
                LockKind::Delete => format!(
                    "backup {what} cannot be deleted: a volume is restoring from it ({who}); delete it once that volume is fully hydrated (see ballast inspect; a lock left by a dead process expires after {expiry}s)"
                ),
            }));
        }
        Ok(lock)
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Removes the lock object.
    pub(crate) async fn release(mut self) -> Result<()> {
        self.released = true;
        self.refresher.abort();
        self.objects.delete(&self.key).await
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.refresher.abort();
        delete_in_background(self.objects.clone(), std::mem::take(&mut self.key));
    }
}

/// Deletes locks (other than `own`) whose holders stopped refreshing them;
/// returns how many.
pub(crate) async fn remove_stale(
    objects: &dyn ObjectStore,
    stale: Duration,
    own: &str,
) -> Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for meta in objects.list(LOCKS_PREFIX).await? {
        if meta.key != own && !is_live(&meta, stale, now) {
            tracing::info!("removing stale lock {}", meta.key);
            objects.delete(&meta.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::objects::FileStore;

    /// A file store whose puts finish 300 ms after they start, in a task
    /// of their own, as a put handed to a blocking thread does when its
    /// caller goes away.
    #[derive(Debug)]
    struct SlowPuts(FileStore);

    #[async_trait]
    impl ObjectStore for SlowPuts {
        async fn get(&self, key: &str) -> Result<Option<Bytes>> {
            self.0.get(key).await
        }
        async fn put(&self, key: &str, data: Bytes) -> Result<()> {
            let (store, key) = (self.0.clone(), key.to_string());
            let put = async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                store.put(&key, data).await
            };
            tokio::spawn(put).await.map_err(Error::Worker)?
        }
        async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> Result<()> {
            self.0.delete(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
            self.0.head(key).await
        }
    }

    #[tokio::test]
    async fn an_acquire_cancelled_mid_write_leaves_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::new(dir.path().to_path_buf(), "file:///test".into());
        let objects: Arc<dyn ObjectStore> = Arc::new(SlowPuts(files.clone()));
        let acquire = Lock::acquire(objects, LockKind::Hold, "vol/id", DEFAULT_STALE);
        let cut = tokio::time::timeout(Duration::from_millis(50), acquire).await;
        assert!(cut.is_err(), "cancelled while the lock object is written");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        tokio::time::sleep(Duration::from_millis(400)).await;
        while !files.list(LOCKS_PREFIX).await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "a lock nobody owns stayed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
