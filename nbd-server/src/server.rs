//! Listeners and per-connection driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::ConnectionError;
use crate::export::ExportProvider;
use crate::handshake::{self, Negotiated};
use crate::incoming::Incoming;
use crate::transmission;

/// Per-connection read buffer; larger payloads bypass it.
const READ_BUFFER: usize = 64 * 1024;

/// Resource limits of a [`Server`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (over all listeners); further clients are
    /// closed right after accept.
    pub max_connections: usize,
    /// Time a client has from connecting to entering transmission.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// An NBD server over a set of exports; shared by all listeners.
pub struct Server {
    provider: Arc<dyn ExportProvider>,
    limits: Limits,
    connections: Arc<Semaphore>,
    next_connection: AtomicU64,
}

impl Server {
    pub fn new(provider: Arc<dyn ExportProvider>) -> Arc<Server> {
        Self::with_limits(provider, Limits::default())
    }

    pub fn with_limits(provider: Arc<dyn ExportProvider>, limits: Limits) -> Arc<Server> {
        Arc::new(Server {
            provider,
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            next_connection: AtomicU64::new(1),
        })
    }

    /// Runs one client connection (handshake, then transmission) to its
    /// end. When `shutdown` is cancelled the connection stops reading
    /// requests, answers those in flight, and closes.
    pub async fn serve_connection<S>(
        &self,
        stream: S,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        self.run(reader, writer, shutdown).await
    }

    async fn run<R, W>(
        &self,
        reader: R,
        mut writer: W,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        R: Incoming,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
        let negotiation =
            handshake::negotiate(&mut reader, &mut writer, self.provider.as_ref(), shutdown);
        let negotiated = tokio::time::timeout(self.limits.handshake_timeout, negotiation)
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(self.limits.handshake_timeout))??;
        match negotiated {
            Negotiated::Closed => Ok(()),
            Negotiated::Transmission(session) => {
                tracing::info!(export = %session.export.name, size = session.size, structured = session.structured, "client attached");
                let result = transmission::serve(&mut reader, writer, session, shutdown).await;
                tracing::info!("client detached");
                result
            }
        }
    }

    fn spawn<R, W>(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        reader: R,
        writer: W,
        peer: String,
        shutdown: &CancellationToken,
    ) where
        R: Incoming + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Some(slot) = self.connection_slot() else {
            tracing::warn!(peer = %peer, limit = self.limits.max_connections, "connection limit reached; closing new connection");
            return;
        };
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("nbd", conn = id, peer = %peer);
        let server = self.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(
            async move {
                let _slot = slot;
                if let Err(err) = server.run(reader, writer, &shutdown).await {
                    tracing::warn!(error = %err, "connection closed");
                }
            }
            .instrument(span),
        );
    }
}

impl Server {
    fn connection_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }
}

/// An accepted connection, split for the reader loop and the reply writer,
/// with a name for the logs.
type Accepted = (
    Box<dyn Incoming + Send>,
    Box<dyn AsyncWrite + Unpin + Send>,
    String,
);

/// Accepts connections on a unix socket until `shutdown` is cancelled, then
/// waits for every connection to finish its in-flight requests.
pub async fn serve_unix(
    listener: UnixListener,
    server: Arc<Server>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = &listener;
    accept_until_shutdown(server, shutdown, || async move {
        let (stream, _) = listener.accept().await?;
        let (reader, writer) = stream.into_split();
        Ok((Box::new(reader) as _, Box::new(writer) as _, "unix".into()))
    })
    .await
}

/// Accepts TCP connections (with TCP_NODELAY) until `shutdown` is
/// cancelled, then waits for every connection to finish.
pub async fn serve_tcp(
    listener: TcpListener,
    server: Arc<Server>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = &listener;
    accept_until_shutdown(server, shutdown, || async move {
        let (stream, peer) = listener.accept().await?;
        if let Err(err) = stream.set_nodelay(true) {
            tracing::warn!(error = %err, "cannot set TCP_NODELAY");
        }
        let (reader, writer) = stream.into_split();
        Ok((
            Box::new(reader) as _,
            Box::new(writer) as _,
            peer.to_string(),
        ))
    })
    .await
}

/// The accept loop shared by every listener: serves each connection
/// `accept` yields until `shutdown` is cancelled, then waits for all of
/// them to finish.
async fn accept_until_shutdown<F, Fut>(
    server: Arc<Server>,
    shutdown: CancellationToken,
    mut accept: F,
) -> std::io::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Accepted>>,
{
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok((reader, writer, peer)) => server.spawn(&tracker, reader, writer, peer, &shutdown),
            Err(err) => accept_failed(err).await,
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Accept errors (EMFILE, ECONNABORTED...) are transient: log and back off
/// briefly instead of spinning or giving up.
async fn accept_failed(err: std::io::Error) {
    tracing::warn!(error = %err, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
