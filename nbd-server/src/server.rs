//! Listeners and per-connection driver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::ConnectionError;
use crate::export::ExportProvider;
use crate::handshake::{self, Negotiated, TlsStage};
use crate::tls::Tls;
use crate::transmission;
use crate::transport::{AnyStream, Transport};

/// Per-connection read buffer; larger payloads bypass it.
const READ_BUFFER: usize = 64 * 1024;
/// Replies on a TLS connection are gathered up to this many bytes before
/// they are encrypted (TLS cannot write vectors: without it, every reply
/// header would be a TLS record of its own).
const TLS_WRITE_BUFFER: usize = 256 * 1024;

/// Resource limits of a [`Server`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (over all listeners); further clients are
    /// closed right after accept.
    pub max_connections: usize,
    /// Time a client has from connecting to entering transmission (the TLS
    /// handshake included).
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
    /// None: no TLS (NBD_OPT_STARTTLS is refused).
    tls: Option<Arc<Tls>>,
    connections: Arc<Semaphore>,
    next_connection: AtomicU64,
}

impl Server {
    pub fn new(provider: Arc<dyn ExportProvider>) -> Arc<Server> {
        Self::with_limits(provider, Limits::default())
    }

    pub fn with_limits(provider: Arc<dyn ExportProvider>, limits: Limits) -> Arc<Server> {
        Self::build(provider, limits, None)
    }

    /// A server that offers TLS, or requires it if `tls` says so.
    pub fn with_tls(
        provider: Arc<dyn ExportProvider>,
        limits: Limits,
        tls: Arc<Tls>,
    ) -> Arc<Server> {
        Self::build(provider, limits, Some(tls))
    }

    fn build(
        provider: Arc<dyn ExportProvider>,
        limits: Limits,
        tls: Option<Arc<Tls>>,
    ) -> Arc<Server> {
        Arc::new(Server {
            provider,
            limits,
            tls,
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
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.run(AnyStream(stream), shutdown).await
    }

    async fn run<T: Transport>(
        &self,
        stream: T,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError> {
        let deadline = Instant::now() + self.limits.handshake_timeout;
        let (reader, mut writer) = stream.into_halves();
        let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
        let stage = match self.tls.as_deref() {
            None => TlsStage::Unavailable,
            Some(tls) if tls.required() => TlsStage::Required(tls),
            Some(tls) => TlsStage::Offered(tls),
        };
        let plain = async {
            let Some(no_zeroes) = handshake::greet(&mut reader, &mut writer, shutdown).await?
            else {
                return Ok(None);
            };
            let provider = self.provider.as_ref();
            let negotiated = handshake::negotiate(
                &mut reader,
                &mut writer,
                provider,
                stage,
                no_zeroes,
                shutdown,
            )
            .await?;
            Ok(Some((negotiated, no_zeroes)))
        };
        let Some((negotiated, no_zeroes)) = self.within(deadline, plain).await? else {
            return Ok(());
        };
        match negotiated {
            Negotiated::Closed => Ok(()),
            Negotiated::Transmission(session) => {
                transmission::serve(&mut reader, writer, session, shutdown).await
            }
            Negotiated::StartTls(tls) => {
                // Bytes the client sent before it saw the ACK came in plain
                // text and cannot be part of the TLS session.
                if !reader.buffer().is_empty() {
                    return Err(ConnectionError::DataBeforeTls);
                }
                let stream = T::reunite(reader.into_inner(), writer)?;
                self.run_tls(tls, stream, no_zeroes, deadline, shutdown)
                    .await
            }
        }
    }

    /// The TLS handshake on `stream`, then option haggling again inside
    /// TLS, then transmission.
    async fn run_tls<S>(
        &self,
        tls: &Tls,
        stream: S,
        no_zeroes: bool,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let secure = async {
            let stream = tls.accept(stream).await?;
            let identity = tls.identity(stream.ssl());
            tracing::info!(
                identity = identity.as_deref().unwrap_or("none"),
                "TLS established"
            );
            let exports = tls.exports(&self.provider, identity.as_deref());
            let (reader, writer) = tokio::io::split(stream);
            let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
            let mut writer = BufWriter::with_capacity(TLS_WRITE_BUFFER, writer);
            let negotiated = handshake::negotiate(
                &mut reader,
                &mut writer,
                exports.as_ref(),
                TlsStage::Active,
                no_zeroes,
                shutdown,
            )
            .await?;
            Ok((reader, writer, negotiated))
        };
        let (mut reader, mut writer, negotiated) = self.within(deadline, secure).await?;
        match negotiated {
            Negotiated::Transmission(session) => {
                transmission::serve(&mut reader, writer, session, shutdown).await
            }
            Negotiated::Closed => {
                // close_notify, so the client sees a clean end of TLS.
                let _ = writer.shutdown().await;
                Ok(())
            }
            Negotiated::StartTls(_) => Err(ConnectionError::StartTlsTwice),
        }
    }

    /// Runs a handshake step, failing it once the handshake deadline has
    /// passed.
    async fn within<F, T>(&self, deadline: Instant, step: F) -> Result<T, ConnectionError>
    where
        F: std::future::Future<Output = Result<T, ConnectionError>>,
    {
        tokio::time::timeout_at(deadline, step)
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(self.limits.handshake_timeout))?
    }

    fn spawn<T: Transport>(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stream: T,
        peer: String,
        shutdown: &CancellationToken,
    ) {
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
                if let Err(err) = server.run(stream, &shutdown).await {
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
        Ok((stream, "unix".into()))
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
        Ok((stream, peer.to_string()))
    })
    .await
}

/// The accept loop shared by every listener: serves each connection
/// `accept` yields (with a name for the logs) until `shutdown` is
/// cancelled, then waits for all of them to finish.
async fn accept_until_shutdown<T, F, Fut>(
    server: Arc<Server>,
    shutdown: CancellationToken,
    mut accept: F,
) -> std::io::Result<()>
where
    T: Transport,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(T, String)>>,
{
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => server.spawn(&tracker, stream, peer, &shutdown),
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
