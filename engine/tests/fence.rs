//! Fenced volumes: read-only to every handle but the owner's ungated ones,
//! snapshots still allowed, writable again once the fence goes; a fence
//! does not outlive the pool (its owner sets it again at open).

use ballast_engine::{Error, Pool, PoolConfig};

#[tokio::test]
async fn a_fence_refuses_writes_but_the_owners_and_lifts() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    pool.create_volume("a", 1 << 20).await.unwrap();
    let before = pool.open_volume("a").unwrap();
    pool.set_read_only("a", Some("a standby of db".into()))
        .unwrap();
    let user = pool.open_volume("a").unwrap();
    for h in [&before, &user] {
        assert!(h.read_only());
        let e = h.write(0, &[1u8; 4096]).await.unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        assert!(e.to_string().contains("a standby of db"), "{e}");
        assert!(h.write_zeroes(0, 4096).await.is_err());
        assert!(h.trim(0, 4096).await.is_err());
    }
    let owner = user.ungated();
    assert!(!owner.read_only());
    owner.write(0, &[7u8; 4096]).await.unwrap();
    pool.create_snapshot("a", Some("s")).await.unwrap();
    let mut buf = [0u8; 4096];
    user.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [7u8; 4096]);

    pool.set_read_only("a", None).unwrap();
    assert!(!user.read_only());
    user.write(0, &[9u8; 4096]).await.unwrap();
    pool.set_read_only("a", Some("again".into())).unwrap();
    pool.close().await.unwrap();
    drop((pool, before, user, owner));

    let pool = Pool::open(PoolConfig::new(dir.path())).unwrap();
    let h = pool.open_volume("a").unwrap();
    assert!(!h.read_only(), "a fence is not persisted");
    h.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [9u8; 4096]);
    pool.close().await.unwrap();
}
