//! Reverting a head to its newest snapshot: the head reads as the
//! snapshot, what it wrote since is freed, the blocks it gives back to the
//! snapshot are never freed by a later delete of that snapshot, and a
//! crash at any metadata write of the revert leaves either the head as it
//! was or the snapshot's contents, with no block or record leaked.

mod common;

use std::sync::Arc;

use ballast_engine::io::Faults;
use ballast_engine::{Pool, PoolConfig, BLOCK_SIZE};

const BS: u64 = BLOCK_SIZE;
const SIZE: u64 = 16 << 20;

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / BS * 31 + i % 251) as u8) ^ seed as u8)
        .collect()
}

/// Writes the snapshot's contents (4 MiB of `a` in 64 KiB writes, so
/// several extents), takes snapshot `s`, then changes the head every way
/// a head changes: overwrites, new data, a trim, 4 KiB writes. Returns
/// the contents the snapshot and the head hold.
async fn diverge(pool: &Pool) -> (Vec<u8>, Vec<u8>) {
    pool.create_volume("v", SIZE).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    let mut snap = vec![0u8; SIZE as usize];
    for i in 0..64u64 {
        let data = pattern(1, 64 << 10);
        v.write(i * (64 << 10), &data).await.unwrap();
        snap[(i * (64 << 10)) as usize..((i + 1) * (64 << 10)) as usize].copy_from_slice(&data);
    }
    pool.create_snapshot("v", Some("s")).await.unwrap();
    let mut head = snap.clone();
    let mut put = |at: u64, data: &[u8]| {
        head[at as usize..at as usize + data.len()].copy_from_slice(data);
    };
    let over = pattern(2, 1 << 20);
    v.write(1 << 20, &over).await.unwrap();
    put(1 << 20, &over);
    let new = pattern(3, 2 << 20);
    v.write(8 << 20, &new).await.unwrap();
    put(8 << 20, &new);
    v.trim(3 << 20, 512 << 10).await.unwrap();
    put(3 << 20, &vec![0; 512 << 10]);
    for k in 0..100u64 {
        let at = (k * 7919 % (SIZE / BS)) * BS;
        let data = pattern(k + 10, BS);
        v.write(at, &data).await.unwrap();
        put(at, &data);
    }
    // Part of the change checkpointed, part still in the overlay.
    pool.checkpoint().await.unwrap();
    let late = pattern(4, 256 << 10);
    v.write(12 << 20, &late).await.unwrap();
    put(12 << 20, &late);
    (snap, head)
}

async fn contents(pool: &Pool, snapshot: Option<&str>) -> Vec<u8> {
    let h = match snapshot {
        Some(s) => pool.open_snapshot("v", s).unwrap(),
        None => pool.open_volume("v").unwrap(),
    };
    let mut buf = vec![0xeeu8; SIZE as usize];
    h.read(0, &mut buf).await.unwrap();
    buf
}

/// Deletes the snapshot (the head must keep what it shares with it),
/// then the volume: nothing may be left behind.
async fn delete_all(pool: &Pool, head: &[u8]) {
    pool.delete_snapshot("v", "s").await.unwrap();
    assert!(
        contents(pool, None).await == head,
        "head after the snapshot's delete"
    );
    pool.delete_volume("v").await.unwrap();
    common::assert_nothing_left(pool).await;
}

#[tokio::test]
async fn a_revert_brings_back_the_snapshot_and_frees_what_the_head_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let (snap, head) = diverge(&pool).await;
    pool.flush().await.unwrap();
    assert!(contents(&pool, None).await == head);
    let diverged = pool.stats().used;
    assert!(diverged > 4 << 20, "{diverged}");

    let older = pool.create_snapshot("v", Some("t")).await.unwrap();
    let e = pool.revert_volume("v", "s").await.unwrap_err();
    assert!(
        e.to_string().contains("only to its newest snapshot, v@t"),
        "{e}"
    );
    pool.delete_snapshot("v", &older.name).await.unwrap();
    assert!(pool.revert_volume("v", "nope").await.is_err());

    pool.revert_volume("v", "s").await.unwrap();
    pool.flush().await.unwrap();
    assert!(contents(&pool, None).await == snap, "head after the revert");
    assert!(contents(&pool, Some("s")).await == snap);
    assert_eq!(
        pool.stats().used,
        4 << 20,
        "the head's own blocks are freed"
    );
    assert_eq!(pool.snapshots("v").unwrap()[0].clones, 0);

    // The reverted head is an ordinary head: it diverges again.
    let v = pool.open_volume("v").unwrap();
    let again = pattern(5, 1 << 20);
    v.write(2 << 20, &again).await.unwrap();
    let mut head = snap.clone();
    head[(2 << 20) as usize..(3 << 20) as usize].copy_from_slice(&again);
    pool.close().await.unwrap();
    drop((v, pool));
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    assert!(contents(&pool, None).await == head, "after reopening");
    assert!(contents(&pool, Some("s")).await == snap);
    delete_all(&pool, &head).await;
}

#[tokio::test]
async fn a_crash_at_any_metadata_write_of_a_revert_loses_nothing() {
    let mut points = 0;
    for skip in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let mut config = PoolConfig::new(dir.path());
        config.faults = Some(faults.clone());
        let pool = Pool::open(config).unwrap();
        let (snap, head) = diverge(&pool).await;
        pool.flush().await.unwrap();
        faults.fail_meta_after(skip);
        let reverted = pool.revert_volume("v", "s").await;
        let _ = pool.close().await;
        drop(pool);
        let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
        let got = contents(&pool, None).await;
        assert!(
            got == head || got == snap,
            "crash at metadata write {skip}: the head is neither as it was nor the snapshot"
        );
        if reverted.is_ok() {
            assert!(got == snap, "a revert that returned is durable");
            break;
        }
        points += 1;
        assert!(contents(&pool, Some("s")).await == snap);
        // A revert the crash cut short (or undid) can be run again.
        pool.revert_volume("v", "s").await.unwrap();
        assert!(contents(&pool, None).await == snap);
        delete_all(&pool, &snap).await;
    }
    assert!(points >= 4, "the revert made only {points} metadata writes");
}
