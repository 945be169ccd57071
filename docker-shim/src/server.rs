//! The plugin socket: HTTP/1 on a unix socket that dockerd discovers in
//! `/run/docker/plugins/`.

use std::convert::Infallible;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::backend::Backend;
use crate::driver::Driver;
use crate::host::Host;
use crate::protocol::handle;

/// Where dockerd looks for legacy plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Largest request body accepted; real ones are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;
/// How long in-flight calls get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path`, replacing a stale socket (but nothing else), mode 0660.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another plugin", path.display()),
                ));
            }
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves plugin calls until `shutdown` completes.
pub async fn serve<B: Backend, H: Host>(
    listener: UnixListener,
    driver: Arc<Driver<B, H>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let driver = driver.clone();
                    let service = service_fn(move |req| answer(driver.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    let conn = connections.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            debug!("plugin connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("plugin socket accept failed: {e}");
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
        warn!("plugin calls still running after {DRAIN_TIMEOUT:?}; abandoning them");
    }
}

async fn answer<B: Backend, H: Host>(
    driver: Arc<Driver<B, H>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            // Its own task: dockerd hanging up must not cancel a mount half way.
            let call = path.clone();
            match tokio::spawn(async move { handle(&driver, &call, &body).await }).await {
                Ok(reply) => reply,
                Err(e) => crate::protocol::Reply {
                    status: 500,
                    body: json!({ "Err": format!("plugin call failed: {e}") }),
                },
            }
        }
        Err(e) => crate::protocol::Reply {
            status: 400,
            body: json!({ "Err": format!("cannot read the request: {e}") }),
        },
    };
    debug!(path, status = reply.status, "plugin call");
    let mut response = Response::new(Full::new(Bytes::from(reply.body.to_string())));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.docker.plugins.v1+json"),
    );
    Ok(response)
}
