//! What the served file is made of: a ballast volume, through the engine's
//! public API only.

use std::future::Future;

use ballast_engine::{PooledBuf, Result, Volume};

/// The block store behind the file. [`Volume`] is the real one; tests wrap
/// it to watch what reaches the engine.
pub trait Backing: Send + Sync + 'static {
    /// What a read returns.
    type Buf: AsRef<[u8]> + Send + 'static;

    fn size(&self) -> Result<u64>;
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<Self::Buf>> + Send;
    fn write(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send;
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send;
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send;
    /// Makes every write completed so far durable (one engine commit).
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
}

impl Backing for Volume {
    type Buf = PooledBuf;

    fn size(&self) -> Result<u64> {
        Volume::size(self)
    }
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = Result<PooledBuf>> + Send {
        self.read_owned(offset, len)
    }
    fn write(&self, offset: u64, data: &[u8]) -> impl Future<Output = Result<()>> + Send {
        Volume::write(self, offset, data)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send {
        Volume::write_zeroes(self, offset, len)
    }
    fn trim(&self, offset: u64, len: u64) -> impl Future<Output = Result<()>> + Send {
        Volume::trim(self, offset, len)
    }
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        Volume::flush(self)
    }
}

/// The errno a failed engine call is answered with. A volume deleted or a
/// pool closed under a mounted file is an I/O error to the filesystem on
/// top, not "no such file".
pub(crate) fn errno(e: &ballast_engine::Error) -> i32 {
    match e.errno() {
        libc::ENOENT | libc::ESHUTDOWN => libc::EIO,
        code => code,
    }
}
