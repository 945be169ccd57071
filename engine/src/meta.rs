//! Pool metadata in sled.
//!
//! One tree, keys by prefix (integers big-endian, so keys sort by them):
//!
//! | key                               | value                                   |
//! |-----------------------------------|-----------------------------------------|
//! | `S`                               | [`Superblock`] (JSON)                   |
//! | `A`                               | allocator summary: end, free per chunk  |
//! | `B` chunk                         | a bitmap chunk of the allocator         |
//! | `V` name                          | [`VolumeRecord`] (JSON)                 |
//! | `X` uid                           | a [`VolumeRecord`] being deleted (JSON) |
//! | `P` uid gen                       | [`SnapshotRecord`] (JSON)               |
//! | `N` id                            | a map node (`crate::tree::node`)        |
//! | `G` id                            | a node no tree references, to delete    |
//! | `D` uid death pstart              | a dead data run: len, vstart, birth     |
//! | `E` uid death id                  | a dead node: its birth                  |
//! | `R` key                           | a record of the layers above (`records`)|
//!
//! Nothing here is read in full at open: the superblock, the summary and
//! the volume records are; nodes, bitmap chunks, snapshots and dead lists
//! are read when needed. A checkpoint writes its changes as one atomic
//! batch (new nodes may go ahead of it in batches of their own: until the
//! superblock that references them is written they are unreachable, and
//! open deletes them) and then flushes sled.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::codec::{put_varint, seal, unseal, Reader};
use crate::error::{Error, Result};
use crate::extent::Run;
use crate::journal::{Death, Pos};
use crate::tree::node::{Node, NodeRef};

/// Bumped on any incompatible change to the keys or records above.
pub(crate) const FORMAT_VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Superblock {
    pub version: u32,
    /// Identifies the data file this metadata belongs to.
    pub pool_id: u64,
    /// Next id for volume uids.
    pub next_uid: u64,
    /// Next id for map nodes; nodes at or above it are leftovers of a
    /// checkpoint that never completed.
    pub next_node: u64,
    /// The current generation: the birth of everything written now.
    pub gen: u64,
    /// Where replay starts: the first journal record after this checkpoint.
    pub journal: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeRecord {
    /// Distinguishes a volume from a later one of the same name; names its
    /// snapshots and dead lists.
    pub uid: u64,
    pub name: String,
    pub size: u64,
    pub created: u64,
    /// The head's map as of the last checkpoint.
    pub root: Option<NodeRef>,
    /// Generation of the newest snapshot (or of the origin snapshot of a
    /// clone without snapshots of its own; 0 for neither): blocks and
    /// nodes born at or before it are shared with a snapshot.
    pub shared_upto: u64,
    /// Data blocks born after `shared_upto` that the head maps: its share
    /// of the volume's space (as of the last checkpoint; installs since
    /// are counted in memory and replayed from the journal).
    pub own_blocks: u64,
    pub origin: Option<Origin>,
    /// Being deleted: hidden, and finished at the next open if a crash
    /// interrupts it.
    #[serde(default)]
    pub deleting: bool,
    /// While deleting: trees before this one (snapshots oldest first,
    /// then the head) are freed ...
    #[serde(default)]
    pub delete_tree: u32,
    /// ... and so are this tree's blocks below this one.
    #[serde(default)]
    pub delete_cursor: u64,
}

/// The snapshot a clone started from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Origin {
    pub uid: u64,
    pub gen: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub name: String,
    /// Everything born at or before this generation is in the snapshot.
    pub gen: u64,
    pub root: Option<NodeRef>,
    pub created: u64,
    pub size: u64,
    /// Volumes cloned from this snapshot.
    pub clones: u32,
    /// Blocks born after the previous snapshot and still in this one.
    pub allocated_blocks: u64,
    #[serde(default)]
    pub deleting: bool,
}

/// How long `open` waits for sled's lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// sled reports a held lock as a plain I/O error with this text.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

fn key1(prefix: u8, a: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&a.to_be_bytes());
    k
}

fn key2(prefix: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..].copy_from_slice(&b.to_be_bytes());
    k
}

fn key3(prefix: u8, a: u64, b: u64, c: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = prefix;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..17].copy_from_slice(&b.to_be_bytes());
    k[17..].copy_from_slice(&c.to_be_bytes());
    k
}

fn volume_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(b'V');
    k.extend_from_slice(name.as_bytes());
    k
}

fn record_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(b'R');
    k.extend_from_slice(key.as_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt("malformed metadata key".into()))
}

fn json<T: for<'de> Deserialize<'de>>(what: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata records serialise")
}

/// A dead node: it left a volume's head in generation `death`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadNode {
    pub uid: u64,
    pub death: u64,
    pub node: NodeRef,
}

/// Changes for one atomic write of the metadata store, in order (a later
/// change of a key wins).
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Bytes queued, to bound batches of new nodes.
    pub bytes: usize,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Batch::default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends `other`'s changes after this batch's.
    pub(crate) fn append(&mut self, other: Batch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.bytes += key.len() + value.len();
        self.ops.push((key.to_vec(), Some(value)));
    }

    fn del(&mut self, key: &[u8]) {
        self.bytes += key.len();
        self.ops.push((key.to_vec(), None));
    }

    pub(crate) fn superblock(&mut self, sb: &Superblock) {
        self.put(b"S", to_json(sb));
    }

    pub(crate) fn summary(&mut self, end: u64, free: &[u32]) {
        let mut v = Vec::with_capacity(8 + free.len() * 4);
        v.extend_from_slice(&end.to_le_bytes());
        for f in free {
            v.extend_from_slice(&f.to_le_bytes());
        }
        self.put(b"A", seal(v));
    }

    pub(crate) fn chunk(&mut self, idx: u64, image: &[u64]) {
        let mut v = Vec::with_capacity(image.len() * 8);
        for w in image {
            v.extend_from_slice(&w.to_le_bytes());
        }
        self.put(&key1(b'B', idx), seal(v));
    }

    /// Writes a volume's record: by name, or by uid once it is being
    /// deleted (its name is free for a new volume then).
    pub(crate) fn volume(&mut self, rec: &VolumeRecord) {
        if rec.deleting {
            self.put(&key1(b'X', rec.uid), to_json(rec));
        } else {
            self.put(&volume_key(&rec.name), to_json(rec));
        }
    }

    pub(crate) fn remove_deleting_volume(&mut self, uid: u64) {
        self.del(&key1(b'X', uid));
    }

    pub(crate) fn remove_volume(&mut self, name: &str) {
        self.del(&volume_key(name));
    }

    pub(crate) fn snapshot(&mut self, uid: u64, rec: &SnapshotRecord) {
        self.put(&key2(b'P', uid, rec.gen), to_json(rec));
    }

    pub(crate) fn remove_snapshot(&mut self, uid: u64, gen: u64) {
        self.del(&key2(b'P', uid, gen));
    }

    pub(crate) fn node(&mut self, id: u64, node: &Node) {
        self.put(&key1(b'N', id), node.encode());
    }

    pub(crate) fn remove_node(&mut self, id: u64) {
        self.del(&key1(b'N', id));
        self.del(&key1(b'G', id));
    }

    /// Marks node `id` for deletion once no read can still reach it.
    pub(crate) fn garbage(&mut self, id: u64) {
        self.put(&key1(b'G', id), Vec::new());
    }

    pub(crate) fn death(&mut self, d: &Death) {
        let mut v = Vec::with_capacity(16);
        put_varint(&mut v, d.run.len);
        put_varint(&mut v, d.vstart);
        put_varint(&mut v, d.birth);
        self.put(&key3(b'D', d.uid, d.death, d.run.start), v);
    }

    pub(crate) fn remove_death(&mut self, d: &Death) {
        self.del(&key3(b'D', d.uid, d.death, d.run.start));
    }

    pub(crate) fn dead_node(&mut self, d: &DeadNode) {
        let mut v = Vec::with_capacity(10);
        put_varint(&mut v, d.node.birth);
        self.put(&key3(b'E', d.uid, d.death, d.node.id), v);
    }

    pub(crate) fn record(&mut self, key: &str, value: Vec<u8>) {
        self.put(&record_key(key), value);
    }

    pub(crate) fn remove_record(&mut self, key: &str) {
        self.del(&record_key(key));
    }

    pub(crate) fn remove_dead_node(&mut self, d: &DeadNode) {
        self.del(&key3(b'E', d.uid, d.death, d.node.id));
    }
}

/// Frees the sled pages a batch of `keys` writes left for later.
///
/// sled applies a batch under one epoch guard (crossbeam-epoch's default
/// collector), so every page version it replaces or pages out during the
/// batch is only queued to be freed once no guard can still see it, and
/// that queue is worked off a little at a time by later sled calls. A
/// checkpoint after random writes touches most of the map's pages, so they
/// stayed allocated until enough sled calls followed, and for good when
/// the pool went quiet: glibc counted 360 MB in use at rest after 60 s of
/// 4 KiB random writes over 8 GiB (a 64 MiB `--meta-cache`), 84 MB with
/// this.
///
/// Each pin-and-flush hands this thread's queued frees to the collector,
/// advances the epoch if no other thread holds it back, and frees up to 8
/// expired bags of 64 (crossbeam-epoch 0.9's `COLLECT_STEPS` and
/// `MAX_OBJECTS`). A write queues about two pages (the one it replaces and
/// one it pages out), so `keys / 128` rounds cover the batch; the 4 extra
/// are the epoch advances before the first bag expires. A round with
/// nothing to free costs well under a microsecond.
fn free_deferred_pages(keys: usize) {
    for _ in 0..keys / 128 + 4 {
        crossbeam_epoch::pin().flush();
    }
}

/// The allocator's summary record: what open needs to find free space
/// without reading any bitmap chunk.
#[derive(Debug, Default)]
pub(crate) struct AllocSummary {
    /// The data file's end, in blocks, as of the last checkpoint.
    pub end: u64,
    /// Free blocks per bitmap chunk, as persisted.
    pub free: Vec<u32>,
}

/// What open reads up front.
pub(crate) struct Loaded {
    /// `None` for a new pool.
    pub superblock: Option<Superblock>,
    pub summary: AllocSummary,
    pub volumes: Vec<VolumeRecord>,
    /// Volumes whose deletion a crash interrupted.
    pub deleting: Vec<VolumeRecord>,
}

pub(crate) struct Meta {
    db: sled::Db,
}

impl Meta {
    /// Opens the metadata database with a page cache of `cache` bytes.
    /// sled's background threads may hold its lock for a moment after a
    /// previous handle in this process was dropped, so a held lock is
    /// retried briefly before it is reported as another process using the
    /// pool.
    pub(crate) fn open(path: &Path, cache: u64) -> Result<Meta> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let opened = sled::Config::new()
                .path(path)
                .flush_every_ms(None)
                .cache_capacity(cache)
                // Nodes are up to 8 KiB and sled keeps up to 16 per page:
                // segments of 1 MiB keep such pages inline (sled writes
                // pages larger than a quarter segment as separate files).
                .segment_size(1 << 20)
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

    pub(crate) fn load(&self) -> Result<Loaded> {
        let superblock = match self.db.get(b"S")? {
            Some(v) => {
                #[derive(Deserialize)]
                struct Version {
                    version: u32,
                }
                let found: Version = json("superblock", &v)?;
                if found.version != FORMAT_VERSION {
                    return Err(Error::Unsupported(format!(
                        "pool metadata is format version {} and this build reads version {FORMAT_VERSION}: \
                         back its volumes up with the ballast that made it and restore them into a new pool",
                        found.version
                    )));
                }
                Some(json::<Superblock>("superblock", &v)?)
            }
            None if !self.db.is_empty() => {
                return Err(Error::Corrupt(
                    "the metadata store has records but no superblock".into(),
                ))
            }
            None => None,
        };
        let summary = match self.db.get(b"A")? {
            Some(v) => {
                let body = unseal(&v, "allocator summary")?;
                let mut r = Reader::new(body, "allocator summary");
                let end = r.u64_le()?;
                let mut free = Vec::with_capacity(body.len() / 4);
                while !r.is_empty() {
                    free.push(r.u32_le()?);
                }
                AllocSummary { end, free }
            }
            None => AllocSummary::default(),
        };
        let mut volumes = Vec::new();
        for item in self.db.scan_prefix(b"V") {
            let (_, v) = item?;
            volumes.push(json::<VolumeRecord>("volume record", &v)?);
        }
        let mut deleting = Vec::new();
        for item in self.db.scan_prefix(b"X") {
            let (_, v) = item?;
            deleting.push(json::<VolumeRecord>("volume record", &v)?);
        }
        Ok(Loaded {
            superblock,
            summary,
            volumes,
            deleting,
        })
    }

    pub(crate) fn node(&self, id: u64) -> Result<Node> {
        let v = self
            .db
            .get(key1(b'N', id))?
            .ok_or_else(|| Error::Corrupt(format!("map node {id} is missing")))?;
        Node::decode(&v)
    }

    /// A bitmap chunk, or `None` if it was never written.
    pub(crate) fn chunk(&self, idx: u64) -> Result<Option<Vec<u64>>> {
        let Some(v) = self.db.get(key1(b'B', idx))? else {
            return Ok(None);
        };
        let body = unseal(&v, "allocator chunk")?;
        if body.len() != (crate::alloc::CHUNK_BLOCKS / 8) as usize {
            return Err(Error::Corrupt("allocator chunk: wrong size".into()));
        }
        Ok(Some(
            body.chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .collect(),
        ))
    }

    /// Snapshots of volume `uid`, oldest first.
    pub(crate) fn snapshots(&self, uid: u64) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(key1(b'P', uid)) {
            let (_, v) = item?;
            out.push(json::<SnapshotRecord>("snapshot record", &v)?);
        }
        Ok(out)
    }

    /// Up to `limit` dead data runs of volume `uid` that died in
    /// generations `(after, upto]`, after `from` (a death and a pool block)
    /// if given, in key order.
    pub(crate) fn deaths(
        &self,
        uid: u64,
        after: u64,
        upto: u64,
        from: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<Death>> {
        self.dead_page(b'D', uid, (after, upto), from, limit, |death, pstart, v| {
            let mut r = Reader::new(v, "dead run");
            let len = r.varint()?;
            let vstart = r.varint()?;
            let birth = r.varint()?;
            Ok(Death {
                uid,
                death,
                vstart,
                run: Run::new(pstart, len),
                birth,
            })
        })
    }

    /// Up to `limit` dead nodes of volume `uid` that died in generations
    /// `(after, upto]`, after `from` (a death and a node id) if given.
    pub(crate) fn dead_nodes(
        &self,
        uid: u64,
        after: u64,
        upto: u64,
        from: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<DeadNode>> {
        self.dead_page(b'E', uid, (after, upto), from, limit, |death, id, v| {
            let birth = Reader::new(v, "dead node").varint()?;
            Ok(DeadNode {
                uid,
                death,
                node: NodeRef { id, birth },
            })
        })
    }

    /// One page of a dead list (`D` or `E` keys: uid, death, then a pool
    /// block or node id): the entries that died in `(after, upto]`, after
    /// the key `from` if given, decoded by `decode(death, id, value)`.
    fn dead_page<T>(
        &self,
        prefix: u8,
        uid: u64,
        (after, upto): (u64, u64),
        from: Option<(u64, u64)>,
        limit: usize,
        decode: impl Fn(u64, u64, &[u8]) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        if after >= upto {
            return Ok(out);
        }
        let start = match from {
            Some((death, id)) => key3(prefix, uid, death, id),
            None => key3(prefix, uid, after + 1, 0),
        };
        let end = key3(prefix, uid, upto, u64::MAX);
        for item in self.db.range(start.as_slice()..=end.as_slice()) {
            let (k, v) = item?;
            if from.is_some() && k.as_ref() == start.as_slice() {
                continue;
            }
            out.push(decode(be_u64(&k[9..17])?, be_u64(&k[17..])?, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Queues the removal of up to `limit` dead entries and snapshot
    /// records of volume `uid`; returns how many.
    pub(crate) fn forget_volume_page(
        &self,
        uid: u64,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<usize> {
        let mut n = 0;
        for prefix in [b'D', b'E', b'P'] {
            for item in self.db.scan_prefix(key1(prefix, uid)) {
                let (k, _) = item?;
                batch.del(&k);
                n += 1;
                if n >= limit {
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }

    /// Nodes marked for deletion.
    pub(crate) fn garbage(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(b"G") {
            let (k, _) = item?;
            out.push(be_u64(&k[1..])?);
        }
        Ok(out)
    }

    /// Nodes at or above `first`: written by a checkpoint that never
    /// completed.
    pub(crate) fn orphans(&self, first: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for item in self
            .db
            .range(key1(b'N', first).as_slice()..key1(b'N', u64::MAX).as_slice())
        {
            let (k, _) = item?;
            out.push(be_u64(&k[1..])?);
        }
        Ok(out)
    }

    /// The value of record `key`.
    pub(crate) fn record(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(record_key(key))?.map(|v| v.to_vec()))
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub(crate) fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(record_key(prefix)) {
            let (k, v) = kv?;
            let key = String::from_utf8(k[1..].to_vec())
                .map_err(|_| Error::Corrupt("a record key is not UTF-8".into()))?;
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    /// Writes `batch` atomically, without waiting for it to be durable.
    pub(crate) fn apply(&self, batch: Batch) -> Result<()> {
        let keys = batch.ops.len();
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        let applied = self.db.apply_batch(b);
        free_deferred_pages(keys);
        applied?;
        Ok(())
    }

    /// Makes everything applied so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Keys held, by their one-letter prefix.
    #[cfg(feature = "test-seams")]
    pub(crate) fn key_counts(&self) -> std::collections::BTreeMap<char, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (k, _) in self.db.iter().flatten() {
            *out.entry(char::from(k[0])).or_default() += 1;
        }
        out
    }

    /// Bytes sled's files take on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
