//! What an unprivileged local user can reach: a throwaway user made for
//! this test cannot open the control socket, the NBD socket, the Docker
//! driver's socket or the plugin socket, and cannot get at a TLS-required
//! TCP export without credentials. A second throwaway user, in the group
//! given with `--nbd-group`, shows the other side: it reaches the NBD
//! socket, still needs TLS there, and with a key of its own gets in.
//!
//! Needs root (to add users and switch to them); CI runs as root.

mod common;

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::pki::psk_file;
use common::{ok, Daemon, TempDir, BIN};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, panicking with its output if it cannot be started or fails.
fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
}

/// Users and a group made for this test, removed when dropped.
struct Accounts {
    group: String,
    users: Vec<String>,
}

impl Accounts {
    fn create() -> Accounts {
        let tag = std::process::id();
        let group = format!("blst-g{tag}");
        let mut accounts = Accounts {
            group: group.clone(),
            users: Vec::new(),
        };
        must(Command::new("groupadd").arg(&group));
        for (name, in_group) in [
            (format!("blst-s{tag}"), false),
            (format!("blst-m{tag}"), true),
        ] {
            let mut add = Command::new("useradd");
            add.args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ]);
            if in_group {
                add.args(["--groups", &group]);
            }
            must(add.arg(&name));
            accounts.users.push(name);
        }
        accounts
    }

    fn stranger(&self) -> &str {
        &self.users[0]
    }

    fn member(&self) -> &str {
        &self.users[1]
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// `program ARGS` as `user`, with that user's groups.
fn as_user(user: &str, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", program])
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

/// `nbdinfo` as `user` on a unix socket: the connect itself is refused.
fn connect_denied(user: &str, socket: &Path) {
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let out = as_user(user, "nbdinfo", &["--list", &uri]);
    assert!(!out.status.success(), "{user} used {}", socket.display());
    assert!(
        text(&out).contains("Permission denied"),
        "{user} on {}: {}",
        socket.display(),
        text(&out)
    );
}

#[test]
fn unprivileged_users_reach_no_volume_data_without_the_operators_say_so() {
    if !is_root() {
        assert!(
            std::env::var("CI").is_err(),
            "this test needs root under CI=true"
        );
        eprintln!("skipped: adding users needs root");
        return;
    }
    for tool in ["useradd", "groupadd", "setpriv", "nbdinfo"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is required");
    }
    let accounts = Accounts::create();
    let dir = TempDir::create();
    // Every directory on the way is searchable: only the sockets' own
    // modes (and the daemon's 0700 root) keep users out.
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755)).unwrap();
    let (psk, _) = psk_file(&dir.path, "keys.psk", &["alice"]);
    let plugin = format!("ballast-unpriv-{}", std::process::id());
    let nbd_socket = dir.join("nbd.sock");
    let daemon = Daemon::start_with(
        &dir.join("root"),
        &dir.join("control.sock"),
        &[
            "--nbd-socket",
            &nbd_socket.display().to_string(),
            "--nbd-group",
            &accounts.group,
            "--nbd-listen",
            "127.0.0.1:0",
            "--tls",
            "require",
            "--tls-psk",
            &psk.display().to_string(),
            "--docker-plugin",
            &plugin,
        ],
    );
    ok(&daemon.socket, &["create", "vol", "--size", "8M"]);
    let uris = common::json(&daemon.socket, &["export", "vol", "--json"]);
    let tcp = uris["tcp"].as_str().unwrap().to_string();
    let plugin_socket = Path::new("/run/docker/plugins").join(format!("{plugin}.sock"));

    // The stranger: every socket refuses the connection itself.
    let stranger = accounts.stranger();
    let bin = dir.join("ballast");
    fs::copy(BIN, &bin).unwrap();
    let control = daemon.socket.display().to_string();
    let out = as_user(
        stranger,
        &bin.display().to_string(),
        &["--socket", &control, "list"],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    connect_denied(stranger, &daemon.socket);
    connect_denied(stranger, &nbd_socket);
    connect_denied(stranger, &plugin_socket);
    connect_denied(stranger, &daemon.root.join("nbd-driver.sock"));
    // Over TCP: plain text is refused, TLS without a key fails, and the
    // daemon's key file is not the stranger's to read.
    let plain = tcp.replacen("nbds://", "nbd://", 1);
    let out = as_user(stranger, "nbdinfo", &[&plain]);
    assert!(
        !out.status.success() && text(&out).contains("server replied with error"),
        "{}",
        text(&out)
    );
    let out = as_user(stranger, "nbdinfo", &[&tcp]);
    assert!(
        !out.status.success() && text(&out).contains("gnutls"),
        "{}",
        text(&out)
    );
    let with_key = format!(
        "{}?tls-psk-file={}",
        tcp.replacen("nbds://", "nbds://alice@", 1),
        psk.display()
    );
    let out = as_user(stranger, "nbdinfo", &[&with_key]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("export-size"), "{}", text(&out));

    // The group member reaches the NBD socket, which still wants TLS...
    let member = accounts.member();
    let socket_uri = format!("nbd+unix:///vol?socket={}", nbd_socket.display());
    let out = as_user(member, "nbdinfo", &[&socket_uri]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("server replied with error"),
        "{}",
        text(&out)
    );
    connect_denied(member, &daemon.socket);
    // ...and with a key of its own (a copy it may read) gets in.
    let own_key = dir.join("member.psk");
    fs::copy(&psk, &own_key).unwrap();
    let uid = users_uid(member);
    chown(&own_key, Some(uid), None).unwrap();
    let tls_uri = format!(
        "nbds+unix://alice@/vol?socket={}&tls-psk-file={}",
        nbd_socket.display(),
        own_key.display()
    );
    let out = as_user(member, "nbdinfo", &[&tls_uri]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("export-size: 8388608"),
        "{}",
        text(&out)
    );

    drop(daemon);
    let _ = fs::remove_file(&plugin_socket);
}

fn users_uid(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
