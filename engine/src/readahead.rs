//! Read-ahead for a sequential stream of reads on one volume handle (one
//! NBD connection).
//!
//! Once [`STREAK`] reads in a row belong to the stream, each read starts
//! reads of the chunks after it, each as long as the read itself, up to
//! [`WINDOW`] bytes past the stream's end (at most [`MAX_CHUNKS`] chunks).
//! A later read of exactly one chunk's range takes that chunk's data
//! instead of going to the disk. The disk so sees the client's requests
//! plus a window's worth more: with a client that keeps 8 requests of
//! 1 MiB in flight, the disk otherwise idles between a reply and the
//! request that follows it.
//!
//! # When a chunk's bytes are the right ones
//!
//! A chunk records, under the pool lock, the pool blocks its range mapped
//! to and the allocator's release count. Redirect-on-write never rewrites a
//! block while anything maps it, and a block is handed out again only after
//! it has been released. So while the release count is unchanged, the
//! chunk's blocks hold what they held when it was resolved, and a read that
//! maps the same range to the same blocks may use its bytes. Once the read
//! has resolved its own mapping, its [`crate::volume`] read guard keeps
//! those blocks from being released until it is done. Checksums are
//! verified as on every read.

use std::collections::VecDeque;

use crate::io::Pending;

/// How far past the newest read the stream is read ahead.
const WINDOW: u64 = 8 << 20;
/// Most chunks a stream keeps (bounds the I/Os that small reads start).
const MAX_CHUNKS: usize = 32;
/// Reads in a row that belong to the stream before it is read ahead.
const STREAK: u32 = 2;
/// How many read lengths away from the stream's end a read may start and
/// still belong to it (requests in flight arrive in any order).
const SLACK: u64 = 32;

/// One range read ahead: volume bytes `[offset, offset + len)`, which
/// mapped to pool blocks `pblock..` with checksums `crcs` when the
/// allocator had made `releases` releases.
pub(crate) struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub pblock: u64,
    pub crcs: Vec<u32>,
    pub releases: u64,
    pub read: Pending,
}

/// The stream state of one handle.
#[derive(Default)]
pub(crate) struct ReadAhead {
    /// The furthest end of a read in the stream.
    next: u64,
    /// Reads in a row that belonged to the stream.
    streak: u32,
    /// Where the next chunk starts.
    frontier: u64,
    /// Chunks in flight or done, by offset.
    chunks: VecDeque<Chunk>,
}

impl ReadAhead {
    /// Notes a read of `[offset, offset + len)` on a volume of `size`
    /// bytes. Returns the chunk read ahead for exactly that range, if any,
    /// and where the chunks to start now begin (each `len` bytes; the
    /// caller resolves them and [`ReadAhead::add`]s those it starts).
    /// Only whole-block reads are read ahead.
    ///
    /// A client's requests in flight may reach here in any order, so a
    /// read belongs to the stream when it starts within [`SLACK`] reads of
    /// its lengths from the stream's furthest end, not only exactly there.
    pub(crate) fn observe(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
        block: u64,
    ) -> (Option<Chunk>, Vec<u64>) {
        let slack = len.saturating_mul(SLACK);
        let end = offset + len;
        if offset.abs_diff(self.next) <= slack {
            self.streak = self.streak.saturating_add(1);
            self.next = self.next.max(end);
        } else {
            self.streak = 0;
            self.next = end;
            self.frontier = 0;
            self.chunks.clear();
        }
        let hit = self
            .chunks
            .iter()
            .position(|c| c.offset == offset && c.len == len)
            .and_then(|i| self.chunks.remove(i));
        // Chunks the stream has left well behind will not be read.
        let behind = self.next.saturating_sub(slack);
        self.chunks.retain(|c| c.offset + c.len > behind);
        let mut starts = Vec::new();
        if self.streak >= STREAK
            && len > 0
            && offset.is_multiple_of(block)
            && len.is_multiple_of(block)
        {
            self.frontier = self.frontier.max(self.next);
            let limit = size.min(self.next + WINDOW);
            while self.frontier + len <= limit && self.chunks.len() + starts.len() < MAX_CHUNKS {
                starts.push(self.frontier);
                self.frontier += len;
            }
        }
        (hit, starts)
    }

    pub(crate) fn add(&mut self, chunk: Chunk) {
        self.chunks.push_back(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{AlignedBuf, Backend, IoMode};

    const MIB: u64 = 1 << 20;

    fn chunk(io: &Backend, offset: u64, len: u64) -> Chunk {
        Chunk {
            offset,
            len,
            pblock: offset / 4096,
            crcs: Vec::new(),
            releases: 0,
            read: io.start_read(0, AlignedBuf::new(4096)),
        }
    }

    /// Observes a read and starts every chunk it asks for, as
    /// `Volume::read_ahead` does; returns what `observe` returned.
    fn feed(
        ra: &mut ReadAhead,
        io: &Backend,
        offset: u64,
        len: u64,
        size: u64,
    ) -> (Option<Chunk>, Vec<u64>) {
        let (hit, starts) = ra.observe(offset, len, size, 4096);
        for &s in &starts {
            ra.add(chunk(io, s, len));
        }
        (hit, starts)
    }

    fn backend() -> (tempfile::TempDir, Backend) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        file.set_len(4096).unwrap();
        (dir, Backend::start(file, IoMode::Sync, None).unwrap())
    }

    #[test]
    fn reads_ahead_after_a_streak_up_to_the_window() {
        let (_dir, io) = backend();
        let mut ra = ReadAhead::default();
        let (hit, starts) = ra.observe(0, MIB, 64 * MIB, 4096);
        assert!(hit.is_none() && starts.is_empty(), "one read is no stream");
        let (_, starts) = feed(&mut ra, &io, MIB, MIB, 64 * MIB);
        let expected: Vec<u64> = (2..10).map(|i| i * MIB).collect();
        assert_eq!(starts, expected, "a window past the read's end");
        let (hit, starts) = ra.observe(2 * MIB, MIB, 64 * MIB, 4096);
        assert_eq!(hit.map(|c| c.offset), Some(2 * MIB));
        assert_eq!(starts, vec![10 * MIB], "one more chunk keeps the window");
    }

    #[test]
    fn small_reads_start_a_bounded_number_of_chunks() {
        let mut ra = ReadAhead::default();
        ra.observe(0, 4096, 64 * MIB, 4096);
        let (_, starts) = ra.observe(4096, 4096, 64 * MIB, 4096);
        assert_eq!(starts.len(), MAX_CHUNKS);
    }

    #[test]
    fn stops_at_the_end_and_restarts_on_a_jump() {
        let (_dir, io) = backend();
        let mut ra = ReadAhead::default();
        ra.observe(0, MIB, 4 * MIB, 4096);
        let (_, starts) = feed(&mut ra, &io, MIB, MIB, 4 * MIB);
        assert_eq!(starts, vec![2 * MIB, 3 * MIB], "nothing past the end");
        let (hit, starts) = ra.observe(3 * MIB, 4096, 4 * MIB, 4096);
        assert!(hit.is_none() && starts.is_empty(), "a jump ends the stream");
        assert!(ra.chunks.is_empty(), "and drops its chunks");
    }

    #[test]
    fn requests_out_of_order_stay_in_the_stream() {
        let (_dir, io) = backend();
        let mut ra = ReadAhead::default();
        for i in [0, 2, 1, 3] {
            feed(&mut ra, &io, i * MIB, MIB, 64 * MIB);
        }
        assert_eq!(ra.chunks.front().map(|c| c.offset), Some(4 * MIB));
        let (hit, _) = ra.observe(5 * MIB, MIB, 64 * MIB, 4096);
        assert_eq!(hit.map(|c| c.offset), Some(5 * MIB));
        let (hit, _) = ra.observe(4 * MIB, MIB, 64 * MIB, 4096);
        assert_eq!(
            hit.map(|c| c.offset),
            Some(4 * MIB),
            "a late request still finds its chunk"
        );
    }

    #[test]
    fn a_chunk_serves_only_its_exact_range() {
        let (_dir, io) = backend();
        let mut ra = ReadAhead::default();
        ra.observe(0, MIB, 64 * MIB, 4096);
        feed(&mut ra, &io, MIB, MIB, 64 * MIB);
        let (hit, _) = ra.observe(2 * MIB, MIB / 2, 64 * MIB, 4096);
        assert!(hit.is_none(), "a shorter read does not take the chunk");
        let (_, starts) = ra.observe(3 * MIB, 4096 + 1, 64 * MIB, 4096);
        assert!(
            starts.is_empty(),
            "reads that are not whole blocks are not read ahead"
        );
    }
}
