//! The daemon's long-running services and their shared shutdown.
//!
//! A service is a future that runs until it is told to stop. The daemon
//! starts each one with [`Services::spawn`], handing it a
//! [`CancellationToken`] that is cancelled at shutdown;
//! [`Services::run`] waits for SIGINT/SIGTERM (or for any service to end on
//! its own, which is treated as a failure), then signals every service to
//! stop and waits for all of them.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long services get to stop after shutdown is signalled.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The set of running services.
pub struct Services {
    tasks: JoinSet<(&'static str, Result<()>)>,
    stop: CancellationToken,
    interrupt: Signal,
    terminate: Signal,
}

impl Services {
    /// Takes over SIGINT and SIGTERM at once, so a stop request that
    /// arrives while the daemon is still starting is not lost.
    pub fn new() -> Result<Self> {
        Ok(Services {
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Starts `service`, which must return soon after its token is cancelled.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, service: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let running = service(self.stop.child_token());
        self.tasks.spawn(async move { (name, running.await) });
        info!(service = name, "started");
    }

    /// Runs until a stop signal arrives or a service ends, then stops every
    /// service. Returns the first service failure, if any.
    pub async fn run(mut self) -> Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = self.interrupt.recv() => info!("SIGINT received, shutting down"),
            _ = self.terminate.recv() => info!("SIGTERM received, shutting down"),
            Some(ended) = self.tasks.join_next() => {
                failure = Some(unexpected_end(ended));
            }
        }
        self.stop.cancel();
        let drain = async {
            while let Some(ended) = self.tasks.join_next().await {
                match ended {
                    Ok((name, Ok(()))) => info!(service = name, "stopped"),
                    Ok((name, Err(e))) => {
                        error!(service = name, "failed while stopping: {e:#}");
                        failure.get_or_insert_with(|| e.context(format!("{name} failed")));
                    }
                    Err(e) => {
                        error!("service task failed: {e}");
                        failure.get_or_insert_with(|| anyhow!("service task failed: {e}"));
                    }
                }
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, drain).await.is_err() {
            warn!("services still running after {STOP_TIMEOUT:?}; abandoning them");
            self.tasks.abort_all();
        }
        failure.map_or(Ok(()), Err)
    }
}

/// A service that ends before shutdown was requested is a daemon failure.
fn unexpected_end(
    ended: Result<(&'static str, Result<()>), tokio::task::JoinError>,
) -> anyhow::Error {
    let e = match ended {
        Ok((name, Ok(()))) => anyhow!("{name} stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("{name} failed")),
        Err(e) => anyhow!("service task failed: {e}"),
    };
    error!("{e:#}; shutting down");
    e
}
