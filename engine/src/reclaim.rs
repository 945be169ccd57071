//! Deferred free of pool blocks.
//!
//! A block that a map change stops referencing may still be
//!
//! 1. referenced by the last *committed* metadata (a crash would bring that
//!    mapping back), and
//! 2. under an in-flight read that resolved its mapping before the change.
//!
//! So it goes back to the allocator only after the commit that drops it is
//! durable **and** every read that began in or before the epoch of the free
//! has finished. Reads register in the current epoch; each commit starts a
//! new epoch.

use std::collections::BTreeMap;

use crate::alloc::Run;

#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    epoch: u64,
    /// Reads in flight, by the epoch they started in.
    reads: BTreeMap<u64, usize>,
    /// Freed since the last commit began: `(epoch, run)`.
    pending: Vec<(u64, Run)>,
    /// Freed by a durable commit, waiting for older reads to finish.
    committed: Vec<(u64, Run)>,
    /// Blocks in `pending`.
    pending_blocks: u64,
    /// An early commit was asked for since the last one began.
    asked: bool,
}

impl Reclaim {
    pub fn begin_read(&mut self) -> u64 {
        *self.reads.entry(self.epoch).or_default() += 1;
        self.epoch
    }

    /// Ends a read; returns runs that became free.
    pub fn end_read(&mut self, epoch: u64) -> Vec<Run> {
        if let Some(n) = self.reads.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.reads.remove(&epoch);
            }
        }
        self.releasable()
    }

    pub fn free(&mut self, run: Run) {
        self.pending_blocks += run.1;
        // Overwrites free runs block by block: extend the last run.
        match self.pending.last_mut() {
            Some((epoch, (start, len))) if *epoch == self.epoch && *start + *len == run.0 => {
                *len += run.1
            }
            _ => self.pending.push((self.epoch, run)),
        }
    }

    /// True once per commit cycle, when at least `threshold` blocks wait
    /// for the next commit: until it runs, new writes take fresh space
    /// instead of reusing them.
    pub fn wants_commit(&mut self, threshold: u64) -> bool {
        if self.asked || self.pending_blocks < threshold {
            return false;
        }
        self.asked = true;
        true
    }

    /// A commit is starting: frees so far belong to it. Returns its token.
    pub fn begin_commit(&mut self) -> Vec<(u64, Run)> {
        self.epoch += 1;
        self.pending_blocks = 0;
        self.asked = false;
        std::mem::take(&mut self.pending)
    }

    /// The commit that took `freed` is durable; returns runs now free.
    pub fn commit_done(&mut self, freed: Vec<(u64, Run)>) -> Vec<Run> {
        self.committed.extend(freed);
        self.releasable()
    }

    /// The commit that took `freed` failed: its frees wait for the next one.
    pub fn commit_failed(&mut self, freed: Vec<(u64, Run)>) {
        self.pending_blocks += freed.iter().map(|(_, r)| r.1).sum::<u64>();
        self.pending.extend(freed);
    }

    fn releasable(&mut self) -> Vec<Run> {
        let oldest_read = self.reads.keys().next().copied().unwrap_or(u64::MAX);
        let (ready, wait): (Vec<_>, Vec<_>) = self
            .committed
            .drain(..)
            .partition(|&(e, _)| e < oldest_read);
        self.committed = wait;
        ready.into_iter().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_commit_and_older_reads() {
        let mut r = Reclaim::default();
        let read = r.begin_read();
        r.free((7, 1));
        assert!(r.end_read(read).is_empty(), "not committed yet");
        let read = r.begin_read();
        let token = r.begin_commit();
        assert!(
            r.commit_done(token).is_empty(),
            "a read from the free's epoch is running"
        );
        assert_eq!(r.end_read(read), vec![(7, 1)]);
    }

    #[test]
    fn newer_reads_do_not_hold_older_frees() {
        let mut r = Reclaim::default();
        r.free((1, 2));
        let token = r.begin_commit();
        let read = r.begin_read();
        assert_eq!(r.commit_done(token), vec![(1, 2)]);
        assert!(r.end_read(read).is_empty());
    }

    #[test]
    fn asks_for_a_commit_once_per_cycle() {
        let mut r = Reclaim::default();
        r.free((0, 3));
        assert!(!r.wants_commit(4));
        r.free((10, 1));
        assert!(r.wants_commit(4));
        r.free((20, 8));
        assert!(!r.wants_commit(4), "already asked this cycle");
        let token = r.begin_commit();
        assert!(!r.wants_commit(4), "nothing pending after the commit began");
        r.commit_failed(token);
        assert!(r.wants_commit(4), "a failed commit's frees count again");
    }

    #[test]
    fn adjacent_frees_of_one_epoch_coalesce() {
        let mut r = Reclaim::default();
        for b in 10..14 {
            r.free((b, 1));
        }
        r.free((20, 2));
        let token = r.begin_commit();
        r.free((22, 1));
        assert_eq!(r.commit_done(token), vec![(10, 4), (20, 2)]);
        let token = r.begin_commit();
        assert_eq!(r.commit_done(token), vec![(22, 1)]);
    }

    #[test]
    fn failed_commit_keeps_frees() {
        let mut r = Reclaim::default();
        r.free((3, 1));
        let token = r.begin_commit();
        r.commit_failed(token);
        let token = r.begin_commit();
        assert_eq!(r.commit_done(token), vec![(3, 1)]);
    }
}
