//! Puts that become durable together: a writer of many objects that needs
//! them only once it has written them all (a backup's chunks, which no
//! manifest refers to until the manifest is written) lets the store pay for
//! durability once per batch instead of once per object.

use async_trait::async_trait;
use bytes::Bytes;

use super::ObjectStore;
use crate::error::Result;

/// A batch of puts, from [`ObjectStore::batch`].
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
pub(super) struct Immediate<'a, S: ?Sized>(pub(super) &'a S);

#[async_trait]
impl<S: ObjectStore + ?Sized> PutBatch for Immediate<'_, S> {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.0.put(key, data).await
    }

    async fn commit(&self) -> Result<()> {
        Ok(())
    }
}
