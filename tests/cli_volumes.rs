//! Volume lifecycle through the real CLI and daemon.

mod common;

use common::{fails, json, ok, volume_names, Daemon, TempDir, BIN};

const MIB: u64 = 1 << 20;

#[test]
fn create_list_inspect_grow_delete() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;

    assert_eq!(ok(s, &["create", "db", "--size", "64M"]), "db\n");
    assert_eq!(ok(s, &["create", "logs", "--size", "1G"]), "logs\n");

    let list = json(s, &["list", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let db = list.iter().find(|v| v["name"] == "db").expect("db listed");
    assert_eq!(db["size"], 64 * MIB);
    assert_eq!(db["origin"], serde_json::Value::Null);
    assert_eq!(db["snapshots"], serde_json::json!([]));

    let table = ok(s, &["list"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.starts_with("db ") && r.contains("64 MiB")),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with("logs ") && r.contains("1 GiB")),
        "{table}"
    );

    let inspect = json(s, &["inspect", "db", "--json"]);
    assert_eq!(inspect["name"], "db");
    assert_eq!(inspect["size"], 64 * MIB);
    let human = ok(s, &["inspect", "db"]);
    assert!(
        human.contains("name:       db") && human.contains("64 MiB"),
        "{human}"
    );

    assert_eq!(ok(s, &["grow", "db", "--size", "128M"]), "db: 128 MiB\n");
    assert_eq!(json(s, &["inspect", "db", "--json"])["size"], 128 * MIB);
    // Shrinking would cut data off the end: refused, size unchanged.
    fails(s, &["grow", "db", "--size", "64M"]);
    assert_eq!(json(s, &["inspect", "db", "--json"])["size"], 128 * MIB);

    assert_eq!(ok(s, &["delete", "db"]), "db\n");
    assert_eq!(volume_names(s), ["logs"]);
    let missing = fails(s, &["inspect", "db"]);
    assert!(missing.contains("not found"), "{missing}");
    let missing = fails(s, &["delete", "db"]);
    assert!(missing.contains("not found"), "{missing}");
}

#[test]
fn duplicate_volume_is_refused_and_original_kept() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let s = &daemon.socket;
    ok(s, &["create", "db", "--size", "64M"]);
    let err = fails(s, &["create", "db", "--size", "1G"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(json(s, &["inspect", "db", "--json"])["size"], 64 * MIB);
}

#[test]
fn daemon_and_cli_meet_at_ballast_socket() {
    // With BALLAST_SOCKET set, the daemon listens where the CLI will look.
    let dir = TempDir::create();
    let (root, socket) = (dir.join("root"), dir.join("env.sock"));
    let mut daemon_command = std::process::Command::new(BIN);
    daemon_command
        .arg("daemon")
        .arg("--root")
        .arg(&root)
        .env("BALLAST_SOCKET", &socket);
    let _daemon = Daemon::start_command(daemon_command, &root, &socket);
    assert!(!root.join("control.sock").exists());

    let out = std::process::Command::new(BIN)
        .args(["create", "envvol", "--size", "4096"])
        .env("BALLAST_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(volume_names(&socket), ["envvol"]);
}

#[test]
fn daemon_settings_show_in_pool_stats() {
    let dir = TempDir::create();
    let daemon = Daemon::start_with(
        &dir.join("root"),
        &dir.join("control.sock"),
        &["--io", "sync", "--pool-size", "1G"],
    );
    let stats = json(&daemon.socket, &["pool", "--json"]);
    assert_eq!(stats["io"], "sync");
    assert_eq!(stats["max_size"], 1u64 << 30);
    let human = ok(&daemon.socket, &["pool"]);
    assert!(
        human.contains("max size:   1 GiB") && human.contains("io:         sync"),
        "{human}"
    );
}

#[test]
fn concurrent_clients_all_get_served() {
    let dir = TempDir::create();
    let daemon = Daemon::start(&dir);
    let socket = daemon.socket.clone();
    let workers: Vec<_> = (0..12)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let name = format!("vol{i:02}");
                ok(&socket, &["create", &name, "--size", "1M"]);
                let snapshot = ok(&socket, &["snapshot", "create", &name, "--name", "s"]);
                assert_eq!(snapshot, format!("{name}@s\n"));
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let expected: Vec<String> = (0..12).map(|i| format!("vol{i:02}")).collect();
    assert_eq!(volume_names(&socket), expected);
}
