//! The daemon's life: private socket, crash recovery, clean stop, one daemon per root.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use common::{daemon_refuses, fails, json, ok, volume_names, Daemon, TempDir};

#[test]
fn control_socket_is_private() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// Everything a client can see, for before/after comparisons.
fn state(socket: &std::path::Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let volumes = json(socket, &["list", "--json"]);
    let snapshots = volume_names(socket)
        .iter()
        .map(|v| json(socket, &["snapshot", "list", v, "--json"]))
        .collect();
    (volumes, snapshots)
}

#[test]
fn kill_9_and_restart_brings_everything_back() {
    let dir = TempDir::create();
    let mut daemon = Daemon::start(&dir);
    let s = daemon.socket.clone();
    ok(&s, &["create", "db", "--size", "64M"]);
    ok(&s, &["create", "logs", "--size", "1G"]);
    ok(&s, &["snapshot", "create", "db", "--name", "s1"]);
    ok(&s, &["snapshot", "create", "db"]);
    ok(&s, &["create", "copy", "--from-snapshot", "db@s1"]);
    ok(&s, &["snapshot", "create", "copy", "--name", "c1"]);
    ok(&s, &["grow", "logs", "--size", "2G"]);
    ok(&s, &["delete", "logs"]);
    ok(&s, &["create", "logs", "--size", "512M"]);
    let before = state(&s);

    daemon.kill9();
    assert!(
        daemon.socket.exists(),
        "SIGKILL leaves the socket file behind"
    );
    fails(&s, &["list"]);

    let daemon = Daemon::start_with(&dir.join("root"), &s, &[]);
    assert_eq!(state(&daemon.socket), before);
    assert_eq!(volume_names(&s), ["copy", "db", "logs"]);
    assert_eq!(json(&s, &["inspect", "copy", "--json"])["origin"], "db@s1");
    assert_eq!(
        json(&s, &["inspect", "logs", "--json"])["size"],
        512u64 << 20
    );
    assert!(
        daemon.log().contains("removing stale control socket"),
        "{}",
        daemon.log()
    );
}

#[test]
fn sigterm_stops_cleanly_and_restart_keeps_data() {
    let dir = TempDir::create();
    let mut daemon = Daemon::start(&dir);
    let s = daemon.socket.clone();
    ok(&s, &["create", "db", "--size", "64M"]);
    ok(&s, &["snapshot", "create", "db", "--name", "s1"]);
    let before = state(&s);

    let status = daemon.terminate();
    assert!(status.success(), "{status}: {}", daemon.log());
    assert!(!s.exists(), "socket removed on clean shutdown");
    assert!(
        daemon.log().contains("SIGTERM received"),
        "{}",
        daemon.log()
    );

    let daemon = Daemon::start_with(&dir.join("root"), &s, &[]);
    assert_eq!(state(&daemon.socket), before);
}

#[test]
fn second_daemon_on_the_same_root_refuses() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    ok(&daemon.socket, &["create", "db", "--size", "64M"]);

    let stderr = daemon_refuses(&daemon.root, &dir.join("other.sock"));
    assert!(stderr.contains("another ballast daemon"), "{stderr}");
    assert!(stderr.contains("already running on root"), "{stderr}");
    assert!(!dir.join("other.sock").exists());

    // The first daemon is unharmed.
    assert_eq!(volume_names(&daemon.socket), ["db"]);
}

#[test]
fn second_daemon_on_the_same_socket_refuses() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    ok(&daemon.socket, &["create", "db", "--size", "64M"]);

    let stderr = daemon_refuses(&dir.join("other-root"), &daemon.socket);
    assert!(stderr.contains("already listening on"), "{stderr}");
    assert_eq!(volume_names(&daemon.socket), ["db"]);
}

#[test]
fn daemon_refuses_bad_settings_in_one_line() {
    let dir = TempDir::create();
    let root = dir.join("root").display().to_string();
    let not_a_dir = dir.join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let not_a_dir = not_a_dir.display().to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--root", &root, "--io", "fast"], "unknown I/O mode"),
        (&["--root", &root, "--pool-size", "lots"], "invalid size"),
        (&["--root", &not_a_dir], "cannot create root directory"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(common::BIN)
            .arg("daemon")
            .args(args)
            .arg("--control-socket")
            .arg(dir.join("c.sock"))
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{stderr}"
        );
        assert!(!dir.join("c.sock").exists());
    }
}
