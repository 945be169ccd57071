//! Snapshots and clones through the real CLI and daemon.

mod common;

use common::{fails, json, ok, volume_names, Daemon, TempDir};

const MIB: u64 = 1 << 20;

fn snapshot_names(socket: &std::path::Path, volume: &str) -> Vec<String> {
    let list = json(socket, &["snapshot", "list", volume, "--json"]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn snapshot_create_list_delete() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    ok(s, &["create", "db", "--size", "64M"]);

    assert_eq!(
        ok(s, &["snapshot", "create", "db", "--name", "before"]),
        "db@before\n"
    );
    let generated = ok(s, &["snapshot", "create", "db"]);
    let generated = generated
        .trim_end()
        .strip_prefix("db@")
        .expect("prints VOL@SNAP")
        .to_string();
    assert!(!generated.is_empty() && generated != "before");

    assert_eq!(
        snapshot_names(s, "db"),
        ["before".to_string(), generated.clone()]
    );
    let list = json(s, &["snapshot", "list", "db", "--json"]);
    assert_eq!(list[0]["volume"], "db");
    assert_eq!(list[0]["size"], 64 * MIB);
    assert_eq!(list[0]["clones"], 0);

    let table = ok(s, &["snapshot", "list", "db"]);
    assert!(table.starts_with("SNAPSHOT"), "{table}");
    assert!(
        table.contains("db@before") && table.contains(&format!("db@{generated}")),
        "{table}"
    );

    let inspect = json(s, &["inspect", "db", "--json"]);
    assert_eq!(inspect["snapshots"].as_array().unwrap().len(), 2);
    assert!(ok(s, &["inspect", "db"]).contains("db@before"));

    let err = fails(s, &["snapshot", "create", "db", "--name", "before"]);
    assert!(err.contains("already exists"), "{err}");

    assert_eq!(ok(s, &["snapshot", "delete", "db@before"]), "db@before\n");
    assert_eq!(snapshot_names(s, "db"), [generated]);
    let err = fails(s, &["snapshot", "delete", "db@before"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(s, &["snapshot", "list", "nosuch"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn clone_from_snapshot_records_its_origin() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    ok(s, &["create", "db", "--size", "64M"]);
    ok(s, &["snapshot", "create", "db", "--name", "s1"]);

    assert_eq!(
        ok(s, &["create", "copy", "--from-snapshot", "db@s1"]),
        "copy\n"
    );
    let copy = json(s, &["inspect", "copy", "--json"]);
    assert_eq!(copy["origin"], "db@s1");
    assert_eq!(copy["size"], 64 * MIB);
    assert!(ok(s, &["inspect", "copy"]).contains("origin:     db@s1"));
    assert!(ok(s, &["list"])
        .lines()
        .any(|l| l.starts_with("copy ") && l.contains("db@s1")));
    assert_eq!(
        json(s, &["snapshot", "list", "db", "--json"])[0]["clones"],
        1
    );

    // A clone may start larger than its snapshot, never smaller.
    ok(
        s,
        &[
            "create",
            "big",
            "--from-snapshot",
            "db@s1",
            "--size",
            "128M",
        ],
    );
    let big = json(s, &["inspect", "big", "--json"]);
    assert_eq!(
        (big["size"].as_u64(), big["origin"].as_str()),
        (Some(128 * MIB), Some("db@s1"))
    );
    let err = fails(
        s,
        &[
            "create",
            "small",
            "--from-snapshot",
            "db@s1",
            "--size",
            "32M",
        ],
    );
    assert!(err.contains("at least the snapshot's size"), "{err}");
    let err = fails(s, &["create", "orphan", "--from-snapshot", "db@nosuch"]);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(volume_names(s), ["big", "copy", "db"]);

    // Neither the origin nor its snapshot can go while clones depend on them.
    let err = fails(s, &["delete", "db"]);
    assert!(volume_names(s).contains(&"db".to_string()), "{err}");
    let err = fails(s, &["snapshot", "delete", "db@s1"]);
    assert!(err.contains("clone"), "{err}");
    assert_eq!(
        json(s, &["snapshot", "list", "db", "--json"])[0]["name"],
        "s1"
    );
    ok(s, &["delete", "copy"]);
    ok(s, &["delete", "big"]);
    ok(s, &["delete", "db"]);
    assert!(volume_names(s).is_empty());
}
