//! Test harness: an in-process NBD server over a unix socket and TCP, plus
//! helpers to find external clients (qemu-io, nbdinfo, fio, ...).
#![allow(dead_code)]

pub mod memory;
pub mod raw;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use ballast_nbd::{
    serve_tcp, serve_unix, tcp_uri, unix_uri, CancellationToken, ExportProvider, Server,
};

pub use memory::MemExports;

/// A running server; dropping it shuts it down.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub port: u16,
    pub exports: Arc<MemExports>,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Harness {
    pub fn start() -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BALLAST_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let exports = Arc::new(MemExports::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let provider: Arc<dyn ExportProvider> = exports.clone();
        let server = Server::new(provider);
        let port = runtime.block_on(async {
            let unix = tokio::net::UnixListener::bind(&socket).unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            tokio::spawn(serve_unix(unix, server.clone(), shutdown.clone()));
            tokio::spawn(serve_tcp(tcp, server, shutdown.clone()));
            port
        });
        Harness {
            dir,
            socket,
            port,
            exports,
            shutdown,
            runtime: Some(runtime),
        }
    }

    pub fn unix_uri(&self, export: &str) -> String {
        unix_uri(&self.socket, export)
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        tcp_uri("127.0.0.1", self.port, export)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
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
