//! Deferred free of pool blocks and map nodes.
//!
//! A block that a map change stops referencing may still be
//!
//! 1. referenced by the last *durable* metadata (a crash would bring that
//!    mapping back), and
//! 2. under an in-flight read that resolved its mapping before the change.
//!
//! So it goes back to the allocator only after the commit that drops it is
//! durable **and** every read that began in or before the epoch of the free
//! has finished. Reads register in the current epoch; each commit starts a
//! new epoch.
//!
//! Map nodes follow the same rule for the second reason: a checkpoint that
//! replaces a node publishes the new roots, but a read that started before
//! may still walk the old ones, so the old node is deleted from the
//! metadata store only once every read from that epoch or before is done.

use std::collections::BTreeMap;

use crate::extent::Run;

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
    /// Nodes no published root reaches, by the epoch they were retired in.
    nodes: Vec<(u64, u64)>,
}

impl Reclaim {
    pub(crate) fn begin_read(&mut self) -> u64 {
        *self.reads.entry(self.epoch).or_default() += 1;
        self.epoch
    }

    /// Ends a read; returns runs that became free.
    pub(crate) fn end_read(&mut self, epoch: u64) -> Vec<Run> {
        if let Some(n) = self.reads.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                self.reads.remove(&epoch);
            }
        }
        self.releasable()
    }

    pub(crate) fn free(&mut self, run: Run) {
        self.pending_blocks += run.len;
        // Overwrites free runs block by block: extend the last run.
        match self.pending.last_mut() {
            Some((epoch, last)) if *epoch == self.epoch && last.end() == run.start => {
                last.len += run.len
            }
            _ => self.pending.push((self.epoch, run)),
        }
    }

    /// Blocks freed since the last commit began.
    pub(crate) fn pending_blocks(&self) -> u64 {
        self.pending_blocks
    }

    /// A commit is starting: frees so far belong to it. Returns its token.
    pub(crate) fn begin_commit(&mut self) -> Vec<(u64, Run)> {
        self.epoch += 1;
        self.pending_blocks = 0;
        std::mem::take(&mut self.pending)
    }

    /// The commit that took `freed` is durable; returns runs now free.
    pub(crate) fn commit_done(&mut self, freed: Vec<(u64, Run)>) -> Vec<Run> {
        self.committed.extend(freed);
        self.releasable()
    }

    /// Runs whose freeing is already durable (a checkpoint wrote it):
    /// they wait only for the reads of this epoch and before. Returns runs
    /// now free.
    pub(crate) fn free_durable(&mut self, runs: &[Run]) -> Vec<Run> {
        let epoch = self.epoch;
        self.committed.extend(runs.iter().map(|&r| (epoch, r)));
        self.epoch += 1;
        self.releasable()
    }

    fn oldest_read(&self) -> u64 {
        self.reads.keys().next().copied().unwrap_or(u64::MAX)
    }

    fn releasable(&mut self) -> Vec<Run> {
        let oldest = self.oldest_read();
        if self.committed.iter().all(|&(e, _)| e >= oldest) {
            return Vec::new();
        }
        let (ready, wait): (Vec<_>, Vec<_>) =
            self.committed.drain(..).partition(|&(e, _)| e < oldest);
        self.committed = wait;
        ready.into_iter().map(|(_, r)| r).collect()
    }

    /// Nodes a just-published checkpoint stopped using.
    pub(crate) fn retire_nodes(&mut self, ids: impl IntoIterator<Item = u64>) {
        let epoch = self.epoch;
        self.nodes.extend(ids.into_iter().map(|id| (epoch, id)));
        // Reads starting from now on see the new roots only.
        self.epoch += 1;
    }

    /// Retired nodes no read can reach any more: they may be deleted.
    pub(crate) fn take_dead_nodes(&mut self) -> Vec<u64> {
        let oldest = self.oldest_read();
        let (ready, wait): (Vec<_>, Vec<_>) = self.nodes.drain(..).partition(|&(e, _)| e < oldest);
        self.nodes = wait;
        ready.into_iter().map(|(_, id)| id).collect()
    }

    /// Gives back nodes taken by [`Reclaim::take_dead_nodes`] whose
    /// deletion did not happen (the checkpoint failed).
    pub(crate) fn keep_dead_nodes(&mut self, ids: Vec<u64>) {
        self.nodes.extend(ids.into_iter().map(|id| (0, id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_commit_and_older_reads() {
        let mut r = Reclaim::default();
        let read = r.begin_read();
        r.free(Run::new(7, 1));
        assert!(r.end_read(read).is_empty(), "not committed yet");
        let read = r.begin_read();
        let token = r.begin_commit();
        assert!(
            r.commit_done(token).is_empty(),
            "a read from the free's epoch is running"
        );
        assert_eq!(r.end_read(read), vec![Run::new(7, 1)]);
    }

    #[test]
    fn newer_reads_do_not_hold_older_frees() {
        let mut r = Reclaim::default();
        r.free(Run::new(1, 2));
        let token = r.begin_commit();
        let read = r.begin_read();
        assert_eq!(r.commit_done(token), vec![Run::new(1, 2)]);
        assert!(r.end_read(read).is_empty());
    }

    #[test]
    fn adjacent_frees_of_one_epoch_coalesce() {
        let mut r = Reclaim::default();
        for b in 10..14 {
            r.free(Run::new(b, 1));
        }
        r.free(Run::new(20, 2));
        let token = r.begin_commit();
        r.free(Run::new(22, 1));
        assert_eq!(r.commit_done(token), vec![Run::new(10, 4), Run::new(20, 2)]);
        let token = r.begin_commit();
        assert_eq!(r.commit_done(token), vec![Run::new(22, 1)]);
    }

    #[test]
    fn retired_nodes_wait_for_older_reads() {
        let mut r = Reclaim::default();
        let old = r.begin_read();
        r.retire_nodes([5, 6]);
        let new = r.begin_read();
        assert!(
            r.take_dead_nodes().is_empty(),
            "an older read may walk them"
        );
        r.end_read(old);
        assert_eq!(r.take_dead_nodes(), vec![5, 6]);
        r.end_read(new);
        r.keep_dead_nodes(vec![5]);
        assert_eq!(r.take_dead_nodes(), vec![5]);
    }
}
