//! Helpers of the backup end-to-end tests: a daemon with an NBD socket,
//! volume contents written and read through NBD with nbdcopy and qemu-io.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

use crate::common::{json, Daemon, TempDir};

pub mod schedule;

pub const MIB: usize = 1 << 20;

pub fn start(dir: &TempDir) -> Daemon {
    start_with_env(dir, &[])
}

/// A daemon with an NBD unix socket and extra environment (e.g. AWS_*).
pub fn start_with_env(dir: &TempDir, env: &[(&str, &str)]) -> Daemon {
    start_with_args(dir, env, &[])
}

/// A daemon with an NBD unix socket, extra environment and flags.
pub fn start_with_args(dir: &TempDir, env: &[(&str, &str)], args: &[&str]) -> Daemon {
    let root = dir.join("root");
    let socket = dir.join("control.sock");
    let mut command = Command::new(crate::common::BIN);
    command
        .arg("daemon")
        .arg("--root")
        .arg(&root)
        .arg("--control-socket")
        .arg(&socket)
        .args(["--nbd-listen", "off", "--nbd-socket"])
        .arg(dir.join("nbd.sock"))
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    Daemon::start_command(command, &root, &socket)
}

/// The `nbd+unix://` URI of `export`, as `ballast export` prints it.
pub fn unix_uri(daemon: &Daemon, export: &str) -> String {
    json(&daemon.socket, &["export", export, "--json"])["unix"]
        .as_str()
        .unwrap()
        .to_string()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} is installed: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies `image` (a file) onto the start of the export at `uri`.
pub fn write_image(uri: &str, image: &Path) {
    run(
        Command::new("nbdcopy").arg("--flush").arg(image).arg(uri),
        "nbdcopy (libnbd-bin)",
    );
}

/// Reads the whole export at `uri`.
pub fn read_export(uri: &str, dir: &TempDir, name: &str) -> Vec<u8> {
    let out: PathBuf = dir.join(name);
    run(
        Command::new("nbdcopy").arg(uri).arg(&out),
        "nbdcopy (libnbd-bin)",
    );
    std::fs::read(out).unwrap()
}

/// qemu-io reads `len` bytes at `offset`; `true` if the read succeeded.
pub fn read_ok(uri: &str, offset: usize, len: usize) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", &format!("read {offset} {len}")])
        .arg(uri)
        .output()
        .expect("qemu-io is installed");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("failed") && !text.contains("error")
}

/// Writes `contents` over the start of `volume`.
pub fn write_volume(daemon: &Daemon, dir: &TempDir, volume: &str, contents: &[u8]) {
    let file = dir.join(&format!("{volume}.in"));
    std::fs::write(&file, contents).unwrap();
    write_image(&unix_uri(daemon, volume), &file);
}

/// Runs qemu-io commands (e.g. `write -P 0x77 2M 1M`) on `uri`.
pub fn qemu_io(uri: &str, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(uri).output().expect("qemu-io is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {commands:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `ballast backup key create --file FILE ARGS...` with `env`; its output.
pub fn create_key(file: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(crate::common::BIN)
        .args(["backup", "key", "create", "--file"])
        .arg(file)
        .args(args)
        .env_remove("BALLAST_BACKUP_PASSPHRASE")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// `random_mib` MiB of seeded random data followed by `zero_mib` MiB of zeros.
pub fn image(random_mib: usize, zero_mib: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; (random_mib + zero_mib) * MIB];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data[..random_mib * MIB]);
    data
}

/// Asserts two images are equal without printing megabytes on failure.
pub fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(pos) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {pos}");
    }
}
