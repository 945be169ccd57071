//! STUB: public API surface; implementation in progress.
#![allow(unused)]
use std::ops::Range;
use crate::{Error, Extent, PoolConfig, PoolStats, Result, SnapshotInfo, VolumeInfo, Volume};

/// A storage pool: one data file and its metadata. Cheap to clone.
#[derive(Clone)]
pub struct Pool {}

impl Pool {
    pub fn open(config: PoolConfig) -> Result<Pool> { todo!() }
    pub async fn create_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> { todo!() }
    pub async fn clone_volume(&self, name: &str, origin_volume: &str, origin_snapshot: &str) -> Result<VolumeInfo> { todo!() }
    pub async fn delete_volume(&self, name: &str) -> Result<()> { todo!() }
    pub async fn grow_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> { todo!() }
    pub fn volumes(&self) -> Vec<VolumeInfo> { todo!() }
    pub fn volume(&self, name: &str) -> Result<VolumeInfo> { todo!() }
    pub async fn create_snapshot(&self, volume: &str, name: Option<&str>) -> Result<SnapshotInfo> { todo!() }
    pub async fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<()> { todo!() }
    pub fn snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>> { todo!() }
    pub fn diff(&self, volume: &str, from: Option<&str>, to: &str) -> Result<Vec<Range<u64>>> { todo!() }
    pub fn open_volume(&self, name: &str) -> Result<Volume> { todo!() }
    pub fn open_snapshot(&self, volume: &str, snapshot: &str) -> Result<Volume> { todo!() }
    pub async fn flush(&self) -> Result<()> { todo!() }
    pub fn stats(&self) -> PoolStats { todo!() }
    pub async fn close(&self) -> Result<()> { todo!() }
}
