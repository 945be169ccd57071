//! `ballast backup prune` through the CLI and the daemon, against a
//! synthetic history: real backups of a volume whose contents change
//! between them, given chosen creation times (their manifests rewritten,
//! as a store written over years would hold them). The kept set must match
//! a table computed by hand, a dry run must change nothing, and after a gc
//! every kept backup must restore byte for byte.

mod backup_common;
mod common;

use std::path::{Path, PathBuf};

use backup_common::{assert_same, qemu_io, read_export, start_with_env, unix_uri};
use ballast_backupstore::Manifest;
use common::{fails, json, ok, TempDir};

/// Seconds of a UTC date and hour.
fn utc(y: i64, m: i64, d: i64, h: i64) -> u64 {
    // Days from civil (H. Hinnant), for dates after 1970.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    ((era * 146_097 + doe - 719_468) * 86_400 + h * 3600) as u64
}

fn manifest_path(store: &Path, volume: &str, id: &str) -> PathBuf {
    store.join(format!("backups/{volume}/{id}.manifest"))
}

/// Gives backup `id` the creation time `created`.
fn set_created(store: &Path, volume: &str, id: &str, created: u64) {
    let path = manifest_path(store, volume, id);
    let key = format!("backups/{volume}/{id}.manifest");
    let mut m = Manifest::decode_plain(&key, &std::fs::read(&path).unwrap()).unwrap();
    m.created = created;
    std::fs::write(&path, m.encode_plain()).unwrap();
}

fn listed_ids(socket: &Path, dest: &str) -> Vec<String> {
    let list = json(socket, &["backup", "list", "--dest", dest, "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_keeps_the_hand_computed_set_and_gc_leaves_every_kept_backup_restorable() {
    let dir = TempDir::create();
    // Periods are the daemon's local time: pin it.
    let daemon = start_with_env(&dir, &[("TZ", "UTC")]);
    let socket = &daemon.socket;
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());
    ok(socket, &["create", "db", "--size", "8M"]);
    let uri = unix_uri(&daemon, "db");

    // Eight backups, each of different contents, with these times (oldest
    // first):
    let times = [
        utc(2024, 3, 10, 12),  // b0
        utc(2025, 10, 5, 9),   // b1
        utc(2025, 11, 29, 8),  // b2
        utc(2025, 11, 30, 7),  // b3
        utc(2025, 11, 30, 18), // b4
        utc(2025, 12, 1, 6),   // b5
        utc(2025, 12, 1, 7),   // b6
        utc(2025, 12, 1, 9),   // b7, the newest
    ];
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for (i, created) in times.iter().enumerate() {
        // The first MiB is new in every backup (a chunk of its own); the
        // rest accumulates.
        let pattern = 0x41 + i;
        qemu_io(
            &uri,
            &[
                &format!("write -P 0x{:02x} 0 1M", 0xa0 + i),
                &format!("write -P 0x{pattern:02x} {}M 1M", i % 7 + 1),
            ],
        );
        images.push(read_export(&uri, &dir, &format!("b{i}.img")));
        let info = json(
            socket,
            &["backup", "create", "db", "--dest", &dest, "--json"],
        );
        let id = info["id"].as_str().unwrap().to_string();
        set_created(&store, "db", &id, *created);
        ids.push(id);
    }
    assert_eq!(listed_ids(socket, &dest), ids, "listed oldest first");

    // By hand, options applied in order (keep-last 1, keep-daily 2,
    // keep-monthly 2): keep-last keeps b7. keep-daily skips 12-01 (b7's
    // day, already kept: b6 and b5 stay undecided), keeps b4 for 11-30
    // (removing b3, the older of that day) and b2 for 11-29. keep-monthly
    // skips 2025-12 and 2025-11 (kept already), keeps b1 for 2025-10 and b0
    // for 2024-03. b6, b5 and b3 go.
    let keep = [
        "--keep-last",
        "1",
        "--keep-daily",
        "2",
        "--keep-monthly",
        "2",
    ];
    let expected: Vec<(usize, &str, Option<&str>)> = vec![
        (7, "keep-last", None),
        (4, "keep-daily", Some("2025-11-30")),
        (2, "keep-daily", Some("2025-11-29")),
        (1, "keep-monthly", Some("2025-10")),
        (0, "keep-monthly", Some("2024-03")),
    ];
    let removed = [6, 5, 3];

    let mut args = vec!["backup", "prune", "--dest", &dest, "--dry-run", "--json"];
    args.extend(keep);
    let dry = json(socket, &args);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["kept"], 5);
    assert_eq!(dry["removed"], 3);
    let decisions = dry["backups"].as_array().unwrap();
    assert_eq!(decisions.len(), 8);
    for (i, rule, period) in &expected {
        let d = decisions
            .iter()
            .find(|d| d["id"] == ids[*i].as_str())
            .unwrap();
        assert_eq!(d["keep"], true, "b{i} kept: {d}");
        assert_eq!(d["rule"], *rule, "b{i}: {d}");
        assert_eq!(d["period"].as_str(), *period, "b{i}: {d}");
    }
    for i in removed {
        let d = decisions
            .iter()
            .find(|d| d["id"] == ids[i].as_str())
            .unwrap();
        assert_eq!(d["keep"], false, "b{i} would go: {d}");
    }
    assert_eq!(listed_ids(socket, &dest), ids, "a dry run deletes nothing");
    // The table says what would go and why the rest stays.
    let mut args = vec!["backup", "prune", "--dest", &dest, "--dry-run"];
    args.extend(keep);
    let text = ok(socket, &args);
    assert!(
        text.contains("would remove 3 backups, kept 5 (dry run: nothing changed)"),
        "{text}"
    );
    assert!(text.contains("keep-daily 2025-11-30"), "{text}");
    assert!(
        text.contains("2025-12-01 09:00:00 UTC"),
        "local time with its zone: {text}"
    );

    // No keep option at all is refused, and changes nothing.
    let err = fails(socket, &["backup", "prune", "--dest", &dest]);
    assert!(err.contains("at least one keep option"), "{err}");
    assert_eq!(listed_ids(socket, &dest).len(), 8);

    let mut args = vec!["backup", "prune", "--dest", &dest, "--json"];
    args.extend(keep);
    let done = json(socket, &args);
    assert_eq!(done["dry_run"], false);
    let mut kept_ids: Vec<String> = expected.iter().map(|(i, ..)| ids[*i].clone()).collect();
    kept_ids.reverse();
    assert_eq!(listed_ids(socket, &dest), kept_ids);

    // gc with no grace removes exactly the chunks only the pruned backups
    // used (their first MiB); every kept backup restores byte for byte.
    let gc = json(
        socket,
        &["backup", "gc", "--dest", &dest, "--grace", "0s", "--json"],
    );
    assert_eq!(gc["deleted_chunks"], 3, "{gc}");
    for (i, ..) in &expected {
        let url = format!("{dest}?backup={}&volume=db", ids[*i]);
        let name = format!("r{i}");
        ok(socket, &["create", &name, "--backup", &url]);
        let restored = read_export(&unix_uri(&daemon, &name), &dir, &format!("{name}.img"));
        assert_same(
            &restored,
            &images[*i],
            &format!("kept backup b{i} after prune and gc"),
        );
    }

    // keep-hourly 1 keeps one backup: the newest.
    let again = json(
        socket,
        &[
            "backup",
            "prune",
            "--dest",
            &dest,
            "--keep-hourly",
            "1",
            "--json",
        ],
    );
    assert_eq!(again["kept"], 1);
    assert_eq!(listed_ids(socket, &dest), vec![ids[7].clone()]);
}

#[test]
fn gc_after_a_prune_leaves_every_kept_backup_restorable() {
    let dir = TempDir::create();
    let daemon = start_with_env(&dir, &[("TZ", "UTC")]);
    let socket = &daemon.socket;
    let store = dir.join("store");
    let dest = format!("file://{}", store.display());
    ok(socket, &["create", "db", "--size", "8M"]);
    let uri = unix_uri(&daemon, "db");
    // Six backups on six days; each rewrites a different MiB, so each
    // backup has a chunk of its own and shares the rest.
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for i in 0..6 {
        let pattern = 0x61 + i;
        qemu_io(
            &uri,
            &[
                &format!("write -P 0x{:02x} 0 1M", 0xa0 + i),
                &format!("write -P 0x{pattern:02x} {}M 1M", i + 1),
            ],
        );
        images.push(read_export(&uri, &dir, &format!("d{i}.img")));
        let info = json(
            socket,
            &["backup", "create", "db", "--dest", &dest, "--json"],
        );
        let id = info["id"].as_str().unwrap().to_string();
        set_created(&store, "db", &id, utc(2025, 11, 20 + i as i64, 12));
        ids.push(id);
    }
    let report = json(
        socket,
        &[
            "backup",
            "prune",
            "--dest",
            &dest,
            "--keep-daily",
            "3",
            "--json",
        ],
    );
    assert_eq!(report["removed"], 3);
    assert_eq!(listed_ids(socket, &dest), ids[3..].to_vec());
    let gc = json(
        socket,
        &["backup", "gc", "--dest", &dest, "--grace", "0s", "--json"],
    );
    assert_eq!(gc["manifests"], 3, "{gc}");
    assert_eq!(
        gc["deleted_chunks"], 3,
        "each pruned backup's own first MiB: {gc}"
    );
    for i in 3..6 {
        let url = format!("{dest}?backup={}&volume=db", ids[i]);
        let name = format!("r{i}");
        ok(socket, &["create", &name, "--backup", &url]);
        let restored = read_export(&unix_uri(&daemon, &name), &dir, &format!("{name}.img"));
        assert_same(&restored, &images[i], &format!("kept backup {i} after gc"));
    }
    let verify = ok(socket, &["backup", "verify", "--dest", &dest]);
    assert!(verify.contains("verified 3 backups"), "{verify}");
}
