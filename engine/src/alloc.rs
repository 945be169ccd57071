//! The block allocator: which blocks of the data file are free.
//!
//! Free space is a bitmap, one bit per block, kept in the metadata store in
//! chunks of [`CHUNK_BLOCKS`] blocks (a 4 KiB bitmap per 128 MiB). Each
//! chunk in memory has two images:
//!
//! * `busy`: what may not be handed out now. It is set when a block is
//!   allocated and cleared only when a block is released (after the commit
//!   that unreferenced it is durable and no read still uses it; see
//!   `crate::reclaim`).
//! * `persisted`: exactly what the metadata store holds, the blocks that
//!   the last durable checkpoint's maps reference. A checkpoint applies the
//!   allocations and frees its journal records made (in order) and writes
//!   the chunks that changed.
//!
//! A chunk whose images agree can be evicted: reading it back gives the
//! same `busy`. Only a count of free blocks per chunk stays in memory for
//! every chunk (4 bytes per 128 MiB), so opening a pool reads one summary
//! record, not the bitmap, and the allocator's memory does not grow with
//! the data written.
//!
//! The allocator never does I/O itself: an operation that needs a chunk
//! that is not in memory returns [`NeedChunk`], and its caller loads the
//! chunk (without holding the allocator's lock) and tries again.

use std::collections::HashMap;

use crate::extent::Run;

/// Blocks per bitmap chunk (128 MiB).
pub(crate) const CHUNK_BLOCKS: u64 = 32 * 1024;
const WORDS: usize = (CHUNK_BLOCKS / 64) as usize;
/// The data file grows in steps of this many blocks (64 MiB), so extending
/// writes are rare and allocations stay contiguous.
const GROW_STEP: u64 = 16 * 1024;
/// Smallest free run (256 KiB) a large allocation is split over before
/// the file grows instead.
const MIN_PIECE: u64 = 64;
/// Chunks a search looks at before it settles for a worse placement.
const SEARCH_CHUNKS: u64 = 64;
/// Requests up to this many blocks (256 KiB) prefer blocks that were
/// written before (see `Allocator::written_end`).
const SMALL: u64 = 64;

/// The chunk an operation needs in memory first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NeedChunk(pub u64);

/// One journalled change to the persisted bitmap, applied in order by
/// [`Allocator::persist`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitmapChange {
    /// A record allocated these blocks.
    Alloc(Run),
    /// A record (or a control operation) freed these blocks.
    Free(Run),
}

impl BitmapChange {
    pub(crate) fn run(self) -> Run {
        match self {
            BitmapChange::Alloc(run) | BitmapChange::Free(run) => run,
        }
    }
}

/// A chunk's persisted bitmap as [`Allocator::persist`] left it, for the
/// metadata store.
#[derive(Debug)]
pub(crate) struct ChunkImage {
    pub chunk: u64,
    pub words: Vec<u64>,
}

/// What [`Allocator::allocate`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The runs handed out (already marked busy).
    Runs(Vec<Run>),
    /// The data file must first grow to this many blocks
    /// ([`Allocator::grown`]); nothing was handed out.
    Grow(u64),
    /// Not enough free blocks even at the size cap.
    Full,
}

struct Chunk {
    busy: Box<[u64; WORDS]>,
    persisted: Box<[u64; WORDS]>,
    last_use: u64,
    /// A checkpoint is writing this image: the metadata store still holds
    /// the one before, so the chunk must not be evicted (and read back).
    pinned: bool,
}

pub(crate) struct Allocator {
    /// Blocks before this one hold the header and the journal.
    base: u64,
    /// Blocks the data file holds.
    end: u64,
    /// Most blocks the file may hold.
    cap: u64,
    /// Next-fit hint: searches start here, so sequential writes land
    /// sequentially.
    cursor: u64,
    /// Every block below this was handed out at least once since open (or
    /// was in the file at open), so the filesystem holds written data
    /// there; above it, the space `fallocate` reserved has never been
    /// written. The first write to such a block changes the file's extent
    /// map, which the filesystem journals before the next sync returns:
    /// one more device flush for that commit on ext4 and xfs. Small
    /// requests, the ones a synchronous commit waits on (a database's
    /// write + fsync), take free blocks below it first; large ones go on
    /// filling the tail contiguously.
    written_end: u64,
    /// Next-fit hint of the small requests' search below `written_end`.
    small_cursor: u64,
    /// `releases` when that search last found nothing: until a block is
    /// released, it would find nothing again, so it is skipped (it would
    /// otherwise look at every full chunk for every small request).
    small_miss: Option<u64>,
    /// Free blocks (not busy) below `end`, per chunk.
    free: Vec<u32>,
    /// Free blocks below `end` per chunk in the persisted images: the
    /// summary a checkpoint writes.
    persisted_free: Vec<u32>,
    chunks: HashMap<u64, Chunk>,
    max_chunks: usize,
    tick: u64,
    /// Data blocks busy.
    used: u64,
    /// Releases so far: while it stays the same, no block that was busy
    /// has become free, so none can have been handed out again (the
    /// read-ahead relies on this).
    releases: u64,
}

/// Where a search looks: blocks below `end`, starting at `cursor`.
#[derive(Clone, Copy)]
struct Window {
    cursor: u64,
    end: u64,
}

fn chunk_of(block: u64) -> u64 {
    block / CHUNK_BLOCKS
}

/// The pieces of `[from, to)` by bitmap word: `(chunk, word, mask)`.
fn words(from: u64, to: u64) -> impl Iterator<Item = (u64, usize, u64)> {
    let mut b = from;
    std::iter::from_fn(move || {
        if b >= to {
            return None;
        }
        let bit = b % CHUNK_BLOCKS;
        let off = bit % 64;
        let n = (64 - off).min(to - b);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << off
        };
        let item = (chunk_of(b), (bit / 64) as usize, mask);
        b += n;
        Some(item)
    })
}

/// Free blocks of `[from, to)` in a bitmap image of chunk `idx`.
fn count_free(image: &[u64; WORDS], idx: u64, from: u64, to: u64) -> u32 {
    let lo = from.max(idx * CHUNK_BLOCKS);
    let hi = to.min((idx + 1) * CHUNK_BLOCKS);
    words(lo, hi)
        .map(|(_, w, mask)| (mask & !image[w]).count_ones())
        .sum()
}

impl Allocator {
    /// An allocator for a data file of `file_end` blocks whose first `base`
    /// are reserved. The metadata store's summary says `free[i]` blocks of
    /// chunk `i` are free below `recorded_end`; blocks from there to
    /// `file_end` (the file grew after the last checkpoint) are free.
    pub(crate) fn new(
        base: u64,
        recorded_end: u64,
        file_end: u64,
        cap: u64,
        mut free: Vec<u32>,
        max_chunks: usize,
    ) -> Self {
        let recorded_end = recorded_end.max(base);
        free.resize(recorded_end.div_ceil(CHUNK_BLOCKS) as usize, 0);
        let free_total: u64 = free.iter().map(|&f| u64::from(f)).sum();
        let mut a = Allocator {
            base,
            end: recorded_end,
            cap: cap.max(file_end).max(recorded_end),
            cursor: base,
            // What lies beyond the last allocation at open is not known;
            // taking it all as written only forgoes the preference there.
            written_end: file_end.max(recorded_end),
            small_cursor: base,
            small_miss: None,
            persisted_free: free.clone(),
            free,
            chunks: HashMap::new(),
            max_chunks: max_chunks.max(4),
            tick: 0,
            used: (recorded_end - base).saturating_sub(free_total),
            releases: 0,
        };
        a.grown(file_end);
        a
    }

    /// The bitmap image of a chunk never written: reserved blocks busy.
    pub(crate) fn blank_image(&self, idx: u64) -> Vec<u64> {
        let mut image = vec![0u64; WORDS];
        for b in (idx * CHUNK_BLOCKS)..self.base.min((idx + 1) * CHUNK_BLOCKS) {
            image[((b % CHUNK_BLOCKS) / 64) as usize] |= 1 << (b % 64);
        }
        image
    }

    /// Installs chunk `idx` as the metadata store holds it.
    pub(crate) fn load(&mut self, idx: u64, image: Vec<u64>) {
        if self.chunks.contains_key(&idx) {
            return;
        }
        let image: Box<[u64; WORDS]> = image
            .into_boxed_slice()
            .try_into()
            .expect("chunk image size");
        self.tick += 1;
        self.chunks.insert(
            idx,
            Chunk {
                busy: image.clone(),
                persisted: image,
                last_use: self.tick,
                pinned: false,
            },
        );
        self.evict();
    }

    /// Drops least recently used chunks whose images agree while more
    /// than the budget are in memory.
    fn evict(&mut self) {
        while self.chunks.len() > self.max_chunks {
            let (cursor, small) = (chunk_of(self.cursor), chunk_of(self.small_cursor));
            let victim = self
                .chunks
                .iter()
                .filter(|(&i, c)| i != cursor && i != small && !c.pinned && c.busy == c.persisted)
                .min_by_key(|(_, c)| c.last_use)
                .map(|(&i, _)| i);
            match victim {
                Some(i) => {
                    self.chunks.remove(&i);
                }
                None => break,
            }
        }
    }

    fn chunk(&mut self, idx: u64) -> Result<&mut Chunk, NeedChunk> {
        self.tick += 1;
        let tick = self.tick;
        let c = self.chunks.get_mut(&idx).ok_or(NeedChunk(idx))?;
        c.last_use = tick;
        Ok(c)
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    pub(crate) fn releases(&self) -> u64 {
        self.releases
    }

    /// Free blocks in all (per the counts).
    fn free_total(&self) -> u64 {
        self.free.iter().map(|&f| u64::from(f)).sum()
    }

    /// Hands out `n` blocks, contiguous when possible.
    ///
    /// Preference order: for a small request, one free run below
    /// `written_end`; one free run (next-fit from the cursor); a few
    /// free runs of at least [`MIN_PIECE`] blocks each; the grown tail of
    /// the file; and only when the file cannot grow enough, any free blocks
    /// at all. Overwrites free single blocks all over the file, so without
    /// the middle steps a large write after random ones would turn into
    /// hundreds of 4 KiB I/Os, and so would every later read of it.
    pub(crate) fn allocate(&mut self, n: u64) -> Result<Placement, NeedChunk> {
        if n == 0 {
            return Ok(Placement::Runs(Vec::new()));
        }
        let free_total = self.free_total();
        if free_total >= n {
            if n <= SMALL && self.small_miss != Some(self.releases) {
                let written = Window {
                    cursor: self.small_cursor,
                    end: self.written_end,
                };
                match self.find_run(written, n, n, true, SEARCH_CHUNKS)?.first() {
                    Some(run) => {
                        let run = Run::new(run.start, n);
                        self.set(run, true)?;
                        self.used += n;
                        self.small_cursor = run.end();
                        return Ok(Placement::Runs(vec![run]));
                    }
                    None => self.small_miss = Some(self.releases),
                }
            }
            if let Some(start) = self
                .find_run(self.window(), n, n, true, SEARCH_CHUNKS)?
                .first()
                .map(|r| r.start)
            {
                self.take(Run::new(start, n))?;
                return Ok(Placement::Runs(vec![Run::new(start, n)]));
            }
            let runs = self.find_run(self.window(), n, n.min(MIN_PIECE), false, SEARCH_CHUNKS)?;
            if runs.iter().map(|r| r.len).sum::<u64>() == n {
                for &r in &runs {
                    self.take(r)?;
                }
                return Ok(Placement::Runs(runs));
            }
        }
        let room = self.cap - self.end;
        if room > 0 && free_total + room >= n {
            let tail = self.tail_free()?;
            // The grown tail holds the whole request in one run, unless
            // the cap stops it short.
            let grow = n.saturating_sub(tail).max(GROW_STEP).min(room);
            self.cursor = self.end - tail;
            return Ok(Placement::Grow(self.end + grow));
        }
        if free_total < n {
            return Ok(Placement::Full);
        }
        // Scatter over whatever is free, wherever it is.
        let runs = self.find_run(self.window(), n, 1, false, u64::MAX)?;
        debug_assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), n);
        for &r in &runs {
            self.take(r)?;
        }
        Ok(Placement::Runs(runs))
    }

    /// Free blocks at the very end of the file.
    fn tail_free(&mut self) -> Result<u64, NeedChunk> {
        let mut n = 0;
        let mut b = self.end;
        while b > self.base {
            let idx = chunk_of(b - 1);
            if self.free[idx as usize] == 0 {
                break;
            }
            let lo = (idx * CHUNK_BLOCKS).max(self.base);
            let c = self.chunk(idx)?;
            // Whole words at a time, from the top.
            while b > lo {
                let bit = (b - 1) % CHUNK_BLOCKS;
                let word = c.busy[(bit / 64) as usize];
                let below = word & (u64::MAX >> (63 - bit % 64));
                if below != 0 {
                    let top_busy = 63 - below.leading_zeros() as u64;
                    n += bit % 64 - top_busy;
                    return Ok(n);
                }
                let step = (bit % 64 + 1).min(b - lo);
                n += step;
                b -= step;
            }
        }
        Ok(n)
    }

    /// The whole file, searched from the cursor.
    fn window(&self) -> Window {
        Window {
            cursor: self.cursor,
            end: self.end,
        }
    }

    /// From the window's cursor on (wrapping within the window), free runs
    /// of at least `min` blocks adding up to at most `n`; with `one`, only
    /// a single run of `n`. Looks at up to `chunks_limit` chunks that have
    /// free blocks.
    fn find_run(
        &mut self,
        window: Window,
        n: u64,
        min: u64,
        one: bool,
        chunks_limit: u64,
    ) -> Result<Vec<Run>, NeedChunk> {
        let Window { cursor, end } = window;
        let chunks = end.div_ceil(CHUNK_BLOCKS).min(self.free.len() as u64);
        let start_chunk = chunk_of(cursor.min(end.saturating_sub(1)));
        let mut out: Vec<Run> = Vec::new();
        let mut got = 0;
        let mut looked = 0;
        // The run being extended: it may cross chunk boundaries.
        let mut current: Option<Run> = None;
        for k in 0..=chunks {
            let idx = (start_chunk + k) % chunks.max(1);
            // Wrapping back to the start chunk covers its part before the
            // cursor.
            let (from, to) = if k == 0 {
                (cursor.max(self.base), ((idx + 1) * CHUNK_BLOCKS).min(end))
            } else if k == chunks {
                ((idx * CHUNK_BLOCKS).max(self.base), cursor.min(end))
            } else {
                (
                    (idx * CHUNK_BLOCKS).max(self.base),
                    ((idx + 1) * CHUNK_BLOCKS).min(end),
                )
            };
            if idx == 0 && k > 0 {
                // Runs do not wrap around the end of the file.
                if let Some(r) = current.take() {
                    Self::keep(&mut out, &mut got, r, n, min);
                }
            }
            if from >= to || self.free[idx as usize] == 0 {
                if let Some(r) = current.take() {
                    Self::keep(&mut out, &mut got, r, n, min);
                }
                continue;
            }
            looked += 1;
            if looked > chunks_limit {
                if one {
                    return Ok(Vec::new());
                }
                break;
            }
            let c = self.chunk(idx)?;
            let busy = &c.busy;
            let mut b = from;
            while b < to {
                let bit = b % CHUNK_BLOCKS;
                let word = busy[(bit / 64) as usize];
                if bit.is_multiple_of(64) && word == u64::MAX && b + 64 <= to {
                    if let Some(r) = current.take() {
                        Self::keep(&mut out, &mut got, r, n, min);
                    }
                    b += 64;
                    continue;
                }
                if word & (1 << (bit % 64)) == 0 {
                    match &mut current {
                        Some(r) if r.end() == b => r.len += 1,
                        _ => {
                            if let Some(r) = current.take() {
                                Self::keep(&mut out, &mut got, r, n, min);
                            }
                            current = Some(Run::new(b, 1));
                        }
                    }
                    if one && current.is_some_and(|r| r.len == n) {
                        return Ok(vec![current.expect("run")]);
                    }
                } else if let Some(r) = current.take() {
                    Self::keep(&mut out, &mut got, r, n, min);
                }
                if !one && got >= n {
                    return Ok(out);
                }
                b += 1;
            }
            if !one && got >= n {
                return Ok(out);
            }
        }
        if let Some(r) = current.take() {
            Self::keep(&mut out, &mut got, r, n, min);
        }
        if one {
            return Ok(Vec::new());
        }
        Ok(out)
    }

    fn keep(out: &mut Vec<Run>, got: &mut u64, r: Run, n: u64, min: u64) {
        if r.len < min || *got >= n {
            return;
        }
        let take = r.len.min(n - *got);
        out.push(Run::new(r.start, take));
        *got += take;
    }

    /// Marks `run` busy; every block of it must be free.
    fn take(&mut self, run: Run) -> Result<(), NeedChunk> {
        self.set(run, true)?;
        self.used += run.len;
        self.cursor = run.end();
        self.written_end = self.written_end.max(run.end());
        Ok(())
    }

    /// Sets or clears the busy bits of `run`, keeping the counts; asserts
    /// that each bit changes (a double allocation or a double free is a
    /// bug). Loads nothing: every chunk must be in memory, else nothing
    /// changes.
    fn set(&mut self, run: Run, busy: bool) -> Result<(), NeedChunk> {
        for idx in chunk_of(run.start)..=chunk_of(run.end() - 1) {
            self.chunk(idx)?;
        }
        for (idx, w, mask) in words(run.start, run.end()) {
            let c = self.chunks.get_mut(&idx).expect("checked above");
            let word = &mut c.busy[w];
            let expect = if busy { 0 } else { mask };
            assert_eq!(
                *word & mask,
                expect,
                "blocks of {run:?} are already {}",
                if busy { "busy" } else { "free" }
            );
            *word ^= mask;
            let f = &mut self.free[idx as usize];
            if busy {
                *f -= mask.count_ones();
            } else {
                *f += mask.count_ones();
            }
        }
        Ok(())
    }

    /// Returns blocks to the free set.
    pub(crate) fn release(&mut self, run: Run) -> Result<(), NeedChunk> {
        debug_assert!(run.start >= self.base && run.end() <= self.end);
        self.set(run, false)?;
        self.used -= run.len;
        self.releases += 1;
        Ok(())
    }

    /// Marks blocks busy that a journal record replayed at open allocated;
    /// false if one of them is not free (the journal and the bitmap
    /// disagree).
    pub(crate) fn mark_busy(&mut self, run: Run) -> Result<bool, NeedChunk> {
        if run.start < self.base || run.end() > self.end {
            return Ok(false);
        }
        for idx in chunk_of(run.start)..=chunk_of(run.end() - 1) {
            self.chunk(idx)?;
        }
        let taken =
            words(run.start, run.end()).any(|(idx, w, mask)| self.chunks[&idx].busy[w] & mask != 0);
        if taken {
            return Ok(false);
        }
        self.set(run, true)?;
        self.used += run.len;
        Ok(true)
    }

    /// The data file now holds `end` blocks.
    pub(crate) fn grown(&mut self, end: u64) {
        if end <= self.end {
            return;
        }
        let old = self.end;
        self.end = end;
        let chunks = end.div_ceil(CHUNK_BLOCKS) as usize;
        self.free.resize(chunks, 0);
        self.persisted_free.resize(chunks, 0);
        for idx in chunk_of(old)..chunks as u64 {
            let lo = old.max(idx * CHUNK_BLOCKS);
            let hi = end.min((idx + 1) * CHUNK_BLOCKS);
            if hi > lo {
                self.free[idx as usize] += (hi - lo) as u32;
                self.persisted_free[idx as usize] += (hi - lo) as u32;
            }
        }
    }

    /// Applies journalled allocations and frees to the persisted images,
    /// in order, and returns every changed chunk's new image. The changed
    /// chunks stay in memory until [`Allocator::unpin`] says the images are
    /// written.
    pub(crate) fn persist(
        &mut self,
        changes: &[BitmapChange],
    ) -> Result<Vec<ChunkImage>, NeedChunk> {
        for change in changes {
            let run = change.run();
            for idx in chunk_of(run.start)..=chunk_of(run.end() - 1) {
                self.chunk(idx)?;
            }
        }
        let mut touched = std::collections::BTreeSet::new();
        for &change in changes {
            let run = change.run();
            for (idx, w, mask) in words(run.start, run.end()) {
                let c = self.chunks.get_mut(&idx).expect("checked above");
                match change {
                    BitmapChange::Alloc(_) => c.persisted[w] |= mask,
                    BitmapChange::Free(_) => c.persisted[w] &= !mask,
                }
                c.pinned = true;
                touched.insert(idx);
            }
        }
        let end = self.end;
        let mut images = Vec::with_capacity(touched.len());
        for idx in touched {
            let c = &self.chunks[&idx];
            let free = count_free(&c.persisted, idx, 0, end);
            self.persisted_free[idx as usize] = free;
            images.push(ChunkImage {
                chunk: idx,
                words: c.persisted.to_vec(),
            });
        }
        self.evict();
        Ok(images)
    }

    /// The images [`Allocator::persist`] returned for `chunks` are in the
    /// metadata store.
    pub(crate) fn unpin(&mut self, chunks: impl IntoIterator<Item = u64>) {
        for idx in chunks {
            if let Some(c) = self.chunks.get_mut(&idx) {
                c.pinned = false;
            }
        }
        self.evict();
    }

    /// The persisted free count of every chunk, for the summary record.
    pub(crate) fn summary(&self) -> &[u32] {
        &self.persisted_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An allocator with every chunk loaded from blank images.
    fn fresh(base: u64, end: u64, cap: u64) -> Allocator {
        let mut a = Allocator::new(base, base, end, cap, Vec::new(), 1 << 20);
        for idx in 0..a.free.len().max(1) as u64 + 64 {
            let image = a.blank_image(idx);
            a.load(idx, image);
        }
        a
    }

    fn runs(p: Placement) -> Vec<Run> {
        match p {
            Placement::Runs(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn grow(a: &mut Allocator, n: u64) -> Vec<Run> {
        match a.allocate(n).unwrap() {
            Placement::Grow(to) => {
                a.grown(to);
                runs(a.allocate(n).unwrap())
            }
            Placement::Runs(r) => r,
            Placement::Full => panic!("full"),
        }
    }

    #[test]
    fn small_requests_reuse_written_blocks_before_the_reserved_tail() {
        let mut a = fresh(8, 8, 1 << 30);
        let first = grow(&mut a, GROW_STEP);
        assert_eq!(first, vec![Run::new(8, GROW_STEP)]);
        // The first grow's blocks are all written now; free some in the
        // middle, then make the file grow a reserved, unwritten tail.
        a.release(Run::new(100, 4)).unwrap();
        a.release(Run::new(5000, 1)).unwrap();
        let big = grow(&mut a, 2 * SMALL);
        assert_eq!(
            big[0].start,
            8 + GROW_STEP,
            "a large request fills the tail"
        );
        let end_of_big = big[0].end();
        let small: Vec<_> = (0..5).flat_map(|_| runs(a.allocate(1).unwrap())).collect();
        assert_eq!(
            small.iter().map(|r| r.start).collect::<Vec<_>>(),
            vec![100, 101, 102, 103, 5000],
            "small requests take the freed, written blocks first"
        );
        assert_eq!(
            runs(a.allocate(1).unwrap()),
            vec![Run::new(end_of_big, 1)],
            "then the tail, right after the large request"
        );
        assert_eq!(
            runs(a.allocate(1).unwrap()),
            vec![Run::new(end_of_big + 1, 1)],
            "a miss is not searched again until something is released"
        );
        a.release(Run::new(7000, 1)).unwrap();
        assert_eq!(runs(a.allocate(1).unwrap()), vec![Run::new(7000, 1)]);
    }

    #[test]
    fn sequential_allocations_are_contiguous_and_skip_the_journal() {
        let mut a = fresh(10, 10, 1 << 30);
        let r1 = grow(&mut a, 10);
        let r2 = runs(a.allocate(5).unwrap());
        assert_eq!(r1, vec![Run::new(10, 10)]);
        assert_eq!(r2, vec![Run::new(20, 5)]);
        assert_eq!(a.used(), 15);
    }

    #[test]
    fn runs_cross_chunk_boundaries() {
        let mut a = fresh(0, 0, 1 << 30);
        grow(&mut a, CHUNK_BLOCKS - 10);
        let r = grow(&mut a, 100);
        assert_eq!(r, vec![Run::new(CHUNK_BLOCKS - 10, 100)]);
    }

    #[test]
    fn fragments_when_needed_and_refuses_beyond_cap() {
        let mut a = fresh(0, 6, 6);
        let all = runs(a.allocate(6).unwrap());
        assert_eq!(all, vec![Run::new(0, 6)]);
        for b in [1, 3, 5] {
            a.release(Run::new(b, 1)).unwrap();
        }
        let got = runs(a.allocate(3).unwrap());
        assert_eq!(got.iter().map(|r| r.len).sum::<u64>(), 3);
        assert_eq!(a.allocate(1).unwrap(), Placement::Full);
        a.release(Run::new(3, 1)).unwrap();
        assert_eq!(runs(a.allocate(1).unwrap()), vec![Run::new(3, 1)]);
    }

    #[test]
    fn large_requests_avoid_scattered_single_blocks() {
        let mut a = fresh(0, 128, 1 << 20);
        runs(a.allocate(128).unwrap());
        for b in (1..128).step_by(2) {
            a.release(Run::new(b, 1)).unwrap();
        }
        // 64 free blocks, none adjacent: grows rather than scatter.
        assert!(matches!(a.allocate(64).unwrap(), Placement::Grow(_)));
        // Small requests take what is free without growing.
        for _ in 0..64 {
            assert!(matches!(a.allocate(1).unwrap(), Placement::Runs(_)));
        }
    }

    #[test]
    fn large_requests_split_over_big_pieces() {
        let mut a = fresh(0, 256, 1 << 20);
        runs(a.allocate(256).unwrap());
        a.release(Run::new(0, 64)).unwrap();
        a.release(Run::new(128, 64)).unwrap();
        let got = runs(a.allocate(100).unwrap());
        assert_eq!(got.iter().map(|r| r.len).sum::<u64>(), 100);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_full_pool_scatters_as_a_last_resort() {
        let mut a = fresh(0, 16, 16);
        runs(a.allocate(16).unwrap());
        for b in (0..16).step_by(2) {
            a.release(Run::new(b, 1)).unwrap();
        }
        let got = runs(a.allocate(8).unwrap());
        assert_eq!(got.len(), 8);
        assert_eq!(a.allocate(1).unwrap(), Placement::Full);
    }

    #[test]
    fn missing_chunks_are_asked_for_and_nothing_changes() {
        let mut a = Allocator::new(0, 0, 3 * CHUNK_BLOCKS, 1 << 30, Vec::new(), 8);
        assert_eq!(a.allocate(1), Err(NeedChunk(0)));
        assert_eq!(a.used(), 0);
        let image = a.blank_image(0);
        a.load(0, image);
        assert_eq!(runs(a.allocate(1).unwrap()), vec![Run::new(0, 1)]);
        assert_eq!(a.release(Run::new(CHUNK_BLOCKS * 2, 1)), Err(NeedChunk(2)));
    }

    #[test]
    fn persisted_images_follow_the_journal_and_agreeing_chunks_evict() {
        let mut a = Allocator::new(0, 0, 8 * CHUNK_BLOCKS, 1 << 30, Vec::new(), 4);
        for idx in 0..6 {
            let image = a.blank_image(idx);
            a.load(idx, image);
        }
        assert!(a.chunks.len() <= 4, "agreeing chunks are evicted");
        for idx in 0..8 {
            if !a.chunks.contains_key(&idx) {
                let image = a.blank_image(idx);
                a.load(idx, image);
            }
        }
        a.cursor = 0;
        let r = runs(a.allocate(3).unwrap());
        let images = a
            .persist(&[
                BitmapChange::Alloc(r[0]),
                BitmapChange::Free(Run::new(r[0].start, 1)),
            ])
            .unwrap();
        assert_eq!(images.len(), 1);
        let image = &images[0];
        assert_eq!(image.chunk, chunk_of(r[0].start));
        assert_eq!(a.summary()[image.chunk as usize] as u64, CHUNK_BLOCKS - 2);
        assert_eq!(image.words[0] & 0b111, 0b110);
    }

    #[test]
    fn chunks_being_written_are_not_evicted() {
        let mut a = Allocator::new(0, 0, 8 * CHUNK_BLOCKS, 1 << 30, Vec::new(), 4);
        let image = a.blank_image(5);
        a.load(5, image);
        a.cursor = 5 * CHUNK_BLOCKS;
        a.small_cursor = a.cursor;
        let r = runs(a.allocate(2).unwrap());
        a.release(r[0]).unwrap();
        // The free is journalled: the checkpoint's image of chunk 5 now
        // agrees with `busy`, but the metadata store has the old one.
        a.persist(&[BitmapChange::Alloc(r[0]), BitmapChange::Free(r[0])])
            .unwrap();
        a.cursor = 0;
        a.small_cursor = 0;
        for idx in [0, 1, 2, 3, 4, 6] {
            let image = a.blank_image(idx);
            a.load(idx, image);
        }
        assert!(a.chunks.contains_key(&5), "pinned until written");
        a.unpin([5]);
        let image = a.blank_image(7);
        a.load(7, image);
        assert!(!a.chunks.contains_key(&5), "the oldest goes once written");
    }

    #[test]
    fn replayed_allocations_must_be_free() {
        let mut a = fresh(4, 100, 100);
        assert!(a.mark_busy(Run::new(10, 5)).unwrap());
        assert!(!a.mark_busy(Run::new(12, 1)).unwrap(), "already busy");
        assert!(!a.mark_busy(Run::new(0, 1)).unwrap(), "reserved");
        assert!(!a.mark_busy(Run::new(99, 5)).unwrap(), "past the end");
        assert_eq!(a.used(), 5);
    }
}
