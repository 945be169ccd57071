//! Write-behind: a write is acknowledged once its data has been handed to
//! the disk and its mapping installed; the data reaches the disk behind
//! the caller, as NBD allows for a write without FUA.
//!
//! # Invariants
//!
//! 1. **Readers wait.** A write's pool blocks are registered here before
//!    its mapping is installed (both under the pool's state lock) and stay
//!    registered until the write completes. A read that resolved one of
//!    them waits for its write before reading the disk
//!    ([`WriteBehind::wait`]); the read-ahead does not start reads of them
//!    ([`WriteBehind::busy`]). Since the read holds its deferred-free guard,
//!    a block it resolved cannot be handed to a new write meanwhile.
//! 2. **Commits wait.** A commit waits for every write registered before it
//!    captured its change, before it syncs the data file
//!    ([`WriteBehind::all`]). So the sync covers the data of every mapping
//!    the commit makes durable, as when mappings were installed only after
//!    their data was written: FLUSH and FUA keep their meaning.
//! 3. **No reuse under a write.** A registered block is never released:
//!    blocks go back to the allocator only through a commit (which waited,
//!    by 2) or, for blocks nothing mapped, before their write is started.
//!    So no two writes to one block are ever in flight.
//! 4. **Failures are reported.** A failed write keeps its mapping; the
//!    block then fails its checksum on every read (EIO, never stale bytes).
//!    The failure is counted, and each volume handle reports failures it has
//!    not reported yet on its next flush, as `fsync` reports write-back
//!    errors.
//! 5. **Bounded.** At most [`MAX_BYTES`] and [`MAX_WRITES`] are in flight;
//!    a write that does not fit completes before it is acknowledged, as
//!    every write did before.
//! 6. **Opt-out.** A handle from `Volume::written_through` never registers
//!    here: its writes complete before they return, as in (5), so a bulk
//!    writer in the background (a hydration's fills while a reader waits)
//!    cannot fill the bounds that reads of what it wrote wait on.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::{join_all, FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::extent::Run;
use crate::BLOCK_SIZE;

/// Bytes of acknowledged writes that may be on their way to the disk.
const MAX_BYTES: u64 = 64 << 20;
/// Acknowledged writes that may be on their way to the disk.
const MAX_WRITES: usize = 128;

/// Completes when a registered write has completed (whatever its outcome).
type Done = Shared<oneshot::Receiver<()>>;

/// Writes in flight, by pool block. Its lock is a leaf: nothing else is
/// locked while it is held, since completions take it on the thread that
/// reaps I/O.
#[derive(Default)]
pub(crate) struct WriteBehind {
    flights: Mutex<Flights>,
    /// Writes that failed after being acknowledged, ever.
    failures: AtomicU64,
}

#[derive(Default)]
struct Flights {
    /// First pool block -> (blocks, done). Runs never overlap (3).
    writes: BTreeMap<u64, (u64, Done)>,
    bytes: u64,
}

/// A write registered with [`WriteBehind::admit`]: complete it with
/// [`WriteBehind::complete`] once its I/O has finished, however it ended.
pub(crate) struct Ticket {
    start: u64,
    done: oneshot::Sender<()>,
}

impl WriteBehind {
    /// Registers writes of the pool block `runs` if they fit in the
    /// bounds (5); `None` leaves nothing registered. Call under the state
    /// lock, just before installing their mappings (1).
    pub(crate) fn admit(&self, runs: &[Run]) -> Option<Vec<Ticket>> {
        let mut f = self.flights.lock();
        let bytes: u64 = runs.iter().map(|r| r.len * BLOCK_SIZE).sum();
        if f.writes.len() + runs.len() > MAX_WRITES || f.bytes + bytes > MAX_BYTES {
            return None;
        }
        f.bytes += bytes;
        let tickets = runs
            .iter()
            .map(|&Run { start, len }| {
                let (tx, rx) = oneshot::channel();
                let old = f.writes.insert(start, (len, rx.shared()));
                debug_assert!(old.is_none(), "two writes in flight to block {start}");
                Ticket { start, done: tx }
            })
            .collect();
        Some(tickets)
    }

    /// Ends the write `ticket` stands for and wakes whoever waits for it.
    pub(crate) fn complete(&self, ticket: Ticket, result: io::Result<()>) {
        if let Err(e) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                pblock = ticket.start,
                "a write acknowledged earlier failed: {e}; its blocks will read as EIO"
            );
        }
        let mut f = self.flights.lock();
        if let Some((len, _)) = f.writes.remove(&ticket.start) {
            f.bytes -= len * BLOCK_SIZE;
        }
        drop(f);
        // Wakes the waiters (a receiver gone already needs no wake-up).
        let _ = ticket.done.send(());
    }

    /// Whether any block of `[start, start + len)` is under write.
    pub(crate) fn busy(&self, start: u64, len: u64) -> bool {
        let f = self.flights.lock();
        let busy = Self::overlapping(&f, start, len).next().is_some();
        busy
    }

    /// Waits for the writes in flight to any of the pool block `runs`.
    pub(crate) async fn wait(&self, runs: impl Iterator<Item = Run>) {
        let waits: Vec<Done> = {
            let f = self.flights.lock();
            if f.writes.is_empty() {
                return;
            }
            let flights: &Flights = &f;
            runs.flat_map(|r| Self::overlapping(flights, r.start, r.len))
                .cloned()
                .collect()
        };
        join_all(waits).await;
    }

    /// Every write in flight now, to wait for before a commit's sync (2).
    pub(crate) fn all(&self) -> Vec<Done> {
        let f = self.flights.lock();
        f.writes.values().map(|(_, d)| d.clone()).collect()
    }

    /// Writes that failed after being acknowledged, since the pool opened.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn overlapping(f: &Flights, start: u64, len: u64) -> impl Iterator<Item = &Done> {
        // Runs are disjoint and sorted, so those ending after `start` are
        // the last ones starting before `start + len`.
        f.writes
            .range(..start + len)
            .rev()
            .take_while(move |(&s, (l, _))| s + l > start)
            .map(|(_, (_, d))| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn failed() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    #[test]
    fn runs_are_tracked_until_complete() {
        let wb = WriteBehind::default();
        let mut tickets = wb.admit(&[Run::new(10, 4), Run::new(20, 1)]).unwrap();
        assert!(wb.busy(13, 1) && wb.busy(0, 11) && wb.busy(20, 1));
        assert!(!wb.busy(14, 6) && !wb.busy(0, 10) && !wb.busy(21, 100));
        let mut wait = Box::pin(wb.wait([Run::new(12, 10)].into_iter()));
        let mut all = wb.all();
        assert_eq!(all.len(), 2);
        assert!(wait.as_mut().now_or_never().is_none());
        wb.complete(tickets.remove(0), Ok(()));
        assert!(!wb.busy(10, 4));
        assert!(all.remove(0).now_or_never().is_some());
        assert!(wait.as_mut().now_or_never().is_none(), "still waits for 20");
        wb.complete(tickets.remove(0), failed());
        assert!(wait.now_or_never().is_some());
        assert!(all.remove(0).now_or_never().is_some());
        assert_eq!(wb.failures(), 1);
        assert!(wb.all().is_empty());
    }

    #[test]
    fn writes_in_flight_are_bounded() {
        let wb = WriteBehind::default();
        let block_run = MAX_BYTES / BLOCK_SIZE / 2;
        let t1 = wb.admit(&[Run::new(0, block_run)]).unwrap();
        let t2 = wb.admit(&[Run::new(block_run, block_run)]).unwrap();
        assert!(
            wb.admit(&[Run::new(2 * block_run, 1)]).is_none(),
            "bytes bound"
        );
        for t in t1.into_iter().chain(t2) {
            wb.complete(t, Ok(()));
        }
        let singles: Vec<Run> = (0..MAX_WRITES as u64).map(|i| Run::new(i * 2, 1)).collect();
        let tickets = wb.admit(&singles).unwrap();
        assert!(wb.admit(&[Run::new(1, 1)]).is_none(), "count bound");
        for t in tickets {
            wb.complete(t, Ok(()));
        }
        assert!(wb.admit(&[Run::new(1, 1)]).is_some());
    }
}
