//! Helpers shared by the engine's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;

/// Flips the bits `mask` of byte `at` in the pool data file's copy of
/// `block`, as a failing disk would; the pool under `root` must be closed.
pub fn damage_block(root: &Path, block: &[u8], at: usize, mask: u8) {
    let path = root.join("pool.data");
    let mut raw = std::fs::read(&path).unwrap();
    let start = raw
        .windows(block.len())
        .position(|w| w == block)
        .expect("block is in the data file");
    raw[start + at] ^= mask;
    std::fs::write(&path, &raw).unwrap();
}

/// Once every volume is deleted: after the checkpoints that delete the
/// nodes the deletes retired, the pool holds no map, dead list, snapshot
/// or volume record and no block.
pub async fn assert_nothing_left(pool: &ballast_engine::Pool) {
    pool.checkpoint().await.unwrap();
    pool.checkpoint().await.unwrap();
    let keys = pool.metadata_keys();
    for kind in ['N', 'G', 'D', 'E', 'P', 'V', 'X'] {
        assert_eq!(keys.get(&kind), None, "{kind} keys left: {keys:?}");
    }
    assert_eq!(pool.stats().used, 0, "blocks leaked");
}
