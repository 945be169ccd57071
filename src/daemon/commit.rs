//! The commit timer: makes recent writes durable even when no client asks,
//! and checkpoints the pool when its changes or its journal fill up.

use std::time::Duration;

use ballast_engine::Pool;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Commits the pool every `period`, and early when the pool asks (frees
/// piling up under heavy overwrites, or changes waiting for a checkpoint),
/// until shutdown. A failed commit stops the pool's writes (the engine
/// never retries a failed sync); it is logged here once.
pub async fn run(pool: Pool, period: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick completes at once
    let mut reported = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
            () = pool.maintenance_wanted() => {}
        }
        match pool.maintain().await {
            Ok(()) => reported = false,
            Err(e) if !reported => {
                error!("pool maintenance failed: {e}");
                reported = true;
            }
            Err(_) => {}
        }
    }
}
