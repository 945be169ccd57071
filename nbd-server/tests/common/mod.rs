//! Test harness: an in-process NBD server over a unix socket and TCP, plus
//! helpers to find external clients (qemu-io, nbdinfo, fio, ...).
#![allow(dead_code, unreachable_pub)]

pub mod memory;
pub mod pki;
pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use ballast_engine::{Pool, PoolConfig};
use ballast_nbd::{
    serve_tcp, serve_unix, tcp_uri, unix_uri, CancellationToken, EngineExports, ExportProvider,
    Limits, Server, Tls,
};

pub use memory::MemExports;

/// A running server; dropping it shuts it down.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub port: u16,
    backend: Backend,
    shutdown: CancellationToken,
    serving: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// What the exports are backed by.
enum Backend {
    /// In-memory devices: protocol tests that inspect device state.
    Memory(Arc<MemExports>),
    /// A real ballast pool in the tempdir.
    Engine(Pool),
}

impl Harness {
    /// A server over in-memory exports.
    pub fn memory() -> Harness {
        Self::memory_with(Limits::default())
    }

    pub fn memory_with(limits: Limits) -> Harness {
        let exports = Arc::new(MemExports::default());
        let provider: Arc<dyn ExportProvider> = exports.clone();
        let dir = tempfile::tempdir().unwrap();
        Self::start(
            dir,
            Server::with_limits(provider, limits),
            Backend::Memory(exports),
            new_runtime(),
        )
    }

    /// A server over in-memory exports offering or requiring TLS.
    pub fn memory_tls(tls: Arc<Tls>, limits: Limits) -> Harness {
        let exports = Arc::new(MemExports::default());
        let provider: Arc<dyn ExportProvider> = exports.clone();
        let dir = tempfile::tempdir().unwrap();
        Self::start(
            dir,
            Server::with_tls(provider, limits, tls),
            Backend::Memory(exports),
            new_runtime(),
        )
    }

    /// A server over a ballast engine pool in a temporary directory.
    pub fn engine() -> Harness {
        Self::engine_with(|_| {})
    }

    /// The pool's io_uring is reaped on the server's runtime, as in the
    /// daemon.
    pub fn engine_with(configure: impl FnOnce(&mut PoolConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let runtime = new_runtime();
        let mut config = PoolConfig::new(dir.path().join("pool"));
        config.runtime = Some(runtime.handle().clone());
        configure(&mut config);
        let pool = Pool::open(config).unwrap();
        let provider: Arc<dyn ExportProvider> = Arc::new(EngineExports::new(pool.clone()));
        Self::start(dir, Server::new(provider), Backend::Engine(pool), runtime)
    }

    fn start(
        dir: tempfile::TempDir,
        server: Arc<Server>,
        backend: Backend,
        runtime: tokio::runtime::Runtime,
    ) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BALLAST_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let socket = dir.path().join("nbd.sock");
        let shutdown = CancellationToken::new();
        let (port, serving) = runtime.block_on(async {
            let unix = tokio::net::UnixListener::bind(&socket).unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            let serving = vec![
                tokio::spawn(serve_unix(unix, server.clone(), shutdown.clone())),
                tokio::spawn(serve_tcp(tcp, server, shutdown.clone())),
            ];
            (port, serving)
        });
        Harness {
            dir,
            socket,
            port,
            backend,
            shutdown,
            serving,
            runtime: Some(runtime),
        }
    }

    /// The in-memory exports (memory harness only).
    pub fn exports(&self) -> &MemExports {
        match &self.backend {
            Backend::Memory(exports) => exports,
            Backend::Engine(_) => panic!("not an in-memory harness"),
        }
    }

    pub fn pool(&self) -> &Pool {
        match &self.backend {
            Backend::Engine(pool) => pool,
            Backend::Memory(_) => panic!("not an engine harness"),
        }
    }

    pub fn create_volume(&self, name: &str, size: u64) {
        match &self.backend {
            Backend::Memory(exports) => drop(exports.create_volume(name, size)),
            Backend::Engine(pool) => {
                self.runtime()
                    .block_on(pool.create_volume(name, size))
                    .unwrap();
            }
        }
    }

    pub fn snapshot(&self, volume: &str, snapshot: &str) {
        match &self.backend {
            Backend::Memory(exports) => drop(exports.create_snapshot(volume, snapshot)),
            Backend::Engine(pool) => {
                self.runtime()
                    .block_on(pool.create_snapshot(volume, Some(snapshot)))
                    .unwrap();
            }
        }
    }

    /// Everything export `name` (`VOL` or `VOL@SNAP`) reads as.
    pub fn contents(&self, name: &str) -> Vec<u8> {
        match &self.backend {
            Backend::Memory(exports) => exports.device(name).contents(),
            Backend::Engine(pool) => {
                let volume = match name.split_once('@') {
                    Some((v, s)) => pool.open_snapshot(v, s).unwrap(),
                    None => pool.open_volume(name).unwrap(),
                };
                let mut buf = vec![0u8; volume.size().unwrap() as usize];
                self.runtime().block_on(volume.read(0, &mut buf)).unwrap();
                buf
            }
        }
    }

    /// Cancels the server and reports whether both listeners finished
    /// (every connection drained) within `timeout`.
    pub fn shutdown(&mut self, timeout: std::time::Duration) -> bool {
        self.shutdown.cancel();
        let serving = std::mem::take(&mut self.serving);
        self.runtime().block_on(async {
            tokio::time::timeout(timeout, async {
                for s in serving {
                    s.await.unwrap().unwrap();
                }
            })
            .await
            .is_ok()
        })
    }

    pub fn unix_uri(&self, export: &str) -> String {
        unix_uri(&self.socket, export, false)
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        tcp_uri("127.0.0.1", self.port, export, false)
    }

    /// `nbds+unix://` for `export`, with `query` (e.g. `tls-psk-file=...`)
    /// appended.
    pub fn tls_unix_uri(&self, export: &str, query: &str) -> String {
        format!("{}&{query}", unix_uri(&self.socket, export, true))
    }

    /// `nbds+unix://USER@/EXPORT?socket=...&tls-psk-file=PSK`: the user
    /// in the URI is the PSK username.
    pub fn psk_unix_uri(&self, user: &str, export: &str, psk: &Path) -> String {
        let uri = unix_uri(&self.socket, export, true);
        let uri = uri.replacen(":///", &format!("://{user}@/"), 1);
        format!("{uri}&tls-psk-file={}", psk.display())
    }

    /// `nbds://localhost:PORT/EXPORT?QUERY` (localhost: the name the
    /// test server certificate is for).
    pub fn tls_tcp_uri(&self, export: &str, query: &str) -> String {
        format!("{}?{query}", tcp_uri("localhost", self.port, export, true))
    }

    /// `nbds://USER@localhost:PORT/EXPORT?tls-psk-file=PSK`.
    pub fn psk_tcp_uri(&self, user: &str, export: &str, psk: &Path) -> String {
        let uri = tcp_uri(&format!("{user}@localhost"), self.port, export, true);
        format!("{uri}?tls-psk-file={}", psk.display())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let (Some(rt), Backend::Engine(pool)) = (&self.runtime, &self.backend) {
            let _ = rt.block_on(pool.close());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// Whether an external program is available. Under CI=true a missing
/// program fails the test; elsewhere the test is skipped with a message.
pub fn require(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} is required under CI=true; run scripts/install-test-deps.sh");
        }
        eprintln!("SKIP: {program} not installed (scripts/install-test-deps.sh installs it)");
    }
    found
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that is expected to fail.
pub fn run_failing(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn random_file(path: &Path, len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}
