//! Opening a pool: the data file's header, the metadata store's few
//! records read up front, the clean-up of an interrupted checkpoint, and
//! replay of the journal.
//!
//! Open reads no map and no bitmap: the superblock, the allocator's
//! summary, the volume and snapshot records, and the journal records after
//! the last checkpoint (at most the journal's size). Its cost does not
//! grow with the data written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::alloc::{Allocator, BitmapChange, NeedChunk};
use crate::catalog::{Catalog, VolumeState};
use crate::error::{Error, Result};
use crate::extent::{Data, Piece, Run};
use crate::io::{AlignedBuf, Backend};
use crate::journal::{self, Op, Pos, Record, Ring, RingReader};
use crate::meta::{Batch, Meta, Superblock, FORMAT_VERSION};
use crate::pool::Pool;
use crate::shared::{Budget, Committed, Inner, Parts, Pending, State, Unfinished};
use crate::{PoolConfig, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE;
const HEADER_MAGIC: &[u8; 8] = b"BALLASTP";
/// The journal's first block; block 0 holds the header.
const JOURNAL_START: u64 = 1;
/// Journal blocks (32 MiB).
pub(crate) const JOURNAL_BLOCKS: u64 = 8192;
/// Bytes of the data file that are not volume data: the header and the
/// journal.
pub const RESERVED_BYTES: u64 = (JOURNAL_START + JOURNAL_BLOCKS) * BLOCK_SIZE;

fn open_data_file(path: &Path) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(
                "{} does not support O_DIRECT; using the page cache (flushes still fsync)",
                path.display()
            );
            Ok(opts.open(path)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn header(pool_id: u64) -> AlignedBuf {
    let mut buf = AlignedBuf::new(BS as usize);
    buf[..8].copy_from_slice(HEADER_MAGIC);
    buf[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf[12..16].copy_from_slice(&(JOURNAL_BLOCKS as u32).to_le_bytes());
    buf[16..24].copy_from_slice(&pool_id.to_le_bytes());
    let crc = crc32fast::hash(&buf[..24]);
    buf[24..28].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Checks that the data file is the one the metadata describes.
fn check_header(file: &File, sb: &Superblock) -> Result<()> {
    let mut buf = AlignedBuf::new(BS as usize);
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::Corrupt(format!("cannot read the data file's header: {e}")))?;
    let want = header(sb.pool_id);
    if buf[..28] != want[..28] {
        return Err(Error::Corrupt(
            "the data file's header does not match the metadata (pool.data and meta/ are from different pools, or pool.data is damaged)"
                .into(),
        ));
    }
    Ok(())
}

/// Lays out a new pool: the header, a journal of written zeros (so
/// journal writes never wait for the filesystem to convert unwritten
/// space), and the first superblock.
fn create(file: &File, meta: &Meta) -> Result<Superblock> {
    if file.metadata()?.len() > 0 {
        return Err(Error::Corrupt(
            "pool.data holds data but the metadata store is empty".into(),
        ));
    }
    let mut id = [0u8; 8];
    // SAFETY: getrandom writes at most `id.len()` bytes into `id`.
    let got = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if got != id.len() as isize {
        return Err(Error::from_io(std::io::Error::last_os_error()));
    }
    let pool_id = u64::from_le_bytes(id);
    file.write_all_at(&header(pool_id), 0)?;
    let zeros = AlignedBuf::new(1 << 20);
    let mut at = JOURNAL_START * BS;
    let end = (JOURNAL_START + JOURNAL_BLOCKS) * BS;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()?;
    let sb = Superblock {
        version: FORMAT_VERSION,
        pool_id,
        next_uid: 1,
        next_node: 1,
        gen: 1,
        journal: Pos { seq: 1, block: 0 },
    };
    let mut batch = Batch::new();
    batch.superblock(&sb);
    batch.summary(JOURNAL_START + JOURNAL_BLOCKS, &[]);
    meta.apply(batch)?;
    meta.flush()?;
    Ok(sb)
}

/// Reads journal blocks straight from the data file.
struct FileRing<'a> {
    file: &'a File,
}

impl RingReader for FileRing<'_> {
    fn read(&mut self, at: u64, blocks: u64) -> Result<Vec<u8>> {
        let mut buf = AlignedBuf::new((blocks * BS) as usize);
        self.file
            .read_exact_at(&mut buf, (JOURNAL_START + at) * BS)?;
        Ok(buf.to_vec())
    }
}

/// Runs `f` on the allocator, loading the chunks it asks for.
fn on_alloc<T>(
    alloc: &mut Allocator,
    meta: &Meta,
    mut f: impl FnMut(&mut Allocator) -> Result<T, NeedChunk>,
) -> Result<T> {
    loop {
        match f(alloc) {
            Ok(t) => return Ok(t),
            Err(NeedChunk(idx)) => {
                let image = meta.chunk(idx)?.unwrap_or_else(|| alloc.blank_image(idx));
                alloc.load(idx, image);
            }
        }
    }
}

/// Whether every block the record maps, and still maps at its end, holds
/// what the record says. A block the record maps and then frees again (a
/// write overwritten before the commit) is not checked: once the record
/// was durable it may have been reused.
fn data_intact(file: &File, record: &Record, end: u64) -> Result<bool> {
    let freed: Vec<Run> = record
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Free { run, .. } => Some(*run),
            _ => None,
        })
        .collect();
    for op in &record.ops {
        let Op::Map { pstart, crcs, .. } = op else {
            continue;
        };
        if pstart.saturating_add(crcs.len() as u64) > end {
            return Ok(false);
        }
        let mut buf = AlignedBuf::new(crcs.len() * BS as usize);
        if file.read_exact_at(&mut buf, pstart * BS).is_err() {
            return Ok(false);
        }
        let intact =
            buf.chunks_exact(BS as usize)
                .zip(crcs)
                .enumerate()
                .all(|(i, (block, &crc))| {
                    let pblock = pstart + i as u64;
                    freed.iter().any(|r| r.start <= pblock && pblock < r.end())
                        || crc32fast::hash(block) == crc
                });
        if !intact {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies one replayed record to the catalog and the allocator, as the
/// installs that made it did.
fn apply(
    record: &Record,
    catalog: &mut Catalog,
    alloc: &mut Allocator,
    meta: &Meta,
    committed: &mut Committed,
) -> Result<()> {
    for op in &record.ops {
        match op {
            Op::Map {
                uid,
                vstart,
                pstart,
                birth,
                crcs,
            } => {
                let Some(v) = catalog.by_uid_mut(*uid) else {
                    continue;
                };
                let run = Run::new(*pstart, crcs.len() as u64);
                if !on_alloc(alloc, meta, |a| a.mark_busy(run))? {
                    return Err(Error::Corrupt(format!(
                        "journal maps pool blocks {}..{} which are not free",
                        run.start,
                        run.end()
                    )));
                }
                v.active.set(&[Piece {
                    vstart: *vstart,
                    len: run.len,
                    data: Some(Data {
                        pstart: *pstart,
                        birth: *birth,
                        crcs: crcs.clone(),
                    }),
                }]);
                v.own_delta += run.len as i64;
                committed.changes.push(BitmapChange::Alloc(run));
            }
            Op::Unmap { uid, vstart, len } => {
                if let Some(v) = catalog.by_uid_mut(*uid) {
                    v.active.set(&[Piece::hole(*vstart, *len)]);
                }
            }
            Op::Free { uid, run } => {
                let Some(v) = catalog.by_uid_mut(*uid) else {
                    continue;
                };
                on_alloc(alloc, meta, |a| a.release(*run))?;
                v.own_delta -= run.len as i64;
                committed.changes.push(BitmapChange::Free(*run));
            }
            Op::Dead(d) => {
                if catalog.by_uid(d.uid).is_some() {
                    committed.deaths.push(*d);
                }
            }
        }
    }
    Ok(())
}

impl Pool {
    /// Opens (or creates) the pool under `config.root`. Blocking.
    pub fn open(config: PoolConfig) -> Result<Pool> {
        std::fs::create_dir_all(&config.root)?;
        let budget = Budget::new(config.meta_cache);
        let meta = Meta::open(&config.root.join("meta"), budget.sled)?;
        let loaded = meta.load()?;
        let file = open_data_file(&config.root.join("pool.data"))?;
        let sb = match loaded.superblock {
            Some(sb) => {
                check_header(&file, &sb)?;
                sb
            }
            None => create(&file, &meta)?,
        };
        let file_blocks = file.metadata()?.len() / BS;
        let base = JOURNAL_START + JOURNAL_BLOCKS;
        // The cap is on data: the header and the journal come on top.
        let cap = config
            .max_size
            .map_or(u64::MAX / BS, |m| base.saturating_add(m / BS));
        let mut alloc = Allocator::new(
            base,
            loaded.summary.end,
            file_blocks,
            cap,
            loaded.summary.free,
            budget.alloc_chunks,
        );

        let mut catalog = Catalog::default();
        let mut unfinished = Vec::new();
        for rec in loaded.volumes {
            let snapshots = meta.snapshots(rec.uid)?;
            for s in snapshots.iter().filter(|s| s.deleting) {
                unfinished.push(Unfinished::Snapshot {
                    uid: rec.uid,
                    gen: s.gen,
                });
            }
            catalog.insert(VolumeState::new(rec, snapshots));
        }
        for rec in loaded.deleting {
            let snapshots = meta.snapshots(rec.uid)?;
            unfinished.push(Unfinished::Volume(rec, snapshots));
        }

        // Nodes of a checkpoint that never completed, and nodes retired
        // before the pool closed: no root reaches either.
        let mut batch = Batch::new();
        for id in meta
            .orphans(sb.next_node)?
            .into_iter()
            .chain(meta.garbage()?)
        {
            batch.remove_node(id);
        }
        if !batch.is_empty() {
            meta.apply(batch)?;
            meta.flush()?;
        }

        let mut records =
            journal::replay(&mut FileRing { file: &file }, JOURNAL_BLOCKS, sb.journal)?;
        if let Some(last) = records.last() {
            if !data_intact(&file, last, alloc.end())? {
                tracing::info!(
                    seq = last.next.seq - 1,
                    "the last journal record's data never reached the disk: it was never acknowledged, and is dropped"
                );
                records.pop();
            }
        }
        let mut committed = Committed::default();
        for record in &records {
            apply(record, &mut catalog, &mut alloc, &meta, &mut committed)?;
        }
        let head = records.last().map_or(sb.journal, |r| r.next);
        let ring = Ring::new(JOURNAL_START, JOURNAL_BLOCKS, sb.journal, head);

        let io = Backend::start(file.try_clone()?, config.io, config.runtime.as_ref())?;
        #[cfg(feature = "test-seams")]
        let io = io.with_faults(config.faults.clone());
        tracing::info!(
            root = %config.root.display(),
            volumes = catalog.iter().count(),
            replayed = records.len(),
            io = %io.mode(),
            "pool open"
        );
        let state = State {
            sb,
            catalog,
            pending: Pending::default(),
            committed,
        };
        let inner = Inner::assemble(Parts {
            root: config.root,
            io,
            file,
            meta,
            state,
            alloc,
            ring,
            budget,
            budget_total: config.meta_cache,
            max_size: config.max_size,
            unfinished,
            #[cfg(feature = "test-seams")]
            faults: config.faults,
        });
        Ok(Pool {
            inner: Arc::new(inner),
        })
    }
}
