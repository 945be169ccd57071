//! Standby volumes with the real daemon, two of them on two roots (the
//! source's host and the standby's) sharing a file:// store, data checked
//! through NBD byte for byte: a standby following three incremental
//! backups, fetching only the changed chunks, read-only until activated,
//! its snapshots its applies' own (snapshots, backups from a new snapshot
//! and schedules refused); activated mid-apply, once the apply (slowed by
//! `BALLAST_STANDBY_DELAY_MS`) has written some of its chunks, holding
//! exactly the previous complete backup, the backup held during the apply; activated after the source's newest backup was deleted and
//! the store is gone; `kill -9` mid-apply, restart, activate; a damaged
//! chunk failing an apply, which leaves the last complete backup, then the
//! retry once it is whole.

mod backup_common;
mod common;
mod standby_common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use backup_common::{assert_same, image, qemu_io, read_export, schedule, unix_uri, MIB};
use common::{fails, json, ok, TempDir};
use standby_common::{
    activate, backed_up_volume, backup, fill_chunk, follow, id_of, standby, wait_applied, wait_for,
    write_fails,
};

fn standby_daemon(dir: &TempDir, delay_ms: u64) -> common::Daemon {
    standby_common::standby_daemon(dir, delay_ms, &[])
}

#[test]
fn a_standby_follows_three_incremental_backups_and_is_read_only_until_activated() {
    let a = TempDir::create();
    let b = TempDir::create();
    let src = backup_common::start(&a);
    let sb = standby_daemon(&b, 0);
    let (ssock, bsock) = (src.socket.clone(), sb.socket.clone());
    let dest = format!("file://{}", a.join("store").display());

    let mut expected = image(12, 4, 21);
    let b1 = backed_up_volume(&src, &a, ("src", "16M"), &expected, &dest);
    let src_uri = unix_uri(&src, "src");

    let refused = fails(
        &bsock,
        &[
            "standby", "create", "sb", "--dest", &dest, "--volume", "nope",
        ],
    );
    assert!(refused.contains("no backup of volume nope"), "{refused}");
    follow(&bsock, "sb", &dest, "src");
    let s = wait_applied(&bsock, "sb", &id_of(&b1));
    assert_eq!(s["last_apply"]["chunks_fetched"], 12, "{s}");
    assert_eq!(s["last_apply"]["bytes_fetched"], 12 * MIB as u64, "{s}");
    assert_eq!(s["state"], "following", "{s}");
    // The same figures on /metrics, which Prometheus' checker accepts.
    if let Some(promtool) = schedule::promtool() {
        let page = schedule::metrics_page(&bsock);
        schedule::promtool_check(&promtool, &page);
        let labels = format!(
            "{{volume=\"sb\",source=\"src\",dest=\"{}\"}}",
            s["dest"].as_str().unwrap()
        );
        let series = |name: &str| schedule::sample(&page, &format!("{name}{labels}"));
        assert_eq!(
            series("ballast_standby_last_apply_fetched_bytes"),
            (12 * MIB) as f64
        );
        assert_eq!(
            series("ballast_standby_applied_backup_created_timestamp_seconds"),
            s["applied_created"].as_f64().unwrap()
        );
        assert_eq!(series("ballast_standby_applying"), 0.0);
        assert_eq!(series("ballast_standby_failing"), 0.0);
        assert!(series("ballast_standby_lag_seconds") >= 0.0);
    }
    let uri = unix_uri(&sb, "sb");
    assert_same(&read_export(&uri, &b, "1.img"), &expected, "first backup");

    // Read-only until activated: through NBD and the API.
    let refused = write_fails(&uri);
    assert!(
        refused.contains("read-only") || refused.contains("ermission"),
        "{refused}"
    );
    let info = Command::new("nbdinfo")
        .arg(&uri)
        .output()
        .expect("nbdinfo is installed");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("is_read_only: true"), "{info}");
    let refused = fails(&bsock, &["grow", "sb", "--size", "32M"]);
    assert!(refused.contains("is a standby"), "{refused}");
    let refused = fails(&bsock, &["delete", "sb"]);
    assert!(refused.contains("is a standby"), "{refused}");
    // Its snapshots are its applies' own: none taken (a backup takes
    // one) or deleted by anyone else.
    let snapshots = json(&bsock, &["snapshot", "list", "sb", "--json"]);
    let applied = format!("sb@{}", snapshots[0]["name"].as_str().unwrap());
    for args in [
        &["snapshot", "create", "sb"][..],
        &["snapshot", "delete", &applied],
        &["backup", "create", "sb", "--dest", &dest],
        &[
            "backup", "schedule", "set", "sb", "--dest", &dest, "--every", "1h",
        ],
    ] {
        let refused = fails(&bsock, args);
        assert!(refused.contains("is a standby"), "{args:?}: {refused}");
    }
    let after = json(&bsock, &["snapshot", "list", "sb", "--json"]);
    assert_eq!(after, snapshots, "the standby's snapshots are unchanged");
    // Its applied snapshot can be backed up by name.
    let out = ok(&bsock, &["backup", "create", &applied, "--dest", &dest]);
    assert!(out.contains("backup="), "{out}");
    let (status, body) = common::http(
        &bsock,
        "POST",
        "/v1/volumes/sb/grow",
        r#"{"size": 33554432}"#,
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = common::http(&bsock, "POST", "/v1/standbys", r#"{"volume": "x"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = common::http(&bsock, "GET", "/v1/standbys", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""source":"src""#), "{body}");
    assert!(ok(&bsock, &["inspect", "sb"]).contains("standby:    of src in"));

    // Second backup: one chunk changed, one zeroed: one chunk fetched.
    fill_chunk(&src_uri, &mut expected, 2, 0x11);
    qemu_io(&src_uri, &["write -z 5M 1M", "flush"]);
    expected[5 * MIB..6 * MIB].fill(0);
    let b2 = backup(&ssock, "src", &dest);
    let s = wait_applied(&bsock, "sb", &id_of(&b2));
    assert_eq!(s["last_apply"]["chunks_fetched"], 1, "{s}");
    assert_eq!(s["last_apply"]["chunks_zeroed"], 1, "{s}");
    assert_same(&read_export(&uri, &b, "2.img"), &expected, "second backup");

    // Third: a data chunk and a chunk that was zeros.
    fill_chunk(&src_uri, &mut expected, 0, 0x22);
    fill_chunk(&src_uri, &mut expected, 13, 0x33);
    let b3 = backup(&ssock, "src", &dest);
    let s = wait_applied(&bsock, "sb", &id_of(&b3));
    assert_eq!(s["last_apply"]["chunks_fetched"], 2, "{s}");
    assert_eq!(s["last_apply"]["bytes_fetched"], 2 * MIB as u64, "{s}");
    assert_same(&read_export(&uri, &b, "3.img"), &expected, "third backup");
    let text = ok(&bsock, &["standby", "list"]);
    assert!(
        text.contains(&id_of(&b3)) && text.contains("following"),
        "{text}"
    );

    activate(&bsock, "sb");
    assert!(standby(&bsock, "sb").is_null());
    assert_eq!(ok(&bsock, &["standby", "list"]), "no standby volumes\n");
    let snapshots = json(&bsock, &["snapshot", "list", "sb", "--json"]);
    assert_eq!(snapshots, serde_json::json!([]), "standby snapshots go");
    qemu_io(&uri, &["write -P 0x44 1M 4k", "flush"]);
    expected[MIB..MIB + 4096].fill(0x44);
    assert_same(&read_export(&uri, &b, "4.img"), &expected, "activated");
    let refused = fails(&bsock, &["standby", "activate", "sb"]);
    assert!(refused.contains("not a standby"), "{refused}");
    let (status, body) = common::http(&bsock, "POST", "/v1/standbys/sb/activate", "");
    assert_eq!(status, 404, "{body}");
}

/// Waits (10 s at most) until the store at `store` has no hold locks.
fn wait_no_holds(store: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let holds = || {
        fs::read_dir(store.join("locks")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("hold-"))
                .count()
        })
    };
    while holds() > 0 {
        assert!(
            Instant::now() < deadline,
            "holds left in {}",
            store.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deletes `backup` once no standby holds it any more (within 10 s).
fn delete_once_released(socket: &Path, backup: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = common::ballast(socket, &["backup", "delete", backup]);
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backup {backup} still held: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn activation_mid_apply_after_kill_9_and_after_the_newest_backup_went() {
    let a = TempDir::create();
    let b = TempDir::create();
    let src = backup_common::start(&a);
    let (ssock, bsock) = (src.socket.clone(), b.join("control.sock"));
    let store = a.join("store");
    let dest = format!("file://{}", store.display());
    let first = image(4, 12, 31);
    let b1 = backed_up_volume(&src, &a, ("src", "16M"), &first, &dest);
    let src_uri = unix_uri(&src, "src");

    // 300 ms a fetch, four at a time: the first apply takes 0.3 s.
    let mut sb = standby_daemon(&b, 300);
    follow(&bsock, "sb", &dest, "src");
    wait_applied(&bsock, "sb", &id_of(&b1));

    // Twelve chunks change: the apply takes about a second, at 3 s a
    // fetch much longer; caught mid-apply, the daemon is killed.
    let mut second = first.clone();
    for i in 0..12 {
        fill_chunk(&src_uri, &mut second, i, 0x50 + i as u8);
    }
    drop(sb);
    sb = standby_daemon(&b, 3000);
    let b2 = backup(&ssock, "src", &dest);
    wait_for(&bsock, "sb", "started applying", |s| {
        s["applying_backup"] == id_of(&b2).as_str()
    });
    // Held while it applies.
    let refused = fails(&ssock, &["backup", "delete", &b2]);
    assert!(refused.contains("cannot be deleted"), "{refused}");
    sb.kill9();

    // Restarted (still slow): the record says which apply was cut short;
    // activated at once, the volume holds exactly the first backup.
    sb = standby_daemon(&b, 3000);
    assert_eq!(standby(&bsock, "sb")["applied_backup"], id_of(&b1).as_str());
    activate(&bsock, "sb");
    let uri = unix_uri(&sb, "sb");
    assert_same(
        &read_export(&uri, &b, "k.img"),
        &first,
        "activated after kill -9",
    );
    ok(&bsock, &["delete", "sb"]);
    // The killed daemon's hold on b2 is dropped by the activation, in the
    // background: gone before this daemon is killed in turn.
    wait_no_holds(&store);

    // A new standby applies both; the third backup is slow to apply and
    // activation mid-apply leaves the second.
    drop(sb);
    sb = standby_daemon(&b, 0);
    follow(&bsock, "sb", &dest, "src");
    wait_applied(&bsock, "sb", &id_of(&b2));
    wait_no_holds(&store);
    drop(sb);
    sb = standby_daemon(&b, 3000);
    let mut third = second.clone();
    for i in 4..10 {
        fill_chunk(&src_uri, &mut third, i, 0x70 + i as u8);
    }
    let b3 = backup(&ssock, "src", &dest);
    // Four fetches at a time, 3 s each: after about 3 s four of the six
    // chunks are written, the last two still coming. The read-only
    // export shows the head as the apply leaves it.
    let uri = unix_uri(&sb, "sb");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let head = read_export(&uri, &b, "mid.img");
        if head[4 * MIB..5 * MIB] == third[4 * MIB..5 * MIB] {
            break;
        }
        assert!(Instant::now() < deadline, "the apply wrote nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    activate(&bsock, "sb");
    // What it had written is reverted (the engine's revert: no copy), so
    // the volume holds the second backup, not the third.
    let log = sb.log();
    assert!(
        log.lines().any(|l| l.contains("undid an unfinished apply")),
        "no undo logged:\n{log}"
    );
    assert_same(
        &read_export(&uri, &b, "m.img"),
        &second,
        "activated mid-apply",
    );
    ok(&bsock, &["delete", "sb"]);
    // The hold is released: the backup can be deleted now.
    delete_once_released(&ssock, &b3);

    // The newest backup (b2 now) applied, then deleted in the store and
    // the store gone altogether: activation fetches nothing.
    drop(sb);
    sb = standby_daemon(&b, 0);
    follow(&bsock, "sb", &dest, "src");
    wait_applied(&bsock, "sb", &id_of(&b2));
    // The apply's hold on b2 goes in the background, once it is applied.
    delete_once_released(&ssock, &b2);
    // Gone, and a file in its place: every poll fails.
    fs::rename(&store, a.join("store.away")).unwrap();
    fs::write(&store, b"not a store").unwrap();
    wait_for(&bsock, "sb", "saw the store go", |s| {
        !s["last_error"].is_null()
    });
    assert_eq!(standby(&bsock, "sb")["state"], "failing");
    activate(&bsock, "sb");
    let uri = unix_uri(&sb, "sb");
    assert_same(
        &read_export(&uri, &b, "d.img"),
        &second,
        "activated without its store",
    );
    assert!(standby(&bsock, "sb").is_null());
}

#[test]
fn a_damaged_chunk_fails_the_apply_and_leaves_the_last_complete_backup() {
    let a = TempDir::create();
    let b = TempDir::create();
    let src = backup_common::start(&a);
    let (ssock, bsock) = (src.socket.clone(), b.join("control.sock"));
    let store = a.join("store");
    let dest = format!("file://{}", store.display());
    let first = image(4, 4, 51);
    let b1 = backed_up_volume(&src, &a, ("src", "8M"), &first, &dest);
    let src_uri = unix_uri(&src, "src");
    let sb = standby_daemon(&b, 0);
    follow(&bsock, "sb", &dest, "src");
    wait_applied(&bsock, "sb", &id_of(&b1));

    // The changed chunk is damaged in the store before the (slowed)
    // apply fetches it.
    drop(sb);
    let sb = standby_daemon(&b, 1500);
    let mut second = first.clone();
    fill_chunk(&src_uri, &mut second, 1, 0x61);
    fill_chunk(&src_uri, &mut second, 6, 0x62);
    let b2 = backup(&ssock, "src", &dest);
    let hex = blake3::hash(&second[MIB..2 * MIB]).to_hex();
    let chunk = store.join(format!("chunks/{}/{}/{hex}", &hex[0..2], &hex[2..4]));
    let good = fs::read(&chunk).unwrap();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    fs::write(&chunk, &bad).unwrap();
    wait_for(&bsock, "sb", "failed the apply", |s| {
        s["state"] == "failing" && s["applying_backup"].is_null()
    });
    let s = standby(&bsock, "sb");
    let error = s["last_error"]["error"].as_str().unwrap();
    assert!(
        error.contains(hex.as_str()) && error.contains("damaged"),
        "{error}"
    );
    assert_eq!(s["applied_backup"], id_of(&b1).as_str(), "{s}");
    let page = schedule::metrics_page(&bsock);
    let failing = format!(
        "ballast_standby_failing{{volume=\"sb\",source=\"src\",dest=\"{}\"}}",
        s["dest"].as_str().unwrap()
    );
    assert_eq!(schedule::sample(&page, &failing), 1.0, "{page}");
    let uri = unix_uri(&sb, "sb");
    assert_same(
        &read_export(&uri, &b, "f.img"),
        &first,
        "after the failed apply",
    );

    // Whole again: the retry applies it.
    fs::write(&chunk, &good).unwrap();
    wait_applied(&bsock, "sb", &id_of(&b2));
    assert_same(&read_export(&uri, &b, "g.img"), &second, "after the retry");
    assert_eq!(standby(&bsock, "sb")["state"], "following");
}
