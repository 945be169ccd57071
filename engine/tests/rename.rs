//! Renaming a volume: data, snapshots and clones follow it, and the new
//! name survives a reopen.

use ballast_engine::{Pool, PoolConfig};

#[tokio::test]
async fn rename_keeps_data_snapshots_and_clone_origins() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    pool.create_volume("a", 1 << 20).await.unwrap();
    pool.open_volume("a")
        .unwrap()
        .write(0, &[5u8; 4096])
        .await
        .unwrap();
    pool.create_snapshot("a", Some("s")).await.unwrap();
    pool.clone_volume("b", "a", "s").await.unwrap();
    let old_handle = pool.open_volume("a").unwrap();

    pool.rename_volume("a", "c").await.unwrap();
    assert!(pool.volume("a").is_err());
    assert!(
        old_handle.size().is_err(),
        "handles on the old name stop working"
    );
    assert_eq!(pool.volume("b").unwrap().origin.as_deref(), Some("c@s"));
    assert_eq!(pool.snapshots("c").unwrap()[0].name, "s");
    assert!(pool.rename_volume("c", "b").await.is_err(), "target exists");
    assert!(pool.rename_volume("nope", "d").await.is_err());
    assert!(pool.rename_volume("c", "../d").await.is_err());
    pool.close().await.unwrap();
    drop((pool, old_handle));

    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    assert_eq!(pool.volume("b").unwrap().origin.as_deref(), Some("c@s"));
    let mut buf = [0u8; 4096];
    pool.open_volume("c")
        .unwrap()
        .read(0, &mut buf)
        .await
        .unwrap();
    assert_eq!(buf, [5u8; 4096]);
    assert!(
        pool.delete_volume("c").await.is_err(),
        "its clone still depends on it"
    );
    pool.delete_volume("b").await.unwrap();
    pool.delete_volume("c").await.unwrap();
}
