//! Helpers of the standby end-to-end tests: the standby's daemon (its
//! applies slowed on request), its status, waits on it, timed activation.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backup_common::{qemu_io, MIB};
use crate::common::{json, ok, Daemon, TempDir};

/// The standby's daemon; each chunk fetch of an apply waits `delay_ms`.
pub fn standby_daemon(dir: &TempDir, delay_ms: u64, env: &[(&str, &str)]) -> Daemon {
    let delay = delay_ms.to_string();
    let mut env = env.to_vec();
    env.push(("BALLAST_STANDBY_DELAY_MS", &delay));
    crate::backup_common::start_with_env(dir, &env)
}

pub fn standby(sock: &Path, volume: &str) -> serde_json::Value {
    let all = json(sock, &["standby", "list", "--json"]);
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["volume"] == volume)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until `check` holds of the standby's status.
pub fn wait_for(sock: &Path, volume: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = standby(sock, volume);
        if check(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{volume} never {what}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_applied(sock: &Path, volume: &str, backup: &str) -> serde_json::Value {
    wait_for(sock, volume, "applied the backup", |s| {
        s["applied_backup"] == backup && s["applying_backup"].is_null()
    });
    standby(sock, volume)
}

/// Volume `volume` (`size`) on the source's daemon `src` (root `dir`),
/// holding `contents`, backed up once to `dest`; the backup's URL.
pub fn backed_up_volume(
    src: &Daemon,
    dir: &TempDir,
    (volume, size): (&str, &str),
    contents: &[u8],
    dest: &str,
) -> String {
    ok(&src.socket, &["create", volume, "--size", size]);
    crate::backup_common::write_volume(src, dir, volume, contents);
    backup(&src.socket, volume, dest)
}

/// Makes `name` a standby of `source`'s backups in `dest`, polled every
/// second.
pub fn follow(sock: &Path, name: &str, dest: &str, source: &str) {
    ok(
        sock,
        &[
            "standby", "create", name, "--dest", dest, "--volume", source, "--every", "1s",
        ],
    );
}

/// A backup of `volume`; its URL.
pub fn backup(sock: &Path, volume: &str, dest: &str) -> String {
    ok(sock, &["backup", "create", volume, "--dest", dest])
        .trim()
        .to_string()
}

pub fn id_of(url: &str) -> String {
    url.split("backup=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string()
}

/// Writes `fill` over chunk `index` of the source and of `expected`.
pub fn fill_chunk(uri: &str, expected: &mut [u8], index: usize, fill: u8) {
    qemu_io(uri, &[&format!("write -P {fill} {index}M 1M"), "flush"]);
    expected[index * MIB..(index + 1) * MIB].fill(fill);
}

/// `ballast standby activate VOL`, timed.
pub fn activate(sock: &Path, volume: &str) -> Duration {
    let started = Instant::now();
    ok(sock, &["standby", "activate", volume]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "activate took {took:?}");
    took
}

/// qemu-io writes to `uri`; its output when it fails.
pub fn write_fails(uri: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 9 0 4k"])
        .arg(uri)
        .output()
        .expect("qemu-io is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || text.contains("failed") || text.contains("read-only"),
        "a write to a standby went through: {text}"
    );
    text
}
