//! Per-volume I/O counters: operations, bytes and latency histograms of
//! reads and writes through read-write volume handles (snapshot handles,
//! such as a backup's, are not counted). Lock-free: each request adds to
//! a few atomics. Kept per volume uid for the pool's lifetime in memory;
//! a restart starts them at zero, as Prometheus counters may.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Default)]
pub(crate) struct Direction {
    ops: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    /// Requests per bucket of [`LATENCY_BUCKETS`], plus one past the last.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

impl Direction {
    pub(crate) fn record(&self, bytes: u64, took: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectionStats {
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        DirectionStats {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

/// One volume's counters.
#[derive(Default)]
pub(crate) struct IoStats {
    pub read: Direction,
    pub write: Direction,
}

impl IoStats {
    pub(crate) fn snapshot(&self) -> (DirectionStats, DirectionStats) {
        (self.read.snapshot(), self.write.snapshot())
    }
}

/// Reads or writes of one volume so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DirectionStats {
    pub ops: u64,
    pub bytes: u64,
    /// Total time the requests took.
    pub seconds: f64,
    /// Requests that took at most each of [`LATENCY_BUCKETS`] (cumulative),
    /// then all of them.
    pub buckets: Vec<u64>,
}

/// A volume's I/O counters, as [`crate::Pool::io_stats`] reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeIo {
    pub volume: String,
    pub read: DirectionStats,
    pub write: DirectionStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let d = Direction::default();
        d.record(4096, Duration::from_micros(50));
        d.record(8192, Duration::from_millis(3));
        d.record(1, Duration::from_secs(2));
        let s = d.snapshot();
        assert_eq!(s.ops, 3);
        assert_eq!(s.bytes, 12_289);
        assert_eq!(s.buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[5], 2, "<= 5 ms");
        assert_eq!(s.buckets[LATENCY_BUCKETS.len() - 1], 2, "<= 1 s");
        assert_eq!(*s.buckets.last().unwrap(), 3);
    }
}
