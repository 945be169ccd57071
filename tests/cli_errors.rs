//! Bad input and missing daemons: one clear line, non-zero exit, nothing changed.

mod common;

use common::{fails, ok, volume_names, Daemon, TempDir};

const BAD_NAMES: [&str; 5] = ["../x", "a/b", "", ".hidden", "a@b"];

#[test]
fn bad_names_are_refused_before_anything_is_sent() {
    // No daemon listens here: an "invalid name" answer proves the CLI
    // refused the name itself, before trying to connect.
    let dir = TempDir::create();
    let nowhere = dir.join("nowhere.sock");
    for name in BAD_NAMES {
        let commands: [&[&str]; 8] = [
            &["create", name, "--size", "1G"],
            &["delete", name],
            &["inspect", name],
            &["grow", name, "--size", "1G"],
            &["snapshot", "create", name],
            &["snapshot", "create", "db", "--name", name],
            &["snapshot", "list", name],
            &["create", "db", "--from-snapshot", &format!("{name}@s")],
        ];
        for args in commands {
            let err = fails(&nowhere, args);
            assert!(err.contains("invalid name"), "{args:?}: {err}");
        }
    }
}

#[test]
fn bad_names_change_nothing_on_a_live_daemon() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    ok(s, &["create", "db", "--size", "64M"]);
    for name in BAD_NAMES {
        fails(s, &["create", name, "--size", "1G"]);
        fails(s, &["delete", name]);
        fails(s, &["snapshot", "create", "db", "--name", name]);
    }
    assert_eq!(volume_names(s), ["db"]);
    assert_eq!(
        ok(s, &["snapshot", "list", "db"]).lines().count(),
        1,
        "only the header"
    );
}

#[test]
fn bad_sizes_are_refused() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    // Unparseable sizes are caught by the CLI; 0 and unaligned sizes by the daemon.
    for size in [
        "10X",
        "",
        "-1",
        "1.5G",
        "G",
        "99999999999999999999",
        "0",
        "1000",
    ] {
        let err = fails(s, &["create", "db", "--size", size]);
        assert!(err.contains("size"), "{size:?}: {err}");
    }
    assert!(volume_names(s).is_empty());

    ok(s, &["create", "db", "--size", "64M"]);
    for size in ["10X", "0", "1000"] {
        fails(s, &["grow", "db", "--size", size]);
    }
    let err = fails(s, &["create", "other"]);
    assert!(err.contains("--size is required"), "{err}");
    assert_eq!(volume_names(s), ["db"]);
}

#[test]
fn bad_snapshot_references_are_refused() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    ok(s, &["create", "db", "--size", "64M"]);
    ok(s, &["snapshot", "create", "db", "--name", "s1"]);
    for reference in ["db", "db@", "@s1", "db@../x", "db@s1@x"] {
        fails(s, &["snapshot", "delete", reference]);
        fails(s, &["create", "copy", "--from-snapshot", reference]);
    }
    assert_eq!(volume_names(s), ["db"]);
    assert!(ok(s, &["snapshot", "list", "db"]).contains("db@s1"));
}

#[test]
fn missing_daemon_is_reported_plainly() {
    let dir = TempDir::create();
    let nowhere = dir.join("nowhere.sock");
    let err = fails(&nowhere, &["list"]);
    assert_eq!(
        err,
        format!(
            "error: no ballast daemon is listening on {}: start one with `ballast serve` or `ballast daemon --root DIR`",
            nowhere.display()
        )
    );
    // A stale socket file with nobody behind it reads the same.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = fails(&stale, &["create", "db", "--size", "1G"]);
    assert!(
        err.starts_with("error: no ballast daemon is listening on"),
        "{err}"
    );
}
