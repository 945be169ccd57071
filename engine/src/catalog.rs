//! The pool's volumes and snapshots in memory, with each volume's map
//! state: its published root, the overlay of changes since the last
//! checkpoint, and the overlay a running checkpoint is merging.
//!
//! Owned by the pool's state lock (see `crate::shared`); nothing here does
//! I/O.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::Piece;
use crate::meta::{SnapshotRecord, VolumeRecord};
use crate::overlay::{layered, Overlay};

/// One volume: its durable record, its snapshots and its map state.
pub(crate) struct VolumeState {
    pub rec: VolumeRecord,
    /// Oldest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// Changes since the last checkpoint.
    pub active: Overlay,
    /// Changes a running checkpoint is merging into `rec.root`.
    pub frozen: Option<Arc<Overlay>>,
    /// Blocks the head gained (or lost) since the last checkpoint, beyond
    /// `rec.own_blocks`.
    pub own_delta: i64,
    /// Held across an install's lookup of the old mapping and its change
    /// of the overlay, so two writes to one volume never both free what
    /// they replaced; snapshot creation holds it too.
    pub install: Arc<tokio::sync::Mutex<()>>,
}

impl VolumeState {
    pub(crate) fn new(rec: VolumeRecord, snapshots: Vec<SnapshotRecord>) -> Self {
        VolumeState {
            rec,
            snapshots,
            active: Overlay::default(),
            frozen: None,
            own_delta: 0,
            install: Arc::default(),
        }
    }

    /// What the overlays say about `[from, to)`, and the gaps to look up
    /// in the tree at [`VolumeState::rec`]'s root.
    pub(crate) fn overlays(&self, from: u64, to: u64) -> (Vec<Piece>, Vec<Range<u64>>) {
        match &self.frozen {
            Some(f) => layered(&[&self.active, f], from, to),
            None => layered(&[&self.active], from, to),
        }
    }

    /// A visible snapshot, by name.
    pub(crate) fn snapshot(&self, name: &str) -> Result<&SnapshotRecord> {
        self.snapshots
            .iter()
            .find(|s| s.name == name && !s.deleting)
            .ok_or_else(|| Error::not_found("snapshot", format!("{}@{name}", self.rec.name)))
    }

    /// The generation before snapshot `gen`: the previous snapshot's, or
    /// the origin's for a clone, or 0.
    pub(crate) fn gen_before(&self, gen: u64) -> u64 {
        self.snapshots
            .iter()
            .rev()
            .filter(|s| !s.deleting)
            .map(|s| s.gen)
            .find(|&g| g < gen)
            .unwrap_or_else(|| self.rec.origin.as_ref().map_or(0, |o| o.gen))
    }

    /// Memory the overlays hold.
    pub(crate) fn overlay_bytes(&self) -> usize {
        self.active.bytes() + self.frozen.as_ref().map_or(0, |f| f.bytes())
    }
}

/// Every visible volume, by name, with an index by uid.
#[derive(Default)]
pub(crate) struct Catalog {
    volumes: BTreeMap<String, VolumeState>,
    by_uid: HashMap<u64, String>,
}

impl Catalog {
    pub(crate) fn insert(&mut self, v: VolumeState) {
        self.by_uid.insert(v.rec.uid, v.rec.name.clone());
        self.volumes.insert(v.rec.name.clone(), v);
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<VolumeState> {
        let v = self.volumes.remove(name)?;
        self.by_uid.remove(&v.rec.uid);
        Some(v)
    }

    /// Whether a volume holds the name (a volume being deleted does too).
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.volumes.contains_key(name)
    }

    /// A visible volume, by name (not one being deleted).
    pub(crate) fn get(&self, name: &str) -> Result<&VolumeState> {
        self.volumes
            .get(name)
            .filter(|v| !v.rec.deleting)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Result<&mut VolumeState> {
        self.volumes
            .get_mut(name)
            .filter(|v| !v.rec.deleting)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    /// A visible volume by name and uid: what a handle names.
    pub(crate) fn handle(&self, name: &str, uid: u64) -> Result<&VolumeState> {
        self.get(name)
            .ok()
            .filter(|v| v.rec.uid == uid)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    pub(crate) fn handle_mut(&mut self, name: &str, uid: u64) -> Result<&mut VolumeState> {
        self.get_mut(name)
            .ok()
            .filter(|v| v.rec.uid == uid)
            .ok_or_else(|| Error::not_found("volume", name))
    }

    /// Any volume by uid, being deleted or not.
    pub(crate) fn by_uid(&self, uid: u64) -> Option<&VolumeState> {
        self.volumes.get(self.by_uid.get(&uid)?)
    }

    pub(crate) fn by_uid_mut(&mut self, uid: u64) -> Option<&mut VolumeState> {
        let name = self.by_uid.get(&uid)?;
        self.volumes.get_mut(name)
    }

    /// Every visible volume.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &VolumeState> {
        self.volumes.values().filter(|v| !v.rec.deleting)
    }

    /// Every volume, being deleted or not.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut VolumeState> {
        self.volumes.values_mut()
    }

    /// The name of the volume with `uid` and of its snapshot `gen`, for
    /// showing a clone's origin.
    pub(crate) fn describe(&self, uid: u64, gen: u64) -> Option<String> {
        let v = self.by_uid(uid)?;
        let s = v.snapshots.iter().find(|s| s.gen == gen)?;
        Some(format!("{}@{}", v.rec.name, s.name))
    }

    /// Memory all overlays hold.
    pub(crate) fn overlay_bytes(&self) -> usize {
        self.volumes.values().map(|v| v.overlay_bytes()).sum()
    }
}
