//! Scenarios run against every kind of target (directory and S3).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ballast_backupstore::{
    BackupInfo, BackupKey, BackupStore, Error, GcOptions, NoProgress, StoreUrl, VerifyScope,
};
use ballast_engine::{BlockState, Pool};

use super::*;

const MIB: u64 = 1 << 20;
/// 512 chunks of 64 KiB.
pub const VOLUME_SIZE: u64 = 32 * MIB;
/// About 1% of the chunks.
pub const CHANGED_CHUNKS: usize = 5;

/// Distinct non-zero chunk digests of an image, and how many non-zero chunks it has.
fn distinct_chunks(image: &[u8]) -> (HashSet<[u8; 32]>, u64) {
    let mut set = HashSet::new();
    let mut nonzero = 0;
    for c in image.chunks(CHUNK as usize) {
        if c.iter().any(|&b| b != 0) {
            nonzero += 1;
            set.insert(*blake3::hash(c).as_bytes());
        }
    }
    (set, nonzero)
}

pub async fn chunk_digests(store: &BackupStore, b: &BackupInfo) -> HashSet<String> {
    let m = store.manifest(&b.volume, &b.id).await.unwrap();
    m.chunks.into_iter().flatten().collect()
}

pub async fn stored_chunks(store: &BackupStore) -> HashSet<String> {
    store
        .objects()
        .list("chunks/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.rsplit('/').next().unwrap().to_string())
        .collect()
}

pub async fn snapshot(pool: &Pool, vol: &str, name: &str) {
    pool.create_snapshot(vol, Some(name)).await.unwrap();
}

/// Restores `b` into `into` and checks it equals `vol@snap` byte for byte
/// (read through the engine) and that zero chunks stayed holes.
pub async fn restore_and_compare(
    store: &BackupStore,
    pool: &Pool,
    b: &BackupInfo,
    into: &str,
    snap: &str,
) {
    let info = store
        .restore(pool, &b.volume, &b.id, into, &NoProgress)
        .await
        .unwrap();
    assert_eq!(info.size, b.size);
    let original = read_all(pool, &b.volume, Some(snap)).await;
    let restored = read_all(pool, into, None).await;
    assert_same(
        &original,
        &restored,
        &format!("restore of {} into {into}", b.url),
    );
    let (_, nonzero) = distinct_chunks(&original);
    assert!(
        info.allocated <= nonzero * CHUNK,
        "restored volume is thin: {} allocated",
        info.allocated
    );
    let vol = pool.open_volume(into).unwrap();
    for (i, c) in original.chunks(CHUNK as usize).enumerate() {
        if c.iter().all(|&b| b == 0) {
            let ext = vol.block_status(i as u64 * CHUNK, CHUNK).unwrap();
            assert!(
                ext.iter().all(|e| e.state != BlockState::Data),
                "zero chunk {i} was written"
            );
        }
    }
}

/// Full backup, restore, incremental after a 1% change, restore, and a
/// second volume with the same data that uploads nothing new.
pub async fn full_incremental_dedup(store: &BackupStore) {
    let (_dir, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 1).await;

    // Without a snapshot name the backup takes one.
    let progress = Counter::default();
    let b1 = store.backup(&pool, "vol1", None, &progress).await.unwrap();
    assert_eq!(pool.snapshots("vol1").unwrap().len(), 1);
    assert_eq!(b1.snapshot, pool.snapshots("vol1").unwrap()[0].name);
    let image1 = read_all(&pool, "vol1", Some(&b1.snapshot)).await;
    let (distinct, nonzero) = distinct_chunks(&image1);
    assert_eq!(b1.parent, None);
    assert_eq!(b1.chunks, VOLUME_SIZE / CHUNK);
    assert_eq!(b1.data_chunks, nonzero);
    assert_eq!(
        b1.new_chunks,
        distinct.len() as u64,
        "each distinct chunk uploaded once"
    );
    assert_eq!(
        b1.reused_chunks,
        nonzero - distinct.len() as u64,
        "repeats are reused"
    );
    assert_eq!(b1.new_bytes + b1.reused_bytes, nonzero * CHUNK);
    assert!(b1.stored_bytes > 0);
    assert_eq!(stored_chunks(store).await.len(), distinct.len());
    assert_eq!(
        progress.done.load(Ordering::SeqCst),
        progress.total.load(Ordering::SeqCst)
    );
    assert!(b1.url.contains(&format!("backup={}", b1.id)) && b1.url.contains("volume=vol1"));
    let parsed: ballast_backupstore::BackupUrl = b1.url.parse().unwrap();
    assert_eq!(
        (parsed.id.as_str(), parsed.volume.as_str()),
        (b1.id.as_str(), "vol1")
    );

    restore_and_compare(store, &pool, &b1, "restored1", &b1.snapshot).await;

    // Incremental: about 1% changed.
    let changed = change_chunks(&pool, "vol1", CHANGED_CHUNKS, 77).await;
    snapshot(&pool, "vol1", "s2").await;
    let progress = Counter::default();
    let b2 = store
        .backup(&pool, "vol1", Some("s2"), &progress)
        .await
        .unwrap();
    assert_eq!(b2.parent.as_deref(), Some(b1.id.as_str()));
    assert_eq!(
        b2.new_chunks,
        changed.len() as u64,
        "only the changed chunks are new"
    );
    assert_eq!(b2.new_bytes, changed.len() as u64 * CHUNK);
    assert!(
        progress.total.load(Ordering::SeqCst) <= changed.len() as u64 * CHUNK,
        "only the chunks the diff names are read"
    );
    restore_and_compare(store, &pool, &b2, "restored2", "s2").await;

    // Backing up the same snapshot again uploads and reads nothing.
    let again = store
        .backup(&pool, "vol1", Some("s2"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (again.new_chunks, again.parent.as_deref()),
        (0, Some(b2.id.as_str()))
    );

    // A second volume with the first one's data: dedup across volumes.
    make_volume(&pool, "vol2", VOLUME_SIZE, 1).await;
    let b3 = store
        .backup(&pool, "vol2", None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        b3.new_chunks, 0,
        "every chunk of vol2 is already in the store"
    );
    assert_eq!(b3.new_bytes, 0);
    assert_eq!(b3.data_chunks, nonzero);

    let all = store.list(None).await.unwrap();
    assert_eq!(
        all.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [&b1.id, &b2.id, &again.id, &b3.id]
    );
    assert_eq!(store.list(Some("vol2")).await.unwrap(), vec![b3.clone()]);
    assert_eq!(store.inspect("vol1", &b2.id).await.unwrap(), b2);
}

/// When the parent's snapshot is gone locally, the whole snapshot is read
/// but only chunks the store lacks are uploaded.
pub async fn parent_snapshot_gone(store: &BackupStore) {
    let (_dir, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 3).await;
    snapshot(&pool, "vol1", "s1").await;
    let b1 = store
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    let changed = change_chunks(&pool, "vol1", CHANGED_CHUNKS, 5).await;
    snapshot(&pool, "vol1", "s2").await;
    pool.delete_snapshot("vol1", "s1").await.unwrap();
    let progress = Counter::default();
    let b2 = store
        .backup(&pool, "vol1", Some("s2"), &progress)
        .await
        .unwrap();
    assert_eq!(b2.parent, None, "s1 is gone: no diff base");
    assert!(
        progress.total.load(Ordering::SeqCst) > changed.len() as u64 * CHUNK,
        "everything was read"
    );
    assert_eq!(
        b2.new_chunks,
        changed.len() as u64,
        "only chunks the store lacks are uploaded"
    );
    assert!(b1.new_chunks > b2.new_chunks);
    restore_and_compare(store, &pool, &b2, "r2", "s2").await;
}

/// Deleting a backup and collecting garbage removes exactly the chunks no
/// remaining manifest references; the remaining backups still restore.
pub async fn delete_and_gc(store: &BackupStore) {
    let (_dir, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 11).await;
    snapshot(&pool, "vol1", "s1").await;
    let b1 = store
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    change_chunks(&pool, "vol1", 40, 12).await;
    snapshot(&pool, "vol1", "s2").await;
    let b2 = store
        .backup(&pool, "vol1", Some("s2"), &NoProgress)
        .await
        .unwrap();
    make_volume(&pool, "vol2", VOLUME_SIZE, 13).await;
    snapshot(&pool, "vol2", "t1").await;
    let b3 = store
        .backup(&pool, "vol2", Some("t1"), &NoProgress)
        .await
        .unwrap();

    let (d1, d2, d3) = (
        chunk_digests(store, &b1).await,
        chunk_digests(store, &b2).await,
        chunk_digests(store, &b3).await,
    );
    let before = stored_chunks(store).await;
    assert_eq!(before, &(&d1 | &d2) | &d3);

    // Nothing is unreferenced yet.
    let r = store
        .gc(
            &GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.manifests, r.deleted_chunks, r.referenced_chunks),
        (3, 0, before.len() as u64)
    );

    store.delete("vol1", &b1.id).await.unwrap();
    let err = store.delete("vol1", &b1.id).await.unwrap_err();
    assert!(matches!(err, Error::BackupNotFound { .. }), "{err}");
    let keep = &d2 | &d3;
    let only_b1: HashSet<String> = d1.difference(&keep).cloned().collect();
    assert!(
        only_b1.len() >= 10,
        "b1 had chunks of its own: {}",
        only_b1.len()
    );

    // Within the grace period nothing is swept.
    let r = store.gc(&GcOptions::default(), &NoProgress).await.unwrap();
    assert_eq!(
        (r.deleted_chunks, r.recent_chunks),
        (0, only_b1.len() as u64)
    );
    assert_eq!(stored_chunks(store).await, before);

    let r = store
        .gc(
            &GcOptions {
                grace: Duration::ZERO,
                ..GcOptions::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(r.deleted_chunks, only_b1.len() as u64);
    assert_eq!(r.manifests, 2);
    assert_eq!(
        stored_chunks(store).await,
        keep,
        "exactly the unreferenced chunks are gone"
    );

    restore_and_compare(store, &pool, &b2, "r2", "s2").await;
    restore_and_compare(store, &pool, &b3, "r3", "t1").await;
    assert!(store
        .verify(VerifyScope::All, &NoProgress)
        .await
        .unwrap()
        .is_ok());
}

/// Changes one byte of a stored chunk object in place.
pub async fn flip_byte(store: &BackupStore, digest: &str) {
    let key = format!("chunks/{}/{}/{digest}", &digest[0..2], &digest[2..4]);
    let mut data = store.objects().get(&key).await.unwrap().unwrap().to_vec();
    let at = data.len() - 7;
    data[at] ^= 0x01;
    store.objects().put(&key, data.into()).await.unwrap();
}

/// A corrupt chunk makes verify name the backup and restore refuse it; a
/// missing chunk likewise.
pub async fn corruption(store: &BackupStore) {
    let (_dir, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 21).await;
    snapshot(&pool, "vol1", "s1").await;
    let b1 = store
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    make_volume(&pool, "vol2", VOLUME_SIZE, 22).await;
    snapshot(&pool, "vol2", "t1").await;
    let b2 = store
        .backup(&pool, "vol2", Some("t1"), &NoProgress)
        .await
        .unwrap();
    let (d1, d2) = (
        chunk_digests(store, &b1).await,
        chunk_digests(store, &b2).await,
    );

    let report = store.verify(VerifyScope::All, &NoProgress).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.backups, 2);
    assert_eq!(report.chunks, (&d1 | &d2).len() as u64);

    let victim = d1.difference(&d2).next().unwrap().clone();
    flip_byte(store, &victim).await;
    let report = store.verify(VerifyScope::All, &NoProgress).await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].url, b1.url);
    assert_eq!(report.damaged[0].damaged_chunks, 1);
    assert!(
        report.damaged[0].reason.contains(&victim),
        "{}",
        report.damaged[0].reason
    );
    let one = store
        .verify(
            VerifyScope::Backup {
                volume: "vol1",
                id: &b1.id,
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(one.damaged.len(), 1);
    assert!(store
        .verify(
            VerifyScope::Backup {
                volume: "vol2",
                id: &b2.id
            },
            &NoProgress
        )
        .await
        .unwrap()
        .is_ok());

    let err = store
        .restore(&pool, "vol1", &b1.id, "bad", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DamagedChunk { .. }), "{err}");
    assert!(
        err.to_string().contains(&victim) && !err.to_string().contains('\n'),
        "{err}"
    );
    assert!(
        pool.volume("bad").is_err(),
        "the partial volume was deleted"
    );

    // A missing chunk.
    let gone = d2.difference(&d1).next().unwrap().clone();
    store
        .objects()
        .delete(&format!("chunks/{}/{}/{gone}", &gone[0..2], &gone[2..4]))
        .await
        .unwrap();
    let report = store.verify(VerifyScope::All, &NoProgress).await.unwrap();
    let names: Vec<&str> = report.damaged.iter().map(|d| d.url.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&b1.url.as_str()) && names.contains(&b2.url.as_str()));
    let err = store
        .restore(&pool, "vol2", &b2.id, "bad2", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingChunk { .. }), "{err}");
    assert!(pool.volume("bad2").is_err());
}

/// Every object in the store with its bytes.
async fn all_objects(store: &BackupStore) -> Vec<(String, bytes::Bytes)> {
    let mut out = Vec::new();
    for meta in store.objects().list("").await.unwrap() {
        let data = store.objects().get(&meta.key).await.unwrap().unwrap();
        out.push((meta.key, data));
    }
    out
}

/// 32-byte probes taken across every data chunk of `image`.
fn probes(image: &[u8]) -> Vec<&[u8]> {
    image
        .chunks(CHUNK as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .flat_map(|c| [&c[100..132], &c[c.len() / 2..c.len() / 2 + 32]])
        .collect()
}

/// How many of `probes` occur somewhere in the store's objects (their
/// keys included).
async fn probes_found(store: &BackupStore, probes: &[&[u8]]) -> usize {
    let objects = all_objects(store).await;
    let mut haystacks: Vec<&[u8]> = objects.iter().map(|(_, d)| &d[..]).collect();
    haystacks.extend(objects.iter().map(|(k, _)| k.as_bytes()));
    count_found(&haystacks, probes)
}

/// How many of `probes` (each at least 8 bytes) occur in any of
/// `haystacks`: one pass over each, looking up every 8-byte window.
pub fn count_found(haystacks: &[&[u8]], probes: &[&[u8]]) -> usize {
    let prefix = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let mut by_prefix: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (i, p) in probes.iter().enumerate() {
        by_prefix.entry(prefix(p)).or_default().push(i);
    }
    let mut found = vec![false; probes.len()];
    for h in haystacks {
        for at in 0..h.len().saturating_sub(7) {
            if let Some(ids) = by_prefix.get(&prefix(&h[at..])) {
                for &i in ids {
                    found[i] |= h[at..].starts_with(probes[i]);
                }
            }
        }
    }
    found.iter().filter(|&&f| f).count()
}

/// Flips one byte of the object at `key` after its header (and nonce) and
/// fixes both crc32s, as a forger would: only authentication can notice.
pub async fn forge(store: &BackupStore, key: &str) {
    let mut data = store.objects().get(key).await.unwrap().unwrap().to_vec();
    data[32 + 24 + 3] ^= 0x01;
    let crc = crc32fast::hash(&data[32..]);
    data[24..28].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&data[..28]);
    data[28..32].copy_from_slice(&crc.to_le_bytes());
    store.objects().put(key, data.into()).await.unwrap();
}

fn manifest_key(b: &BackupInfo) -> String {
    format!("backups/{}/{}.manifest", b.volume, b.id)
}

/// An encrypted store shows nothing of the data (a plain store beside it,
/// holding the same backup, shows it: the probes can find what is there),
/// names chunks by a keyed hash, records only the key's fingerprint,
/// refuses a wrong or missing key before writing anything, and authenticates
/// every chunk and manifest on verify and restore.
pub async fn encryption(plain_url: &StoreUrl, sealed_url: &StoreUrl) {
    let (dir, pool) = open_pool();
    make_volume(&pool, "vol1", VOLUME_SIZE, 51).await;
    snapshot(&pool, "vol1", "s1").await;
    let image = read_all(&pool, "vol1", Some("s1")).await;
    let probes = probes(&image);
    let key = Arc::new(BackupKey::generate());
    let other = Arc::new(BackupKey::generate());

    let plain = open_with(plain_url, None).await;
    let sealed = open_with(sealed_url, Some(&key)).await;
    let bp = plain
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    let b1 = sealed
        .backup(&pool, "vol1", Some("s1"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (b1.new_chunks, b1.reused_chunks),
        (bp.new_chunks, bp.reused_chunks),
        "dedup within a backup works the same under a key"
    );
    assert_eq!(
        probes_found(&plain, &probes).await,
        probes.len(),
        "the plain store holds the data as is"
    );
    assert_eq!(
        probes_found(&sealed, &probes).await,
        0,
        "no piece of the data is in the encrypted store"
    );
    let plain_ids: HashSet<String> = image
        .chunks(CHUNK as usize)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect();
    let sealed_ids = stored_chunks(&sealed).await;
    assert!(stored_chunks(&plain).await.is_subset(&plain_ids));
    assert!(
        sealed_ids.is_disjoint(&plain_ids),
        "chunk ids do not tell which data is stored"
    );
    let config = sealed.config().await.unwrap().unwrap();
    let enc = config.encryption.clone().unwrap();
    assert_eq!(enc.key_fingerprint, key.fingerprint());
    let key_file = dir.path().join("key");
    key.write_new(&key_file).unwrap();
    let key_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    let secret = key_json["secret"].as_str().unwrap();
    for (k, data) in all_objects(&sealed).await {
        assert!(
            !data.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{k} holds the key"
        );
    }
    restore_and_compare(&sealed, &pool, &b1, "r1", "s1").await;

    // The wrong key, and no key, are refused before anything is written.
    let before = all_objects(&sealed).await.len();
    let snapshots = pool.snapshots("vol1").unwrap().len();
    let wrong = open_with(sealed_url, Some(&other)).await;
    let none = open_with(sealed_url, None).await;
    for store in [&wrong, &none] {
        let e = store
            .backup(&pool, "vol1", None, &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::WrongKey { .. } | Error::KeyRequired { .. }),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = store
            .restore(&pool, "vol1", &b1.id, "r2", &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::WrongKey { .. } | Error::KeyRequired { .. }),
            "{e}"
        );
        assert!(pool.volume("r2").is_err(), "no volume was created");
        assert!(store.list(None).await.is_err());
        assert!(store.verify(VerifyScope::All, &NoProgress).await.is_err());
        assert!(store.gc(&GcOptions::default(), &NoProgress).await.is_err());
    }
    let e = wrong.list(None).await.unwrap_err().to_string();
    assert!(
        e.contains(&key.fingerprint()) && e.contains(&other.fingerprint()),
        "{e}"
    );
    let e = none.list(None).await.unwrap_err().to_string();
    assert!(e.contains("encrypted") && e.contains("--key"), "{e}");
    assert_eq!(all_objects(&sealed).await.len(), before, "nothing written");
    assert_eq!(pool.snapshots("vol1").unwrap().len(), snapshots);
    // A key for a plain store is refused too: it would mix the two.
    let keyed_plain = open_with(plain_url, Some(&key)).await;
    let e = keyed_plain
        .backup(&pool, "vol1", None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotEncrypted { .. }), "{e}");
    assert_eq!(pool.snapshots("vol1").unwrap().len(), snapshots);

    // Incremental under the key: only the changed chunks are uploaded.
    let changed = change_chunks(&pool, "vol1", CHANGED_CHUNKS, 52).await;
    snapshot(&pool, "vol1", "s2").await;
    let b2 = sealed
        .backup(&pool, "vol1", Some("s2"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(b2.parent.as_deref(), Some(b1.id.as_str()));
    assert_eq!(b2.new_chunks, changed.len() as u64);

    // A forged chunk (crc32s fixed) fails authentication on verify and restore.
    let d1 = chunk_digests(&sealed, &b1).await;
    let d2 = chunk_digests(&sealed, &b2).await;
    let victim = d1.intersection(&d2).next().unwrap().clone();
    forge(
        &sealed,
        &format!("chunks/{}/{}/{victim}", &victim[0..2], &victim[2..4]),
    )
    .await;
    let report = sealed.verify(VerifyScope::All, &NoProgress).await.unwrap();
    assert_eq!(report.damaged.len(), 2, "{report:?}");
    for d in &report.damaged {
        assert!(
            d.reason.contains(&victim) && d.reason.contains("authentication failed"),
            "{}",
            d.reason
        );
    }
    let e = sealed
        .restore(&pool, "vol1", &b2.id, "r3", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DamagedChunk { .. }), "{e}");
    assert!(
        e.to_string().contains("authentication failed") && !e.to_string().contains('\n'),
        "{e}"
    );
    assert!(pool.volume("r3").is_err());

    // A forged manifest likewise; the other backup's manifest is untouched.
    let b3 = sealed
        .backup(&pool, "vol1", Some("s2"), &NoProgress)
        .await
        .unwrap();
    forge(&sealed, &manifest_key(&b3)).await;
    let one = sealed
        .verify(
            VerifyScope::Backup {
                volume: "vol1",
                id: &b3.id,
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(one.damaged.len(), 1, "{one:?}");
    assert!(
        one.damaged[0].reason.contains("authentication failed"),
        "{}",
        one.damaged[0].reason
    );
    let e = sealed
        .restore(&pool, "vol1", &b3.id, "r4", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotOurs { .. }), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(pool.volume("r4").is_err());
    // A manifest moved to another backup's name does not open either.
    let data = sealed
        .objects()
        .get(&manifest_key(&b1))
        .await
        .unwrap()
        .unwrap();
    sealed
        .objects()
        .put("backups/vol1/20990101T000000000Z-00000000.manifest", data)
        .await
        .unwrap();
    let e = sealed
        .restore(
            &pool,
            "vol1",
            "20990101T000000000Z-00000000",
            "r5",
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(pool.volume("r5").is_err());
}
