//! The daemon's NBD defaults and TLS: NBD only on a private unix socket
//! unless asked, `ballast export` printing `nbds` URIs that real clients
//! (nbdcopy, nbdinfo, qemu-io) use with PSK and X.509 credentials, the
//! Docker driver's own plain socket when TLS is required, and every
//! unsafe or inconsistent combination of flags refused in one line before
//! anything is bound.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::pki::{psk_file, Pki};
use common::{json, ok, Daemon, TempDir, BIN};

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded: {}",
        output_text(&out)
    );
    output_text(&out)
}

fn start(dir: &TempDir, extra: &[&str]) -> Daemon {
    let socket = dir.join("nbd.sock").display().to_string();
    let mut args = vec!["--nbd-socket", &socket];
    args.extend_from_slice(extra);
    Daemon::start_with(&dir.join("root"), &dir.join("control.sock"), &args)
}

/// `uri` with PSK credentials: `nbds+unix://USER@/...&tls-psk-file=F` or
/// `nbds://USER@HOST:PORT/...?tls-psk-file=F`.
fn with_psk(uri: &str, user: &str, psk: &Path) -> String {
    if let Some(rest) = uri.strip_prefix("nbds+unix:///") {
        format!("nbds+unix://{user}@/{rest}&tls-psk-file={}", psk.display())
    } else {
        let rest = uri.strip_prefix("nbds://").expect("an nbds URI");
        format!("nbds://{user}@{rest}?tls-psk-file={}", psk.display())
    }
}

#[test]
fn by_default_nbd_is_a_private_unix_socket_and_nothing_else() {
    let dir = TempDir::create();
    let daemon = start(&dir, &[]);
    ok(&daemon.socket, &["create", "vol", "--size", "8M"]);
    let uris = json(&daemon.socket, &["export", "vol", "--json"]);
    assert_eq!(uris["tcp"], serde_json::Value::Null, "{uris}");
    assert_eq!(uris["tls"], "off");
    let unix = uris["unix"].as_str().unwrap();
    assert_eq!(ok(&daemon.socket, &["export", "vol"]), format!("{unix}\n"));
    let meta = fs::metadata(dir.join("nbd.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    run_ok(Command::new("nbdinfo").arg(unix));
    // The log says where NBD is served: no TCP address.
    assert!(daemon.log().contains("tcp=None"), "{}", daemon.log());
}

#[test]
fn nbd_group_opens_the_unix_socket_to_one_group() {
    let dir = TempDir::create();
    let _daemon = start(&dir, &["--nbd-group", "nogroup"]);
    let meta = fs::metadata(dir.join("nbd.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534, "the socket belongs to group nogroup");
}

struct Creds {
    pki: Pki,
    psk: PathBuf,
    psk_dir: PathBuf,
}

fn creds(dir: &TempDir) -> Creds {
    let pki = Pki::create(&dir.join("pki"));
    let (psk, psk_dir) = psk_file(&dir.path, "keys.psk", &["alice"]);
    Creds { pki, psk, psk_dir }
}

#[test]
fn tls_required_exports_serve_real_clients_through_the_printed_uris() {
    let dir = TempDir::create();
    let c = creds(&dir);
    let (cert, key, psk) = (
        c.pki.server_cert.display().to_string(),
        c.pki.server_key.display().to_string(),
        c.psk.display().to_string(),
    );
    let daemon = start(
        &dir,
        &[
            "--nbd-listen",
            "127.0.0.1:0",
            "--tls",
            "require",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-psk",
            &psk,
        ],
    );
    let sock = &daemon.socket;
    ok(sock, &["create", "vol", "--size", "16M"]);
    let uris = json(sock, &["export", "vol", "--json"]);
    assert_eq!(uris["tls"], "require");
    let tcp = uris["tcp"].as_str().unwrap();
    let unix = uris["unix"].as_str().unwrap();
    assert!(
        tcp.starts_with("nbds://127.0.0.1:") && tcp.ends_with("/vol"),
        "{tcp}"
    );
    assert_eq!(
        unix,
        format!("nbds+unix:///vol?socket={}", dir.join("nbd.sock").display())
    );
    assert_eq!(ok(sock, &["export", "vol"]), format!("{tcp}\n{unix}\n"));

    // nbdcopy in with a PSK over the unix socket, out with the server's
    // certificate checked over TCP (by IP address: the certificate names
    // 127.0.0.1 too).
    let src = dir.join("src");
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    fs::write(&src, &data).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(with_psk(unix, "alice", &c.psk)),
    );
    let dst = dir.join("dst");
    let x509 = format!("{tcp}?tls-certificates={}", c.pki.anonymous_dir.display());
    run_ok(Command::new("nbdcopy").arg(&x509).arg(&dst));
    assert!(
        fs::read(&dst).unwrap()[..data.len()] == data[..],
        "read back differs"
    );

    // qemu-io with tls-creds-psk on the unix socket.
    let object = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        c.psk_dir.display()
    );
    let image = format!(
        "driver=nbd,server.type=unix,server.path={},export=vol,tls-creds=tls0",
        dir.join("nbd.sock").display()
    );
    let out = run_ok(Command::new("qemu-io").args([
        "--object",
        &object,
        "--image-opts",
        &image,
        "-c",
        "read -P 0 8M 1M",
        "-c",
        "write -P 0x6b 8M 64k",
        "-c",
        "read -P 0x6b 8M 64k",
    ]));
    assert!(
        !out.contains("failed") && !out.contains("verification"),
        "{out}"
    );

    // Without TLS: refused, on both listeners.
    let plain_unix = unix.replacen("nbds+unix", "nbd+unix", 1);
    let plain_tcp = tcp.replacen("nbds", "nbd", 1);
    for uri in [plain_unix, plain_tcp] {
        let text = run_fails(Command::new("nbdinfo").arg(&uri));
        assert!(text.contains("server replied with error"), "{uri}: {text}");
    }
    assert!(
        daemon.log().contains("identity=\"alice\""),
        "{}",
        daemon.log()
    );
}

#[test]
fn the_docker_driver_gets_a_private_plain_socket_when_tls_is_required() {
    let dir = TempDir::create();
    let c = creds(&dir);
    let plugin = format!("ballast-tls-test-{}", std::process::id());
    let psk = c.psk.display().to_string();
    let daemon = start(
        &dir,
        &[
            "--tls",
            "require",
            "--tls-psk",
            &psk,
            "--docker-plugin",
            &plugin,
        ],
    );
    ok(&daemon.socket, &["create", "vol", "--size", "8M"]);
    let driver = daemon.root.join("nbd-driver.sock");
    let meta = fs::metadata(&driver).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let uri = format!("nbd+unix:///vol?socket={}", driver.display());
    let out = run_ok(Command::new("nbdinfo").arg(&uri));
    assert!(out.contains("export-size: 8388608"), "{out}");
    // The NBD socket itself still requires TLS.
    let text = run_fails(Command::new("nbdinfo").arg(format!(
        "nbd+unix:///vol?socket={}",
        dir.join("nbd.sock").display()
    )));
    assert!(text.contains("server replied with error"), "{text}");
    drop(daemon);
    let _ = fs::remove_file(format!("/run/docker/plugins/{plugin}.sock"));
}

/// Runs a daemon that must refuse to start; returns its stderr, one line.
fn refuses(dir: &TempDir, extra: &[&str]) -> String {
    let control = dir.join("c.sock");
    let out = Command::new(BIN)
        .arg("daemon")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--control-socket")
        .arg(&control)
        .arg("--nbd-socket")
        .arg(dir.join("n.sock"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{extra:?} started: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !control.exists() && !dir.join("n.sock").exists(),
        "{extra:?} bound a socket"
    );
    stderr.trim_end().to_string()
}

#[test]
fn unsafe_or_inconsistent_nbd_settings_are_refused_in_one_line() {
    let dir = TempDir::create();
    let c = creds(&dir);
    let psk = c.psk.display().to_string();
    let bad_psk = dir.join("bad.psk");
    fs::write(&bad_psk, "alice:not-hex\n").unwrap();
    let bad_psk = bad_psk.display().to_string();
    let junk = dir.join("junk.pem");
    fs::write(&junk, "junk\n").unwrap();
    let junk = junk.display().to_string();
    let allow = dir.join("allow");
    fs::write(&allow, "alice vol\n").unwrap();
    let allow = allow.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--nbd-listen", "0.0.0.0:10809"],
            "--nbd-listen 0.0.0.0:10809 is not a loopback address: NBD off loopback needs --tls require",
        ),
        (
            vec!["--nbd-listen", "[::]:10809", "--tls", "on", "--tls-psk", &psk],
            "is not a loopback address",
        ),
        (vec!["--tls-psk", &psk], "--tls-psk needs --tls require (or --tls on)"),
        (vec!["--tls", "require"], "--tls require needs credentials"),
        (vec!["--tls", "maybe"], r#"--tls: "maybe" is not off, on or require"#),
        (
            vec!["--tls", "require", "--tls-psk", &bad_psk],
            "line 1: the key is not an even number of hex digits",
        ),
        (
            vec!["--tls", "require", "--tls-cert", &junk, "--tls-key", &junk],
            "cannot use TLS certificate",
        ),
        (
            vec!["--tls", "require", "--tls-psk", &psk, "--tls-allow", &allow],
            "line 1: expected IDENTITY: EXPORT...",
        ),
        (vec!["--nbd-group", "no-such-group-ballast"], "no group named"),
    ];
    for (args, expected) in cases {
        let line = refuses(&dir, &args);
        assert!(line.contains(expected), "{args:?}: {line}");
        // Keys never appear in an error.
        let key = fs::read_to_string(&c.psk).unwrap();
        let key = key.trim().split(':').nth(1).unwrap();
        assert!(!line.contains(key));
    }
}
