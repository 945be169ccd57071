//! Shared test fixtures: a real engine pool on a tempdir, deterministic
//! volume contents, and a real S3 server (moto_server) started per test.
#![allow(dead_code, unreachable_pub)]

pub mod scenarios;
// The moto start shared with the workspace's own S3 tests.
#[path = "../../../tests/moto/spawn.rs"]
mod spawn;

// Like the rest of this module, not every test binary uses it.
#[allow(unused_imports)]
pub use spawn::moto_binary;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_backupstore::{BackupKey, BackupStore, Progress, StoreOptions, StoreUrl};
use ballast_engine::{Pool, PoolConfig};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tempfile::TempDir;

/// Chunk size used by the tests: small, so a few MiB make many chunks.
pub const CHUNK: u64 = 64 << 10;

pub fn store_options() -> StoreOptions {
    StoreOptions {
        chunk_size: Some(CHUNK),
        ..StoreOptions::default()
    }
}

/// The test options with a backup key (an encrypted store).
pub fn keyed_options(key: Option<&Arc<BackupKey>>) -> StoreOptions {
    StoreOptions {
        key: key.cloned(),
        ..store_options()
    }
}

/// A handle on `url` with `key`.
pub async fn open_with(url: &StoreUrl, key: Option<&Arc<BackupKey>>) -> BackupStore {
    BackupStore::open(url, keyed_options(key)).await.unwrap()
}

pub fn file_url(dir: &TempDir, name: &str) -> StoreUrl {
    format!("file://{}", dir.path().join(name).display())
        .parse()
        .unwrap()
}

pub fn s3_url(endpoint: &str, bucket: &str, prefix: &str) -> StoreUrl {
    format!("s3://{bucket}/{prefix}?endpoint={endpoint}")
        .parse()
        .unwrap()
}

pub fn open_pool() -> (TempDir, Pool) {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path().join("pool"))).unwrap();
    (dir, pool)
}

/// Writes mixed content into a new volume of `size` bytes: per chunk, 40%
/// random data, 30% zeros (left as holes), 30% one repeated pattern, plus a
/// chunk of explicit zeros written as data.
pub async fn make_volume(pool: &Pool, name: &str, size: u64, seed: u64) {
    pool.create_volume(name, size).await.unwrap();
    let vol = pool.open_volume(name).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pattern = vec![0u8; CHUNK as usize];
    StdRng::seed_from_u64(4242).fill_bytes(&mut pattern);
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..size / CHUNK {
        match rng.gen_range(0..10) {
            0..=3 => {
                rng.fill_bytes(&mut buf);
                vol.write(i * CHUNK, &buf).await.unwrap();
            }
            4..=6 => {}
            _ => vol.write(i * CHUNK, &pattern).await.unwrap(),
        }
    }
    vol.write(CHUNK, &vec![0u8; CHUNK as usize]).await.unwrap();
    vol.flush().await.unwrap();
}

/// Overwrites `runs` random chunk-aligned chunks with new random data;
/// returns the chunk indices changed.
pub async fn change_chunks(pool: &Pool, name: &str, runs: usize, seed: u64) -> Vec<u64> {
    let vol = pool.open_volume(name).unwrap();
    let chunks = vol.size().unwrap() / CHUNK;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut changed = std::collections::BTreeSet::new();
    while changed.len() < runs {
        changed.insert(rng.gen_range(0..chunks));
    }
    let mut buf = vec![0u8; CHUNK as usize];
    for &i in &changed {
        rng.fill_bytes(&mut buf);
        vol.write(i * CHUNK, &buf).await.unwrap();
    }
    vol.flush().await.unwrap();
    changed.into_iter().collect()
}

/// Reads a whole volume or snapshot through the engine.
pub async fn read_all(pool: &Pool, volume: &str, snapshot: Option<&str>) -> Vec<u8> {
    let vol = match snapshot {
        Some(s) => pool.open_snapshot(volume, s).unwrap(),
        None => pool.open_volume(volume).unwrap(),
    };
    let mut buf = vec![0u8; vol.size().unwrap() as usize];
    vol.read(0, &mut buf).await.unwrap();
    buf
}

/// Asserts two images are equal without printing megabytes on failure.
pub fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(pos) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {pos}");
    }
}

/// Counts progress and can fire a callback once a threshold is crossed.
#[derive(Default)]
pub struct Counter {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub trigger: Option<(u64, Box<dyn Fn() + Send + Sync>)>,
    fired: std::sync::atomic::AtomicBool,
}

impl Counter {
    pub fn with_trigger(at: u64, f: impl Fn() + Send + Sync + 'static) -> Self {
        Counter {
            trigger: Some((at, Box::new(f))),
            ..Counter::default()
        }
    }
}

impl Progress for Counter {
    fn start(&self, _phase: &str, total: u64) {
        self.total.store(total, Ordering::SeqCst);
        self.done.store(0, Ordering::SeqCst);
    }
    fn advance(&self, done: u64) {
        let now = self.done.fetch_add(done, Ordering::SeqCst) + done;
        if let Some((at, f)) = &self.trigger {
            if now >= *at && !self.fired.swap(true, Ordering::SeqCst) {
                f();
            }
        }
    }
    fn finish(&self) {}
}

pub async fn file_store(dir: &TempDir) -> BackupStore {
    let url: StoreUrl = format!("file://{}", dir.path().join("backups").display())
        .parse()
        .unwrap();
    BackupStore::open(&url, store_options()).await.unwrap()
}

// ---- moto_server ----------------------------------------------------------

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Credentials for the test server, through the standard AWS environment
/// variables (the only place the store takes them from). Set once per test
/// binary: every S3 test passes through here before it builds a client.
pub fn set_test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A moto_server process this test started; killed (by its PID) on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    bin: PathBuf,
}

impl Moto {
    /// Starts moto on a port it picks itself.
    pub fn start(bin: &Path) -> Moto {
        Moto::start_with_env(bin, &[])
    }

    /// A server with extra environment, e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0`
    /// to check every request's credentials.
    pub fn start_with_env(bin: &Path, env: &[(&str, &str)]) -> Moto {
        Moto::start_on(bin, 0, env)
    }

    /// Starts moto on `port` (0: one it picks).
    fn start_on(bin: &Path, port: u16, env: &[(&str, &str)]) -> Moto {
        set_test_credentials();
        let (child, port) = spawn::spawn(bin, port, env);
        Moto {
            child,
            port,
            bin: bin.to_path_buf(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills this server (SIGKILL to its PID) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh server on the same port (moto keeps data in memory),
    /// so that clients of the first reach the second.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Wait until the port is free again.
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "port {port} stayed busy");
            std::thread::sleep(Duration::from_millis(100));
        }
        *self = Moto::start_on(&self.bin.clone(), port, &[]);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub async fn create_bucket(endpoint: &str, bucket: &str) {
    s3_client(endpoint)
        .await
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
}

pub async fn s3_store(endpoint: &str, bucket: &str, prefix: &str) -> BackupStore {
    let url: StoreUrl = format!("s3://{bucket}/{prefix}?endpoint={endpoint}")
        .parse()
        .unwrap();
    BackupStore::open(&url, store_options()).await.unwrap()
}

/// A TCP relay in front of a server, which the test can cut at once (all
/// connections dropped, further connections refused): the server dies from
/// the client's point of view while its data stays inspectable.
pub struct Relay {
    pub port: u16,
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop2.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        conns.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                }
            }
            // Dropping the listener and every connection task cuts them all.
            conns.abort_all();
        });
        Relay { port, stop, task }
    }

    pub fn cutter(&self) -> Arc<tokio::sync::Notify> {
        self.stop.clone()
    }

    pub async fn wait_cut(self) {
        let _ = self.task.await;
    }
}
