//! Costs that must not grow with what the pool holds: open reads no map,
//! the metadata in memory stays within its budget whatever is written, a
//! lookup costs the same at any snapshot depth, and deletes leave no
//! metadata behind. (Speed and memory figures are measured by
//! `benches/scale.sh`; these check the mechanisms, deterministically.)

mod common;

use ballast_engine::{Pool, PoolConfig, BLOCK_SIZE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BS: u64 = BLOCK_SIZE;

fn block(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = vec![0u8; BS as usize];
    rng.fill(&mut b[..]);
    b
}

fn small(dir: &std::path::Path) -> PoolConfig {
    let mut config = PoolConfig::new(dir);
    config.meta_cache = 8 << 20;
    config
}

/// Node lookups (hits and misses) so far.
fn lookups(pool: &Pool) -> u64 {
    let c = pool.stats().meta_cache;
    c.hits + c.misses
}

#[tokio::test]
async fn metadata_memory_stays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(small(dir.path())).unwrap();
    let size = 4u64 << 30;
    pool.create_volume("v", size).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut written = Vec::new();
    // 30k scattered 4 KiB writes and no flush: the changes would need far
    // more than the budget in memory if nothing moved them to disk.
    for i in 0..30_000u64 {
        let at = rng.gen_range(0..size / BS);
        v.write(at * BS, &block(i)).await.unwrap();
        written.push((at, i));
        if i % 1000 == 0 {
            let c = pool.stats().meta_cache;
            assert!(c.overlays + c.nodes <= c.budget, "after {i} writes: {c:?}");
        }
    }
    // The last write of each block wins.
    let mut last = std::collections::HashMap::new();
    for (at, i) in written {
        last.insert(at, i);
    }
    let mut buf = vec![0u8; BS as usize];
    for (&at, &i) in last.iter().take(500) {
        v.read(at * BS, &mut buf).await.unwrap();
        assert!(buf == block(i), "block {at}");
    }
    pool.close().await.unwrap();
    drop((v, pool));

    // Open reads no map at all.
    let pool = Pool::open(small(dir.path())).unwrap();
    let c = pool.stats().meta_cache;
    assert_eq!((c.hits, c.misses, c.nodes), (0, 0, 0), "{c:?}");
    let v = pool.open_volume("v").unwrap();
    for (&at, &i) in last.iter().skip(500).take(500) {
        v.read(at * BS, &mut buf).await.unwrap();
        assert!(buf == block(i), "block {at} after reopen");
    }
}

/// Node lookups a 4 KiB read at `at` costs.
async fn lookups_for_read(pool: &Pool, v: &ballast_engine::Volume, at: u64) -> u64 {
    let before = lookups(pool);
    let mut buf = vec![0u8; BS as usize];
    v.read(at, &mut buf).await.unwrap();
    lookups(pool) - before
}

#[tokio::test]
async fn a_lookup_costs_the_same_at_any_snapshot_depth() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let size = 256u64 << 20;
    pool.create_volume("v", size).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    // A volume written all over, then 100 snapshots, each after a few
    // scattered writes.
    let data = vec![0x5au8; 1 << 20];
    for off in (0..size).step_by(1 << 20) {
        v.write(off, &data).await.unwrap();
    }
    pool.checkpoint().await.unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut at_zero = 0;
    for _ in 0..20 {
        let at = rng.gen_range(0..size / BS) * BS;
        at_zero = at_zero.max(lookups_for_read(&pool, &v, at).await);
    }
    for s in 0..100u64 {
        for k in 0..16 {
            let at = (s * 7919 + k * 104_729) % (size / BS);
            v.write(at * BS, &block(s * 100 + k)).await.unwrap();
        }
        pool.create_snapshot("v", Some(&format!("s{s}")))
            .await
            .unwrap();
    }
    let oldest = pool.open_snapshot("v", "s0").unwrap();
    let mut at_depth = 0;
    for _ in 0..20 {
        let at = rng.gen_range(0..size / BS) * BS;
        at_depth = at_depth.max(lookups_for_read(&pool, &v, at).await);
        at_depth = at_depth.max(lookups_for_read(&pool, &oldest, at).await);
    }
    assert!(at_zero <= 4, "a lookup visits the tree's depth: {at_zero}");
    assert!(
        at_depth <= at_zero + 1,
        "100 snapshots deep: {at_depth} node lookups against {at_zero} at depth 0"
    );
}

#[tokio::test]
async fn deletes_leave_no_metadata_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    pool.create_volume("v", 64 << 20).await.unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..2000u64 {
        v.write((i * 37 % 16384) * BS, &block(i)).await.unwrap();
        if i % 400 == 399 {
            pool.create_snapshot("v", Some(&format!("s{i}")))
                .await
                .unwrap();
        }
    }
    pool.clone_volume("c", "v", "s799").await.unwrap();
    let c = pool.open_volume("c").unwrap();
    for i in 0..300u64 {
        c.write((i * 11 % 16384) * BS, &block(i + 9000))
            .await
            .unwrap();
    }
    pool.create_snapshot("c", Some("x")).await.unwrap();
    pool.delete_snapshot("v", "s399").await.unwrap();
    pool.delete_volume("c").await.unwrap();
    pool.delete_volume("v").await.unwrap();
    common::assert_nothing_left(&pool).await;
}
