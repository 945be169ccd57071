//! STUB: public API surface; implementation in progress.
#![allow(unused)]
use crate::{Extent, Result};

/// A handle on a volume (read-write) or a snapshot (read-only). Cheap to clone.
#[derive(Clone)]
pub struct Volume {}

impl Volume {
    pub fn name(&self) -> &str { todo!() }
    pub fn snapshot(&self) -> Option<&str> { todo!() }
    pub fn read_only(&self) -> bool { todo!() }
    pub fn size(&self) -> Result<u64> { todo!() }
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> { todo!() }
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> { todo!() }
    pub async fn flush(&self) -> Result<()> { todo!() }
    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> { todo!() }
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> { todo!() }
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> { todo!() }
}
