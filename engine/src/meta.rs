//! Pool metadata in sled.
//!
//! One tree, keys by prefix:
//!
//! | key                          | value                                 |
//! |------------------------------|---------------------------------------|
//! | `S`                          | [`Superblock`] (JSON)                 |
//! | `V` + volume name            | [`VolumeRecord`] (JSON)               |
//! | `L` + layer id (BE u64)      | [`LayerRecord`] (JSON)                |
//! | `M` + layer id + group (BE)  | the group's map entries, see [`encode_group`] |
//!
//! A layer's map is stored in groups of [`MAP_GROUP`] consecutive virtual
//! blocks, one record per group that maps anything: a commit after a large
//! write touches one key per 256 KiB rather than one per block, which keeps
//! commits, opens and layer deletes cheap.
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
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Virtual blocks per map record.
pub(crate) const MAP_GROUP: u64 = 64;

/// The map entries of one group: `(offset in the group, mapping)`, offsets
/// strictly increasing and below [`MAP_GROUP`].
pub(crate) type GroupEntries = Vec<(u8, Mapping)>;

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
    /// `(layer, group, entries)`: the group's whole map; empty deletes the
    /// record.
    pub maps: Vec<(u64, u64, GroupEntries)>,
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

fn map_key(layer: u64, group: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'M';
    k[1..9].copy_from_slice(&layer.to_be_bytes());
    k[9..].copy_from_slice(&group.to_be_bytes());
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

const TAG_ZERO: u8 = 0;
const TAG_DATA: u8 = 1;

/// A group record: per entry, its offset in the group (u8) and a tag; a
/// data entry's tag is followed by its pblock (LE u64) and crc (LE u32).
fn encode_group(entries: &[(u8, Mapping)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * 14);
    for &(offset, m) in entries {
        v.push(offset);
        match m {
            Mapping::Zero => v.push(TAG_ZERO),
            Mapping::Data { pblock, crc } => {
                v.push(TAG_DATA);
                v.extend_from_slice(&pblock.to_le_bytes());
                v.extend_from_slice(&crc.to_le_bytes());
            }
        }
    }
    v
}

fn decode_group(mut v: &[u8]) -> Result<GroupEntries> {
    let malformed = |what: &str| Error::Metadata(format!("malformed map record: {what}"));
    let mut entries = Vec::new();
    while let [offset, tag, rest @ ..] = v {
        if u64::from(*offset) >= MAP_GROUP
            || entries.last().is_some_and(|&(prev, _)| prev >= *offset)
        {
            return Err(malformed("offsets out of order"));
        }
        let m = match *tag {
            TAG_ZERO => {
                v = rest;
                Mapping::Zero
            }
            TAG_DATA if rest.len() >= 12 => {
                let m = Mapping::Data {
                    pblock: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
                    crc: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
                };
                v = &rest[12..];
                m
            }
            _ => return Err(malformed("bad entry")),
        };
        entries.push((*offset, m));
    }
    if !v.is_empty() {
        return Err(malformed("truncated entry"));
    }
    Ok(entries)
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
            let first = be_u64(&k[9..])?
                .checked_mul(MAP_GROUP)
                .ok_or_else(|| Error::Metadata("malformed map key".into()))?;
            let layer = layers
                .get_mut(&layer)
                .ok_or_else(|| Error::Metadata(format!("map entry for unknown layer {layer}")))?;
            for (offset, m) in decode_group(&v)? {
                layer.insert(first + u64::from(offset), m);
            }
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
        for (layer, group, entries) in &change.maps {
            let key = map_key(*layer, *group);
            if entries.is_empty() {
                batch.remove(key.as_slice());
            } else {
                batch.insert(key.as_slice(), encode_group(entries));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_records_round_trip() {
        let entries: GroupEntries = vec![
            (0, Mapping::Zero),
            (
                1,
                Mapping::Data {
                    pblock: u64::MAX - 1,
                    crc: 0xdead_beef,
                },
            ),
            (63, Mapping::Data { pblock: 7, crc: 0 }),
        ];
        assert_eq!(decode_group(&encode_group(&entries)).unwrap(), entries);
        assert_eq!(decode_group(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn malformed_group_records_are_refused() {
        let data = encode_group(&[(5, Mapping::Data { pblock: 1, crc: 2 })]);
        let cases: [(&str, Vec<u8>); 5] = [
            ("truncated data entry", data[..data.len() - 1].to_vec()),
            ("lone offset", vec![3]),
            ("unknown tag", vec![3, 9]),
            ("offset past the group", vec![MAP_GROUP as u8, TAG_ZERO]),
            ("offsets not increasing", vec![4, TAG_ZERO, 4, TAG_ZERO]),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(decode_group(&bytes), Err(Error::Metadata(_))),
                "{what}"
            );
        }
    }
}
