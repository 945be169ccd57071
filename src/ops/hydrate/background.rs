//! The background half of a hydration: every chunk not local yet is
//! fetched, a bounded number at a time, and settled in batches; a pass
//! that fails anywhere is retried after a backoff. Reads that need a chunk
//! first fetch it themselves (`hydration.rs`); this only makes sure every
//! chunk gets there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_backupstore::{Progress, ProgressCounter};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::super::error::OpError;
use super::chunks::Chunk;
use super::hydration::Hydration;

/// Chunks fetched at once: memory in flight is this many chunks.
pub const PARALLEL: usize = 8;
/// Chunks fetched at once while a client uses the volume (`demand.rs`):
/// the disk's queue ahead of its reads and flushes stays short.
const PARALLEL_IN_USE: usize = 2;
/// A settle (one pool flush and one bitmap write) starts at most this
/// often while chunks are fetched, and once at the end: what a crash can
/// cost is the chunks fetched in the last interval (fetched again), and
/// the flushes do not grow with the volume's size or the fetch rate.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Milliseconds to wait before the first background pass (default none):
/// lets the tests and the benchmark see reads fetch on demand alone.
const DELAY_ENV: &str = "BALLAST_HYDRATE_DELAY_MS";
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a background hydration ended.
pub enum Ended {
    Complete,
    Cancelled,
}

/// Takes the hold on the backup if it is not held yet; `false` if the
/// store could not be reached (tried again on the next pass).
async fn hold(h: &Hydration) -> bool {
    let mut held = h.hold.lock().await;
    if held.is_some() {
        return true;
    }
    let taken = async {
        let store = h.store().await?;
        Ok::<_, OpError>(store.hold(&h.backup.volume, &h.backup.id).await?.0)
    }
    .await;
    match taken {
        Ok(hold) => {
            // A hold a killed daemon left: ours now, so it goes.
            if let Some(old) = h.journal.hold().filter(|k| k != hold.key()) {
                if let Ok(store) = h.store().await {
                    if let Err(e) = store.drop_hold(&old).await {
                        warn!("removing the earlier hold {old}: {e}");
                    }
                }
            }
            if let Err(e) = h.journal.save_hold(hold.key()) {
                warn!(volume = %h.volume, "recording the hold on {}: {e}", h.backup);
            }
            *held = Some(hold);
            true
        }
        Err(OpError::Store(ballast_backupstore::Error::BackupNotFound { .. })) => {
            // Nothing to hold any more: fetch whatever chunks remain.
            warn!(volume = %h.volume, backup = %h.backup, "the backup this volume hydrates from was deleted");
            true
        }
        Err(e) => {
            warn!(volume = %h.volume, "cannot hold backup {}: {e}", h.backup);
            *h.last_error.lock().expect("last error") = Some(e.to_string());
            false
        }
    }
}

/// Hydrates `h` until every chunk is local or `cancel`.
pub async fn run(
    h: Arc<Hydration>,
    progress: Arc<ProgressCounter>,
    cancel: CancellationToken,
) -> Ended {
    let (_, _, local_bytes, total_bytes) = h.counts();
    progress.start("hydrate", total_bytes);
    progress.advance(local_bytes);
    let mut reported = local_bytes;
    let mut backoff = FIRST_BACKOFF;
    let delay = std::env::var(DELAY_ENV)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    if delay > 0 {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay)) => {}
            () = cancel.cancelled() => return Ended::Cancelled,
        }
    }
    loop {
        let mut failed = !hold(&h).await;
        let pending: Vec<usize> = h
            .chunks
            .inspect(|s| (0..s.len()).filter(|&c| s[c] != Chunk::Local).collect());
        if pending.is_empty() {
            break;
        }
        // One stream, PARALLEL fetches in flight; the chunks fetched are
        // settled together every SETTLE_EVERY, while the next ones are
        // fetched (a settle takes the chunks `Written` when it starts; one
        // at a time).
        let in_use = tokio::sync::Semaphore::new(PARALLEL_IN_USE);
        let mut fetches = futures::stream::iter(pending)
            .map(|c| {
                let (h, in_use) = (&h, &in_use);
                async move {
                    // Readers' fetches go first, and a volume in use gets
                    // fewer fetches at once (`demand.rs`).
                    h.demand.none_waiting().await;
                    let _turn = if h.demand.in_use() {
                        Some(in_use.acquire().await.expect("never closed"))
                    } else {
                        None
                    };
                    h.make_readable(c).await
                }
            })
            .buffer_unordered(PARALLEL);
        let mut settling = None;
        let (mut unsettled, mut fetching) = (false, true);
        let mut last_settle = Instant::now();
        while fetching || settling.is_some() {
            tokio::select! {
                settled = async { settling.as_mut().expect("guarded").await }, if settling.is_some() => {
                    settling = None;
                    if let Err(e) = settled {
                        warn!(volume = %h.volume, "settling hydrated chunks: {e}");
                        failed = true;
                    }
                    let (_, _, now, _) = h.counts();
                    progress.advance(now.saturating_sub(reported));
                    reported = reported.max(now);
                    if cancel.is_cancelled() {
                        return Ended::Cancelled;
                    }
                }
                next = fetches.next(), if fetching => match next {
                    Some(result) => {
                        failed |= result.is_err();
                        unsettled = true;
                    }
                    None => fetching = false,
                },
            }
            let due = !fetching || last_settle.elapsed() >= SETTLE_EVERY;
            if settling.is_none() && unsettled && due {
                settling = Some(Box::pin(h.settle(&[])));
                (unsettled, last_settle) = (false, Instant::now());
            }
        }
        if cancel.is_cancelled() {
            return Ended::Cancelled;
        }
        if failed {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = cancel.cancelled() => return Ended::Cancelled,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
            *h.last_error.lock().expect("last error") = None;
        }
    }
    progress.finish();
    info!(volume = %h.volume, backup = %h.backup, "volume fully hydrated");
    Ended::Complete
}
