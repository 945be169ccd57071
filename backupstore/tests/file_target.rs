//! Backups to a directory target, against the real engine.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ballast_backupstore::{
    BackupStore, BackupUrl, Error, GcOptions, NoProgress, StoreOptions, StoreUrl, VerifyScope,
};
use bytes::Bytes;
use common::scenarios::{self, snapshot, stored_chunks, VOLUME_SIZE};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_incremental_dedup() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::full_incremental_dedup(&file_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_snapshot_gone() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::parent_snapshot_gone(&file_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::delete_and_gc(&file_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::corruption(&file_store(&dir).await).await;
}

/// The scenarios above, in an encrypted store.
async fn encrypted_file_store(dir: &tempfile::TempDir) -> BackupStore {
    let key = Arc::new(ballast_backupstore::BackupKey::generate());
    open_with(&file_url(dir, "sealed"), Some(&key)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_full_incremental_dedup() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::full_incremental_dedup(&encrypted_file_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_delete_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::delete_and_gc(&encrypted_file_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_corruption() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::corruption(&encrypted_file_store(&dir).await).await;
}

/// A store initialised by an earlier build is sealed with
/// XChaCha20-Poly1305 (its configuration says so): it is backed up,
/// restored and verified with that cipher, every frame it gains names it,
/// while a new store gets AES-256-GCM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_earlier_cipher_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(ballast_backupstore::BackupKey::generate());
    let url = file_url(&dir, "earlier");
    let store = open_with(&url, Some(&key)).await;
    let mut config = ballast_backupstore::StoreConfig::new(CHUNK as u32, 1, Some(&key));
    assert_eq!(config.encryption.as_ref().unwrap().cipher, "aes-256-gcm");
    config.encryption.as_mut().unwrap().cipher = "xchacha20poly1305".into();
    store
        .objects()
        .put("ballast-store.json", Bytes::from(config.to_bytes()))
        .await
        .unwrap();
    scenarios::full_incremental_dedup(&store).await;
    let root = dir.path().join("earlier");
    let chunks = stored_chunks(&store).await;
    assert!(!chunks.is_empty());
    for id in &chunks {
        let path = root.join(format!("chunks/{}/{}/{id}", &id[..2], &id[2..4]));
        let frame = std::fs::read(&path).unwrap();
        assert_eq!((frame[4], frame[7]), (2, 1), "{}", path.display());
    }
    let config = store.config().await.unwrap().unwrap();
    assert_eq!(config.encryption.unwrap().cipher, "xchacha20poly1305");

    let new = encrypted_file_store(&dir).await;
    scenarios::full_incremental_dedup(&new).await;
    let config = new.config().await.unwrap().unwrap();
    assert_eq!(config.encryption.unwrap().cipher, "aes-256-gcm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption() {
    let dir = tempfile::tempdir().unwrap();
    scenarios::encryption(&file_url(&dir, "plain"), &file_url(&dir, "sealed")).await;
}

/// A backup cancelled midway (the future dropped, as on Ctrl-C) leaves no
/// listed backup, no lock, and none of its chunks: a file target makes a
/// backup's chunks visible in batches, at a commit, and this one never
/// reached one; the temporary files of its puts go with it. The next run
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 31).await;
    snapshot(&pool, "vol1", "s1").await;

    let halfway = Arc::new(tokio::sync::Notify::new());
    let h = halfway.clone();
    let progress = Counter::with_trigger(VOLUME_SIZE / 2, move || h.notify_one());
    tokio::select! {
        r = store.backup(&pool, "vol1", Some("s1"), &progress) => panic!("backup finished before the interruption: {r:?}"),
        _ = halfway.notified() => {}
    }
    assert!(
        store.list(None).await.unwrap().is_empty(),
        "no backup is visible"
    );
    assert!(
        stored_chunks(&store).await.is_empty(),
        "no chunk of the uncommitted batch is visible"
    );
    // The lock of the cancelled backup is released in the background, and
    // puts already handed to the blocking pool remove their own files.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !store.objects().list("locks/").await.unwrap().is_empty() || tmp_files(dir.path()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock or temporary files of the cancelled backup stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let b = store
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    let referenced = scenarios::chunk_digests(&store, &b).await;
    assert_eq!(
        stored_chunks(&store).await,
        referenced,
        "every stored chunk belongs to the backup"
    );
    assert_eq!(b.new_chunks as usize, referenced.len());
    assert_eq!(store.list(None).await.unwrap().len(), 1);
    scenarios::restore_and_compare(&store, &pool, &b, "r1", "s1").await;
}

/// Temporary files (`.tmp.*`) anywhere under `dir`.
fn tmp_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if e.file_name().to_string_lossy().starts_with(".tmp.") {
                n += 1;
            }
        }
    }
    n
}

/// gc and backups exclude each other through lock objects; a lock that is
/// not refreshed expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_and_backup_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", 4 << 20, 41).await;
    let b = store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap();
    store.delete("vol1", &b.id).await.unwrap();

    let lock = "locks/backup-00000000000000aa.lock";
    store
        .objects()
        .put(
            lock,
            Bytes::from_static(
                b"{\"kind\":\"backup\",\"what\":\"vol9\",\"host\":\"h\",\"pid\":1,\"started\":0}",
            ),
        )
        .await
        .unwrap();
    let gc0 = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    let err = store.gc(&gc0, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains("backup of vol9"), "{err}");
    assert!(
        !stored_chunks(&store).await.is_empty(),
        "gc deleted nothing while locked"
    );
    let r = store
        .gc(
            &GcOptions {
                grace: Duration::ZERO,
                stale_lock: Duration::ZERO,
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(r.stale_locks_removed, 1);
    assert!(r.deleted_chunks > 0);
    assert!(stored_chunks(&store).await.is_empty());

    store
        .objects()
        .put("locks/gc-00000000000000bb.lock", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let err = store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert_eq!(
        pool.snapshots("vol1").unwrap().len(),
        1,
        "the failed backup left no snapshot"
    );
    assert!(store.list(None).await.unwrap().is_empty());
}

/// Bad input gets one clear line and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", 4 << 20, 51).await;
    let b = store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap();
    let one_line = |e: &Error| {
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
        s
    };

    for bad in [
        "s3://",
        "http://x/y",
        "file://host/path",
        "/plain/path",
        "s3://b/x?secret=1",
    ] {
        let e = bad.parse::<StoreUrl>().unwrap_err();
        assert!(one_line(&e).starts_with("invalid backup URL"), "{e}");
    }
    let e = format!("{}?volume=vol1", store.url())
        .parse::<BackupUrl>()
        .unwrap_err();
    assert!(one_line(&e).contains("backup="), "{e}");

    // Unknown backup id: inspect, restore, delete, verify.
    let e = store
        .inspect("vol1", "20200101T000000Z-deadbeef")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BackupNotFound { .. }));
    assert!(one_line(&e).contains("20200101T000000Z-deadbeef"), "{e}");
    let e = store
        .restore(&pool, "vol1", "nope", "r", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BackupNotFound { .. }), "{e}");
    assert!(pool.volume("r").is_err(), "nothing created");
    assert!(matches!(
        store.delete("vol1", "nope").await.unwrap_err(),
        Error::BackupNotFound { .. }
    ));
    let e = store
        .verify(
            VerifyScope::Backup {
                volume: "vol1",
                id: "nope",
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BackupNotFound { .. }), "{e}");
    assert!(matches!(
        store.inspect("../etc", "x").await.unwrap_err(),
        Error::Engine(_)
    ));

    // Restoring over an existing volume is refused and leaves it alone.
    let before = read_all(&pool, "vol1", None).await;
    let e = store
        .restore(&pool, "vol1", &b.id, "vol1", &NoProgress)
        .await
        .unwrap_err();
    one_line(&e);
    assert_same(
        &before,
        &read_all(&pool, "vol1", None).await,
        "vol1 after refused restore",
    );

    // Backing up what does not exist.
    assert!(store
        .backup(&pool, "nosuch", None, &NoProgress)
        .await
        .is_err());
    let e = store
        .backup(&pool, "vol1", Some("nosnap"), &NoProgress)
        .await
        .unwrap_err();
    assert!(one_line(&e).contains("nosnap"), "{e}");

    // A manifest that is not ours.
    let fake = "backups/vol1/20200101T000000Z-00000000.manifest";
    store
        .objects()
        .put(fake, Bytes::from_static(b"{\"format\":\"something else\"}"))
        .await
        .unwrap();
    let e = store
        .inspect("vol1", "20200101T000000Z-00000000")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotOurs { .. }), "{e}");
    assert!(one_line(&e).contains("not a ballast backup object"), "{e}");
    assert_eq!(store.list(None).await.unwrap().len(), 1, "list skips it");
    let report = store.verify(VerifyScope::All, &NoProgress).await.unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].url.contains("20200101T000000Z-00000000"));
    let e = store
        .gc(
            &GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(one_line(&e).contains("gc refuses"), "{e}");
    // A later backup still works (it skips the foreign manifest).
    store
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap();

    // A store configuration that is not ours, and a chunk size that differs.
    let other = tempfile::tempdir().unwrap();
    let url: StoreUrl = format!("file://{}", other.path().display())
        .parse()
        .unwrap();
    let s = BackupStore::open(
        &url,
        StoreOptions {
            chunk_size: Some(1 << 20),
            ..store_options()
        },
    )
    .await
    .unwrap();
    s.objects()
        .put("ballast-store.json", Bytes::from_static(b"[1,2,3]"))
        .await
        .unwrap();
    let e = s
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotOurs { .. }), "{e}");
    s.objects().delete("ballast-store.json").await.unwrap();
    s.backup(&pool, "vol1", None, &NoProgress).await.unwrap();
    let e = store_with_chunk(&url, 128 << 10)
        .await
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ChunkSizeMismatch { .. }), "{e}");
    let e = BackupStore::open(
        &url,
        StoreOptions {
            chunk_size: Some(3000),
            ..store_options()
        },
    )
    .await
    .unwrap_err();
    assert!(one_line(&e).contains("power of two"), "{e}");
}

async fn store_with_chunk(url: &StoreUrl, chunk: u64) -> BackupStore {
    BackupStore::open(
        url,
        StoreOptions {
            chunk_size: Some(chunk),
            ..store_options()
        },
    )
    .await
    .unwrap()
}

/// Progress reports add up to the announced totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let (_p, pool) = open_pool();
    make_volume(&pool, "vol1", 8 << 20, 61).await;
    let p = Counter::default();
    let b = store.backup(&pool, "vol1", None, &p).await.unwrap();
    assert_eq!(p.total.load(Ordering::SeqCst), 8 << 20);
    assert_eq!(p.done.load(Ordering::SeqCst), 8 << 20);
    let p = Counter::default();
    store.restore(&pool, "vol1", &b.id, "r", &p).await.unwrap();
    assert_eq!(
        p.done.load(Ordering::SeqCst),
        p.total.load(Ordering::SeqCst)
    );
    assert_eq!(p.total.load(Ordering::SeqCst), b.data_chunks * CHUNK);
}

/// A volume whose size is not a multiple of the chunk size grows between
/// backups: the short last chunk and the new space are read again and the
/// incremental restore is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_after_growth() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let (_p, pool) = open_pool();
    let size = (4 << 20) + 12 * 1024;
    make_volume(&pool, "vol1", 4 << 20, 101).await;
    pool.grow_volume("vol1", size).await.unwrap();
    let vol = pool.open_volume("vol1").unwrap();
    vol.write(4 << 20, &[7u8; 12 * 1024]).await.unwrap();
    snapshot(&pool, "vol1", "s1").await;
    let b1 = store
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    assert_eq!((b1.size, b1.chunks), (size, 65));
    scenarios::restore_and_compare(&store, &pool, &b1, "r1", "s1").await;

    pool.grow_volume("vol1", 6 << 20).await.unwrap();
    vol.write((5 << 20) + 4096, &[9u8; 8192]).await.unwrap();
    snapshot(&pool, "vol1", "s2").await;
    let b2 = store
        .backup(&pool, "vol1", Some("s2"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(b2.parent.as_deref(), Some(b1.id.as_str()));
    assert_eq!(b2.chunks, 96);
    // The old short chunk is now a full one with new content; one chunk of
    // the new space holds data.
    assert_eq!(b2.new_chunks, 2);
    scenarios::restore_and_compare(&store, &pool, &b2, "r2", "s2").await;
}
