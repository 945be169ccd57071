//! Volume handles and the data path: read, write, trim, write-zeroes,
//! allocation queries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::join_all;

use crate::alloc::Run;
use crate::error::{Error, Result};
use crate::io::{AlignedBuf, BufPool};
use crate::layer::Mapping;
use crate::pool::{Inner, State};
use crate::readahead::{Chunk, ReadAhead};
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
    /// `(snapshot name, layer)` for a snapshot handle.
    snapshot: Option<(Arc<str>, u64)>,
    /// This handle's sequential stream (clones share it).
    ahead: Arc<parking_lot::Mutex<ReadAhead>>,
    /// Failed write-behinds this handle has reported (clones share it).
    reported: Arc<AtomicU64>,
}

/// Registers a read with the deferred-free machinery for its lifetime.
struct ReadGuard<'a> {
    inner: &'a Inner,
    epoch: u64,
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock();
        let freed = st.reclaim.end_read(self.epoch);
        st.alloc.release_runs(&freed);
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
        Volume {
            name: name.into(),
            uid,
            snapshot: snapshot.map(|(n, l)| (n.into(), l)),
            ahead: Default::default(),
            reported: Arc::new(AtomicU64::new(inner.behind.failures())),
            inner,
        }
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The snapshot's name, for a snapshot handle.
    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_ref().map(|(n, _)| &**n)
    }

    pub fn read_only(&self) -> bool {
        self.snapshot.is_some()
    }

    fn display(&self) -> String {
        match self.snapshot() {
            Some(s) => format!("{}@{s}", self.name),
            None => self.name.to_string(),
        }
    }

    /// The layer reads start from and the size, checked against the
    /// current metadata.
    fn top(&self, st: &State) -> Result<(u64, u64)> {
        let vol = st
            .volumes
            .get(&*self.name)
            .filter(|v| v.uid == self.uid)
            .ok_or_else(|| Error::not_found("volume", &*self.name))?;
        match &self.snapshot {
            None => Ok((vol.head, vol.size)),
            Some((name, layer)) => vol
                .snapshots
                .iter()
                .find(|s| *s.name == **name && s.layer == *layer)
                .map(|s| (s.layer, s.size))
                .ok_or_else(|| Error::not_found("snapshot", self.display())),
        }
    }

    fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, size }),
        }
    }

    /// Refuses a write of `[offset, offset + len)` to a read-only handle
    /// or past the end.
    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let st = self.inner.state.lock();
        Self::check_range(offset, len, self.top(&st)?.1)
    }

    fn writable(&self) -> Result<()> {
        self.inner.check_open()?;
        if self.read_only() {
            return Err(Error::ReadOnly(format!("snapshot {}", self.display())));
        }
        Ok(())
    }

    /// The volume's (or snapshot's) size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.inner.check_open()?;
        Ok(self.top(&self.inner.state.lock())?.1)
    }

    /// Reads `buf.len()` bytes at `offset`. Holes read as zeros without
    /// touching the disk; every data block's crc32 is verified.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some((mapped, _guard)) = self.resolve(offset, buf.len() as u64)? else {
            return Ok(());
        };
        self.read_mapped(offset, buf, &mapped).await
    }

    /// Reads `len` bytes at `offset` into a buffer of the engine's own, as
    /// [`Volume::read`] does. When the range is one run of pool blocks the
    /// disk reads straight into the buffer returned, with no copy, and a
    /// sequential stream of such reads is read ahead (see
    /// [`crate::readahead`]).
    pub async fn read_owned(&self, offset: u64, len: usize) -> Result<PooledBuf> {
        let bufs = &self.inner.bufs;
        let Some((mapped, _guard)) = self.resolve(offset, len as u64)? else {
            return Ok(PooledBuf::new(bufs.clone(), AlignedBuf::new(0), 0, 0));
        };
        let first = offset / BS;
        let last = (offset + len as u64).div_ceil(BS);
        let ahead = self.read_ahead(offset, len as u64);
        let runs = data_runs(&mapped);
        if let [(vb, pb, crcs)] = runs.as_slice() {
            if *vb == first && crcs.len() as u64 == last - first {
                let start = (offset - first * BS) as usize;
                if let Some(data) = self.take_chunk(ahead, *pb, crcs).await {
                    return Ok(PooledBuf::new(bufs.clone(), data, start, len));
                }
                let run = (*pb, crcs.len() as u64);
                self.inner.behind.wait(std::iter::once(run)).await;
                let (data, result) = self
                    .inner
                    .io
                    .read(pb * BS, bufs.get(crcs.len() * BSU))
                    .await;
                let data = PooledBuf::new(bufs.clone(), data, start, len);
                result.map_err(Error::from_io)?;
                self.verify((*vb, *pb), crcs, &data.buf)?;
                return Ok(data);
            }
        }
        let mut data = PooledBuf::new(bufs.clone(), bufs.get(len), 0, len);
        self.read_mapped(offset, &mut data.buf, &mapped).await?;
        Ok(data)
    }

    /// Feeds a read of `[offset, offset + len)`, whose mapping the caller
    /// has already resolved, to this handle's stream: starts the chunks it
    /// asks for that map to one run of pool blocks, and returns the chunk
    /// read ahead for exactly this range if no block has been released
    /// since that chunk was resolved (see [`crate::readahead`]).
    fn read_ahead(&self, offset: u64, len: u64) -> Option<Chunk> {
        let st = self.inner.state.lock();
        let (top, size) = self.top(&st).ok()?;
        let mut ahead = self.ahead.lock();
        let (hit, starts) = ahead.observe(offset, len, size, BS);
        let hit = hit.filter(|c| c.releases == st.alloc.releases());
        for start in starts {
            let blocks = start / BS..(start + len) / BS;
            let mapped = st.layers.resolve_range(top, blocks.clone());
            let Ok([(vb, pblock, crcs)]) = <[_; 1]>::try_from(data_runs(&mapped)) else {
                continue;
            };
            if vb != blocks.start
                || crcs.len() as u64 != len / BS
                || self.inner.behind.busy(pblock, len / BS)
            {
                continue;
            }
            let read = self
                .inner
                .io
                .start_read(pblock * BS, self.inner.bufs.get(len as usize));
            self.inner.read_ahead.fetch_add(len, Ordering::Relaxed);
            ahead.add(Chunk {
                offset: start,
                len,
                pblock,
                crcs,
                releases: st.alloc.releases(),
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

    /// Checks the range and resolves its blocks, registering a read with
    /// the deferred-free machinery; `None` for an empty range.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<Option<(BTreeMap<u64, Mapping>, ReadGuard<'_>)>> {
        self.inner.check_open()?;
        let first = offset / BS;
        let last = (offset + len).div_ceil(BS);
        let mut st = self.inner.state.lock();
        let (top, size) = self.top(&st)?;
        Self::check_range(offset, len, size)?;
        if len == 0 {
            return Ok(None);
        }
        let mapped = st.layers.resolve_range(top, first..last);
        let epoch = st.reclaim.begin_read();
        Ok(Some((
            mapped,
            ReadGuard {
                inner: &self.inner,
                epoch,
            },
        )))
    }

    /// Fills `buf` from `offset` given the resolved `mapped` blocks.
    async fn read_mapped(
        &self,
        offset: u64,
        buf: &mut [u8],
        mapped: &BTreeMap<u64, Mapping>,
    ) -> Result<()> {
        let len = buf.len() as u64;
        let first = offset / BS;
        let last = (offset + len).div_ceil(BS);
        let runs = data_runs(mapped);
        let (io, bufs) = (&self.inner.io, &self.inner.bufs);
        let flights = runs.iter().map(|(_, p, crcs)| (*p, crcs.len() as u64));
        self.inner.behind.wait(flights).await;
        let results = join_all(
            runs.iter()
                .map(|(_, p, crcs)| io.read(p * BS, bufs.get(crcs.len() * BSU))),
        )
        .await;

        // Holes and zero blocks read as zeros; data blocks are copied below.
        for vb in first..last {
            if !matches!(mapped.get(&vb), Some(Mapping::Data { .. })) {
                let from = offset.max(vb * BS);
                let to = (offset + len).min((vb + 1) * BS);
                buf[(from - offset) as usize..(to - offset) as usize].fill(0);
            }
        }
        let mut outcome = Ok(());
        for ((vb, pb, crcs), (data, result)) in runs.iter().zip(results) {
            if outcome.is_ok() {
                outcome = result
                    .map_err(Error::from_io)
                    .and_then(|()| self.verify((*vb, *pb), crcs, &data))
                    .map(|()| copy_out(offset, buf, *vb, &data));
            }
            bufs.put(data);
        }
        outcome
    }

    /// Verifies the blocks of one completed read of the run starting at
    /// `(vblock, pblock)` against their checksums.
    fn verify(&self, (vb, pb): (u64, u64), crcs: &[u32], data: &[u8]) -> Result<()> {
        let Some(i) = first_mismatch(crcs, data) else {
            return Ok(());
        };
        let (vblock, pblock) = (vb + i as u64, pb + i as u64);
        tracing::error!(volume = %self.display(), vblock, pblock, "checksum mismatch");
        Err(Error::Checksum {
            offset: vblock * BS,
            pblock,
        })
    }

    /// Writes `data` at `offset`. New data always goes to new pool blocks
    /// (redirect-on-write); all-zero blocks take no space.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
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
    pub async fn write_owned(&self, offset: u64, mut data: PooledBuf) -> Result<()> {
        let len = data.len() as u64;
        if len == 0 || !offset.is_multiple_of(BS) || !len.is_multiple_of(BS) || !data.is_whole() {
            return self.write(offset, &data).await;
        }
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
                runs[0].0 * BS,
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
        self.read(vblock * BS, &mut block).await?;
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
        placed: &[(u64, u32, u64)],
        block: impl Fn(u64) -> &'a [u8],
    ) -> Vec<(u64, AlignedBuf)> {
        let mut ios: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut i = 0;
        while i < placed.len() {
            let mut j = i + 1;
            while j < placed.len() && placed[j].2 == placed[j - 1].2 + 1 {
                j += 1;
            }
            let mut buf = self.inner.bufs.get((j - i) * BSU);
            for (k, &(vb, _, _)) in placed[i..j].iter().enumerate() {
                buf[k * BSU..(k + 1) * BSU].copy_from_slice(block(vb));
            }
            ios.push((placed[i].2 * BS, buf));
            i = j;
        }
        ios
    }

    /// Writes `ios` (the data of the `placed` blocks, allocated as `runs`)
    /// and maps `blocks` as [`Volume::install`] does. While the bounds on
    /// writes in flight allow, the data goes to the disk behind the caller
    /// (see [`crate::write_behind`]): the mappings are installed as the
    /// writes start, and this returns without waiting for them. Otherwise
    /// the data is written first.
    async fn store(
        &self,
        blocks: std::ops::Range<u64>,
        placed: Vec<(u64, u32, u64)>,
        runs: &[Run],
        ios: Vec<(u64, AlignedBuf)>,
    ) -> Result<()> {
        let flights: Vec<Run> = ios
            .iter()
            .map(|(off, buf)| (off / BS, buf.len() as u64 / BS))
            .collect();
        let tickets = {
            let mut st = self.inner.state.lock();
            let head = self.write_head(&mut st, runs)?;
            // Registered before the mappings appear (invariant 1).
            let tickets = self.inner.behind.admit(&flights);
            if tickets.is_some() {
                self.map_blocks(&mut st, head, blocks.clone(), &placed);
            }
            tickets
        };
        let Some(tickets) = tickets else {
            self.submit_writes(ios, runs).await?;
            return self.install(blocks, placed, runs);
        };
        for ((offset, buf), ticket) in ios.into_iter().zip(tickets) {
            let (behind, bufs) = (self.inner.behind.clone(), self.inner.bufs.clone());
            self.inner.io.write_then(offset, buf, move |buf, result| {
                bufs.put(buf);
                behind.complete(ticket, result);
            });
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
            self.release_unused(runs);
            return Err(Error::from_io(e));
        }
        Ok(())
    }

    /// Maps `blocks` once their data is on disk: `placed` lists the
    /// non-zero ones as `(vblock, crc, pblock)` in order, every other block
    /// reads as zeros.
    fn install(
        &self,
        blocks: std::ops::Range<u64>,
        placed: Vec<(u64, u32, u64)>,
        runs: &[Run],
    ) -> Result<()> {
        let mut st = self.inner.state.lock();
        let head = self.write_head(&mut st, runs)?;
        self.map_blocks(&mut st, head, blocks, &placed);
        Ok(())
    }

    /// The layer a write maps its blocks into; if the volume is gone,
    /// gives the write's `runs` back to the allocator (nothing maps them).
    fn write_head(&self, st: &mut State, runs: &[Run]) -> Result<u64> {
        self.top(st)
            .map(|(head, _)| head)
            .inspect_err(|_| st.alloc.release_runs(runs))
    }

    /// Maps `blocks` in layer `head`: the `placed` ones to their pool
    /// blocks, the rest to zeros; blocks the old mappings held await
    /// deferred free.
    fn map_blocks(
        &self,
        st: &mut State,
        head: u64,
        blocks: std::ops::Range<u64>,
        placed: &[(u64, u32, u64)],
    ) {
        let mut placed = placed.iter().peekable();
        st.dirty.mark_blocks(head, blocks.clone());
        for vb in blocks {
            let old = match placed.next_if(|p| p.0 == vb) {
                Some(&(_, crc, pblock)) => st
                    .layers
                    .get_mut(head)
                    .insert(vb, Mapping::Data { pblock, crc }),
                None => zero_block(st, head, vb),
            };
            if let Some(Mapping::Data { pblock, .. }) = old {
                st.reclaim.free((pblock, 1));
            }
        }
        self.inner.note_frees(st);
    }

    /// Allocates `n` pool blocks; when the pool is full, commits once to
    /// recover blocks awaiting deferred free, then tries again.
    async fn allocate(&self, n: u64) -> Result<Vec<Run>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        for attempt in 0..2 {
            if let Some(runs) = self.inner.allocate(&mut self.inner.state.lock(), n)? {
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

    /// Returns blocks that were allocated but never mapped; no metadata
    /// references them, so they need no deferred free.
    fn release_unused(&self, runs: &[Run]) {
        self.inner.state.lock().alloc.release_runs(runs);
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
            return Err(Error::Io(std::io::Error::other(format!(
                "{} write(s) acknowledged earlier did not reach the disk; \
                 the blocks they wrote now read as I/O errors",
                failures - reported
            ))));
        }
        Ok(())
    }

    /// Discards `[offset, offset+len)`: the range reads as zeros afterwards
    /// and whole blocks give their space back.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len).await
    }

    /// Zeroes `[offset, offset+len)` without writing data blocks: whole
    /// blocks become unmapped (or zero markers over older layers), partial
    /// blocks at the edges are read-modify-written.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let whole_first = offset.div_ceil(BS);
        let whole_last = end / BS; // exclusive
        if whole_first >= whole_last {
            // No whole block inside: one or two partial edges.
            return self.write(offset, &vec![0u8; len as usize]).await;
        }
        if offset < whole_first * BS {
            self.write(offset, &vec![0u8; (whole_first * BS - offset) as usize])
                .await?;
        }
        if end > whole_last * BS {
            self.write(
                whole_last * BS,
                &vec![0u8; (end - whole_last * BS) as usize],
            )
            .await?;
        }
        let mut st = self.inner.state.lock();
        let (head, _) = self.top(&st)?;
        let range = whole_first..whole_last;
        let parent = st.layers.get(head).parent;
        let below = parent
            .map(|p| st.layers.resolve_range(p, range.clone()))
            .unwrap_or_default();
        let own: Vec<u64> = st
            .layers
            .get(head)
            .map
            .range(range)
            .map(|(&vb, _)| vb)
            .collect();
        let mut freed = Vec::new();
        for vb in own {
            if !matches!(below.get(&vb), Some(Mapping::Data { .. })) {
                if let Some(Mapping::Data { pblock, .. }) = st.layers.get_mut(head).remove(vb) {
                    freed.push(pblock);
                }
                st.dirty.mark_block(head, vb);
            }
        }
        for (vb, m) in below {
            if matches!(m, Mapping::Data { .. }) {
                if let Some(Mapping::Data { pblock, .. }) =
                    st.layers.get_mut(head).insert(vb, Mapping::Zero)
                {
                    freed.push(pblock);
                }
                st.dirty.mark_block(head, vb);
            }
        }
        freed.sort_unstable();
        for run in crate::pool::runs_of(freed) {
            st.reclaim.free(run);
        }
        self.inner.note_frees(&mut st);
        Ok(())
    }

    /// What `[offset, offset+len)` holds, as consecutive extents covering
    /// exactly that range.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.inner.check_open()?;
        let st = self.inner.state.lock();
        let (top, size) = self.top(&st)?;
        Self::check_range(offset, len, size)?;
        let end = offset + len;
        let mapped = st.layers.resolve_range(top, offset / BS..end.div_ceil(BS));
        drop(st);
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |from: u64, to: u64, state: BlockState| {
            let (from, to) = (from.max(offset), to.min(end));
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
        };
        let mut pos = offset / BS * BS;
        for (&vb, &m) in &mapped {
            push(pos, vb * BS, BlockState::Hole);
            let state = match m {
                Mapping::Data { .. } => BlockState::Data,
                Mapping::Zero => BlockState::Zero,
            };
            push(vb * BS, (vb + 1) * BS, state);
            pos = (vb + 1) * BS;
        }
        push(pos, end, BlockState::Hole);
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

/// Pairs each non-zero block with its pool block from `runs`, in order:
/// `(vblock, crc, pblock)`.
fn place(nonzero: &[(u64, u32)], runs: &[Run]) -> Vec<(u64, u32, u64)> {
    let pblocks = runs.iter().flat_map(|&(s, l)| s..s + l);
    nonzero
        .iter()
        .zip(pblocks)
        .map(|(&(vb, crc), pb)| (vb, crc, pb))
        .collect()
}

/// The index of the first block of `data` whose crc32 is not `crcs`'s.
fn first_mismatch(crcs: &[u32], data: &[u8]) -> Option<usize> {
    crcs.iter()
        .zip(data.chunks_exact(BSU))
        .position(|(&crc, block)| crc32fast::hash(block) != crc)
}

/// Runs of data blocks contiguous both in the volume and in the pool:
/// `(vblock, pblock, crcs)`.
fn data_runs(mapped: &BTreeMap<u64, Mapping>) -> Vec<(u64, u64, Vec<u32>)> {
    let mut runs: Vec<(u64, u64, Vec<u32>)> = Vec::new();
    for (&vb, &m) in mapped {
        let Mapping::Data { pblock, crc } = m else {
            continue;
        };
        match runs.last_mut() {
            Some((v, p, crcs))
                if *v + crcs.len() as u64 == vb && *p + crcs.len() as u64 == pblock =>
            {
                crcs.push(crc)
            }
            _ => runs.push((vb, pblock, vec![crc])),
        }
    }
    runs
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

/// Makes `vblock` of layer `head` read as zeros with no data: a zero marker
/// when a lower layer holds data there, no entry otherwise. Returns the old
/// entry.
fn zero_block(st: &mut State, head: u64, vblock: u64) -> Option<Mapping> {
    let parent = st.layers.get(head).parent;
    let shadowed = parent.and_then(|p| st.layers.resolve(p, vblock));
    let layer = st.layers.get_mut(head);
    if matches!(shadowed, Some(Mapping::Data { .. })) {
        layer.insert(vblock, Mapping::Zero)
    } else {
        layer.remove(vblock)
    }
}
