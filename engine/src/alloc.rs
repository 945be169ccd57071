//! The block allocator: free extents of the data file, in 4 KiB blocks.
//!
//! It is never persisted. At open it is rebuilt from the committed maps
//! (every block a committed mapping references is used, everything else up
//! to the end of the file is free), so a crash cannot leak space or hand out
//! a block that committed metadata still references.

use std::collections::BTreeMap;

/// The data file grows in steps of this many blocks (64 MiB), so extending
/// writes are rare and allocations stay contiguous.
const GROW_STEP: u64 = 16 * 1024;
/// Smallest free extent (256 KiB) a large allocation is split over before
/// the file grows instead.
const MIN_PIECE: u64 = 64;

/// A run of physical blocks: `(start, len)`.
pub(crate) type Run = (u64, u64);

#[derive(Debug)]
pub(crate) struct Allocator {
    /// Free extents, start -> len, coalesced (no two touch).
    free: BTreeMap<u64, u64>,
    /// Blocks the data file currently holds.
    end: u64,
    /// Most blocks the file may hold.
    cap: u64,
    /// Next-fit hint: allocation starts looking here, so sequential writes
    /// land sequentially.
    cursor: u64,
    /// Blocks handed out and not yet freed.
    used: u64,
    /// Calls to [`Allocator::release`] so far: while it stays the same, no
    /// block that was in use has become free, so none can have been handed
    /// out again (the read-ahead relies on this).
    releases: u64,
}

impl Allocator {
    /// Rebuilds the allocator from the sorted, distinct blocks in use.
    pub fn new(used_sorted: &[u64], file_blocks: u64, cap: u64) -> Self {
        let end = file_blocks.max(used_sorted.last().map_or(0, |b| b + 1));
        let mut free = BTreeMap::new();
        let mut next = 0;
        for &b in used_sorted {
            if b > next {
                free.insert(next, b - next);
            }
            next = b + 1;
        }
        if end > next {
            free.insert(next, end - next);
        }
        Allocator {
            free,
            end,
            cap: cap.max(end),
            cursor: 0,
            used: used_sorted.len() as u64,
            releases: 0,
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn releases(&self) -> u64 {
        self.releases
    }

    /// Hands out `n` blocks, contiguous when possible. Returns the runs and
    /// whether the file must first be extended to `self.end()` blocks.
    /// On failure nothing changes.
    ///
    /// Preference order: one free extent (next-fit from the cursor); a few
    /// free extents of at least [`MIN_PIECE`] blocks each; the grown tail
    /// of the file; and only when the file cannot grow enough, any free
    /// blocks at all. Overwrites free single blocks all over the file, so
    /// without the middle steps a large write after random ones would turn
    /// into hundreds of 4 KiB I/Os, and so would every later read of it.
    pub fn allocate(&mut self, n: u64) -> Option<(Vec<Run>, bool)> {
        if n == 0 {
            return Some((Vec::new(), false));
        }
        if let Some(start) = self.find_contiguous(n) {
            self.take(start, n);
            return Some((vec![(start, n)], false));
        }
        if let Some(runs) = self.take_pieces(n, n.min(MIN_PIECE)) {
            return Some((runs, false));
        }
        let free_total: u64 = self.free.values().sum();
        let room = self.cap - self.end;
        if free_total + room < n {
            return None;
        }
        let need = n - self.tail_free();
        let grow = need.max(GROW_STEP).min(room);
        if grow > 0 {
            let old_end = self.end;
            self.end += grow;
            self.insert_free(old_end, grow);
        }
        let grown = grow > 0;
        if let Some(start) = self.find_contiguous(n) {
            self.take(start, n);
            return Some((vec![(start, n)], grown));
        }
        let runs = self
            .take_pieces(n, 1)
            .expect("free space plus growth was counted");
        Some((runs, grown))
    }

    /// Takes `n` blocks from free extents of at least `min` blocks, in
    /// address order from the cursor (wrapping); `None`, changing nothing,
    /// if they do not add up to `n`.
    fn take_pieces(&mut self, n: u64, min: u64) -> Option<Vec<Run>> {
        let mut picked = Vec::new();
        let mut need = n;
        let candidates = self
            .free
            .range(self.cursor..)
            .chain(self.free.range(..self.cursor));
        for (&start, &len) in candidates {
            if len < min {
                continue;
            }
            let take = len.min(need);
            picked.push((start, take));
            need -= take;
            if need == 0 {
                break;
            }
        }
        if need > 0 {
            return None;
        }
        for &(start, len) in &picked {
            self.take(start, len);
        }
        Some(picked)
    }

    /// Undoes growth past `end` blocks (the file could not be extended).
    /// The blocks there must all be free.
    pub fn shrink(&mut self, end: u64) {
        if end >= self.end {
            return;
        }
        let (&start, &len) = self
            .free
            .iter()
            .next_back()
            .expect("the grown tail is free");
        debug_assert!(
            start <= end && start + len == self.end,
            "the grown tail is free"
        );
        self.free.remove(&start);
        if start < end {
            self.free.insert(start, end - start);
        }
        self.end = end;
        self.cursor = self.cursor.min(end);
    }

    /// Returns blocks to the free set.
    pub fn release(&mut self, start: u64, len: u64) {
        debug_assert!(start + len <= self.end);
        debug_assert!(self.used >= len);
        self.used -= len;
        self.releases += 1;
        self.insert_free(start, len);
    }

    /// Returns each of `runs` to the free set.
    pub fn release_runs(&mut self, runs: &[Run]) {
        for &(start, len) in runs {
            self.release(start, len);
        }
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        let mut start = start;
        let mut len = len;
        if let Some((&prev, &plen)) = self.free.range(..start).next_back() {
            debug_assert!(prev + plen <= start, "double free of block {start}");
            if prev + plen == start {
                self.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(nlen) = self.free.remove(&(start + len)) {
            len += nlen;
        }
        self.free.insert(start, len);
    }

    fn tail_free(&self) -> u64 {
        match self.free.iter().next_back() {
            Some((&s, &l)) if s + l == self.end => l,
            _ => 0,
        }
    }

    fn find_contiguous(&self, n: u64) -> Option<u64> {
        let after = self.free.range(self.cursor..).find(|(_, &l)| l >= n);
        let before = || self.free.range(..self.cursor).find(|(_, &l)| l >= n);
        // An extent that straddles the cursor starts before it.
        let straddle = self
            .free
            .range(..self.cursor)
            .next_back()
            .filter(|(&s, &l)| s + l > self.cursor && s + l - self.cursor >= n)
            .map(|_| self.cursor);
        straddle
            .or_else(|| after.map(|(&s, _)| s))
            .or_else(|| before().map(|(&s, _)| s))
    }

    /// Marks `[start, start+n)` used; it must lie inside one free extent.
    fn take(&mut self, start: u64, n: u64) {
        let (&fs, &fl) = self
            .free
            .range(..=start)
            .next_back()
            .expect("inside a free extent");
        debug_assert!(fs <= start && start + n <= fs + fl);
        self.free.remove(&fs);
        if start > fs {
            self.free.insert(fs, start - fs);
        }
        if fs + fl > start + n {
            self.free.insert(start + n, fs + fl - start - n);
        }
        self.used += n;
        self.cursor = start + n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(runs: &[Run]) -> u64 {
        runs.iter().map(|r| r.1).sum()
    }

    #[test]
    fn sequential_allocations_are_contiguous() {
        let mut a = Allocator::new(&[], 0, 1 << 20);
        let (r1, grew) = a.allocate(10).unwrap();
        assert!(grew);
        let (r2, grew) = a.allocate(5).unwrap();
        assert!(!grew);
        assert_eq!(r1, vec![(0, 10)]);
        assert_eq!(r2, vec![(10, 5)]);
        assert_eq!(a.used(), 15);
    }

    #[test]
    fn rebuild_from_used_blocks() {
        let a = Allocator::new(&[0, 1, 5, 9], 12, 100);
        assert_eq!(a.used(), 4);
        let free: Vec<_> = a.free.iter().map(|(&s, &l)| (s, l)).collect();
        assert_eq!(free, vec![(2, 3), (6, 3), (10, 2)]);
    }

    #[test]
    fn fragments_when_needed_and_refuses_beyond_cap() {
        let mut a = Allocator::new(&[1, 3, 5], 6, 6);
        let (runs, grew) = a.allocate(3).unwrap();
        assert!(!grew);
        assert_eq!(total(&runs), 3);
        assert!(a.allocate(1).is_none());
        a.release(3, 1);
        assert_eq!(a.allocate(1).unwrap().0, vec![(3, 1)]);
    }

    #[test]
    fn release_coalesces() {
        let mut a = Allocator::new(&[], 0, 64);
        a.allocate(8).unwrap();
        a.release(2, 2);
        a.release(4, 2);
        a.release(0, 2);
        assert_eq!(a.free.get(&0), Some(&6));
        assert_eq!(a.used(), 2);
    }

    #[test]
    fn large_requests_avoid_scattered_single_blocks() {
        // Every other block free: 64 free blocks, none adjacent.
        let used: Vec<u64> = (0..128).step_by(2).collect();
        let mut a = Allocator::new(&used, 128, 1 << 20);
        let (runs, grew) = a.allocate(64).unwrap();
        assert!(grew, "grows rather than scatter a large write");
        // Block 127 is free and adjoins the grown tail.
        assert_eq!(runs, vec![(127, 64)]);
        // Small requests take what is free without growing.
        for _ in 0..64 {
            assert!(!a.allocate(1).unwrap().1);
        }
    }

    #[test]
    fn large_requests_split_over_big_pieces() {
        // Two free extents of 64 blocks, neither big enough alone.
        let used: Vec<u64> = (64..128).chain(192..256).collect();
        let mut a = Allocator::new(&used, 256, 1 << 20);
        let (runs, grew) = a.allocate(100).unwrap();
        assert!(!grew);
        assert_eq!(total(&runs), 100);
        assert_eq!(runs.len(), 2);
    }

    #[test]
    fn a_full_pool_scatters_as_a_last_resort() {
        let used: Vec<u64> = (0..16).step_by(2).collect();
        let mut a = Allocator::new(&used, 16, 16);
        let (runs, grew) = a.allocate(8).unwrap();
        assert!(!grew);
        assert_eq!(runs.len(), 8);
        assert!(a.allocate(1).is_none());
    }

    #[test]
    fn shrink_undoes_growth() {
        let mut a = Allocator::new(&[0, 1], 4, 1 << 20);
        let (runs, grew) = a.allocate(8).unwrap();
        assert!(grew);
        a.release_runs(&runs);
        a.shrink(4);
        assert_eq!(a.end(), 4);
        assert_eq!(
            a.free.iter().map(|(&s, &l)| (s, l)).collect::<Vec<_>>(),
            vec![(2, 2)]
        );
        assert_eq!(a.allocate(2).unwrap(), (vec![(2, 2)], false));
    }

    #[test]
    fn growth_is_capped() {
        let mut a = Allocator::new(&[], 0, 100);
        let (runs, grew) = a.allocate(100).unwrap();
        assert!(grew);
        assert_eq!(runs, vec![(0, 100)]);
        assert_eq!(a.end(), 100);
        assert!(a.allocate(1).is_none());
    }
}
