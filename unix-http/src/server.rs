//! Serving HTTP/1 on a bound listener until shutdown.
//!
//! Each request's body is read in full (up to a limit) before its handler
//! runs, and the handler runs in a task of its own: a client that hangs up
//! mid-request never cancels an operation half way. An oversize body is
//! still read and dropped (up to [`DRAIN_LIMIT`]) so the client gets the
//! 4xx answer: closing a unix socket with unread input resets it, and the
//! client would read a reset instead.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, warn};

/// An oversize body is read and dropped up to this many bytes; past it the
/// connection is closed (and the client may see a reset).
pub const DRAIN_LIMIT: usize = 16 << 20;
/// Pause after a failed `accept` (typically EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One protocol's answers.
pub trait Handler: Send + Sync + 'static {
    /// Answers a request whose body has been read in full.
    fn handle(&self, request: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send;

    /// The answer to a request [`Handler::handle`] never answered: its body
    /// could not be read or was too large, or the handler panicked.
    fn refuse(&self, method: &Method, path: &str, failure: &Failure) -> Response<Bytes>;
}

/// Why a request got no answer from its handler.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    BodyUnreadable(#[source] hyper::Error),
    #[error("request handler failed: {0}")]
    HandlerFailed(#[source] tokio::task::JoinError),
}

impl Failure {
    /// The status that fits: the client's fault, or ours.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::BodyTooLarge { .. } | Failure::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            Failure::HandlerFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// How a server treats its clients.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// What the server is, in log lines ("control API", "Docker plugin").
    pub name: &'static str,
    /// Largest request body handed to the handler.
    pub max_body: usize,
    /// How long requests in flight get to finish once shutdown is asked.
    pub drain_timeout: Duration,
}

/// A response with `body` and, unless it is empty, `content_type`.
pub fn response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    if !response.body().is_empty() {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// Accepts connections until `shutdown` completes, then stops accepting
/// and lets requests in flight finish (up to `options.drain_timeout`).
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = handler.clone();
                    let service = service_fn(move |req| answer(handler.clone(), options, req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let conn = connections.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!("{} connection ended: {e}", options.name);
                        }
                    });
                }
                Err(e) => {
                    warn!("{} socket accept failed: {e}", options.name);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(options.drain_timeout, connections.shutdown())
        .await
        .is_err()
    {
        warn!(
            "{} requests still running after {:?}; abandoning them",
            options.name, options.drain_timeout
        );
    }
}

async fn answer<H: Handler>(
    handler: Arc<H>,
    options: ServeOptions,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let response = match read_body(body, options.max_body).await {
        Err(failure) => handler.refuse(&method, &path, &failure),
        Ok(body) => {
            let request = Request::from_parts(parts, body);
            let running = {
                let handler = handler.clone();
                tokio::spawn(async move { handler.handle(request).await })
            };
            match running.await {
                Ok(response) => response,
                Err(e) => handler.refuse(&method, &path, &Failure::HandlerFailed(e)),
            }
        }
    };
    Ok(response.map(Full::new))
}

/// The whole body, or why not. A body over `max` is drained (see
/// [`DRAIN_LIMIT`]) and refused.
async fn read_body(mut body: Incoming, max: usize) -> Result<Bytes, Failure> {
    let mut kept = Vec::new();
    let mut seen = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Failure::BodyUnreadable)?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= max {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > max {
        return Err(Failure::BodyTooLarge { limit: max });
    }
    Ok(Bytes::from(kept))
}
