//! The commit timer: makes recent writes durable even when no client asks.

use std::time::Duration;

use ballast_engine::Pool;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Commits the pool every `period`, and early when the pool asks (frees
/// piling up under heavy overwrites), until shutdown. A failed commit is
/// logged and retried at the next tick; the data stays in memory meanwhile.
pub async fn run(pool: Pool, period: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick completes at once
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {
                if let Err(e) = pool.flush().await {
                    error!("periodic commit failed: {e}");
                }
            }
            () = pool.commit_wanted() => {
                if let Err(e) = pool.flush().await {
                    error!("early commit failed: {e}");
                }
            }
        }
    }
}
