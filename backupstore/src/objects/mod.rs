//! The object-store abstraction backups are written to, and its two
//! implementations: a directory ([`FileStore`]) and an S3 bucket ([`S3Store`]).
//!
//! Keys are `/`-separated paths relative to the store root, made by this
//! crate only (`chunks/ab/cd/<digest>`, `backups/<volume>/<id>.manifest`, ...).

mod error;
mod file;
mod s3;

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{ObjectError, SdkCause};
pub use file::FileStore;
pub use s3::S3Store;

use crate::error::Result;

/// What a listing or head request tells about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store root.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A flat key/value object store.
#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// The object's bytes, or `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;
    /// Stores an object; readers see either the old object or the complete
    /// new one, never a partial write.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// A batch of puts made durable together (see [`PutBatch`]); by
    /// default each put is durable when it returns.
    fn batch(&self) -> Box<dyn PutBatch + '_> {
        Box::new(Immediate(self))
    }
    /// Every object whose key starts with `prefix` (which ends with `/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }
    /// Removes leftovers of writes a crash interrupted, older than `age`;
    /// returns how many. Stores whose writes leave none do nothing.
    async fn remove_leftovers(&self, _age: Duration) -> Result<u64> {
        Ok(0)
    }
}

/// A batch of puts, from [`ObjectStore::batch`]: puts that become durable
/// together. A writer of many objects that needs them only once it has
/// written them all (a backup's chunks, which no manifest refers to until
/// the manifest is written) lets the store pay for durability once per
/// batch instead of once per object.
#[async_trait]
pub trait PutBatch: Send + Sync {
    /// Writes an object. It may stay invisible, and not durable, until the
    /// next [`commit`](PutBatch::commit) returns; a store may publish some
    /// earlier puts sooner, to bound what a batch holds.
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Makes every object put so far durable and visible, together with
    /// every object this writer found already in the store (a name another
    /// writer published but has not yet made durable is made durable here).
    /// Puts made while it runs belong to the next commit.
    async fn commit(&self) -> Result<()>;
}

/// The batch of a store whose puts are durable when they return (S3).
struct Immediate<'a, S: ?Sized>(&'a S);

#[async_trait]
impl<S: ObjectStore + ?Sized> PutBatch for Immediate<'_, S> {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.0.put(key, data).await
    }

    async fn commit(&self) -> Result<()> {
        Ok(())
    }
}
