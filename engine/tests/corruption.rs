//! A flipped byte in the data file makes reads of that block fail with a
//! checksum error (EIO), never return the damaged bytes; other blocks still
//! read correctly.

mod common;

use ballast_engine::{Error, Pool, PoolConfig, BLOCK_SIZE};
use common::damage_block;

const BS: usize = BLOCK_SIZE as usize;

fn noise(seed: u8) -> Vec<u8> {
    (0..BS)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

#[tokio::test]
async fn flipped_byte_is_detected_per_block() {
    let dir = tempfile::tempdir().unwrap();
    let victim = noise(1);
    let bystander = noise(2);
    {
        let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
        pool.create_volume("v", 64 * BLOCK_SIZE).await.unwrap();
        let v = pool.open_volume("v").unwrap();
        v.write(0, &victim).await.unwrap();
        v.write(5 * BLOCK_SIZE, &bystander).await.unwrap();
        pool.close().await.unwrap();
    }

    damage_block(dir.path(), &victim, 1234, 0x40);

    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let v = pool.open_volume("v").unwrap();
    let mut buf = vec![0u8; BS];
    let err = v.read(0, &mut buf).await.unwrap_err();
    assert!(matches!(err, Error::Checksum { offset: 0, .. }), "{err:?}");
    assert_eq!(err.errno(), libc::EIO);
    // So does the owned-buffer read, which reads a single run in place.
    let err = v.read_owned(0, BS).await.err().expect("checksum error");
    assert!(matches!(err, Error::Checksum { offset: 0, .. }), "{err:?}");
    // A partial read of the damaged block and a read spanning it fail too.
    assert!(v.read(100, &mut [0u8; 10]).await.is_err());
    assert!(v.read_owned(100, 10).await.is_err());
    let mut wide = vec![0u8; 8 * BS];
    assert!(v.read(0, &mut wide).await.is_err());
    // The other block and the holes are fine.
    v.read(5 * BLOCK_SIZE, &mut buf).await.unwrap();
    assert_eq!(buf, bystander);
    v.read(BLOCK_SIZE, &mut buf).await.unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    // Rewriting the block heals it (redirect-on-write puts it elsewhere).
    v.write(0, &victim).await.unwrap();
    v.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, victim);
}
