//! Failure paths, driven by the engine's fault seam (`test-seams`): a data
//! sync, a journal write or a metadata write that fails stops the pool's
//! writes and is never retried as if nothing happened; a data write that
//! fails after it was acknowledged is reported by the next flush of each
//! handle, once, and its blocks read as EIO, never as stale or wrong bytes.
//! After each, a reopen finds a state at or after the last acknowledged
//! flush.

use std::sync::Arc;

use ballast_engine::io::Faults;
use ballast_engine::{Error, Pool, PoolConfig, BLOCK_SIZE};

const BS: usize = BLOCK_SIZE as usize;

fn block(seed: u8) -> Vec<u8> {
    (0..BS).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

fn faulty(dir: &std::path::Path) -> (PoolConfig, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let mut config = PoolConfig::new(dir);
    config.faults = Some(faults.clone());
    (config, faults)
}

/// A pool with a fault plan and its volume "v" (1 MiB), open.
async fn faulty_volume(dir: &std::path::Path) -> (Pool, ballast_engine::Volume, Arc<Faults>) {
    let (config, faults) = faulty(dir);
    let pool = Pool::open(config).unwrap();
    pool.create_volume("v", 1 << 20).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    (pool, v, faults)
}

/// Closes `pool` (and its handle) and opens the pool again without faults.
async fn reopen(pool: Pool, v: ballast_engine::Volume, dir: &std::path::Path) -> Pool {
    pool.close().await.unwrap();
    drop((v, pool));
    Pool::open(PoolConfig::new(dir)).unwrap()
}

async fn read_block(pool: &Pool, at: usize) -> ballast_engine::Result<Vec<u8>> {
    let mut buf = vec![0u8; BS];
    pool.open_volume("v")?
        .read((at * BS) as u64, &mut buf)
        .await?;
    Ok(buf)
}

/// Every change after the failure is refused with the same error, and the
/// pool says why.
async fn assert_refuses_writes(pool: &Pool, cause: &str) {
    let v = pool.open_volume("v").unwrap();
    let err = v.write(0, &block(9)).await.unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains(cause), "{err}");
    assert!(matches!(v.flush().await, Err(Error::Failed { .. })));
    assert!(matches!(
        v.trim(0, BS as u64).await,
        Err(Error::Failed { .. })
    ));
    assert!(matches!(
        pool.create_volume("w", 1 << 20).await,
        Err(Error::Failed { .. })
    ));
    assert!(matches!(
        pool.create_snapshot("v", None).await,
        Err(Error::Failed { .. })
    ));
    let failed = pool.stats().failed.expect("stats show the failure");
    assert!(failed.contains(cause), "{failed}");
}

#[tokio::test]
async fn a_failed_data_sync_stops_writes_and_is_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, v, faults) = faulty_volume(dir.path()).await;
    v.write(0, &block(1)).await.unwrap();
    v.flush().await.unwrap();

    v.write(0, &block(2)).await.unwrap();
    v.write(BS as u64, &block(3)).await.unwrap();
    faults.fail_syncs(1);
    let err = v.flush().await.unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("data file sync failed"), "{err}");
    // The next sync would succeed: a retry would acknowledge writes the
    // kernel may have dropped. The pool refuses instead.
    assert_refuses_writes(&pool, "data file sync failed").await;
    // Reads go on.
    assert_eq!(read_block(&pool, 0).await.unwrap(), block(2));
    // The unacknowledged writes may or may not have landed; what was
    // acknowledged did, and every block reads back whole.
    let pool = reopen(pool, v, dir.path()).await;
    let b0 = read_block(&pool, 0).await.unwrap();
    let b1 = read_block(&pool, 1).await.unwrap();
    assert!(
        (b0 == block(1) && b1 == vec![0; BS]) || (b0 == block(2) && b1 == block(3)),
        "a state at or after the last acknowledged flush"
    );
    assert!(pool.stats().failed.is_none(), "a reopen recovers");
    pool.open_volume("v")
        .unwrap()
        .write(0, &block(4))
        .await
        .unwrap();
    pool.flush().await.unwrap();
}

#[tokio::test]
async fn a_failed_journal_write_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, v, faults) = faulty_volume(dir.path()).await;
    v.write(0, &block(1)).await.unwrap();
    v.flush().await.unwrap();
    v.write(0, &block(2)).await.unwrap();
    // The data write is under way already; the next write is the record.
    faults.fail_writes(1);
    let err = v.flush().await.unwrap_err();
    assert!(err.to_string().contains("journal write failed"), "{err}");
    assert_refuses_writes(&pool, "journal write failed").await;
    let pool = reopen(pool, v, dir.path()).await;
    assert_eq!(
        read_block(&pool, 0).await.unwrap(),
        block(1),
        "the record never reached the disk"
    );
}

#[tokio::test]
async fn a_failed_metadata_write_stops_writes_and_the_journal_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, v, faults) = faulty_volume(dir.path()).await;
    for i in 0..8u8 {
        v.write(u64::from(i) * BS as u64, &block(i)).await.unwrap();
    }
    v.flush().await.unwrap();
    // A snapshot checkpoints first; that metadata write fails.
    faults.fail_meta(1);
    let err = pool.create_snapshot("v", Some("s")).await.unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err:?}");
    assert_refuses_writes(&pool, "metadata write failed").await;
    for i in 0..8u8 {
        assert_eq!(read_block(&pool, i.into()).await.unwrap(), block(i));
    }
    // The checkpoint never happened; the journal still holds the writes.
    let pool = reopen(pool, v, dir.path()).await;
    for i in 0..8u8 {
        assert_eq!(read_block(&pool, i.into()).await.unwrap(), block(i));
    }
    assert!(pool.snapshots("v").unwrap().is_empty());
    pool.create_snapshot("v", Some("s")).await.unwrap();
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_write_that_fails_after_its_acknowledgement_reads_as_eio() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, v, faults) = faulty_volume(dir.path()).await;
    v.write(0, &block(1)).await.unwrap();
    v.flush().await.unwrap();

    faults.fail_writes(1);
    v.write(0, &block(2)).await.unwrap(); // acknowledged: write-behind
    v.write(BS as u64, &block(3)).await.unwrap();
    let err = v.flush().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("did not reach the disk"), "{err}");
    // Never the stale block 1, never garbage: EIO.
    let err = read_block(&pool, 0).await.unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err:?}");
    assert_eq!(read_block(&pool, 1).await.unwrap(), block(3));
    // Not a sync failure: the pool goes on, and the block can be rewritten.
    assert!(pool.stats().failed.is_none());
    v.flush().await.unwrap();
    let pool = reopen(pool, v, dir.path()).await;
    assert!(matches!(
        read_block(&pool, 0).await,
        Err(Error::Checksum { .. })
    ));
    let v = pool.open_volume("v").unwrap();
    v.write(0, &block(5)).await.unwrap();
    v.flush().await.unwrap();
    assert_eq!(read_block(&pool, 0).await.unwrap(), block(5));
}

/// A failure after the acknowledgement is reported by the next flush of
/// every handle that was open when it happened, once each.
#[tokio::test]
async fn a_failure_after_the_acknowledgement_is_reported_once_per_handle() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, a, faults) = faulty_volume(dir.path()).await;
    let b = pool.open_volume("v").unwrap();
    faults.fail_writes(1);
    a.write(0, &block(1)).await.unwrap(); // acknowledged: write-behind
    let later = pool.open_volume("v").unwrap();

    let err = a.flush().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("did not reach the disk"), "{err}");
    a.flush().await.unwrap();
    a.clone().flush().await.unwrap();
    assert!(b.flush().await.is_err(), "each handle hears of it");
    b.flush().await.unwrap();
    later.flush().await.unwrap();
    pool.flush().await.unwrap();
}

/// A written-through handle's write returns once its data is on the disk:
/// a failure comes back to that write, the old data stays, and no flush
/// reports it later.
#[tokio::test]
async fn a_written_through_write_reports_its_own_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, v, faults) = faulty_volume(dir.path()).await;
    v.write(0, &block(1)).await.unwrap();
    v.flush().await.unwrap();

    let through = v.written_through();
    faults.fail_writes(1);
    let err = through.write(0, &block(2)).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(read_block(&pool, 0).await.unwrap(), block(1), "unchanged");
    v.flush().await.unwrap();
    through.flush().await.unwrap();
    through.write(0, &block(3)).await.unwrap();
    through.flush().await.unwrap();
    assert_eq!(read_block(&pool, 0).await.unwrap(), block(3));
    drop(through);
    let pool = reopen(pool, v, dir.path()).await;
    assert_eq!(read_block(&pool, 0).await.unwrap(), block(3));
}
