//! A sequential stream of `read_owned` calls (what an NBD connection makes)
//! is read ahead, and what it reads is exactly what it would read without
//! read-ahead: a write landing inside the window is seen, and a damaged
//! block inside the window fails its own read with a checksum error and no
//! other.

mod common;

use ballast_engine::{Error, IoMode, Pool, PoolConfig, BLOCK_SIZE};
use common::damage_block;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;

/// The bytes of `[offset, offset + len)` under pattern `seed`: no block of
/// it is all zeros, so every block takes pool space.
fn pattern(seed: u8, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let z = (i ^ (i >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let z = (z ^ (z >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            ((z >> 56) as u8 ^ seed) | 1
        })
        .collect()
}

fn config(dir: &std::path::Path, io: IoMode) -> PoolConfig {
    let mut config = PoolConfig::new(dir);
    config.io = io;
    config
}

async fn sees_writes_inside_the_window(io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(config(dir.path(), io)).unwrap();
    pool.create_volume("v", SIZE).await.unwrap();
    let writer = pool.open_volume("v").unwrap();
    writer.write(0, &pattern(1, 0, SIZE)).await.unwrap();
    // The reader's own handle, as each NBD connection has.
    let reader = pool.open_volume("v").unwrap();
    for i in 0..4 {
        let data = reader.read_owned(i * MIB, MIB as usize).await.unwrap();
        assert!(*data == pattern(1, i * MIB, MIB), "MiB {i}");
    }
    // The stream now reads ahead past 4 MiB: rewrite one whole megabyte
    // and two blocks of another inside its window.
    writer
        .write(6 * MIB, &pattern(2, 6 * MIB, MIB))
        .await
        .unwrap();
    let partial = 9 * MIB + BLOCK_SIZE;
    writer
        .write(partial, &pattern(3, partial, 2 * BLOCK_SIZE))
        .await
        .unwrap();
    for i in 4..SIZE / MIB {
        let mut expected = pattern(if i == 6 { 2 } else { 1 }, i * MIB, MIB);
        if i == 9 {
            expected[BLOCK_SIZE as usize..3 * BLOCK_SIZE as usize].copy_from_slice(&pattern(
                3,
                partial,
                2 * BLOCK_SIZE,
            ));
        }
        let data = reader.read_owned(i * MIB, MIB as usize).await.unwrap();
        assert!(*data == expected, "MiB {i} ({io})");
    }
    let stats = pool.stats();
    assert!(
        stats.read_ahead_used >= 16 * MIB && stats.read_ahead >= stats.read_ahead_used,
        "the stream was read ahead: {stats:?}"
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn sees_writes_inside_the_window_uring() {
    sees_writes_inside_the_window(IoMode::Uring).await;
}

#[tokio::test]
async fn sees_writes_inside_the_window_sync() {
    sees_writes_inside_the_window(IoMode::Sync).await;
}

#[tokio::test]
async fn a_damaged_block_fails_only_its_own_read() {
    let dir = tempfile::tempdir().unwrap();
    let victim = 8 * MIB + BLOCK_SIZE;
    let block = pattern(1, victim, BLOCK_SIZE);
    {
        let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
        pool.create_volume("v", SIZE).await.unwrap();
        let v = pool.open_volume("v").unwrap();
        v.write(0, &pattern(1, 0, SIZE)).await.unwrap();
        pool.close().await.unwrap();
    }
    damage_block(dir.path(), &block, 99, 0x10);

    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..SIZE / MIB {
        let read = v.read_owned(i * MIB, MIB as usize).await;
        if i == victim / MIB {
            let err = read.err().expect("the damaged block's read fails");
            assert!(
                matches!(err, Error::Checksum { offset, .. } if offset == victim),
                "{err:?}"
            );
        } else {
            assert!(*read.unwrap() == pattern(1, i * MIB, MIB), "MiB {i}");
        }
    }
    assert!(
        pool.stats().read_ahead_used > 0,
        "the stream was read ahead"
    );
    pool.close().await.unwrap();
}
