//! Pool metadata in sled.
//!
//! One tree, keys by prefix:
//!
//! | key                          | value                                 |
//! |------------------------------|---------------------------------------|
//! | `S`                          | [`Superblock`] (JSON)                 |
//! | `V` + volume name            | [`VolumeRecord`] (JSON)               |
//! | `L` + layer id (BE u64)      | [`LayerRecord`] (JSON)                |
//! | `M` + layer id + vblock (BE) | 12 bytes: pblock (LE u64), crc (LE u32) for data; empty for a zero block |
//!
//! Every [`Change`] is applied as one sled batch, which is atomic, and then
//! flushed: a commit is either wholly durable or absent after a crash.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layer::{Layer, Mapping};

/// Bumped on any incompatible change to the keys or records above.
pub(crate) const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Superblock {
    pub version: u32,
    /// Next id for layers and volume uids.
    pub next_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VolumeRecord {
    /// Distinguishes a volume from a later one of the same name.
    pub uid: u64,
    pub name: String,
    pub size: u64,
    pub created: u64,
    pub head: u64,
    /// Oldest first; each snapshot's layer is the parent of the next one's
    /// (the last one's child is `head`).
    pub snapshots: Vec<SnapshotRecord>,
    pub origin: Option<Origin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub name: String,
    pub layer: u64,
    pub created: u64,
    pub size: u64,
}

/// The snapshot a clone started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Origin {
    pub volume: String,
    pub snapshot: String,
    pub layer: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub parent: Option<u64>,
}

/// One commit's worth of metadata changes.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub superblock: Option<Superblock>,
    /// `None` deletes the volume record.
    pub volumes: Vec<(String, Option<VolumeRecord>)>,
    /// `None` deletes the layer record and every map entry of the layer.
    pub layers: Vec<(u64, Option<LayerRecord>)>,
    /// `(layer, vblock, mapping)`; `None` deletes the entry.
    pub maps: Vec<(u64, u64, Option<Mapping>)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.superblock.is_none()
            && self.volumes.is_empty()
            && self.layers.is_empty()
            && self.maps.is_empty()
    }
}

/// Everything read back at open.
pub(crate) struct Loaded {
    pub superblock: Superblock,
    pub volumes: Vec<VolumeRecord>,
    pub layers: HashMap<u64, Layer>,
}

/// How long `open` waits for sled's lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// sled reports a held lock as a plain I/O error with this text.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

pub(crate) struct Meta {
    db: sled::Db,
}

fn map_key(layer: u64, vblock: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'M';
    k[1..9].copy_from_slice(&layer.to_be_bytes());
    k[9..].copy_from_slice(&vblock.to_be_bytes());
    k
}

fn layer_key(layer: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'L';
    k[1..].copy_from_slice(&layer.to_be_bytes());
    k
}

fn volume_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'V');
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode_mapping(m: Mapping) -> Vec<u8> {
    match m {
        Mapping::Data { pblock, crc } => {
            let mut v = Vec::with_capacity(12);
            v.extend_from_slice(&pblock.to_le_bytes());
            v.extend_from_slice(&crc.to_le_bytes());
            v
        }
        Mapping::Zero => Vec::new(),
    }
}

fn decode_mapping(v: &[u8]) -> Result<Mapping> {
    match v.len() {
        0 => Ok(Mapping::Zero),
        12 => Ok(Mapping::Data {
            pblock: u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
            crc: u32::from_le_bytes(v[8..].try_into().expect("4 bytes")),
        }),
        n => Err(Error::Metadata(format!("map entry of {n} bytes"))),
    }
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Metadata("malformed key".into()))
}

fn json<T: for<'de> Deserialize<'de>>(what: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| Error::Metadata(format!("{what}: {e}")))
}

impl Meta {
    /// Opens the metadata database. sled's background threads may hold
    /// its lock for a moment after a previous handle in this process was
    /// dropped, so a held lock is retried briefly before it is reported as
    /// another process using the pool.
    pub fn open(path: &Path) -> Result<Meta> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let opened = sled::Config::new()
                .path(path)
                .flush_every_ms(None)
                .cache_capacity(64 << 20)
                .open();
            match opened {
                Ok(db) => return Ok(Meta { db }),
                Err(sled::Error::Io(io)) if is_lock_error(&io) => {
                    if Instant::now() >= deadline {
                        return Err(Error::InUse(format!(
                            "pool {} is open in another process (is a ballast daemon already running on it?)",
                            path.parent().unwrap_or(path).display()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn load(&self) -> Result<Loaded> {
        let superblock = match self.db.get(b"S")? {
            Some(v) => {
                let sb: Superblock = json("superblock", &v)?;
                if sb.version != FORMAT_VERSION {
                    return Err(Error::Metadata(format!(
                        "pool format version {} is not supported (this build reads version {FORMAT_VERSION})",
                        sb.version
                    )));
                }
                sb
            }
            None => Superblock {
                version: FORMAT_VERSION,
                next_id: 1,
            },
        };
        let mut volumes = Vec::new();
        for item in self.db.scan_prefix(b"V") {
            let (_, v) = item?;
            volumes.push(json::<VolumeRecord>("volume record", &v)?);
        }
        let mut layers = HashMap::new();
        for item in self.db.scan_prefix(b"L") {
            let (k, v) = item?;
            let rec: LayerRecord = json("layer record", &v)?;
            layers.insert(be_u64(&k[1..])?, Layer::new(rec.parent));
        }
        for item in self.db.scan_prefix(b"M") {
            let (k, v) = item?;
            if k.len() != 17 {
                return Err(Error::Metadata("malformed map key".into()));
            }
            let layer = be_u64(&k[1..9])?;
            let vblock = be_u64(&k[9..])?;
            let layer = layers
                .get_mut(&layer)
                .ok_or_else(|| Error::Metadata(format!("map entry for unknown layer {layer}")))?;
            layer.insert(vblock, decode_mapping(&v)?);
        }
        Ok(Loaded {
            superblock,
            volumes,
            layers,
        })
    }

    /// Applies `change` atomically and makes it durable. Blocking.
    pub fn commit(&self, change: &Change) -> Result<()> {
        let mut batch = sled::Batch::default();
        if let Some(sb) = &change.superblock {
            batch.insert(
                b"S".as_slice(),
                serde_json::to_vec(sb).expect("serialisable"),
            );
        }
        for (name, rec) in &change.volumes {
            match rec {
                Some(r) => batch.insert(
                    volume_key(name),
                    serde_json::to_vec(r).expect("serialisable"),
                ),
                None => batch.remove(volume_key(name)),
            }
        }
        for &(layer, vblock, m) in &change.maps {
            match m {
                Some(m) => batch.insert(map_key(layer, vblock).as_slice(), encode_mapping(m)),
                None => batch.remove(map_key(layer, vblock).as_slice()),
            }
        }
        for (id, rec) in &change.layers {
            match rec {
                Some(r) => batch.insert(
                    layer_key(*id).as_slice(),
                    serde_json::to_vec(r).expect("serialisable"),
                ),
                None => {
                    batch.remove(layer_key(*id).as_slice());
                    let mut prefix = vec![b'M'];
                    prefix.extend_from_slice(&id.to_be_bytes());
                    for item in self.db.scan_prefix(prefix) {
                        batch.remove(item?.0);
                    }
                }
            }
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
}
