//! The daemon's NBD front end, driven by qemu-io through the URIs that
//! `ballast export` prints: data written over TCP reads back over the unix
//! socket, snapshot exports are read-only, and writes the commit timer has
//! made durable survive `kill -9` of the daemon without any client flush,
//! and a sequential reader (nbdcopy) is read ahead and gets exact data.

mod common;

use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use common::{fails, json, ok, Daemon, TempDir};

/// Runs qemu-io on `uri` with `commands`; returns (success, stdout+stderr).
fn qemu_io(uri: &str, extra: &[&str], commands: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]).args(extra);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .arg(uri)
        .output()
        .expect("qemu-io is installed (qemu-utils)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io reports I/O errors on stdout and still exits 0.
    let failed = !out.status.success()
        || text.contains("failed:")
        || text.contains("Pattern verification failed");
    (!failed, text)
}

/// Runs nbdcopy with `args`, which must succeed.
fn nbdcopy(args: &[&str]) {
    let out = Command::new("nbdcopy")
        .args(args)
        .output()
        .expect("nbdcopy is installed (libnbd-bin)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `nbd+unix://` URI `ballast export` prints for `export`.
fn unix_uri(daemon: &Daemon, export: &str) -> String {
    json(&daemon.socket, &["export", export, "--json"])["unix"]
        .as_str()
        .unwrap()
        .to_string()
}

fn start(dir: &TempDir) -> Daemon {
    Daemon::start_with(
        &dir.join("root"),
        &dir.join("control.sock"),
        &[
            "--nbd-listen",
            "127.0.0.1:0",
            "--nbd-socket",
            &dir.join("nbd.sock").display().to_string(),
        ],
    )
}

#[test]
fn export_uris_serve_qemu_io_over_tcp_and_unix() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    ok(sock, &["create", "vol", "--size", "64M"]);

    let uris = json(sock, &["export", "vol", "--json"]);
    assert_eq!(uris["read_only"], false);
    let tcp = uris["tcp"].as_str().unwrap().to_string();
    let unix = uris["unix"].as_str().unwrap().to_string();
    assert!(
        tcp.starts_with("nbd://127.0.0.1:") && tcp.ends_with("/vol"),
        "{tcp}"
    );
    assert_eq!(
        unix,
        format!("nbd+unix:///vol?socket={}", dir.join("nbd.sock").display())
    );
    let text = ok(sock, &["export", "vol"]);
    assert_eq!(text, format!("{tcp}\n{unix}\n"));

    let (good, out) = qemu_io(&tcp, &[], &["write -P 0x5a 1M 2M", "flush"]);
    assert!(good, "{out}");
    let (good, out) = qemu_io(&unix, &[], &["read -P 0x5a 1M 2M", "read -P 0 0 1M"]);
    assert!(good, "{out}");

    // A snapshot export has the data and refuses writes.
    let snap = ok(sock, &["snapshot", "create", "vol", "--name", "s1"]);
    assert_eq!(snap.trim(), "vol@s1");
    let snap_uris = json(sock, &["export", "vol@s1", "--json"]);
    assert_eq!(snap_uris["read_only"], true);
    let snap_unix = snap_uris["unix"].as_str().unwrap();
    let (good, out) = qemu_io(snap_unix, &["-r"], &["read -P 0x5a 1M 2M"]);
    assert!(good, "{out}");
    let (good, _) = qemu_io(snap_unix, &[], &["write -P 1 0 4k"]);
    assert!(!good, "a write to a snapshot export must fail");

    // Exports that do not exist get one clear line.
    let err = fails(sock, &["export", "nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(sock, &["export", "vol@nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(sock, &["export", "../x"]);
    assert!(err.contains("invalid name"), "{err}");
}

#[test]
fn commit_timer_makes_unflushed_writes_durable() {
    let dir = TempDir::create();
    let mut daemon = start(&dir);
    ok(&daemon.socket, &["create", "vol", "--size", "16M"]);
    let unix = unix_uri(&daemon, "vol");
    // nbdcopy sends no FLUSH unless asked to (--flush): only the daemon's
    // commit timer can make this write durable.
    let src = dir.join("pattern");
    std::fs::write(&src, vec![0xc3u8; 1 << 20]).unwrap();
    nbdcopy(&[&src.display().to_string(), &unix]);
    sleep(Duration::from_secs(7)); // > the 5 s commit period
    daemon.kill9();
    let daemon = start(&dir);
    let (good, out) = qemu_io(&unix, &["-r"], &["read -P 0xc3 0 1M"]);
    assert!(good, "data lost after the commit timer ran: {out}");
    drop(daemon);
}

#[test]
fn flushed_writes_survive_kill_9() {
    let dir = TempDir::create();
    let mut daemon = start(&dir);
    ok(&daemon.socket, &["create", "vol", "--size", "16M"]);
    let unix = unix_uri(&daemon, "vol");
    // -f: FUA write; then an explicit flush for a second range.
    let (good, out) = qemu_io(
        &unix,
        &["-t", "none"],
        &["write -f -P 0x11 0 256k", "write -P 0x22 1M 256k", "flush"],
    );
    assert!(good, "{out}");
    daemon.kill9();
    let _daemon = start(&dir);
    let (good, out) = qemu_io(
        &unix,
        &["-r"],
        &["read -P 0x11 0 256k", "read -P 0x22 1M 256k"],
    );
    assert!(good, "{out}");
}

#[test]
fn sequential_reader_is_read_ahead_and_gets_exact_data() {
    let dir = TempDir::create();
    let daemon = start(&dir);
    let sock = &daemon.socket;
    ok(sock, &["create", "vol", "--size", "32M"]);
    let unix = unix_uri(&daemon, "vol");
    let src = dir.join("src");
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    nbdcopy(&[&src.display().to_string(), &unix]);
    // One connection, so the reads reach the daemon as one stream.
    let dst = dir.join("dst");
    nbdcopy(&["--connections=1", &unix, &dst.display().to_string()]);
    assert!(std::fs::read(&dst).unwrap() == data, "read back differs");
    let stats = json(sock, &["pool", "--json"]);
    let used = stats["read_ahead_used"].as_u64().unwrap();
    assert!(
        used > 0 && used <= stats["read_ahead"].as_u64().unwrap(),
        "{stats}"
    );
}
