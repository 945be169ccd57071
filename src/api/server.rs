//! Serves the control API on a unix socket listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ballast_engine::Pool;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, error, warn};

use super::error::ApiError;
use super::routes::route;
use super::types::ErrorBody;

/// How long in-flight requests get to finish once shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the handlers can reach. Services that add API routes add
/// their handles here.
pub struct ApiState {
    pub pool: Pool,
    pub nbd: super::types::NbdEndpoints,
    /// Running and recently finished backup jobs.
    pub jobs: super::jobs::Jobs,
    /// Attaches volumes as block devices (`ballast attach`); the Docker
    /// driver's host code, present when the daemon runs as root.
    pub attach: Option<std::sync::Arc<crate::daemon::docker::DockerDriver>>,
}

/// Accepts connections until `shutdown` completes, then lets in-flight
/// requests finish (up to [`DRAIN_TIMEOUT`]).
pub async fn serve(
    listener: UnixListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    let service = service_fn(move |req| answer(state.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let conn = connections.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!("control connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown())
        .await
        .is_err()
    {
        warn!("control API requests still running after {DRAIN_TIMEOUT:?}; abandoning them");
    }
    Ok(())
}

async fn answer(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The handler runs in its own task: a client that hangs up mid-request
    // must not cancel an engine operation half way.
    let outcome = tokio::spawn(async move { route(&state, req).await }).await;
    let reply = match outcome {
        Ok(Ok(reply)) => reply_response(reply.status, reply.body),
        Ok(Err(e)) => error_response(&method, &path, e),
        Err(join_error) => error_response(
            &method,
            &path,
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: format!("request handler failed: {join_error}"),
            },
        ),
    };
    Ok(reply)
}

fn reply_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status != StatusCode::NO_CONTENT {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

fn error_response(method: &hyper::Method, path: &str, e: ApiError) -> Response<Full<Bytes>> {
    if e.status.is_server_error() {
        error!("{method} {path}: {}", e.message);
    } else {
        debug!("{method} {path}: {} {}", e.status, e.message);
    }
    let body = serde_json::to_vec(&ErrorBody { error: e.message })
        .expect("a struct of one string always serialises");
    reply_response(e.status, body)
}
