//! `ballast create VOL --backup URL` restores instantly: the volume is
//! served at once and hydrates behind it. With the real daemon, a file://
//! store and data checked through NBD byte for byte: chunks fetched on
//! demand, fetched in the background, overwritten whole before any fetch
//! (their stored chunk deleted, so a fetch would fail), overwritten in
//! part; a damaged chunk and the store gone (EIO on the ranges that need
//! them, every other range fine, recovery once fixed); `kill -9`
//! mid-hydration and the resume at start-up; the backup held against
//! deletion and snapshots refused until the volume is local; `--wait`.

mod backup_common;
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup_common::{
    assert_same, image, qemu_io, read_export, read_ok, unix_uri, write_volume, MIB,
};
use common::{fails, json, ok, Daemon, TempDir};

/// A daemon whose background hydration waits `delay_ms` before it starts.
fn start(dir: &TempDir, delay_ms: u64) -> Daemon {
    backup_common::start_with_env(dir, &[("BALLAST_HYDRATE_DELAY_MS", &delay_ms.to_string())])
}

/// Where chunk `index` of `data` (1 MiB chunks) lives in a file:// store.
fn chunk_file(store: &Path, data: &[u8], index: usize) -> PathBuf {
    let hex = blake3::hash(&data[index * MIB..(index + 1) * MIB]).to_hex();
    store.join(format!("chunks/{}/{}/{hex}", &hex[0..2], &hex[2..4]))
}

fn hydration(sock: &Path, volume: &str) -> serde_json::Value {
    json(sock, &["inspect", volume, "--json"])["hydration"].clone()
}

/// Waits until `volume` has no hydration left.
fn wait_hydrated(sock: &Path, volume: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hydration(sock, volume).is_null() {
        assert!(
            Instant::now() < deadline,
            "{volume} never finished hydrating: {}",
            hydration(sock, volume)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn instant_restore_serves_at_once_and_never_returns_wrong_bytes() {
    let dir = TempDir::create();
    // No background hydration in this daemon: every fetch is a read's.
    let mut daemon = start(&dir, 3_600_000);
    let sock = daemon.socket.clone();
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());

    // 12 MiB of distinct random chunks, then 4 MiB of zeros.
    ok(&sock, &["create", "src", "--size", "16M"]);
    let data = image(12, 4, 7);
    write_volume(&daemon, &dir, "src", &data);
    let backup = ok(&sock, &["backup", "create", "src", "--dest", &dest])
        .trim()
        .to_string();

    let started = Instant::now();
    assert_eq!(ok(&sock, &["create", "r", "--backup", &backup]), "r\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let h = hydration(&sock, "r");
    assert_eq!(h["chunks"], 16, "{h}");
    assert_eq!(h["chunks_local"], 4, "only the zero chunks: {h}");
    assert_eq!(h["bytes"], 12 * MIB as u64, "{h}");
    assert!(ok(&sock, &["inspect", "r"]).contains("hydration:  0%, 4 of 16 chunks local"));
    // Ctrl-C stops `ballast wait`, not the hydration it follows.
    let waiting = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(&sock)
        .args(["wait", "r"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: plain kill(2) on the pid of our own child.
    assert_eq!(unsafe { libc::kill(waiting.id() as i32, libc::SIGINT) }, 0);
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: interrupted: job ")
            && stderr.ends_with(" goes on in the daemon\n"),
        "{stderr}"
    );
    assert_eq!(hydration(&sock, "r")["chunks_local"], 4, "still hydrating");
    let uri = unix_uri(&daemon, "r");
    let mut expected = data.clone();

    // Chunk 3 overwritten whole before anything fetched it: its stored
    // chunk is gone, so it must never be fetched.
    fs::remove_file(chunk_file(&store, &data, 3)).unwrap();
    qemu_io(&uri, &["write -P 0x66 3M 1M", "flush"]);
    expected[3 * MIB..4 * MIB].fill(0x66);
    // Chunk 5 overwritten in part: the rest of it comes from the backup.
    qemu_io(&uri, &["write -P 0x55 5636096 8192", "flush"]);
    expected[5636096..5636096 + 8192].fill(0x55);

    // The backup is held and the volume cannot be snapshotted meanwhile.
    let refused = fails(&sock, &["backup", "delete", &backup]);
    assert!(
        refused.contains("cannot be deleted: a volume is restoring from it"),
        "{refused}"
    );
    let refused = fails(&sock, &["snapshot", "create", "r"]);
    assert!(refused.contains("still hydrating"), "{refused}");

    // A damaged chunk: reads that need it fail (EIO), others are fine,
    // and the failure names the chunk.
    let chunk7 = chunk_file(&store, &data, 7);
    let good = fs::read(&chunk7).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    fs::write(&chunk7, &bad).unwrap();
    assert!(
        !read_ok(&uri, 7 * MIB + 4096, 4096),
        "a damaged chunk must not read"
    );
    assert!(read_ok(&uri, 8 * MIB, 4096), "other chunks read");
    let error = hydration(&sock, "r")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("chunk 7 ") && error.contains("damaged"),
        "{error}"
    );
    fs::write(&chunk7, &good).unwrap();
    assert!(
        read_ok(&uri, 7 * MIB, 4096),
        "readable once the chunk is whole again"
    );

    // The store gone: unfetched ranges fail with EIO (never zeros), what
    // is local still reads; back again, everything reads.
    fs::rename(&store, dir.join("store.away")).unwrap();
    assert!(
        !read_ok(&uri, 9 * MIB, 4096),
        "unfetched chunk 9 without a store"
    );
    assert!(read_ok(&uri, 3 * MIB, 4096), "overwritten chunk 3 is local");
    assert!(read_ok(&uri, 14 * MIB, 4096), "zero chunk 14 is local");
    fs::rename(dir.join("store.away"), &store).unwrap();
    assert!(
        read_ok(&uri, 9 * MIB, 4096),
        "chunk 9 once the store is back"
    );

    // kill -9 mid-hydration: the restarted daemon resumes the journal, the
    // background fetches what is left, and every byte is right.
    daemon.kill9();
    let daemon = start(&dir, 0);
    wait_hydrated(&sock, "r");
    let uri = unix_uri(&daemon, "r");
    assert_same(
        &read_export(&uri, &dir, "r.img"),
        &expected,
        "restored volume after kill -9",
    );
    assert!(
        !dir.join("root/hydrating/r").exists(),
        "journal removed once hydrated"
    );

    // Hydrated: snapshots work, the backup can go.
    ok(&sock, &["snapshot", "create", "r"]);
    ok(&sock, &["backup", "delete", &backup]);
}

#[test]
fn reads_fetch_on_demand_while_the_background_hydrates_and_wait_restores_fully() {
    let dir = TempDir::create();
    let daemon = start(&dir, 1000);
    let sock = daemon.socket.clone();
    let dest = format!("file://{}", dir.join("store").display());
    ok(&sock, &["create", "src", "--size", "64M"]);
    let data = image(48, 16, 11);
    write_volume(&daemon, &dir, "src", &data);
    let backup = ok(&sock, &["backup", "create", "src", "--dest", &dest])
        .trim()
        .to_string();

    ok(&sock, &["create", "r", "--backup", &backup]);
    // `ballast wait` follows the hydrate job to its end (the daemon's
    // second of delay keeps the job there for the wait to find).
    let waiting = {
        let sock = sock.clone();
        std::thread::spawn(move || json(&sock, &["wait", "r", "--json"]))
    };
    let uri = unix_uri(&daemon, "r");
    // Read at once, racing the background job, and again once it is done.
    assert_same(
        &read_export(&uri, &dir, "a.img"),
        &data,
        "read while hydrating",
    );
    let waited = waiting.join().unwrap();
    let job = &waited["job"];
    assert_eq!(
        (job["op"].as_str(), job["state"].as_str()),
        (Some("hydrate"), Some("succeeded")),
        "{waited}"
    );
    assert_eq!(
        job["progress"]["done"], job["progress"]["total"],
        "{waited}"
    );
    assert!(
        job["finished_ms"].as_u64() >= job["started_ms"].as_u64(),
        "{waited}"
    );
    assert!(
        hydration(&sock, "r").is_null(),
        "hydrated once the wait returns"
    );
    assert_same(
        &read_export(&uri, &dir, "b.img"),
        &data,
        "read once hydrated",
    );

    // --wait: the full restore, local before it returns.
    ok(&sock, &["create", "w", "--backup", &backup, "--wait"]);
    assert!(hydration(&sock, "w").is_null());
    assert_eq!(ok(&sock, &["wait", "w"]), "w: all data local\n");
    assert!(json(&sock, &["wait", "w", "--json"])["job"].is_null());
    assert_same(
        &read_export(&unix_uri(&daemon, "w"), &dir, "w.img"),
        &data,
        "--wait restore",
    );

    // Deleting a hydrating volume stops its hydration and frees the backup.
    ok(&sock, &["create", "d", "--backup", &backup]);
    ok(&sock, &["delete", "d"]);
    assert!(!dir.join("root/hydrating/d").exists());
    ok(&sock, &["backup", "delete", &backup]);
}
