//! The shared server driven with raw HTTP on a real unix socket.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ballast_unix_http::{
    bind, response, serve, BindError, BindOptions, Failure, Handler, ServeOptions,
};
use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{oneshot, Notify};

const OPTIONS: BindOptions = BindOptions {
    name: "test",
    mode: 0o600,
    dir_mode: Some(0o700),
    group: None,
};

/// `/echo` answers the body's length; `/slow` waits for `release`, then
/// counts itself finished; `/panic` panics.
#[derive(Default)]
struct TestHandler {
    started: AtomicUsize,
    release: Notify,
    finished: AtomicUsize,
}

impl Handler for TestHandler {
    async fn handle(&self, request: Request<Bytes>) -> Response<Bytes> {
        match request.uri().path() {
            "/echo" => {
                let len = request.body().len().to_string();
                response(StatusCode::OK, "text/plain", len.into_bytes())
            }
            "/slow" => {
                self.started.fetch_add(1, Ordering::SeqCst);
                self.release.notified().await;
                self.finished.fetch_add(1, Ordering::SeqCst);
                response(StatusCode::OK, "text/plain", b"done".to_vec())
            }
            "/panic" => panic!("handler bug"),
            _ => response(StatusCode::NOT_FOUND, "text/plain", Vec::new()),
        }
    }

    fn refuse(&self, method: &Method, path: &str, failure: &Failure) -> Response<Bytes> {
        let body = format!("{method} {path}: {failure}");
        response(failure.status(), "text/plain", body.into_bytes())
    }
}

struct Running {
    socket: PathBuf,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(max_body: usize, drain_timeout: Duration) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/test.sock");
    let (listener, file) = bind(&socket, &OPTIONS).unwrap();
    let handler = Arc::new(TestHandler::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let options = ServeOptions {
        name: "test",
        max_body,
        drain_timeout,
    };
    let server = tokio::spawn({
        let handler = handler.clone();
        async move {
            let _file = file;
            serve(listener, handler, options, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    Running {
        socket,
        handler,
        stop: Some(stop),
        server,
        _dir: dir,
    }
}

/// One request on its own connection; the whole response as text.
fn request(socket: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

async fn blocking_request(socket: &Path, method: &str, path: &str, body: Vec<u8>) -> String {
    let socket = socket.to_path_buf();
    let (method, path) = (method.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || request(&socket, &method, &path, &body).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn bind_sets_modes_and_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sub/a.sock");
    let (listener, file) = bind(&socket, &OPTIONS).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(file.path(), socket);

    // A live socket is never taken over.
    let e = bind(&socket, &OPTIONS).unwrap_err();
    assert!(matches!(e, BindError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("is in use"), "{e}");

    // Once nobody listens, it is stale and replaced.
    drop(listener);
    std::mem::forget(file); // leave the socket file behind, as a crash would
    assert!(socket.exists());
    let (_listener, file) = bind(&socket, &OPTIONS).unwrap();
    assert!(
        UnixStream::connect(&socket).is_ok(),
        "the new socket listens"
    );
    drop(file);
    assert!(
        !socket.exists(),
        "dropping the file guard removes the socket"
    );

    // Anything else is left alone.
    std::fs::write(&socket, b"data").unwrap();
    let e = bind(&socket, &OPTIONS).unwrap_err();
    assert!(matches!(e, BindError::NotASocket { .. }), "{e}");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"data");
}

#[tokio::test]
async fn bodies_reach_the_handler_and_oversize_ones_get_a_readable_400() {
    let running = start(1024, Duration::from_secs(5)).await;
    let answer = blocking_request(&running.socket, "POST", "/echo", vec![b'x'; 1000]).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n1000"), "{answer}");

    // Far over the limit but under the drain limit: the client still reads
    // the answer (the body is drained, not left to reset the socket).
    let answer = blocking_request(&running.socket, "POST", "/echo", vec![b'x'; 4 << 20]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.ends_with("POST /echo: request body larger than 1024 bytes"),
        "{answer}"
    );

    let answer = blocking_request(&running.socket, "GET", "/panic", Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("request handler failed"), "{answer}");

    // The server carries on.
    let answer = blocking_request(&running.socket, "GET", "/echo", Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_client_hanging_up_does_not_cancel_its_request() {
    let running = start(1024, Duration::from_secs(5)).await;
    let mut stream = UnixStream::connect(&running.socket).unwrap();
    write!(
        stream,
        "GET /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    // Wait until the handler runs, then hang up.
    while running.handler.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.handler.release.notify_one();
    for _ in 0..200 {
        if running.handler.finished.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the handler was cancelled with its connection");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_requests_in_flight_finish() {
    let mut running = start(1024, Duration::from_secs(5)).await;
    let in_flight = tokio::spawn({
        let socket = running.socket.clone();
        async move { blocking_request(&socket, "GET", "/slow", Vec::new()).await }
    });
    while running.handler.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !running.server.is_finished(),
        "waits for the request in flight"
    );
    assert!(
        request(&running.socket, "GET", "/echo", b"").is_err(),
        "no new connections once shutdown is asked"
    );
    running.handler.release.notify_one();
    let answer = in_flight.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
        "{answer}"
    );
    tokio::time::timeout(Duration::from_secs(5), &mut running.server)
        .await
        .expect("the server stops once its requests are done")
        .unwrap();
    assert!(!running.socket.exists(), "the socket file is removed");
}

#[tokio::test]
async fn a_request_outliving_the_drain_timeout_is_abandoned() {
    let mut running = start(1024, Duration::from_millis(200)).await;
    let socket = running.socket.clone();
    let stuck = tokio::task::spawn_blocking(move || request(&socket, "GET", "/slow", b""));
    while running.handler.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut running.server)
        .await
        .expect("the server gives up on the request after the timeout")
        .unwrap();
    running.handler.release.notify_one();
    drop(stuck);
}
