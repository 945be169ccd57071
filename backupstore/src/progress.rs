//! Progress reporting for long operations (backup, restore, verify, gc).
//!
//! Operations report through the [`Progress`] trait: the daemon can forward
//! the calls to its client; the CLI draws them with [`TerminalProgress`], or
//! nothing ([`NoProgress`]) for `--json` output or when stderr is not a
//! terminal ([`for_terminal`] picks).

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
