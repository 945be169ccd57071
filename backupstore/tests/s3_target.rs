//! Backups to a real S3 server (moto_server), against the real engine.

mod common;

use std::sync::{Arc, Mutex};

use ballast_backupstore::{BackupStore, Error, NoProgress, StoreUrl};
use common::scenarios::{self, snapshot, stored_chunks, VOLUME_SIZE};
use common::*;

const BUCKET: &str = "ballast-test";

/// A fresh moto_server with the test bucket, or `None` to skip (never under CI=true).
async fn moto() -> Option<Moto> {
    let bin = moto_binary()?;
    let m = Moto::start(&bin);
    create_bucket(&m.endpoint(), BUCKET).await;
    Some(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_full_incremental_dedup() {
    let Some(m) = moto().await else { return };
    scenarios::full_incremental_dedup(&s3_store(&m.endpoint(), BUCKET, "team/backups").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_parent_snapshot_gone() {
    let Some(m) = moto().await else { return };
    scenarios::parent_snapshot_gone(&s3_store(&m.endpoint(), BUCKET, "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_delete_and_gc() {
    let Some(m) = moto().await else { return };
    scenarios::delete_and_gc(&s3_store(&m.endpoint(), BUCKET, "p").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_corruption() {
    let Some(m) = moto().await else { return };
    scenarios::corruption(&s3_store(&m.endpoint(), BUCKET, "p").await).await;
}

/// The scenarios above, in an encrypted store.
async fn encrypted_s3_store(m: &Moto) -> BackupStore {
    let key = Arc::new(ballast_backupstore::BackupKey::generate());
    open_with(&s3_url(&m.endpoint(), BUCKET, "sealed"), Some(&key)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_encrypted_full_incremental_dedup() {
    let Some(m) = moto().await else { return };
    scenarios::full_incremental_dedup(&encrypted_s3_store(&m).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_encrypted_delete_and_gc() {
    let Some(m) = moto().await else { return };
    scenarios::delete_and_gc(&encrypted_s3_store(&m).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_encrypted_corruption() {
    let Some(m) = moto().await else { return };
    scenarios::corruption(&encrypted_s3_store(&m).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_encryption() {
    let Some(m) = moto().await else { return };
    let e = m.endpoint();
    scenarios::encryption(&s3_url(&e, BUCKET, "plain"), &s3_url(&e, BUCKET, "sealed")).await;
}

/// The server goes away mid-backup (every connection cut, new ones
/// refused): the backup fails with one line, the chunks already uploaded
/// are there but no backup is listed, and a retry succeeds reusing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_lost_mid_backup() {
    let Some(m) = moto().await else { return };
    let relay = Relay::start(m.port).await;
    let via_relay = s3_store(&format!("http://127.0.0.1:{}", relay.port), BUCKET, "p").await;
    let direct = s3_store(&m.endpoint(), BUCKET, "p").await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 71).await;
    snapshot(&pool, "vol1", "s1").await;

    let cut = relay.cutter();
    let progress = Counter::with_trigger(VOLUME_SIZE / 3, move || cut.notify_one());
    let err = via_relay
        .backup(&pool, "vol1", Some("s1"), &progress)
        .await
        .unwrap_err();
    relay.wait_cut().await;
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    let uploaded = stored_chunks(&direct).await.len();
    assert!(uploaded > 0, "chunks were uploaded before the cut");
    assert!(
        direct.list(None).await.unwrap().is_empty(),
        "no backup is listed"
    );

    let b = direct
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    assert!(
        b.reused_chunks as usize >= uploaded,
        "the retry reuses what was uploaded"
    );
    assert_eq!(direct.list(None).await.unwrap().len(), 1);
    scenarios::restore_and_compare(&direct, &pool, &b, "r1", "s1").await;
}

/// The S3 server process is killed mid-backup: the backup fails, and once
/// a server is back (moto keeps data in memory, so the bucket is created
/// again) the retry succeeds and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_killed_mid_backup() {
    let Some(m) = moto().await else { return };
    let endpoint = m.endpoint();
    let moto = Arc::new(Mutex::new(m));
    let store = s3_store(&endpoint, BUCKET, "p").await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 81).await;

    let killer = moto.clone();
    let progress = Counter::with_trigger(VOLUME_SIZE / 3, move || killer.lock().unwrap().kill());
    let err = store
        .backup(&pool, "vol1", None, &progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    assert!(
        pool.snapshots("vol1").unwrap().is_empty(),
        "the snapshot taken for the failed backup is gone"
    );

    moto.lock().unwrap().restart();
    create_bucket(&endpoint, BUCKET).await;
    assert!(store.list(None).await.unwrap().is_empty());
    let b = store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(store.list(None).await.unwrap(), vec![b.clone()]);
    let snap = b.snapshot.clone();
    scenarios::restore_and_compare(&store, &pool, &b, "r1", &snap).await;
}

/// Convoy's s3://bucket@region/prefix form reaches the same store; a
/// missing bucket is one clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_url_forms_and_missing_bucket() {
    let Some(m) = moto().await else { return };
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", 4 << 20, 91).await;
    let plain = s3_store(&m.endpoint(), BUCKET, "x/y").await;
    let b = plain
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap();
    let convoy: StoreUrl = format!("s3://{BUCKET}@us-east-1/x/y?endpoint={}", m.endpoint())
        .parse()
        .unwrap();
    let convoy = BackupStore::open(&convoy, store_options()).await.unwrap();
    assert_eq!(convoy.list(None).await.unwrap().len(), 1);
    assert_eq!(convoy.inspect("vol1", &b.id).await.unwrap().id, b.id);
    assert!(
        b.url.starts_with(&format!("s3://{BUCKET}/x/y?endpoint=")),
        "{}",
        b.url
    );

    let missing = s3_store(&m.endpoint(), "no-such-bucket", "").await;
    let e = missing
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("bucket \"no-such-bucket\" does not exist") && !s.contains('\n'),
        "{s}"
    );
    assert!(!s.contains("testing"), "no credentials in messages: {s}");
}
