//! Serves the control API on the shared unix-socket HTTP server: every
//! request goes through [`route`]; failures become `{"error": "..."}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ballast_unix_http::{Failure, Handler, ServeOptions};
use bytes::Bytes;
use hyper::{Method, Request, Response};
use tokio::net::UnixListener;
use tracing::{debug, error};

use super::error::ApiError;
use super::routes::route;
use super::state::ApiState;
use super::types::ErrorBody;

const SERVE: ServeOptions = ServeOptions {
    name: "control API",
    // Every API body is a few hundred bytes.
    max_body: 64 * 1024,
    // How long requests in flight get to finish once shutdown is asked.
    drain_timeout: Duration::from_secs(10),
};
const JSON: &str = "application/json";

/// Accepts connections until `shutdown` completes, then lets requests in
/// flight finish (up to 10 s).
pub async fn serve(
    listener: UnixListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let handler = Arc::new(ControlApi { state });
    ballast_unix_http::serve(listener, handler, SERVE, shutdown).await;
    Ok(())
}

struct ControlApi {
    state: Arc<ApiState>,
}

impl Handler for ControlApi {
    async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match route(&self.state, request).await {
            Ok(reply) => ballast_unix_http::response(
                reply.status,
                reply.content_type.unwrap_or(JSON),
                reply.body,
            ),
            Err(e) => error_response(&method, &path, e),
        }
    }

    fn refuse(&self, method: &Method, path: &str, failure: &Failure) -> Response<Bytes> {
        let e = ApiError {
            status: failure.status(),
            message: failure.to_string(),
        };
        error_response(method, path, e)
    }
}

fn error_response(method: &Method, path: &str, e: ApiError) -> Response<Bytes> {
    if e.status.is_server_error() {
        error!("{method} {path}: {}", e.message);
    } else {
        debug!("{method} {path}: {} {}", e.status, e.message);
    }
    let body = serde_json::to_vec(&ErrorBody { error: e.message })
        .expect("a struct of one string always serialises");
    ballast_unix_http::response(e.status, JSON, body)
}
