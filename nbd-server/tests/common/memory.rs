//! An in-memory export set for protocol tests: volumes are byte vectors
//! with a per-4 KiB allocation map; a snapshot is a read-only copy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use ballast_engine::{BlockState, Error, Extent, Result};
use ballast_nbd::{BlockDevice, Export, ExportProvider, IoFuture};

const BLOCK: u64 = 4096;

pub struct MemDevice {
    name: String,
    read_only: bool,
    state: RwLock<(Vec<u8>, Vec<bool>)>,
    pub flushes: Mutex<u64>,
    /// Added latency of every read and write, to hold requests in flight.
    pub delay: Mutex<std::time::Duration>,
}

impl MemDevice {
    fn check(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.state.read().unwrap().0.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn writable(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        self.check(offset, len)
    }

    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.writable(offset, len)?;
        let mut state = self.state.write().unwrap();
        state.0[offset as usize..(offset + len) as usize].fill(0);
        let first = offset.div_ceil(BLOCK);
        let last = (offset + len) / BLOCK;
        for b in first..last {
            state.1[b as usize] = false;
        }
        Ok(())
    }

    async fn wait(&self) {
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    pub fn contents(&self) -> Vec<u8> {
        self.state.read().unwrap().0.clone()
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> Result<u64> {
        Ok(self.state.read().unwrap().0.len() as u64)
    }
    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> IoFuture<'a, ()> {
        Box::pin(async move {
            self.wait().await;
            self.check(offset, buf.len() as u64)?;
            let state = self.state.read().unwrap();
            buf.copy_from_slice(&state.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> IoFuture<'a, ()> {
        Box::pin(async move {
            self.wait().await;
            self.writable(offset, data.len() as u64)?;
            let mut state = self.state.write().unwrap();
            state.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            let end = offset + data.len() as u64;
            for b in offset / BLOCK..end.div_ceil(BLOCK) {
                state.1[b as usize] = true;
            }
            Ok(())
        })
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        })
    }
    fn trim(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move { self.zero(offset, len) })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move { self.zero(offset, len) })
    }
    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check(offset, len)?;
        let state = self.state.read().unwrap();
        let mut extents: Vec<Extent> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            let state = if state.1[b as usize] {
                BlockState::Data
            } else {
                BlockState::Hole
            };
            match extents.last_mut() {
                Some(last) if last.state == state => last.len += next - pos,
                _ => extents.push(Extent {
                    offset: pos,
                    len: next - pos,
                    state,
                }),
            }
            pos = next;
        }
        Ok(extents)
    }
}

#[derive(Default)]
pub struct MemExports {
    devices: RwLock<BTreeMap<String, Arc<MemDevice>>>,
}

impl MemExports {
    pub fn create_volume(&self, name: &str, size: u64) -> Arc<MemDevice> {
        let blocks = size.div_ceil(BLOCK) as usize;
        let dev = Arc::new(MemDevice {
            name: name.into(),
            read_only: false,
            state: RwLock::new((vec![0; size as usize], vec![false; blocks])),
            flushes: Mutex::new(0),
            delay: Mutex::default(),
        });
        self.devices
            .write()
            .unwrap()
            .insert(name.into(), dev.clone());
        dev
    }

    pub fn create_snapshot(&self, volume: &str, snapshot: &str) -> Arc<MemDevice> {
        let name = format!("{volume}@{snapshot}");
        let source = self.devices.read().unwrap()[volume]
            .state
            .read()
            .unwrap()
            .clone();
        let dev = Arc::new(MemDevice {
            name: name.clone(),
            read_only: true,
            state: RwLock::new(source),
            flushes: Mutex::new(0),
            delay: Mutex::default(),
        });
        self.devices.write().unwrap().insert(name, dev.clone());
        dev
    }

    pub fn device(&self, name: &str) -> Arc<MemDevice> {
        self.devices.read().unwrap()[name].clone()
    }
}

impl ExportProvider for MemExports {
    fn resolve(&self, name: &str) -> Option<Export> {
        let dev = self.devices.read().unwrap().get(name)?.clone();
        Some(Export {
            name: name.into(),
            description: format!("in-memory {name}"),
            read_only: dev.read_only,
            device: dev,
        })
    }
    fn list(&self) -> Vec<String> {
        self.devices.read().unwrap().keys().cloned().collect()
    }
}
