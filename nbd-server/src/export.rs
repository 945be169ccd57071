//! What the server serves: an [`ExportProvider`] resolves export names to
//! [`Export`]s, each backed by a [`BlockDevice`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ballast_engine::{Extent, Result};

/// A boxed future returned by [`BlockDevice`] methods.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Bytes a read returned, in whatever buffer the device filled.
pub type ReadBuf = Box<dyn AsRef<[u8]> + Send + Sync>;

/// A write request's payload, received into a buffer the device handed out
/// ([`BlockDevice::payload_buffer`]) so that it can write it without a copy.
pub enum Payload {
    Bytes(Vec<u8>),
    Engine(ballast_engine::PooledBuf),
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        match self {
            Payload::Bytes(v) => v,
            Payload::Engine(b) => b,
        }
    }
}

impl AsMut<[u8]> for Payload {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Payload::Bytes(v) => v,
            Payload::Engine(b) => b,
        }
    }
}

/// The byte-addressed device behind an export. Offsets and lengths are
/// always within the size the server negotiated; the server checks them
/// before calling in.
pub trait BlockDevice: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> Result<u64>;
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()>;
    /// Reads `len` bytes at `offset` into a buffer of the device's choice;
    /// devices that can fill one without a copy override this.
    fn read_owned(&self, offset: u64, len: usize) -> IoFuture<'_, ReadBuf> {
        Box::pin(async move {
            let mut data = vec![0u8; len];
            self.read(offset, &mut data).await?;
            Ok(Box::new(data) as ReadBuf)
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, ()>;
    /// A buffer of `len` bytes to receive a write's payload into.
    fn payload_buffer(&self, len: usize) -> Payload {
        Payload::Bytes(vec![0u8; len])
    }
    /// Writes a payload received into [`BlockDevice::payload_buffer`].
    fn write_payload(&self, offset: u64, data: Payload) -> IoFuture<'_, ()> {
        Box::pin(async move { self.write(offset, data.as_ref()).await })
    }
    /// Make every completed write durable (NBD FLUSH and FUA).
    fn flush(&self) -> IoFuture<'_, ()>;
    /// Discard a range; it reads as zeros afterwards.
    fn trim(&self, offset: u64, len: u64) -> IoFuture<'_, ()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<'_, ()>;
    /// Allocation state of exactly `[offset, offset + len)`.
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>>;
}

/// One export as negotiated with a client.
#[derive(Clone)]
pub struct Export {
    /// Canonical name (`VOL` or `VOL@SNAP`).
    pub name: String,
    /// Human-readable description (NBD_INFO_DESCRIPTION).
    pub description: String,
    /// Writes, trims and zeroing are refused with EPERM.
    pub read_only: bool,
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// The set of exports a server offers; looked up on every connection, so
/// volumes and snapshots created later are served without a restart.
pub trait ExportProvider: Send + Sync {
    /// The export called `name`, or `None` if there is none.
    fn resolve(&self, name: &str) -> Option<Export>;
    /// Every export name, for NBD_OPT_LIST.
    fn list(&self) -> Vec<String>;
}
