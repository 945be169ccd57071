//! The commit timer: makes recent writes durable even when no client asks,
//! checkpoints the pool when its changes or its journal fill up, and
//! releases memory that a whole period did not use.

use std::time::Duration;

use ballast_engine::Pool;
use tokio::time::{interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

/// Commits the pool every `period`, and early when the pool asks (frees
/// piling up under heavy overwrites, or changes waiting for a checkpoint),
/// until shutdown. A failed commit stops the pool's writes (the engine
/// never retries a failed sync); it is logged here once.
pub async fn run(pool: Pool, period: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick completes at once
                        // What opening the pool used and let go (the journal's replay) goes
                        // back at once, not a period later.
    release_idle_memory(&pool);
    let mut reported = false;
    loop {
        let tick = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => true,
            () = pool.maintenance_wanted() => false,
        };
        let result = pool.maintain().await;
        if tick {
            release_idle_memory(&pool);
        }
        match result {
            Ok(()) => reported = false,
            Err(e) if !reported => {
                error!("pool maintenance failed: {e}");
                reported = true;
            }
            Err(_) => {}
        }
    }
}

/// Gives memory that sat unused for a whole period back to the system:
/// the pool's idle I/O buffers, then the allocator's free pages (a
/// checkpoint's transient nodes and batches leave free heap that glibc
/// would otherwise keep mapped).
fn release_idle_memory(pool: &Pool) {
    let freed = pool.trim_idle_buffers();
    if freed > 0 {
        debug!(freed, "released idle I/O buffers");
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists and
    // releases free pages; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
