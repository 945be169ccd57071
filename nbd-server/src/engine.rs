//! [`ExportProvider`] over a ballast engine pool: export `VOL` is the volume
//! read-write, `VOL@SNAP` that snapshot read-only.

use std::sync::Arc;

use ballast_engine::{
    format_size, parse_snapshot_ref, validate_name, Extent, Pool, Result, Volume,
};

use crate::export::{BlockDevice, Export, ExportProvider, IoFuture, Payload, ReadBuf};

/// Serves every volume and snapshot of a pool.
#[derive(Clone)]
pub struct EngineExports {
    pool: Pool,
}

impl EngineExports {
    pub fn new(pool: Pool) -> Self {
        EngineExports { pool }
    }

    fn open(&self, name: &str) -> Result<Volume> {
        if name.contains('@') {
            let (volume, snapshot) = parse_snapshot_ref(name)?;
            self.pool.open_snapshot(volume, snapshot)
        } else {
            validate_name(name)?;
            self.pool.open_volume(name)
        }
    }
}

impl ExportProvider for EngineExports {
    fn resolve(&self, name: &str) -> Option<Export> {
        let volume = match self.open(name) {
            Ok(volume) => volume,
            Err(err) => {
                tracing::debug!(export = name, error = %err, "export not resolved");
                return None;
            }
        };
        let size = volume.size().ok()?;
        let read_only = volume.read_only();
        let description = if volume.snapshot().is_some() {
            format!("ballast snapshot {name} ({}, read-only)", format_size(size))
        } else if read_only {
            format!("ballast volume {name} ({}, read-only)", format_size(size))
        } else {
            format!("ballast volume {name} ({})", format_size(size))
        };
        Some(Export {
            name: name.to_string(),
            description,
            read_only,
            device: Arc::new(volume),
        })
    }

    fn list(&self) -> Vec<String> {
        let mut names = Vec::new();
        for volume in self.pool.volumes() {
            for snapshot in &volume.snapshots {
                names.push(format!("{}@{}", volume.name, snapshot.name));
            }
            names.push(volume.name);
        }
        names.sort();
        names
    }
}

impl BlockDevice for Volume {
    fn size(&self) -> Result<u64> {
        Volume::size(self)
    }
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        Box::pin(Volume::read(self, offset, buf))
    }
    fn read_owned(&self, offset: u64, len: usize) -> IoFuture<'_, ReadBuf> {
        Box::pin(
            async move { Ok(Box::new(Volume::read_owned(self, offset, len).await?) as ReadBuf) },
        )
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, ()> {
        Box::pin(Volume::write(self, offset, data))
    }
    fn payload_buffer(&self, len: usize) -> Payload {
        Payload::Engine(self.buffer(len))
    }
    fn write_payload(&self, offset: u64, data: Payload) -> IoFuture<'_, ()> {
        match data {
            Payload::Engine(buf) => Box::pin(self.write_owned(offset, buf)),
            Payload::Bytes(bytes) => Box::pin(async move { self.write(offset, &bytes).await }),
        }
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(Volume::flush(self))
    }
    fn trim(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(Volume::trim(self, offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(Volume::write_zeroes(self, offset, len))
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        Volume::block_status(self, offset, len)
    }
}
