//! Writes are acknowledged before their data is on the disk (write-behind),
//! so everything that reads the disk must wait for the writes in flight: a
//! read right after a write, a partial-block write that merges with it, and
//! the read-ahead. Checked on both I/O backends.

use ballast_engine::{IoMode, Pool, PoolConfig, Volume};

const MIB: u64 = 1 << 20;
const WRITES: u64 = 32;

/// 1 MiB of pattern `seed`: distinct per seed, no all-zero block.
fn pattern(seed: u64) -> Vec<u8> {
    (0..MIB)
        .map(|i| ((i.wrapping_mul(2654435761) >> 7) as u8 ^ seed as u8) | 1)
        .collect()
}

async fn write_owned(v: &Volume, offset: u64, data: &[u8]) {
    let mut buf = v.buffer(data.len());
    buf.copy_from_slice(data);
    v.write_owned(offset, buf).await.unwrap();
}

async fn reads_see_writes_in_flight(io: IoMode) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PoolConfig::new(dir.path());
    config.io = io;
    let pool = Pool::open(config).unwrap();
    pool.create_volume("v", 2 * WRITES * MIB).await.unwrap();
    let v = pool.open_volume("v").unwrap();

    // 32 MiB acknowledged in a burst, most of it still on its way to the
    // disk when the reads below start.
    for i in 0..WRITES {
        write_owned(&v, i * MIB, &pattern(i)).await;
    }
    // A partial-block write merges with a block whose write may be in flight.
    v.write(3 * MIB + 100, b"merged").await.unwrap();
    let reader = pool.open_volume("v").unwrap();
    for i in 0..WRITES {
        let mut expected = pattern(i);
        if i == 3 {
            expected[100..106].copy_from_slice(b"merged");
        }
        // Sequential read_owned calls: the read-ahead path.
        let data = reader.read_owned(i * MIB, MIB as usize).await.unwrap();
        assert!(*data == expected, "read_owned of MiB {i}");
    }

    // Overwrites in flight, read back at once through the copying path.
    for i in 0..WRITES {
        write_owned(&v, i * MIB, &pattern(i + 100)).await;
    }
    for i in (0..WRITES).rev() {
        let mut got = vec![0u8; MIB as usize];
        v.read(i * MIB, &mut got).await.unwrap();
        assert!(got == pattern(i + 100), "read of MiB {i}");
    }

    // A flush waits for them all: the reopened pool holds the last data.
    v.flush().await.unwrap();
    pool.close().await.unwrap();
    drop((v, reader, pool));
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..WRITES {
        let data = v.read_owned(i * MIB, MIB as usize).await.unwrap();
        assert!(*data == pattern(i + 100), "MiB {i} after reopening");
    }
}

#[tokio::test]
async fn reads_see_writes_in_flight_uring() {
    reads_see_writes_in_flight(IoMode::Uring).await;
}

#[tokio::test]
async fn reads_see_writes_in_flight_sync() {
    reads_see_writes_in_flight(IoMode::Sync).await;
}
