//! The daemon's long-running services and their shared shutdown.
//!
//! A service is a future that runs until it is told to stop. The daemon
//! starts each one with [`Services::spawn`], handing it a [`Shutdown`];
//! [`Services::run`] waits for SIGINT/SIGTERM (or for any service to end on
//! its own, which is treated as a failure), then signals every service to
//! stop and waits for all of them.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long services get to stop after shutdown is signalled.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Tells a service when the daemon is stopping.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Completes once shutdown has been requested.
    pub async fn requested(mut self) {
        // An error means the sender is gone, which also means "stop".
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// The set of running services.
pub struct Services {
    tasks: JoinSet<(&'static str, Result<()>)>,
    stop: watch::Sender<bool>,
    interrupt: Signal,
    terminate: Signal,
}

impl Services {
    /// Takes over SIGINT and SIGTERM at once, so a stop request that
    /// arrives while the daemon is still starting is not lost.
    pub fn new() -> Result<Self> {
        Ok(Services {
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Starts `service`, which must return soon after its [`Shutdown`] fires.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, service: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let running = service(Shutdown(self.stop.subscribe()));
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
        self.stop.send_replace(true);
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
