//! `ballast serve` and the CLI's default socket, as an ordinary user would
//! run them: no flags, no environment beyond HOME / XDG_DATA_HOME.
//!
//! Run as root (CI), the daemon and the client run as `nobody`, so the
//! per-user default root is the one exercised, and the 0600 control socket
//! is checked against a user who is not its owner.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fails, Daemon, TempDir, BIN};

/// uid/gid of `nobody` on Debian-like systems.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A copy of the binary that `nobody` can execute wherever the build lives,
/// in a directory `nobody` may write to.
fn user_sandbox(dir: &TempDir) -> (PathBuf, PathBuf) {
    let bin = dir.join("ballast");
    fs::copy(BIN, &bin).unwrap();
    let data_home = dir.join("xdg");
    fs::create_dir(&data_home).unwrap();
    for path in [&dir.path, &data_home] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o777)).unwrap();
    }
    (bin, data_home)
}

/// `bin ARGS` as an unprivileged user whose data home is `data_home`.
fn as_user(bin: &Path, data_home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env_remove("BALLAST_SOCKET")
        .env("HOME", data_home)
        .env("XDG_DATA_HOME", data_home);
    if is_root() {
        command.uid(NOBODY).gid(NOBODY);
    }
    command
}

fn output(mut command: Command) -> Output {
    command.output().unwrap()
}

#[test]
fn serve_runs_on_the_default_root_and_the_cli_finds_it() {
    let dir = TempDir::create();
    let (bin, data_home) = user_sandbox(&dir);
    let root = data_home.join("ballast");
    let socket = root.join("control.sock");
    let mut daemon = Daemon::start_command(as_user(&bin, &data_home, &["serve"]), &root, &socket);

    let created = output(as_user(&bin, &data_home, &["create", "db", "--size", "1M"]));
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let listed = output(as_user(&bin, &data_home, &["list", "--json"]));
    let volumes: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(volumes[0]["name"], "db");
    assert_eq!(volumes.as_array().unwrap().len(), 1);

    let meta = fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            meta.uid(),
            NOBODY,
            "the socket belongs to the daemon's user"
        );
    }

    let status = daemon.terminate();
    assert!(status.success(), "{status}: {}", daemon.log());
}

#[test]
fn other_users_cannot_use_the_control_socket() {
    if !is_root() {
        eprintln!("skipped: switching to another user needs root");
        return;
    }
    let dir = TempDir::create();
    let (bin, data_home) = user_sandbox(&dir);
    let daemon = Daemon::start(&dir);
    let socket = daemon.socket.display().to_string();

    let out = output(as_user(
        &bin,
        &data_home,
        &["--socket", &socket, "create", "db", "--size", "1M"],
    ));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: permission denied on {socket}: the control socket belongs to the daemon's user"
        )
    );
    // The owner still gets in, and nothing was created.
    assert_eq!(common::volume_names(&daemon.socket), Vec::<String>::new());
    fails(&daemon.socket, &["inspect", "db"]);
}
