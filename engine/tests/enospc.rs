//! A pool capped by `max_size` fills up: writes then fail with a clear
//! no-space error (ENOSPC), change nothing, and everything written before
//! stays intact. Freeing space makes writes work again.

use ballast_engine::{Error, Pool, PoolConfig};

const CHUNK: usize = 128 << 10;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (j as u8) ^ (i as u8).wrapping_mul(97) ^ 0x5a)
        .collect()
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

    let mut written = 0;
    let err = loop {
        match v.write((written * CHUNK) as u64, &chunk(written)).await {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written <= 8, "a 1 MiB pool accepted more than 1 MiB");
    };
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
            <= cap
    );

    // Trimming gives space back once committed; the write then succeeds.
    v.trim(0, 2 * CHUNK as u64).await.unwrap();
    v.flush().await.unwrap();
    v.write(0, &chunk(42)).await.unwrap();
    v.read(0, &mut buf).await.unwrap();
    assert!(buf == chunk(42));
    assert_eq!(pool.stats().used, 7 * CHUNK as u64);
}
