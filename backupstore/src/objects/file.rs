//! A directory as an object store (local disk or a mounted NFS share).
//!
//! Writes are atomic and durable: the data goes to a temporary file in the
//! target directory, which is fsynced, renamed over the key, and the directory
//! is fsynced. A crash leaves either the old object or the new one, plus at
//! worst a stray `.tmp.*` file that listings ignore. A batch of puts
//! ([`PutBatch`], a backup's chunks) shares two `syncfs` calls instead of
//! two fsyncs per object: see `batch`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectError, ObjectMeta, ObjectStore, PutBatch};
use crate::error::{Error, Result};

mod batch;
mod direct;

use batch::{tmp_for, TMP_PREFIX};

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    /// The destination URL, for error messages.
    name: String,
}

impl FileStore {
    pub fn new(root: PathBuf, name: String) -> Self {
        FileStore { root, name }
    }

    fn err(&self, op: &'static str, key: &str, source: ObjectError) -> Error {
        Error::Store {
            dest: self.name.clone(),
            op,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Maps a key to a path, refusing anything that could leave the root.
    fn path(&self, op: &'static str, key: &str) -> Result<PathBuf> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.starts_with(TMP_PREFIX));
        if !ok {
            return Err(self.err(op, key, ObjectError::InvalidKey));
        }
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        key: &str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T> {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r.map_err(|e| self.err(op, key, e.into())),
            Err(e) => Err(Error::Worker(e)),
        }
    }
}

/// A batch of puts to a [`FileStore`]: the steps and their crash cases
/// are in `batch`.
struct FileBatch<'a> {
    store: &'a FileStore,
    state: Arc<Mutex<batch::State>>,
}

#[async_trait]
impl PutBatch for FileBatch<'_> {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.store.path("put", key)?;
        let (state, root) = (self.state.clone(), self.store.root.clone());
        self.store
            .blocking("put", key, move || {
                batch::stage(&state, &root, path, &data, &batch::syncfs)
            })
            .await
    }

    async fn commit(&self) -> Result<()> {
        let (state, root) = (self.state.clone(), self.store.root.clone());
        self.store
            .blocking("commit", "", move || {
                batch::commit(&state, &root, &batch::syncfs)
            })
            .await
    }
}

impl Drop for FileBatch<'_> {
    /// Puts never committed (the writer failed) leave no temporary files.
    fn drop(&mut self) {
        batch::discard(&self.state);
    }
}

fn meta_of(key: String, m: &fs::Metadata) -> io::Result<ObjectMeta> {
    Ok(ObjectMeta {
        key,
        size: m.len(),
        modified: m.modified()?,
    })
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let (dir, tmp) = tmp_for(path)?;
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The entries of `dir`, or `None` if it does not exist (yet, or any more).
fn read_dir_if_exists(dir: &Path) -> io::Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Walks `dir` (whose key prefix is `prefix`) collecting objects.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> io::Result<()> {
    let Some(entries) = read_dir_if_exists(dir)? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&entry.path(), &format!("{prefix}{name}/"), out)?;
        } else if ft.is_file() {
            match entry.metadata() {
                Ok(m) => out.push(meta_of(format!("{prefix}{name}"), &m)?),
                // Deleted between readdir and stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Removes `.tmp.*` files under `dir` last modified before `cutoff`.
fn remove_tmp(dir: &Path, cutoff: SystemTime, removed: &mut u64) -> io::Result<()> {
    let Some(entries) = read_dir_if_exists(dir)? else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            remove_tmp(&entry.path(), cutoff, removed)?;
        } else if ft.is_file() && entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let old = entry.metadata()?.modified()? < cutoff;
            if old {
                tracing::info!("removing leftover {}", entry.path().display());
                match fs::remove_file(entry.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => *removed += 1,
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FileStore {
    async fn remove_leftovers(&self, age: Duration) -> Result<u64> {
        let root = self.root.clone();
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.blocking("clean", "", move || {
            let mut removed = 0;
            remove_tmp(&root, cutoff, &mut removed)?;
            Ok(removed)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path("get", key)?;
        self.blocking("get", key, move || direct::read_whole(&path))
            .await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path("put", key)?;
        self.blocking("put", key, move || write_atomic(&path, &data))
            .await
    }

    fn batch(&self) -> Box<dyn PutBatch + '_> {
        Box::new(FileBatch {
            store: self,
            state: Arc::default(),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            // Listing prefixes end with `/`.
            let trimmed = prefix
                .strip_suffix('/')
                .ok_or_else(|| self.err("list", prefix, ObjectError::InvalidKey))?;
            self.path("list", trimmed)?
        };
        let prefix = prefix.to_string();
        self.blocking("list", &prefix.clone(), move || {
            let mut out = Vec::new();
            walk(&dir, &prefix, &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path("delete", key)?;
        self.blocking("delete", key, move || match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path("head", key)?;
        let k = key.to_string();
        self.blocking("head", key, move || match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(meta_of(k, &m)?)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("store"), "file:///test".into());
        assert_eq!(s.get("a/b").await.unwrap(), None);
        assert!(s.list("a/").await.unwrap().is_empty());
        s.put("a/b", Bytes::from_static(b"one")).await.unwrap();
        s.put("a/c/d", Bytes::from_static(b"two!")).await.unwrap();
        s.put("a/b", Bytes::from_static(b"three")).await.unwrap();
        assert_eq!(s.get("a/b").await.unwrap().unwrap(), &b"three"[..]);
        let mut keys: Vec<_> = s
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect();
        keys.sort();
        assert_eq!(keys, vec![("a/b".to_string(), 5), ("a/c/d".to_string(), 4)]);
        assert!(s.exists("a/c/d").await.unwrap());
        s.delete("a/c/d").await.unwrap();
        s.delete("a/c/d").await.unwrap();
        assert!(!s.exists("a/c/d").await.unwrap());
        // No temporary files remain.
        let stray: Vec<_> = fs::read_dir(dir.path().join("store/a")).unwrap().collect();
        assert_eq!(stray.len(), 2, "only a/b and the a/c directory");
    }

    #[tokio::test]
    async fn leftovers_of_interrupted_writes_are_removed_when_old() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().to_path_buf(), "file:///test".into());
        s.put("chunks/ab/cd/x", Bytes::from_static(b"kept"))
            .await
            .unwrap();
        let sub = dir.path().join("chunks/ab/cd");
        let old = sub.join(".tmp.y.0123");
        let young = sub.join(".tmp.z.4567");
        fs::write(&old, b"partial").unwrap();
        fs::write(&young, b"partial").unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(
            s.list("chunks/").await.unwrap().len(),
            1,
            "listings skip leftovers"
        );
        assert_eq!(
            s.remove_leftovers(Duration::from_secs(3600)).await.unwrap(),
            1
        );
        assert!(!old.exists() && young.exists());
        assert_eq!(
            s.get("chunks/ab/cd/x").await.unwrap().unwrap(),
            &b"kept"[..]
        );
    }

    fn tmp_count(dir: &Path) -> usize {
        batch::tests::names(dir)
            .iter()
            .filter(|n| n.contains("/.tmp."))
            .count()
    }

    async fn put(batch: &dyn PutBatch, key: &str, data: &'static [u8]) {
        batch.put(key, Bytes::from_static(data)).await.unwrap();
    }

    fn store(dir: &Path) -> FileStore {
        fs::create_dir_all(dir).unwrap();
        FileStore::new(dir.to_path_buf(), "file:///test".into())
    }

    #[tokio::test]
    async fn puts_appear_at_commit_with_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let batch = s.batch();
        put(&*batch, "chunks/aa/bb/one", b"1").await;
        put(&*batch, "chunks/aa/cc/two", b"22").await;
        assert!(
            s.list("chunks/").await.unwrap().is_empty(),
            "invisible before commit"
        );
        assert!(!s.exists("chunks/aa/bb/one").await.unwrap());
        batch.commit().await.unwrap();
        assert_eq!(s.get("chunks/aa/bb/one").await.unwrap().unwrap(), &b"1"[..]);
        assert_eq!(
            s.get("chunks/aa/cc/two").await.unwrap().unwrap(),
            &b"22"[..]
        );
        assert_eq!(tmp_count(dir.path()), 0);
        // A batch stays usable after a commit.
        put(&*batch, "chunks/aa/bb/three", b"3").await;
        batch.commit().await.unwrap();
        assert_eq!(s.list("chunks/").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn an_uncommitted_batch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        {
            let batch = s.batch();
            put(&*batch, "chunks/aa/bb/one", b"1").await;
            assert_eq!(tmp_count(dir.path()), 1);
        }
        assert_eq!(tmp_count(dir.path()), 0);
        assert!(s.list("chunks/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn invalid_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let batch = s.batch();
        for key in ["../x", "/etc/passwd", "a//b", ".tmp.x"] {
            assert!(
                batch.put(key, Bytes::from_static(b"x")).await.is_err(),
                "{key}"
            );
        }
        assert!(batch::tests::names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().to_path_buf(), "file:///test".into());
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", "", ".tmp.x"] {
            let e = s.put(key, Bytes::from_static(b"x")).await.unwrap_err();
            assert!(
                matches!(&e, Error::Store { source, .. } if matches!(**source, ObjectError::InvalidKey)),
                "{key}: {e}"
            );
        }
    }
}
