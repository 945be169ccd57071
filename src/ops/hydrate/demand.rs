//! Who waits for a fetch: reads and writes of chunks not local yet count
//! themselves here while they wait, and the background starts no fetch
//! while any does. A reader's fetch then queues behind at most the
//! background fetches already in flight, not behind a stream of them.
//! Readers cannot starve the background for long: each fetch they wait
//! for makes a chunk local.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Demand {
    waiting: AtomicUsize,
    gone: Notify,
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
