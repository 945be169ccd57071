//! Progress reporting for long operations (backup, restore, verify, gc).
//!
//! Operations report through the [`Progress`] trait: the daemon can forward
//! the calls to its client; the CLI draws them with [`TerminalProgress`], or
//! nothing ([`NoProgress`]) for `--json` output or when stderr is not a
//! terminal ([`for_terminal`] picks).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// Receives the progress of one operation, in bytes (verify and gc count
/// objects' bytes too). Called from several tasks at once.
pub trait Progress: Send + Sync {
    /// A phase starts with `total` units to do (e.g. "backup", "restore").
    fn start(&self, phase: &str, total: u64);
    /// `done` more units are finished.
    fn advance(&self, done: u64);
    /// The phase is over.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _done: u64) {}
    fn finish(&self) {}
}

/// Where an operation stands, as a value that can cross the control API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    pub phase: String,
    pub total: u64,
    pub done: u64,
}

/// Records progress for someone else to poll (the daemon keeps one per
/// running operation and reports [`ProgressCounter::snapshot`] to its client).
#[derive(Debug, Default)]
pub struct ProgressCounter {
    phase: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
}

impl ProgressCounter {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            phase: self.phase.lock().expect("progress phase").clone(),
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
        }
    }
}

impl Progress for ProgressCounter {
    fn start(&self, phase: &str, total: u64) {
        *self.phase.lock().expect("progress phase") = phase.to_string();
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    fn advance(&self, done: u64) {
        self.done.fetch_add(done, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.done
            .store(self.total.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// An indicatif bar on stderr with bytes done, rate and ETA.
#[derive(Debug)]
pub struct TerminalProgress {
    bar: ProgressBar,
}

impl TerminalProgress {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("progress template is valid")
            .progress_chars("=> "),
        );
        TerminalProgress { bar }
    }
}

impl TerminalProgress {
    /// Draws a snapshot polled from elsewhere (the daemon).
    pub fn show(&self, s: &ProgressSnapshot) {
        if self.bar.message() != s.phase {
            self.start(&s.phase, s.total);
        }
        self.bar.set_length(s.total);
        self.bar.set_position(s.done);
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for TerminalProgress {
    fn start(&self, phase: &str, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_message(phase.to_string());
    }

    fn advance(&self, done: u64) {
        self.bar.inc(done);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A terminal bar when stderr is a terminal and output is not JSON, else
/// nothing.
pub fn for_terminal(json: bool) -> Arc<dyn Progress> {
    if !json && std::io::stderr().is_terminal() {
        Arc::new(TerminalProgress::new())
    } else {
        Arc::new(NoProgress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_snapshots() {
        let c = ProgressCounter::default();
        assert_eq!(c.snapshot(), ProgressSnapshot::default());
        c.start("backup", 100);
        c.advance(30);
        c.advance(20);
        assert_eq!(
            c.snapshot(),
            ProgressSnapshot {
                phase: "backup".into(),
                total: 100,
                done: 50
            }
        );
        c.finish();
        assert_eq!(c.snapshot().done, 100);
        c.start("restore", 10);
        assert_eq!(
            c.snapshot(),
            ProgressSnapshot {
                phase: "restore".into(),
                total: 10,
                done: 0
            }
        );
        let bar = TerminalProgress::new();
        bar.show(&c.snapshot());
        assert_eq!(bar.bar.length(), Some(10));
    }
}
