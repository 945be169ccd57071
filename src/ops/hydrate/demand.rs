//! Who waits for a fetch, and whether anyone uses the volume: reads and
//! writes of chunks not local yet count themselves here while they wait,
//! and the background starts no fetch while any does. A reader's fetch
//! then queues behind at most the background fetches already in flight,
//! not behind a stream of them. Readers cannot starve the background for
//! long: each fetch they wait for makes a chunk local.
//!
//! Every read and write of the volume also marks it in use: for
//! [`ACTIVE`] after that, the background's fills are written through (see
//! `hydration.rs`), so the disk's queue holds at most the fills in flight,
//! not the write-behind budget's worth, ahead of a client's reads and
//! flushes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long after a read or write the volume counts as in use.
pub const ACTIVE: Duration = Duration::from_millis(500);

pub struct Demand {
    waiting: AtomicUsize,
    gone: Notify,
    /// Nanoseconds from `base` to the last read or write (0: none yet).
    used: AtomicU64,
    base: Instant,
}

impl Default for Demand {
    fn default() -> Self {
        Demand {
            waiting: AtomicUsize::new(0),
            gone: Notify::new(),
            used: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

/// One read or write waiting for fetches, counted while it lives.
pub struct Waiting<'a>(&'a Demand);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.gone.notify_waiters();
        }
    }
}

impl Demand {
    /// Counts a read or write as waiting until the guard is dropped.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self)
    }

    /// Whether a read or write waits for a fetch now.
    pub fn any(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Marks the volume in use: a read or write of it is starting.
    pub fn used(&self) {
        let now = self.base.elapsed().as_nanos().max(1) as u64;
        self.used.fetch_max(now, Ordering::AcqRel);
    }

    /// Whether a read or write of the volume started within [`ACTIVE`].
    pub fn in_use(&self) -> bool {
        let last = self.used.load(Ordering::Acquire);
        last != 0
            && (self.base.elapsed().as_nanos() as u64).saturating_sub(last)
                < ACTIVE.as_nanos() as u64
    }

    /// Returns once nobody waits for a fetch.
    pub async fn none_waiting(&self) {
        loop {
            let gone = self.gone.notified();
            tokio::pin!(gone);
            // Registered before the count is read: a drop to zero after
            // the read still wakes this.
            gone.as_mut().enable();
            if !self.any() {
                return;
            }
            gone.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_volume_is_in_use_for_a_while_after_a_read_or_write() {
        let demand = Demand::default();
        assert!(!demand.in_use(), "nothing read or written yet");
        demand.used();
        assert!(demand.in_use());
        std::thread::sleep(ACTIVE + Duration::from_millis(50));
        assert!(!demand.in_use(), "idle for longer than ACTIVE");
        demand.used();
        assert!(demand.in_use());
    }

    #[tokio::test]
    async fn the_background_waits_until_nobody_waits_for_a_fetch() {
        let demand = Demand::default();
        demand.none_waiting().await; // nobody: at once
        assert!(!demand.any());
        let a = demand.waiting();
        assert!(demand.any());
        let b = demand.waiting();
        let blocked = tokio::time::timeout(Duration::from_millis(50), demand.none_waiting());
        assert!(blocked.await.is_err(), "two readers wait");
        drop(a);
        let blocked = tokio::time::timeout(Duration::from_millis(50), demand.none_waiting());
        assert!(blocked.await.is_err(), "one reader still waits");
        let background = demand.none_waiting();
        tokio::pin!(background);
        assert!(futures::poll!(background.as_mut()).is_pending());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), background)
            .await
            .expect("the last reader's end wakes the background");
    }
}
