//! `ballast backup ...` against a file:// destination, with the real
//! daemon and data written and read through NBD: backup, incremental
//! backup, restore, verify (finding a flipped byte), delete, gc, and the
//! one-line errors of bad input.

mod backup_common;
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use backup_common::{assert_same, image, qemu_io, read_export, start, unix_uri, write_image, MIB};
use common::{ballast, fails, http, json, ok, volume_names, Daemon, TempDir};

/// Every chunk file under a file:// store.
fn chunk_files(store: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![store.join("chunks")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn backup_restore_verify_delete_gc_through_the_cli() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());

    ok(sock, &["create", "vol", "--size", "16M"]);
    let vol_uri = unix_uri(&daemon, "vol");
    let data = image(8, 8, 1);
    fs::write(dir.join("data.img"), &data).unwrap();
    write_image(&vol_uri, &dir.join("data.img"));

    // Output is exactly the backup URL: no progress bar off a terminal.
    let out = ok(sock, &["backup", "create", "vol", "--dest", &dest]);
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let first = out.trim_end().to_string();
    assert!(first.starts_with(&dest), "{first}");
    assert!(
        first.contains("?backup=") && first.contains("volume=vol"),
        "{first}"
    );

    let list = json(sock, &["backup", "list", "--dest", &dest, "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["url"], first.as_str());
    let table = ok(sock, &["backup", "list", "--dest", &dest]);
    assert!(table.starts_with("VOLUME"), "{table}");
    assert!(table.contains(&first), "{table}");

    let info = json(sock, &["backup", "inspect", &first, "--json"]);
    assert_eq!(info["volume"], "vol");
    assert_eq!(info["size"], 16 * MIB as u64);
    assert_eq!(info["chunks"], 16);
    assert_eq!(info["data_chunks"], 8);
    assert_eq!(info["new_bytes"], 8 * MIB as u64);
    assert_eq!(info["reused_bytes"], 0);
    assert!(info["parent"].is_null(), "{info}");
    let snapshot = info["snapshot"].as_str().unwrap().to_string();
    let snapshots = json(sock, &["snapshot", "list", "vol", "--json"]);
    assert!(
        snapshots
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == snapshot.as_str()),
        "the backup's snapshot {snapshot} is kept: {snapshots}"
    );
    let text = ok(sock, &["backup", "inspect", &first]);
    assert!(text.contains("volume:     vol\n"), "{text}");
    assert!(text.contains("parent:     -\n"), "{text}");

    // Restore into a new volume and read both back through NBD.
    assert_eq!(
        ok(sock, &["create", "restored", "--backup", &first]),
        "restored\n"
    );
    let restored = read_export(&unix_uri(&daemon, "restored"), &dir, "restored.img");
    assert_same(&restored, &data, "restored volume");
    let original = read_export(&vol_uri, &dir, "vol.img");
    assert_same(&original, &restored, "original vs restored");

    // An incremental backup after changing one chunk stores only that chunk.
    qemu_io(&vol_uri, &["write -P 0x77 2M 1M", "flush"]);
    let second = ok(sock, &["backup", "create", "vol", "--dest", &dest])
        .trim_end()
        .to_string();
    assert_ne!(second, first);
    let info2 = json(sock, &["backup", "inspect", &second, "--json"]);
    assert_eq!(info2["parent"], info["id"]);
    assert_eq!(info2["new_chunks"], 1);
    assert_eq!(info2["new_bytes"], MIB as u64);
    assert_eq!(info2["reused_chunks"], 7);
    assert_eq!(info2["reused_bytes"], 7 * MIB as u64);

    let verified = ok(sock, &["backup", "verify", "--dest", &dest]);
    assert!(verified.starts_with("verified 2 backups"), "{verified}");
    let report = json(sock, &["backup", "verify", &second, "--json"]);
    assert_eq!(report["backups"], 1);
    assert_eq!(report["damaged"].as_array().unwrap().len(), 0);

    // Flip a byte in the chunk only the second backup has (the newest file).
    let chunks = chunk_files(&store);
    assert_eq!(chunks.len(), 9, "8 data chunks + 1 changed");
    let newest = chunks.iter().max_by_key(|p| modified(p)).unwrap();
    let mut bytes = fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(newest, &bytes).unwrap();

    let out = ballast(sock, &["backup", "verify", "--dest", &dest]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify passed a damaged store");
    assert!(stdout.contains(&format!("damaged: {second} ")), "{stdout}");
    assert!(!stdout.contains(&format!("damaged: {first} ")), "{stdout}");
    assert_eq!(stderr.trim_end(), "error: 1 of 2 backups damaged");
    let out = ballast(sock, &["backup", "verify", &second, "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["damaged"][0]["url"], second.as_str());
    ok(sock, &["backup", "verify", &first]);

    // A full restore of the damaged backup fails and leaves no volume
    // behind (an instant restore fails the reads of that chunk instead:
    // tests/instant_restore.rs).
    let err = fails(sock, &["create", "x", "--backup", &second, "--wait"]);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(volume_names(sock), ["restored", "vol"]);

    // Delete the damaged backup; gc (no grace) removes its own chunk.
    assert_eq!(
        ok(sock, &["backup", "delete", &second]),
        format!("{second}\n")
    );
    let list = json(sock, &["backup", "list", "--dest", &dest, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let kept = json(sock, &["backup", "gc", "--dest", &dest, "--json"]);
    assert_eq!(kept["deleted_chunks"], 0, "default grace keeps new chunks");
    assert_eq!(kept["recent_chunks"], 1);
    let gc = json(
        sock,
        &["backup", "gc", "--dest", &dest, "--grace", "0s", "--json"],
    );
    assert_eq!(gc["deleted_chunks"], 1);
    assert_eq!(gc["referenced_chunks"], 8);
    assert!(!newest.exists());
    assert_eq!(chunk_files(&store).len(), 8);
    ok(sock, &["backup", "verify", "--dest", &dest]);
    let err = fails(sock, &["backup", "inspect", &second]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn bad_backup_input_gets_one_line_and_changes_nothing() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());
    ok(sock, &["create", "vol", "--size", "4M"]);

    for args in [
        vec!["backup", "list", "--dest", "ftp://x"],
        vec!["backup", "create", "vol", "--dest", "s3://"],
        vec!["backup", "verify", "--dest", "ftp://x"],
        vec!["backup", "gc", "--dest", "file://relative"],
        vec!["backup", "inspect", "not a url"],
    ] {
        let err = fails(sock, &args);
        assert!(err.contains("invalid backup URL"), "{args:?}: {err}");
    }
    let err = fails(sock, &["backup", "create", "nope", "--dest", &dest]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(sock, &["backup", "create", "../x", "--dest", &dest]);
    assert!(err.contains("invalid name"), "{err}");
    let err = fails(sock, &["backup", "gc", "--dest", &dest, "--grace", "soon"]);
    assert!(err.contains("--grace"), "{err}");

    let url = ok(sock, &["backup", "create", "vol", "--dest", &dest])
        .trim_end()
        .to_string();
    let unknown = format!("{dest}?backup=20990101T000000.000Z-0000&volume=vol");
    let err = fails(sock, &["backup", "inspect", &unknown]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(sock, &["create", "r", "--backup", &unknown]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(sock, &["backup", "delete", &unknown]);
    assert!(err.contains("not found"), "{err}");

    // A manifest that is not ours.
    let id = json(sock, &["backup", "inspect", &url, "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign_id = format!("{id}0");
    fs::write(
        store.join(format!("backups/vol/{foreign_id}.manifest")),
        b"{\"hello\": \"world\"}",
    )
    .unwrap();
    let foreign = format!("{dest}?backup={foreign_id}&volume=vol");
    let err = fails(sock, &["backup", "inspect", &foreign]);
    assert!(err.contains("not a ballast backup"), "{err}");
    let err = fails(sock, &["create", "r", "--backup", &foreign]);
    assert!(err.contains("not a ballast backup"), "{err}");

    // Restoring onto an existing name, or with --size, is refused.
    let err = fails(sock, &["create", "vol", "--backup", &url]);
    assert!(err.contains("already exists"), "{err}");
    let out = ballast(sock, &["create", "r", "--backup", &url, "--size", "1G"]);
    assert!(!out.status.success());
    assert_eq!(volume_names(sock), ["vol"]);

    // The job API itself: unknown jobs and malformed requests.
    let (status, body) = http(sock, "GET", "/v1/jobs/999", "");
    assert_eq!(
        (status, body.as_str()),
        (404, r#"{"error":"job 999 not found"}"#)
    );
    let (status, _) = http(sock, "DELETE", "/v1/jobs/abc", "");
    assert_eq!(status, 400);
    let (status, body) = http(sock, "POST", "/v1/jobs", r#"{"op":"mine","dest":"x"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        sock,
        "POST",
        "/v1/jobs",
        &format!(r#"{{"op":"verify","dest":"{dest}","backup":"{url}"}}"#),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(sock, "GET", "/v1/backups", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\\\"dest\\\" is required"), "{body}");
}

#[test]
fn cancelled_restore_job_leaves_no_volume() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    let dest = format!("file://{}", dir.join("store").display());
    ok(sock, &["create", "big", "--size", "64M"]);
    let data = image(64, 0, 7);
    fs::write(dir.join("big.img"), &data).unwrap();
    write_image(&unix_uri(&daemon, "big"), &dir.join("big.img"));
    let url = ok(sock, &["backup", "create", "big", "--dest", &dest])
        .trim_end()
        .to_string();

    let body = serde_json::json!({"op": "restore", "backup": url, "volume": "copy"});
    let (status, started) = http(sock, "POST", "/v1/jobs", &body.to_string());
    assert_eq!(status, 202, "{started}");
    let id = serde_json::from_str::<serde_json::Value>(&started).unwrap()["id"]
        .as_u64()
        .unwrap();
    let (status, cancelled) = http(sock, "DELETE", &format!("/v1/jobs/{id}"), "");
    assert_eq!(status, 200, "{cancelled}");
    let cancelled: serde_json::Value = serde_json::from_str(&cancelled).unwrap();
    // The restore may have finished before the cancel arrived; either way
    // no half-written volume remains.
    match cancelled["state"].as_str().unwrap() {
        "cancelled" => assert_eq!(volume_names(sock), ["big"]),
        "succeeded" => {
            let copy = read_export(&unix_uri(&daemon, "copy"), &dir, "copy.img");
            assert_same(&copy, &data, "restored copy");
        }
        other => panic!("unexpected state {other}: {cancelled}"),
    }
    let (status, polled) = http(sock, "GET", &format!("/v1/jobs/{id}"), "");
    assert_eq!(status, 200);
    let polled: serde_json::Value = serde_json::from_str(&polled).unwrap();
    assert_eq!(polled["state"], cancelled["state"]);
    assert_eq!(polled["op"], "restore");
}

/// Ctrl-C in `ballast backup create` cancels the job in the daemon: the
/// CLI exits with one error line and no backup is listed.
#[test]
fn interrupting_the_cli_cancels_the_backup_job() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    let dest = format!("file://{}", dir.join("store").display());
    ok(sock, &["create", "big", "--size", "256M"]);
    fs::write(dir.join("big.img"), image(256, 0, 3)).unwrap();
    write_image(&unix_uri(&daemon, "big"), &dir.join("big.img"));

    let child = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(sock)
        .args(["backup", "create", "big", "--dest", &dest])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the backup is under way, then send SIGINT as Ctrl-C would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = http(sock, "GET", "/v1/jobs/1", "");
        if status == 200 {
            let job: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                job["state"], "running",
                "finished before the test interrupted it"
            );
            if job["progress"]["done"].as_u64().unwrap() > 0 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "backup never started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: plain kill(2) on the pid of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: interrupted: the backup was cancelled\n"
    );
    let (_, body) = http(sock, "GET", "/v1/jobs/1", "");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["state"], "cancelled", "{job}");
    let list = json(sock, &["backup", "list", "--dest", &dest, "--json"]);
    assert_eq!(list, serde_json::json!([]));
}

/// Backs up a 256 MiB volume `big`, starts restoring it into `copy` as a
/// daemon job and returns once the restore is under way (some chunks in,
/// the requested name not yet visible), with the backup URL.
fn restore_in_flight(dir: &TempDir, seed: u64) -> (Daemon, String) {
    let daemon = start(dir);
    let sock = daemon.socket.clone();
    let dest = format!("file://{}", dir.join("store").display());
    ok(&sock, &["create", "big", "--size", "256M"]);
    fs::write(dir.join("big.img"), image(256, 0, seed)).unwrap();
    write_image(&unix_uri(&daemon, "big"), &dir.join("big.img"));
    let url = ok(&sock, &["backup", "create", "big", "--dest", &dest])
        .trim_end()
        .to_string();

    let body = serde_json::json!({"op": "restore", "backup": url, "volume": "copy"});
    let (status, started) = http(&sock, "POST", "/v1/jobs", &body.to_string());
    assert_eq!(status, 202, "{started}");
    let job = format!(
        "/v1/jobs/{}",
        serde_json::from_str::<serde_json::Value>(&started).unwrap()["id"]
    );
    loop {
        let (_, body) = http(&sock, "GET", &job, "");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["state"], "running", "finished too soon: {status}");
        if status["progress"]["done"].as_u64().unwrap() > 0 {
            // Mid-restore, the requested name does not exist yet.
            assert!(!volume_names(&sock).contains(&"copy".to_string()));
            return (daemon, url);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Stopping the daemon cancels a running restore: the daemon exits
/// cleanly and, after a restart, the half-restored volume is gone.
#[test]
fn daemon_shutdown_cancels_a_running_restore() {
    let dir = TempDir::create();
    let (mut daemon, _) = restore_in_flight(&dir, 5);
    assert!(daemon.terminate().success(), "{}", daemon.log());
    assert!(daemon.log().contains("job cancelled"), "{}", daemon.log());
    drop(daemon);
    let daemon = start(&dir);
    assert_eq!(volume_names(&daemon.socket), ["big"]);
}

/// `kill -9` of the daemon in the middle of a restore: the requested name
/// never shows a half-restored volume, and the next start removes the
/// partial data.
#[test]
fn daemon_killed_during_a_restore_leaves_no_partial_volume() {
    let dir = TempDir::create();
    let (mut daemon, url) = restore_in_flight(&dir, 6);
    // The temporary volume is committed (creation commits); the crash
    // leaves it behind for the next start to remove.
    daemon.kill9();
    drop(daemon);
    let daemon = start(&dir);
    assert_eq!(volume_names(&daemon.socket), ["big"], "{}", daemon.log());
    // The restore can simply be run again.
    ok(&daemon.socket, &["create", "copy", "--backup", &url]);
    assert_eq!(volume_names(&daemon.socket), ["big", "copy"]);
}

/// The 64-byte pieces of `data` at every 64 KiB of its non-zero part.
fn probes(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(64 << 10)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| &c[1000..1064])
        .collect()
}

/// How many of `probes` occur in some file under `store`: one pass over
/// each file, looking up every 8-byte window.
fn probes_in_store(store: &Path, probes: &[&[u8]]) -> usize {
    let prefix = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().unwrap());
    let mut by_prefix: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (i, p) in probes.iter().enumerate() {
        by_prefix.entry(prefix(p)).or_default().push(i);
    }
    let mut found = vec![false; probes.len()];
    for file in backup_common::files_under(store) {
        let h = fs::read(file).unwrap();
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

/// Flips one byte in the middle of `file`.
fn flip(file: &Path) {
    let mut bytes = fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(file, &bytes).unwrap();
}

fn manifest_files(store: &Path) -> Vec<PathBuf> {
    backup_common::files_under(&store.join("backups"))
}

/// Encrypted backups as a user runs them: key files made with `ballast
/// backup key create` (random, or from a passphrase, given again to derive
/// the same key), a daemon that reads them from --backup-key-dir by name,
/// backup / list / inspect / restore / verify / gc with --key, the data
/// absent from the store, wrong and missing keys refused before anything
/// is written, incremental backups under the key, and flipped bytes found.
#[test]
fn encrypted_backups_through_the_cli() {
    use std::os::unix::fs::PermissionsExt;

    let dir = TempDir::create();
    let keys = dir.join("keys");
    fs::create_dir(&keys).unwrap();
    let out = backup_common::create_key(&keys.join("prod"), &[], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let fingerprint = text.trim_end().rsplit(' ').next().unwrap().to_string();
    assert_eq!(fingerprint.len(), 32, "{text}");
    let mode = fs::metadata(keys.join("prod"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key_text = fs::read(keys.join("prod")).unwrap();
    // An existing key file is never replaced.
    let again = backup_common::create_key(&keys.join("prod"), &[], &[]);
    assert!(!again.status.success());
    assert_eq!(fs::read(keys.join("prod")).unwrap(), key_text);

    // A passphrase key, from a file; then the same key again from the
    // environment with the salt it printed.
    fs::write(dir.join("pass"), "correct horse battery\n").unwrap();
    let pass_file = dir.join("pass").display().to_string();
    let out = backup_common::create_key(
        &keys.join("pp"),
        &["--passphrase", "--passphrase-file", &pass_file, "--json"],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let pp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let salt = pp["kdf"]["salt"].as_str().unwrap().to_string();
    let out = backup_common::create_key(
        &keys.join("pp-again"),
        &["--passphrase", "--salt", &salt, "--json"],
        &[("BALLAST_BACKUP_PASSPHRASE", "correct horse battery")],
    );
    assert!(out.status.success(), "{out:?}");
    let pp_again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pp_again["fingerprint"], pp["fingerprint"]);
    assert_ne!(pp["fingerprint"], fingerprint.as_str());

    let keys_arg = keys.display().to_string();
    // Background hydration held back, so instant restores stay partly
    // remote until the restart below.
    let hold_back = [("BALLAST_HYDRATE_DELAY_MS", "3600000")];
    let mut daemon =
        backup_common::start_with_args(&dir, &hold_back, &["--backup-key-dir", &keys_arg]);
    let sock = &daemon.socket.clone();
    let store = dir.join("sealed");
    let dest = format!("file://{}", store.display());
    let plain_store = dir.join("plain");
    let plain_dest = format!("file://{}", plain_store.display());

    ok(sock, &["create", "vol", "--size", "16M"]);
    let vol_uri = unix_uri(&daemon, "vol");
    let data = image(8, 8, 7);
    fs::write(dir.join("data.img"), &data).unwrap();
    write_image(&vol_uri, &dir.join("data.img"));
    let probes = probes(&data);

    let first = ok(
        sock,
        &["backup", "create", "vol", "--dest", &dest, "--key", "prod"],
    )
    .trim_end()
    .to_string();
    ok(sock, &["backup", "create", "vol", "--dest", &plain_dest]);
    assert_eq!(
        probes_in_store(&plain_store, &probes),
        probes.len(),
        "a plain store holds the data as is"
    );
    assert_eq!(
        probes_in_store(&store, &probes),
        0,
        "the encrypted store holds none of it"
    );
    let config = fs::read_to_string(store.join("ballast-store.json")).unwrap();
    assert!(config.contains(&fingerprint), "{config}");
    let secret: serde_json::Value = serde_json::from_slice(&key_text).unwrap();
    let secret = secret["secret"].as_str().unwrap();
    assert!(!config.contains(secret));
    assert!(!daemon.log().contains(secret), "the key is never logged");

    // Without the key, or with another, nothing is read or written.
    let files = backup_common::files_under(&store);
    let snapshots = json(sock, &["snapshot", "list", "vol", "--json"]);
    let e = fails(sock, &["backup", "create", "vol", "--dest", &dest]);
    assert!(e.contains("is encrypted") && e.contains("--key"), "{e}");
    let e = fails(
        sock,
        &["backup", "create", "vol", "--dest", &dest, "--key", "pp"],
    );
    assert!(e.contains("wrong key") && e.contains(&fingerprint), "{e}");
    let e = fails(sock, &["create", "r0", "--backup", &first, "--key", "pp"]);
    assert!(e.contains("wrong key"), "{e}");
    let e = fails(sock, &["create", "r0", "--backup", &first]);
    assert!(e.contains("is encrypted"), "{e}");
    fails(sock, &["backup", "list", "--dest", &dest]);
    fails(sock, &["backup", "inspect", &first]);
    fails(sock, &["backup", "verify", &first, "--key", "pp"]);
    fails(sock, &["backup", "gc", "--dest", &dest]);
    let e = fails(
        sock,
        &["backup", "create", "vol", "--dest", &dest, "--key", "nokey"],
    );
    assert!(e.contains("nokey"), "{e}");
    let e = fails(
        sock,
        &[
            "backup",
            "create",
            "vol",
            "--dest",
            &dest,
            "--key",
            "/etc/passwd",
        ],
    );
    assert!(e.contains("not a path"), "{e}");
    let e = fails(
        sock,
        &[
            "backup",
            "create",
            "vol",
            "--dest",
            &plain_dest,
            "--key",
            "prod",
        ],
    );
    assert!(e.contains("not encrypted"), "{e}");
    assert_eq!(backup_common::files_under(&store), files, "nothing written");
    assert_eq!(
        json(sock, &["snapshot", "list", "vol", "--json"]),
        snapshots
    );
    assert!(!volume_names(sock).contains(&"r0".to_string()));

    // With the key: list, inspect, restore the very bytes.
    let list = json(
        sock,
        &["backup", "list", "--dest", &dest, "--key", "prod", "--json"],
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    let info = json(
        sock,
        &["backup", "inspect", &first, "--key", "prod", "--json"],
    );
    assert_eq!(info["new_bytes"], 8 * MIB as u64);
    // An instant restore under the key: half read (fetched on demand),
    // then kill -9; the restarted daemon finds the key's name in the
    // hydration journal and hydrates the rest from the encrypted store.
    ok(sock, &["create", "r1", "--backup", &first, "--key", "prod"]);
    let journal = fs::read_to_string(dir.join("root/hydrating/r1/key")).unwrap();
    assert_eq!(journal, "prod", "the journal names the key");
    let restored = read_export(&unix_uri(&daemon, "r1"), &dir, "r1.img");
    assert_same(&restored, &data, "restored from the encrypted store");
    ok(
        sock,
        &["create", "r1b", "--backup", &first, "--key", "prod"],
    );
    qemu_io(&unix_uri(&daemon, "r1b"), &["read 0 4M"]);
    daemon.kill9();
    let daemon = backup_common::start_with_args(&dir, &[], &["--backup-key-dir", &keys_arg]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !json(sock, &["inspect", "r1b", "--json"])["hydration"].is_null() {
        assert!(std::time::Instant::now() < deadline, "r1b never hydrated");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let restored = read_export(&unix_uri(&daemon, "r1b"), &dir, "r1b.img");
    assert_same(
        &restored,
        &data,
        "hydrated after kill -9 from the encrypted store",
    );

    // Incremental under the key: one changed chunk is all that is stored.
    qemu_io(&vol_uri, &["write -P 0x77 2M 1M", "flush"]);
    let second = ok(
        sock,
        &["backup", "create", "vol", "--dest", &dest, "--key", "prod"],
    )
    .trim_end()
    .to_string();
    let info2 = json(
        sock,
        &["backup", "inspect", &second, "--key", "prod", "--json"],
    );
    assert_eq!(info2["parent"], info["id"]);
    assert_eq!(
        (info2["new_chunks"].as_u64(), info2["new_bytes"].as_u64()),
        (Some(1), Some(MIB as u64))
    );
    assert_eq!(chunk_files(&store).len(), 9);
    ok(
        sock,
        &["backup", "verify", "--dest", &dest, "--key", "prod"],
    );

    // A flipped byte in the chunk only the second backup has fails its
    // verify and restore with one line; the first backup is still good.
    let chunks = chunk_files(&store);
    flip(chunks.iter().max_by_key(|p| modified(p)).unwrap());
    let out = ballast(
        sock,
        &["backup", "verify", "--dest", &dest, "--key", "prod"],
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("damaged: {second} ")), "{stdout}");
    assert!(!stdout.contains(&format!("damaged: {first} ")), "{stdout}");
    let e = fails(
        sock,
        &[
            "create", "r2", "--backup", &second, "--key", "prod", "--wait",
        ],
    );
    assert!(e.contains("is damaged"), "{e}");
    assert!(!volume_names(sock).contains(&"r2".to_string()));
    ok(sock, &["backup", "verify", &first, "--key", "prod"]);
    let gc = ok(
        sock,
        &[
            "backup", "gc", "--dest", &dest, "--key", "prod", "--grace", "0s",
        ],
    );
    assert!(gc.starts_with("deleted 0 chunks"), "{gc}");

    // A flipped byte in a manifest likewise.
    let manifests = manifest_files(&store);
    let first_id = info["id"].as_str().unwrap();
    let manifest = manifests
        .iter()
        .find(|m| m.to_string_lossy().contains(first_id))
        .unwrap();
    flip(manifest);
    let out = ballast(sock, &["backup", "verify", &first, "--key", "prod"]);
    assert!(!out.status.success());
    let e = fails(sock, &["create", "r3", "--backup", &first, "--key", "prod"]);
    assert!(e.contains(first_id), "{e}");
    assert!(!volume_names(sock).contains(&"r3".to_string()));
}
