//! Volume handles and the data path: read, write, trim, write-zeroes,
//! allocation queries.
//!
//! A read resolves its range through the volume's overlays (changes since
//! the last checkpoint) and then its tree, the same few lookups at any
//! snapshot depth; a write goes to newly allocated blocks and then
//! *installs* its mapping (see [`Volume::install`]), which is what frees or
//! records as dead the blocks it replaces.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;

use crate::error::{Error, Result};
use crate::extent::{cover, Data, Piece, Run};
use crate::gate::Gate;
use crate::io::{AlignedBuf, BufPool};
use crate::iostats::IoStats;
use crate::journal::{Death, Op};
use crate::readahead::{Chunk, ReadAhead};
use crate::shared::{Inner, State};
use crate::tree;
use crate::tree::node::NodeRef;
use crate::{BlockState, Extent, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE;
const BSU: usize = BLOCK_SIZE as usize;

/// A handle on a volume (read-write) or on one of its snapshots
/// (read-only). Cheap to clone; many handles may do I/O at once.
///
/// A handle names its volume by name *and* uid, so a handle on a deleted
/// volume fails with [`Error::NotFound`] even after a new volume of the
/// same name is created.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
    name: Arc<str>,
    uid: u64,
    /// `(snapshot name, generation)` for a snapshot handle.
    snapshot: Option<(Arc<str>, u64)>,
    /// This handle's sequential stream (clones share it).
    ahead: Arc<parking_lot::Mutex<ReadAhead>>,
    /// Failed write-behinds this handle has reported (clones share it).
    reported: Arc<AtomicU64>,
    /// Whether I/O consults the volume's gate (see [`crate::gate`]);
    /// `false` only for the gate owner's own handles.
    gated: bool,
    /// Whether a write may be acknowledged before its data reaches the
    /// disk (`crate::write_behind`); `false` for [`Volume::written_through`].
    behind: bool,
    /// The volume's I/O counters; `None` for a snapshot handle.
    stats: Option<Arc<IoStats>>,
}

/// Registers a read with the deferred-free machinery for its lifetime.
struct ReadGuard<'a> {
    inner: &'a Inner,
    epoch: u64,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let freed = self.inner.reclaim.lock().end_read(self.epoch);
        if !freed.is_empty() {
            self.inner.release(&freed);
        }
    }
}

/// A non-zero block of a write and where it goes.
#[derive(Debug, Clone, Copy)]
struct Placed {
    vblock: u64,
    crc: u32,
    pblock: u64,
}

/// What a range resolves through, captured under the state lock: the
/// pieces the overlays hold, the gaps to look up in the tree at `root`.
struct Resolution {
    known: Vec<Piece>,
    gaps: Vec<std::ops::Range<u64>>,
    root: Option<NodeRef>,
}

/// Appends `[from, to)` in `state` to consecutive extents, merging it
/// into the last one when that continues it in the same state.
fn push_extent(out: &mut Vec<Extent>, from: u64, to: u64, state: BlockState) {
    if from >= to {
        return;
    }
    match out.last_mut() {
        Some(e) if e.state == state && e.offset + e.len == from => e.len += to - from,
        _ => out.push(Extent {
            offset: from,
            len: to - from,
            state,
        }),
    }
}

/// True if a whole block is zeros (blocks are a multiple of 8 bytes).
fn is_zero(block: &[u8]) -> bool {
    block
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

impl Volume {
    pub(crate) fn new(
        inner: Arc<Inner>,
        name: &str,
        uid: u64,
        snapshot: Option<(&str, u64)>,
    ) -> Self {
        let stats = snapshot
            .is_none()
            .then(|| inner.io_stats.lock().entry(uid).or_default().clone());
        Volume {
            stats,
            name: name.into(),
            uid,
            snapshot: snapshot.map(|(n, g)| (n.into(), g)),
            ahead: Default::default(),
            reported: Arc::new(AtomicU64::new(inner.behind.failures())),
            gated: true,
            behind: true,
            inner,
        }
    }

    /// This handle without its volume's gate: for the gate's owner, which
    /// fills the volume through it. Reads through it see unfetched ranges
    /// as the holes they are in the pool.
    pub fn ungated(&self) -> Volume {
        Volume {
            gated: false,
            ..self.clone()
        }
    }

    /// This handle, but its writes return only once their data is on the
    /// disk (not yet durable: a flush still makes it so). For a bulk
    /// writer in the background: its writes never fill the write-behind
    /// budget, so a foreground write, and a read of what it wrote, queue
    /// behind at most the few writes the bulk writer has in flight.
    pub fn written_through(&self) -> Volume {
        Volume {
            behind: false,
            ..self.clone()
        }
    }

    /// The gate I/O through this handle passes first, if any.
    fn gate(&self) -> Option<Arc<dyn Gate>> {
        if !self.gated || self.snapshot.is_some() {
            return None;
        }
        self.inner.gates.get(self.uid)
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The snapshot's name, for a snapshot handle.
    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|(n, _)| &**n)
    }

    /// A snapshot, or a volume its owner fenced (`crate::fence`) seen
    /// through a gated handle.
    pub fn read_only(&self) -> bool {
        self.snapshot.is_some() || self.fence().is_some()
    }

    /// Why the volume's owner refuses writes through this handle, if it does.
    fn fence(&self) -> Option<String> {
        if !self.gated || self.snapshot.is_some() {
            return None;
        }
        self.inner.fences.get(self.uid)
    }

    fn display(&self) -> String {
        match self.snapshot() {
            Some(s) => format!("{}@{s}", self.name),
            None => self.name.to_string(),
        }
    }

    /// The size of what this handle reads, and how `[first, last)`
    /// resolves, checked against the current metadata.
    fn view(&self, st: &State, first: u64, last: u64) -> Result<(u64, Resolution)> {
        let v = st.catalog.handle(&self.name, self.uid)?;
        match &self.snapshot {
            None => {
                let (known, gaps) = v.overlays(first, last);
                Ok((
                    v.rec.size,
                    Resolution {
                        known,
                        gaps,
                        root: v.rec.root,
                    },
                ))
            }
            Some((_, gen)) => {
                let s = v
                    .snapshots
                    .iter()
                    .find(|s| s.gen == *gen && !s.deleting)
                    .ok_or_else(|| Error::not_found("snapshot", self.display()))?;
                Ok((
                    s.size,
                    Resolution {
                        known: Vec::new(),
                        gaps: vec![std::ops::Range {
                            start: first,
                            end: last,
                        }],
                        root: s.root,
                    },
                ))
            }
        }
    }

    fn size_of(&self, st: &State) -> Result<u64> {
        Ok(self.view(st, 0, 0)?.0)
    }

    fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Refuses a write of `[offset, offset + len)` to a read-only handle,
    /// a failed pool, or past the end.
    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let st = self.inner.state.lock();
        Self::check_range(offset, len, self.size_of(&st)?)
    }

    fn writable(&self) -> Result<()> {
        self.inner.check_writable()?;
        if self.snapshot.is_some() {
            return Err(Error::ReadOnly(format!("snapshot {}", self.display())));
        }
        if let Some(reason) = self.fence() {
            return Err(Error::ReadOnly(format!("volume {} ({reason})", self.name)));
        }
        Ok(())
    }

    /// The volume's (or snapshot's) size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.inner.check_open()?;
        self.size_of(&self.inner.state.lock())
    }

    /// Completes a resolution: the tree's pieces for its gaps, all of it
    /// sorted and covering `[first, last)` exactly.
    fn complete(&self, r: Resolution, first: u64, last: u64) -> Result<Vec<Piece>> {
        let mut pieces = r.known;
        let nodes = self.inner.nodes();
        for g in r.gaps {
            pieces.extend(tree::lookup(&nodes, r.root, g.start, g.end)?);
        }
        pieces.sort_unstable_by_key(|p| p.vstart);
        Ok(cover(first, last, pieces))
    }

    /// Checks the range and resolves its blocks, registering a read with
    /// the deferred-free machinery; `None` for an empty range.
    fn resolve(&self, offset: u64, len: u64) -> Result<Option<(Vec<Piece>, ReadGuard<'_>)>> {
        self.inner.check_open()?;
        let first = offset / BS;
        let last = (offset + len).div_ceil(BS);
        let (resolution, guard) = {
            let st = self.inner.state.lock();
            let (size, resolution) = self.view(&st, first, last)?;
            Self::check_range(offset, len, size)?;
            if len == 0 {
                return Ok(None);
            }
            let epoch = self.inner.reclaim.lock().begin_read();
            (
                resolution,
                ReadGuard {
                    inner: &self.inner,
                    epoch,
                },
            )
        };
        Ok(Some((self.complete(resolution, first, last)?, guard)))
    }

    /// Reads `buf.len()` bytes at `offset`. Holes read as zeros without
    /// touching the disk; every data block's crc32 is verified.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let started = Instant::now();
        let len = buf.len() as u64;
        let r = self.read_gated(offset, buf).await;
        if let (Some(s), Ok(())) = (&self.stats, &r) {
            s.read.record(len, started.elapsed());
        }
        r
    }

    /// [`Volume::read`] once the gate lets it through, uncounted.
    async fn read_gated(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if let Some(gate) = self.gate() {
            gate.readable(offset, buf.len() as u64).await?;
        }
        self.read_here(offset, buf).await
    }

    /// [`Volume::read`] of what the pool holds, past the gate.
    async fn read_here(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some((pieces, _guard)) = self.resolve(offset, buf.len() as u64)? else {
            return Ok(());
        };
        self.read_mapped(offset, buf, &pieces).await
    }

    /// Reads `len` bytes at `offset` into a buffer of the engine's own, as
    /// [`Volume::read`] does. When the range is one run of pool blocks the
    /// disk reads straight into the buffer returned, with no copy, and a
    /// sequential stream of such reads is read ahead (see
    /// [`crate::readahead`]).
    pub async fn read_owned(&self, offset: u64, len: usize) -> Result<PooledBuf> {
        let started = Instant::now();
        let r = self.read_owned_gated(offset, len).await;
        if let (Some(s), Ok(_)) = (&self.stats, &r) {
            s.read.record(len as u64, started.elapsed());
        }
        r
    }

    async fn read_owned_gated(&self, offset: u64, len: usize) -> Result<PooledBuf> {
        if let Some(gate) = self.gate() {
            gate.readable(offset, len as u64).await?;
        }
        self.read_owned_here(offset, len).await
    }

    async fn read_owned_here(&self, offset: u64, len: usize) -> Result<PooledBuf> {
        let bufs = &self.inner.bufs;
        let Some((pieces, _guard)) = self.resolve(offset, len as u64)? else {
            return Ok(PooledBuf::new(bufs.clone(), AlignedBuf::new(0), 0, 0));
        };
        let first = offset / BS;
        let last = (offset + len as u64).div_ceil(BS);
        let ahead = self.read_ahead(offset, len as u64);
        if let Some(run) = whole_run(&pieces, first..last) {
            let start = (offset - first * BS) as usize;
            if let Some(data) = self.take_chunk(ahead, run.pblock, &run.crcs).await {
                return Ok(PooledBuf::new(bufs.clone(), data, start, len));
            }
            self.inner
                .behind
                .wait(std::iter::once(run.pool_run()))
                .await;
            let (data, result) = self
                .inner
                .io
                .read(run.pblock * BS, bufs.get(run.crcs.len() * BSU))
                .await;
            let data = PooledBuf::new(bufs.clone(), data, start, len);
            result.map_err(Error::from_io)?;
            self.verify(&run, &data.buf)?;
            return Ok(data);
        }
        let mut data = PooledBuf::new(bufs.clone(), bufs.get(len), 0, len);
        self.read_mapped(offset, &mut data.buf, &pieces).await?;
        Ok(data)
    }

    /// Feeds a read of `[offset, offset + len)`, whose mapping the caller
    /// has already resolved, to this handle's stream: starts the chunks it
    /// asks for that map to one run of pool blocks, and returns the chunk
    /// read ahead for exactly this range if no block has been released
    /// since that chunk was resolved (see [`crate::readahead`]).
    fn read_ahead(&self, offset: u64, len: u64) -> Option<Chunk> {
        let releases = self.inner.alloc.lock().releases();
        let size = self.size().ok()?;
        let (hit, starts) = self.ahead.lock().observe(offset, len, size, BS);
        let hit = hit.filter(|c| c.releases == releases);
        for start in starts {
            let blocks = start / BS..(start + len) / BS;
            let resolution = {
                let st = self.inner.state.lock();
                self.view(&st, blocks.start, blocks.end).ok()?.1
            };
            let Ok(pieces) = self.complete(resolution, blocks.start, blocks.end) else {
                continue;
            };
            let Some(run) = whole_run(&pieces, blocks) else {
                continue;
            };
            if self.inner.behind.busy(run.pblock, len / BS) {
                continue;
            }
            let read = self
                .inner
                .io
                .start_read(run.pblock * BS, self.inner.bufs.get(len as usize));
            self.inner.read_ahead.fetch_add(len, Ordering::Relaxed);
            self.ahead.lock().add(Chunk {
                offset: start,
                len,
                pblock: run.pblock,
                crcs: run.crcs,
                releases,
                read,
            });
        }
        hit
    }

    /// The data of `chunk` (from [`Volume::read_ahead`]) if it read the
    /// blocks `pblock..` with checksums `crcs` that the caller's read
    /// (whose guard is held) resolved to, and it read and verified cleanly;
    /// `None` sends the caller to the disk.
    async fn take_chunk(
        &self,
        chunk: Option<Chunk>,
        pblock: u64,
        crcs: &[u32],
    ) -> Option<AlignedBuf> {
        let chunk = chunk?;
        if chunk.pblock != pblock || chunk.crcs != crcs {
            return None;
        }
        let (data, result) = chunk.read.wait().await;
        if result.is_err() || first_mismatch(crcs, &data).is_some() {
            self.inner.bufs.put(data);
            return None;
        }
        self.inner
            .read_ahead_used
            .fetch_add(chunk.len, Ordering::Relaxed);
        Some(data)
    }

    /// Fills `buf` from `offset` given the resolved `pieces`.
    async fn read_mapped(&self, offset: u64, buf: &mut [u8], pieces: &[Piece]) -> Result<()> {
        let len = buf.len() as u64;
        let runs = data_runs(pieces);
        let (io, bufs) = (&self.inner.io, &self.inner.bufs);
        self.inner
            .behind
            .wait(runs.iter().map(DataRun::pool_run))
            .await;
        let results = join_all(
            runs.iter()
                .map(|r| io.read(r.pblock * BS, bufs.get(r.crcs.len() * BSU))),
        )
        .await;

        // Holes read as zeros; data blocks are copied below.
        for p in pieces.iter().filter(|p| p.data.is_none()) {
            let from = offset.max(p.vstart * BS);
            let to = (offset + len).min(p.end() * BS);
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize].fill(0);
            }
        }
        let mut outcome = Ok(());
        for (run, (data, result)) in runs.iter().zip(results) {
            if outcome.is_ok() {
                outcome = result
                    .map_err(Error::from_io)
                    .and_then(|()| self.verify(run, &data))
                    .map(|()| copy_out(offset, buf, run.vblock, &data));
            }
            bufs.put(data);
        }
        outcome
    }

    /// Verifies the blocks of one completed read of `run` against their
    /// checksums.
    fn verify(&self, run: &DataRun, data: &[u8]) -> Result<()> {
        let Some(i) = first_mismatch(&run.crcs, data) else {
            return Ok(());
        };
        let (vblock, pblock) = (run.vblock + i as u64, run.pblock + i as u64);
        tracing::error!(volume = %self.display(), vblock, pblock, "checksum mismatch");
        Err(Error::Checksum {
            offset: vblock * BS,
            pblock,
        })
    }

    /// Writes `data` at `offset`. New data always goes to new pool blocks
    /// (redirect-on-write); all-zero blocks take no space.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let started = Instant::now();
        let r = match self.gate() {
            Some(gate) => {
                gate.write(
                    offset,
                    data.len() as u64,
                    Box::pin(self.write_here(offset, data)),
                )
                .await
            }
            None => self.write_here(offset, data).await,
        };
        if let (Some(s), Ok(())) = (&self.stats, &r) {
            s.write.record(data.len() as u64, started.elapsed());
        }
        r
    }

    /// [`Volume::write`] past the gate, uncounted.
    async fn write_here(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / BS;
        let last = (offset + len).div_ceil(BS); // exclusive
        let head_partial = !offset.is_multiple_of(BS) || offset + len < (first + 1) * BS;
        let tail_partial = !(offset + len).is_multiple_of(BS);

        // Partial blocks are read-modify-written under their stripe lock.
        let mut stripes: Vec<usize> = Vec::new();
        if head_partial {
            stripes.push(self.inner.rmw_lock(self.uid, first));
        }
        if tail_partial {
            stripes.push(self.inner.rmw_lock(self.uid, last - 1));
        }
        stripes.sort_unstable();
        stripes.dedup();
        let mut _held = Vec::with_capacity(stripes.len());
        for s in stripes {
            _held.push(self.inner.rmw_stripe(s).lock().await);
        }
        let head_block = if head_partial {
            Some(self.merged_block(first, offset, data).await?)
        } else {
            None
        };
        let tail_block = if tail_partial && (last - 1 != first || !head_partial) {
            Some(self.merged_block(last - 1, offset, data).await?)
        } else {
            None
        };
        let block = |vb: u64| -> &[u8] {
            if vb == first {
                if let Some(b) = &head_block {
                    return b;
                }
            }
            if vb == last - 1 {
                if let Some(b) = &tail_block {
                    return b;
                }
            }
            let start = (vb * BS - offset) as usize;
            &data[start..start + BSU]
        };
        self.write_blocks(first..last, block).await
    }

    /// A buffer of `len` bytes for [`Volume::write_owned`] (contents
    /// unspecified).
    pub fn buffer(&self, len: usize) -> PooledBuf {
        let bufs = &self.inner.bufs;
        PooledBuf::new(bufs.clone(), bufs.get(len), 0, len)
    }

    /// Writes `data` at `offset`, as [`Volume::write`] does. A block-aligned
    /// write of non-zero blocks that gets one run of pool blocks goes to
    /// the disk straight from `data`, with no copy.
    pub async fn write_owned(&self, offset: u64, data: PooledBuf) -> Result<()> {
        let len = data.len() as u64;
        if len == 0 || !offset.is_multiple_of(BS) || !len.is_multiple_of(BS) || !data.is_whole() {
            return self.write(offset, &data).await;
        }
        let started = Instant::now();
        let r = match self.gate() {
            Some(gate) => {
                gate.write(offset, len, Box::pin(self.write_owned_here(offset, data)))
                    .await
            }
            None => self.write_owned_here(offset, data).await,
        };
        if let (Some(s), Ok(())) = (&self.stats, &r) {
            s.write.record(len, started.elapsed());
        }
        r
    }

    /// [`Volume::write_owned`] of whole blocks, past the gate, uncounted.
    async fn write_owned_here(&self, offset: u64, mut data: PooledBuf) -> Result<()> {
        let len = data.len() as u64;
        self.check_write(offset, len)?;
        let blocks = offset / BS..(offset + len) / BS;
        let first = blocks.start;
        let block = |vb: u64| {
            let at = ((vb - first) * BS) as usize;
            &data[at..at + BSU]
        };
        let nonzero = checksums(blocks.clone(), block);
        let runs = self.allocate(nonzero.len() as u64).await?;
        let placed = place(&nonzero, &runs);
        let ios = if placed.len() as u64 == len / BS && runs.len() == 1 {
            vec![(
                runs[0].start * BS,
                std::mem::replace(&mut data.buf, AlignedBuf::new(0)),
            )]
        } else {
            self.gather(&placed, block)
        };
        self.store(blocks, placed, &runs, ios).await
    }

    /// The block `vblock` as it is now, with the overlapping part of a
    /// write of `data` at `offset` applied.
    async fn merged_block(&self, vblock: u64, offset: u64, data: &[u8]) -> Result<Vec<u8>> {
        let mut block = vec![0u8; BSU];
        self.read_here(vblock * BS, &mut block).await?;
        let bstart = vblock * BS;
        let from = offset.max(bstart);
        let to = (offset + data.len() as u64).min(bstart + BS);
        block[(from - bstart) as usize..(to - bstart) as usize]
            .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        Ok(block)
    }

    /// Writes whole blocks `blocks`, whose contents `block(vb)` gives.
    async fn write_blocks<'a>(
        &self,
        blocks: std::ops::Range<u64>,
        block: impl Fn(u64) -> &'a [u8],
    ) -> Result<()> {
        let nonzero = checksums(blocks.clone(), &block);
        let runs = self.allocate(nonzero.len() as u64).await?;
        let placed = place(&nonzero, &runs);
        let ios = self.gather(&placed, block);
        self.store(blocks, placed, &runs, ios).await
    }

    /// Copies the `placed` blocks into one buffer per stretch of
    /// pool-contiguous blocks: the I/Os that write them.
    fn gather<'a>(
        &self,
        placed: &[Placed],
        block: impl Fn(u64) -> &'a [u8],
    ) -> Vec<(u64, AlignedBuf)> {
        let mut ios: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut i = 0;
        while i < placed.len() {
            let mut j = i + 1;
            while j < placed.len() && placed[j].pblock == placed[j - 1].pblock + 1 {
                j += 1;
            }
            let mut buf = self.inner.bufs.get((j - i) * BSU);
            for (k, p) in placed[i..j].iter().enumerate() {
                buf[k * BSU..(k + 1) * BSU].copy_from_slice(block(p.vblock));
            }
            ios.push((placed[i].pblock * BS, buf));
            i = j;
        }
        ios
    }

    /// Writes `ios` (the data of the `placed` blocks, allocated as `runs`)
    /// and maps `blocks` (see [`Volume::install`]). While the bounds on
    /// writes in flight allow, the data goes to the disk behind the caller
    /// (see [`crate::write_behind`]): the writes start, the mapping is
    /// installed, and this returns without waiting for them. Otherwise the
    /// data is written first.
    async fn store(
        &self,
        blocks: std::ops::Range<u64>,
        placed: Vec<Placed>,
        runs: &[Run],
        ios: Vec<(u64, AlignedBuf)>,
    ) -> Result<()> {
        let pieces = pieces_of(blocks.clone(), &placed);
        let flights: Vec<Run> = ios
            .iter()
            .map(|(off, buf)| Run::new(off / BS, buf.len() as u64 / BS))
            .collect();
        // Registered before the mappings appear (write-behind invariant 1).
        let admitted = if self.behind {
            self.inner.behind.admit(&flights)
        } else {
            None
        };
        let Some(tickets) = admitted else {
            self.submit_writes(ios, runs).await?;
            return self
                .install(blocks, pieces)
                .await
                .inspect_err(|_| self.inner.release(runs));
        };
        for ((offset, buf), ticket) in ios.into_iter().zip(tickets) {
            let (behind, bufs) = (self.inner.behind.clone(), self.inner.bufs.clone());
            self.inner.io.write_then(offset, buf, move |buf, result| {
                bufs.put(buf);
                behind.complete(ticket, result);
            });
        }
        if let Err(e) = self.install(blocks, pieces).await {
            // Nothing maps the blocks; they go back once their writes are
            // done (no reuse under a write, write-behind invariant 3).
            self.inner.behind.wait(flights.into_iter()).await;
            self.inner.release(runs);
            return Err(e);
        }
        Ok(())
    }

    /// Writes each `(offset, buffer)`; on failure gives `runs` back to the
    /// allocator (nothing maps them yet).
    async fn submit_writes(&self, ios: Vec<(u64, AlignedBuf)>, runs: &[Run]) -> Result<()> {
        let io = &self.inner.io;
        let results = join_all(ios.into_iter().map(|(off, buf)| io.write(off, buf))).await;
        let mut failure = None;
        for (buf, r) in results {
            self.inner.bufs.put(buf);
            failure = failure.or(r.err());
        }
        if let Some(e) = failure {
            self.inner.release(runs);
            return Err(Error::from_io(e));
        }
        Ok(())
    }

    /// Maps `blocks` as `pieces` say (data, or holes for all-zero and
    /// trimmed blocks), and deals with what they replace: blocks the head
    /// alone held are freed (after the commit, see [`crate::reclaim`]);
    /// blocks a snapshot still holds are recorded as dead (see
    /// [`crate::space`]). The change goes into the volume's overlay and the
    /// journal's pending operations under one hold of the state lock.
    ///
    /// The old mapping is looked up first, outside the state lock (the
    /// tree may have to read nodes), under the volume's install lock, so no
    /// other install of the volume can change it in between; a checkpoint
    /// may move changes from the overlays into the tree meanwhile, which
    /// does not change what the mapping is.
    async fn install(&self, blocks: std::ops::Range<u64>, pieces: Vec<Piece>) -> Result<()> {
        self.writable()?;
        self.inner.make_room().await?;
        let lock = self
            .inner
            .state
            .lock()
            .catalog
            .handle(&self.name, self.uid)?
            .install
            .clone();
        let _installing = lock.lock().await;
        let resolution = {
            let st = self.inner.state.lock();
            self.view(&st, blocks.start, blocks.end)?.1
        };
        let old = self.complete(resolution, blocks.start, blocks.end)?;

        let mut st = self.inner.state.lock();
        self.inner.check_writable()?;
        let State {
            sb,
            catalog,
            pending,
            ..
        } = &mut *st;
        let v = catalog.handle_mut(&self.name, self.uid)?;
        let (uid, gen) = (self.uid, sb.gen);
        {
            let mut reclaim = self.inner.reclaim.lock();
            for o in &old {
                let Some(d) = &o.data else { continue };
                let run = Run::new(d.pstart, o.len);
                if d.birth > v.rec.shared_upto {
                    reclaim.free(run);
                    pending.push(&Op::Free { uid, run });
                    v.own_delta -= o.len as i64;
                } else {
                    pending.push(&Op::Dead(Death {
                        uid,
                        death: gen,
                        vstart: o.vstart,
                        run,
                        birth: d.birth,
                    }));
                }
            }
        }
        // Holes over nothing need no entry: the tree has nothing there
        // either (every layer was looked up).
        let has_data = |p: &Piece| {
            old.iter()
                .any(|o| o.data.is_some() && o.vstart < p.end() && p.vstart < o.end())
        };
        let mut changes: Vec<Piece> = Vec::with_capacity(pieces.len());
        for mut p in pieces {
            let over_data = has_data(&p);
            match &mut p.data {
                Some(d) => {
                    d.birth = gen;
                    pending.push(&Op::Map {
                        uid,
                        vstart: p.vstart,
                        pstart: d.pstart,
                        birth: gen,
                        crcs: d.crcs.clone(),
                    });
                    v.own_delta += p.len as i64;
                }
                None if over_data => pending.push(&Op::Unmap {
                    uid,
                    vstart: p.vstart,
                    len: p.len,
                }),
                None => continue,
            }
            changes.push(p);
        }
        v.active.set(&changes);
        self.inner.note_pressure(&st);
        Ok(())
    }

    /// Allocates `n` pool blocks; when the pool is full, commits once to
    /// recover blocks awaiting deferred free, then tries again.
    async fn allocate(&self, n: u64) -> Result<Vec<Run>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        for attempt in 0..2 {
            if let Some(runs) = self.inner.allocate(n).await? {
                return Ok(runs);
            }
            if attempt == 0 {
                self.inner.commit().await?;
            }
        }
        Err(Error::NoSpace(format!(
            "no room for {} more bytes in pool {}",
            n * BS,
            self.inner.root.display()
        )))
    }

    /// Makes everything written so far (on every volume) durable. Fails
    /// with an I/O error if a write acknowledged earlier failed on its way
    /// to the disk, once per handle for each such failure (see
    /// [`crate::write_behind`]).
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.commit().await?;
        let failures = self.inner.behind.failures();
        let reported = self.reported.fetch_max(failures, Ordering::Relaxed);
        if failures > reported {
            return Err(Error::Io {
                source: std::io::Error::other(format!(
                    "{} write(s) acknowledged earlier did not reach the disk; \
                     the blocks they wrote now read as I/O errors",
                    failures - reported
                )),
            });
        }
        Ok(())
    }

    /// Discards `[offset, offset+len)`: the range reads as zeros afterwards
    /// and whole blocks give their space back.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len).await
    }

    /// Zeroes `[offset, offset+len)` without writing data blocks: whole
    /// blocks become holes, partial blocks at the edges are
    /// read-modify-written.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        match self.gate() {
            Some(gate) => {
                gate.write(offset, len, Box::pin(self.write_zeroes_here(offset, len)))
                    .await
            }
            None => self.write_zeroes_here(offset, len).await,
        }
    }

    async fn write_zeroes_here(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let whole_first = offset.div_ceil(BS);
        let whole_last = end / BS; // exclusive
        if whole_first >= whole_last {
            // No whole block inside: one or two partial edges.
            return self.write_here(offset, &vec![0u8; len as usize]).await;
        }
        if offset < whole_first * BS {
            self.write_here(offset, &vec![0u8; (whole_first * BS - offset) as usize])
                .await?;
        }
        if end > whole_last * BS {
            self.write_here(
                whole_last * BS,
                &vec![0u8; (end - whole_last * BS) as usize],
            )
            .await?;
        }
        let range = whole_first..whole_last;
        self.install(
            range.clone(),
            vec![Piece::hole(range.start, range.end - range.start)],
        )
        .await
    }

    /// What `[offset, offset+len)` holds, as consecutive extents covering
    /// exactly that range.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let end = offset.saturating_add(len);
        let Some((pieces, _guard)) = self.resolve(offset, len)? else {
            return Ok(Vec::new());
        };
        // What the gate has not filled yet is data, whatever the pool holds.
        let missing = self
            .gate()
            .map_or_else(Vec::new, |g| g.missing(offset, len));
        let mut out: Vec<Extent> = Vec::new();
        for p in &pieces {
            let (from, to) = ((p.vstart * BS).max(offset), (p.end() * BS).min(end));
            if from >= to {
                continue;
            }
            if p.data.is_some() {
                push_extent(&mut out, from, to, BlockState::Data);
                continue;
            }
            let mut at = from;
            for m in missing.iter().filter(|m| m.start < to && m.end > from) {
                let (m_from, m_to) = (m.start.max(from), m.end.min(to));
                push_extent(&mut out, at, m_from, BlockState::Hole);
                push_extent(&mut out, m_from, m_to, BlockState::Data);
                at = m_to;
            }
            push_extent(&mut out, at, to, BlockState::Hole);
        }
        Ok(out)
    }
}

/// An I/O buffer of the pool's: what [`Volume::read_owned`] returns, and
/// what [`Volume::write_owned`] takes (from [`Volume::buffer`]). It goes
/// back to the pool's buffer cache when dropped.
pub struct PooledBuf {
    buf: AlignedBuf,
    start: usize,
    len: usize,
    bufs: Arc<BufPool>,
}

impl PooledBuf {
    fn new(bufs: Arc<BufPool>, buf: AlignedBuf, start: usize, len: usize) -> Self {
        PooledBuf {
            buf,
            start,
            len,
            bufs,
        }
    }

    /// Whether the bytes are the whole underlying buffer, which can then
    /// go to the disk as it is.
    fn is_whole(&self) -> bool {
        self.start == 0 && self.len == self.buf.len()
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.bufs
            .put(std::mem::replace(&mut self.buf, AlignedBuf::new(0)));
    }
}

/// The non-zero blocks of `blocks` (contents `block(vb)`) with their
/// checksums; all-zero blocks take no space.
fn checksums<'a>(blocks: std::ops::Range<u64>, block: impl Fn(u64) -> &'a [u8]) -> Vec<(u64, u32)> {
    blocks
        .filter(|&vb| !is_zero(block(vb)))
        .map(|vb| (vb, crc32fast::hash(block(vb))))
        .collect()
}

/// Pairs each non-zero block with its pool block from `runs`, in order.
fn place(nonzero: &[(u64, u32)], runs: &[Run]) -> Vec<Placed> {
    let pblocks = runs.iter().flat_map(|r| r.start..r.end());
    nonzero
        .iter()
        .zip(pblocks)
        .map(|(&(vblock, crc), pblock)| Placed {
            vblock,
            crc,
            pblock,
        })
        .collect()
}

/// The pieces a write of `blocks` maps: stretches of `placed` blocks
/// contiguous in the volume and in the pool, and holes between them
/// (all-zero blocks). Births are set when the pieces are installed.
fn pieces_of(blocks: std::ops::Range<u64>, placed: &[Placed]) -> Vec<Piece> {
    let mut data: Vec<Piece> = Vec::new();
    for p in placed {
        match data.last_mut() {
            Some(last)
                if last.end() == p.vblock
                    && last
                        .data
                        .as_ref()
                        .is_some_and(|d| d.pstart + last.len == p.pblock) =>
            {
                last.len += 1;
                last.data.as_mut().expect("data piece").crcs.push(p.crc);
            }
            _ => data.push(Piece {
                vstart: p.vblock,
                len: 1,
                data: Some(Data {
                    pstart: p.pblock,
                    birth: 0,
                    crcs: vec![p.crc],
                }),
            }),
        }
    }
    cover(blocks.start, blocks.end, data)
}

/// The index of the first block of `data` whose crc32 is not `crcs`'s.
fn first_mismatch(crcs: &[u32], data: &[u8]) -> Option<usize> {
    crcs.iter()
        .zip(data.chunks_exact(BSU))
        .position(|(&crc, block)| crc32fast::hash(block) != crc)
}

/// Data blocks contiguous both in the volume and in the pool: one read.
struct DataRun {
    vblock: u64,
    pblock: u64,
    /// One per block.
    crcs: Vec<u32>,
}

impl DataRun {
    fn pool_run(&self) -> Run {
        Run::new(self.pblock, self.crcs.len() as u64)
    }
}

/// The data runs of `pieces`, in order; holes are left out.
fn data_runs(pieces: &[Piece]) -> Vec<DataRun> {
    let mut runs: Vec<DataRun> = Vec::new();
    for p in pieces {
        let Some(d) = &p.data else { continue };
        match runs.last_mut() {
            Some(r)
                if r.vblock + r.crcs.len() as u64 == p.vstart
                    && r.pblock + r.crcs.len() as u64 == d.pstart =>
            {
                r.crcs.extend_from_slice(&d.crcs)
            }
            _ => runs.push(DataRun {
                vblock: p.vstart,
                pblock: d.pstart,
                crcs: d.crcs.clone(),
            }),
        }
    }
    runs
}

/// The one data run of `pieces` if it maps exactly volume blocks
/// `blocks`: the range is then a single read into one buffer.
fn whole_run(pieces: &[Piece], blocks: std::ops::Range<u64>) -> Option<DataRun> {
    let [run] = <[_; 1]>::try_from(data_runs(pieces)).ok()?;
    (run.vblock == blocks.start && run.crcs.len() as u64 == blocks.end - blocks.start)
        .then_some(run)
}

/// Copies the part of the run read into `data` (starting at volume block
/// `vb`) that lies inside `[offset, offset + buf.len())` into `buf`.
fn copy_out(offset: u64, buf: &mut [u8], vb: u64, data: &[u8]) {
    let bstart = vb * BS;
    let bend = bstart + data.len() as u64;
    let from = offset.max(bstart);
    let to = (offset + buf.len() as u64).min(bend);
    if from < to {
        buf[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
    }
}
