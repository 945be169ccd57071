//! A pool capped by `max_size` fills up: writes then fail with a clear
//! no-space error (ENOSPC), change nothing, and everything written before
//! stays intact. Freeing space makes writes work again. A pool whose
//! filesystem fills up does the same, and finds out before it acknowledges
//! the write, not while the write is on its way to the disk.

use ballast_engine::{Error, Pool, PoolConfig, Volume};

const CHUNK: usize = 128 << 10;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (j as u8) ^ (i as u8).wrapping_mul(97) ^ 0x5a)
        .collect()
}

/// Writes chunks from the start of `v` until a write fails; returns how
/// many succeeded and the error. More than `most` successes fail the test
/// with `too_many`.
async fn write_until_refused(v: &Volume, most: usize, too_many: &str) -> (usize, Error) {
    let mut written = 0;
    loop {
        match v.write((written * CHUNK) as u64, &chunk(written)).await {
            Ok(()) => written += 1,
            Err(e) => return (written, e),
        }
        assert!(written <= most, "{too_many}");
    }
}

#[tokio::test]
async fn full_pool_answers_enospc_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1u64 << 20;
    let pool = Pool::open(PoolConfig {
        max_size: Some(cap),
        ..PoolConfig::new(dir.path())
    })
    .unwrap();
    pool.create_volume("v", 4 << 20).await.unwrap();
    let v = pool.open_volume("v").unwrap();

    let (written, err) = write_until_refused(&v, 8, "a 1 MiB pool accepted more than 1 MiB").await;
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("pool is full"), "{err}");
    assert_eq!(written, 8, "the whole cap is usable");

    // The failed write changed nothing; earlier data is intact.
    let mut buf = vec![0u8; CHUNK];
    v.read((written * CHUNK) as u64, &mut buf).await.unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    for i in 0..written {
        v.read((i * CHUNK) as u64, &mut buf).await.unwrap();
        assert!(buf == chunk(i), "chunk {i} damaged");
    }
    // Overwriting in place also needs new blocks (redirect-on-write).
    assert!(matches!(
        v.write(0, &chunk(99)).await,
        Err(Error::NoSpace(_))
    ));
    v.read(0, &mut buf).await.unwrap();
    assert!(buf == chunk(0));
    assert!(
        std::fs::metadata(dir.path().join("pool.data"))
            .unwrap()
            .len()
            <= cap + ballast_engine::RESERVED_BYTES,
        "the cap is on volume data; the header and the journal come on top"
    );

    // Trimming gives space back once committed; the write then succeeds.
    v.trim(0, 2 * CHUNK as u64).await.unwrap();
    v.flush().await.unwrap();
    v.write(0, &chunk(42)).await.unwrap();
    v.read(0, &mut buf).await.unwrap();
    assert!(buf == chunk(42));
    assert_eq!(pool.stats().used, 7 * CHUNK as u64);
}

/// A small tmpfs mounted for the test's lifetime (needs root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs(dir));
        }
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "mounting a tmpfs needs root, which CI=true provides"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn full_filesystem_answers_enospc_before_acknowledging() {
    let Some(fs) = Tmpfs::mount("100m") else {
        return;
    };
    let root = fs.0.path().join("pool");
    let pool = Pool::open(PoolConfig::new(&root)).unwrap();
    pool.create_volume("v", 1 << 30).await.unwrap();
    let v = pool.open_volume("v").unwrap();

    let (written, err) =
        write_until_refused(&v, 800, "a 100 MiB filesystem took more than 100 MiB").await;
    assert!(matches!(err, Error::NoSpace(_)), "{err:?}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("filesystem"), "{err}");
    assert!(written >= 64, "only {written} chunks fitted");

    // Every acknowledged write reached the disk: the flush reports no
    // failure, and the data reads back, also after reopening.
    v.flush().await.unwrap();
    let mut buf = vec![0u8; CHUNK];
    v.read((written * CHUNK) as u64, &mut buf).await.unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "the refused write changed nothing"
    );
    pool.close().await.unwrap();
    drop((v, pool));
    let pool = Pool::open(PoolConfig::new(&root)).unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..written {
        v.read((i * CHUNK) as u64, &mut buf).await.unwrap();
        assert!(buf == chunk(i), "chunk {i} damaged");
    }
    pool.close().await.unwrap();
}
