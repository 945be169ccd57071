//! The plugin socket: HTTP/1 on a unix socket that dockerd discovers in
//! `/run/docker/plugins/`, served by the shared unix-socket HTTP server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ballast_unix_http::{BindError, BindOptions, Failure, Handler, ServeOptions, SocketFile};
use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::UnixListener;
use tracing::debug;

use crate::driver::Driver;
use crate::host::Host;
use crate::protocol::{handle, PluginReply};
use crate::provider::VolumeProvider;

/// Where dockerd looks for legacy plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// dockerd (root) connects; the socket is root's and its group's.
const SOCKET: BindOptions = BindOptions {
    name: "plugin",
    mode: 0o660,
    dir_mode: Some(0o755),
    group: None,
};
/// How the plugin treats dockerd's calls: real bodies are a few hundred
/// bytes; calls in flight at shutdown get a few seconds to finish.
const SERVE: ServeOptions = ServeOptions {
    name: "plugin",
    max_body: 1 << 20,
    drain_timeout: Duration::from_secs(10),
};
/// The media type of every plugin protocol answer.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// Binds `path`, replacing a stale socket (but nothing else), mode 0660.
/// The socket file goes away when the returned [`SocketFile`] is dropped.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), BindError> {
    ballast_unix_http::bind(path, &SOCKET)
}

/// Serves plugin calls until `shutdown` completes.
pub async fn serve<P: VolumeProvider, H: Host>(
    listener: UnixListener,
    driver: Arc<Driver<P, H>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handler = Arc::new(PluginHandler { driver });
    ballast_unix_http::serve(listener, handler, SERVE, shutdown).await;
}

/// The plugin protocol as an HTTP handler.
struct PluginHandler<P, H> {
    driver: Arc<Driver<P, H>>,
}

impl<P: VolumeProvider, H: Host> Handler for PluginHandler<P, H> {
    async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path();
        let reply = handle(&self.driver, path, request.body()).await;
        debug!(path, status = reply.status, "plugin call");
        http_response(&reply)
    }

    fn refuse(&self, _method: &Method, path: &str, failure: &Failure) -> Response<Bytes> {
        debug!(path, "plugin call refused: {failure}");
        http_response(&PluginReply {
            status: failure.status().as_u16(),
            body: json!({ "Err": failure.to_string() }),
        })
    }
}

fn http_response(reply: &PluginReply) -> Response<Bytes> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    ballast_unix_http::response(status, CONTENT_TYPE, reply.body.to_string().into_bytes())
}
