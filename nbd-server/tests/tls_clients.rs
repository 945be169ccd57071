//! Real NBD clients over TLS against the in-process server: libnbd's
//! nbdinfo and nbdcopy (`nbds://`, `nbds+unix://`, `tls-psk-file=`,
//! `tls-certificates=`), qemu-img and qemu-io (`tls-creds-psk`,
//! `tls-creds-x509`), and fio's nbd engine; and what they get with no,
//! wrong or untrusted credentials.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use ballast_nbd::{Limits, Tls, TlsConfig};
use common::pki::{psk_file, Pki};
use common::{random_file, require, run, run_failing, Harness};

const MIB: u64 = 1024 * 1024;

struct Setup {
    h: Harness,
    creds: tempfile::TempDir,
    pki: Pki,
    psk: std::path::PathBuf,
    /// qemu's tls-creds-psk directory (`keys.psk`).
    psk_dir: std::path::PathBuf,
}

/// A server requiring TLS, with a certificate, client certificates
/// verified against the test CA, and PSKs for alice and bob.
fn setup() -> Setup {
    let creds = tempfile::tempdir().unwrap();
    let pki = Pki::create(&creds.path().join("pki"));
    let (psk, psk_dir) = psk_file(creds.path(), "keys.psk", &["alice", "bob"]);
    let config = TlsConfig {
        required: true,
        certificate: Some((pki.server_cert.clone(), pki.server_key.clone())),
        client_ca: Some(pki.ca.clone()),
        psk: Some(psk.clone()),
        allow: None,
    };
    let h = Harness::memory_tls(Arc::new(Tls::new(&config).unwrap()), Limits::default());
    h.exports().create_volume("vol", 16 * MIB);
    Setup {
        h,
        creds,
        pki,
        psk,
        psk_dir,
    }
}

fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn qemu_io(args: &[&str], cmds: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(args);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = run(&mut cmd);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.contains("failed:"), "{out}");
    out
}

/// `--image-opts` for qemu of export `vol` on `server`, over `creds`.
fn qemu_image(server: &str, tls_creds: &str) -> String {
    format!("driver=nbd,{server},export=vol,tls-creds={tls_creds}")
}

#[test]
fn nbdinfo_and_nbdcopy_with_psk_over_unix_and_tcp() {
    if !require("nbdinfo") || !require("nbdcopy") {
        return;
    }
    let s = setup();
    let unix = s.h.psk_unix_uri("alice", "vol", &s.psk);
    let out = run(Command::new("nbdinfo").arg(&unix));
    assert!(out.contains(&format!("export-size: {}", 16 * MIB)), "{out}");
    let list = s.h.psk_unix_uri("alice", "", &s.psk);
    let out = run(Command::new("nbdinfo").args(["--list", "--json", &list]));
    assert!(out.contains("\"export-name\": \"vol\""), "{out}");

    let src = s.h.path("src");
    let data = random_file(&src, 4 * MIB as usize);
    run(Command::new("nbdcopy").arg(&src).arg(&unix));
    let tcp = s.h.psk_tcp_uri("alice", "vol", &s.psk);
    let dst = s.h.path("dst");
    run(Command::new("nbdcopy").arg(&tcp).arg(&dst));
    let back = std::fs::read(&dst).unwrap();
    assert!(back[..data.len()] == data[..], "read back over TCP differs");
    assert!(s.h.exports().device("vol").contents()[..data.len()] == data[..]);
}

#[test]
fn nbdcopy_with_client_certificates_over_tcp_and_unix() {
    if !require("nbdcopy") || !require("nbdinfo") {
        return;
    }
    let s = setup();
    let certs = format!("tls-certificates={}", s.pki.alice_dir.display());
    let src = s.h.path("src");
    let data = random_file(&src, 3 * MIB as usize);
    run(Command::new("nbdcopy")
        .arg(&src)
        .arg(s.h.tls_tcp_uri("vol", &certs)));
    let dst = s.h.path("dst");
    run(Command::new("nbdcopy")
        .arg(s.h.tls_unix_uri("vol", &certs))
        .arg(&dst));
    assert!(std::fs::read(&dst).unwrap()[..data.len()] == data[..]);
}

#[test]
fn missing_wrong_and_untrusted_credentials_are_refused() {
    if !require("nbdinfo") {
        return;
    }
    let s = setup();
    // Plain text: the server requires TLS and says so.
    let out = run_failing(Command::new("nbdinfo").arg(s.h.unix_uri("vol")));
    let text = stderr(&out);
    // libnbd reports NBD_REP_ERR_TLS_REQD as "not supported"; the
    // reply itself is checked byte by byte in tests/tls.rs.
    assert!(text.contains("server replied with error"), "{text}");
    assert!(!text.contains("export-size"), "{text}");
    run_failing(Command::new("nbdinfo").args(["--list", &s.h.tcp_uri("")]));

    // Each of these fails in the TLS handshake (GnuTLS says so), not
    // before it.
    let handshake_fails = |uri: String| {
        let out = run_failing(Command::new("nbdinfo").arg(&uri));
        let text = stderr(&out);
        assert!(text.contains("gnutls"), "{uri}: {text}");
        eprintln!("{uri}: {}", text.trim());
    };
    // A PSK file whose key for alice is not the server's.
    let (wrong, _) = psk_file(s.creds.path(), "wrong.psk", &["alice"]);
    handshake_fails(s.h.psk_unix_uri("alice", "vol", &wrong));
    handshake_fails(s.h.psk_tcp_uri("alice", "vol", &wrong));
    // A user the server has no key for.
    let (carol, _) = psk_file(s.creds.path(), "carol.psk", &["carol"]);
    handshake_fails(s.h.psk_unix_uri("carol", "vol", &carol));
    // A certificate from a CA the server does not trust, and none at all.
    for dir in [&s.pki.stranger_dir, &s.pki.anonymous_dir] {
        let query = format!("tls-certificates={}", dir.display());
        handshake_fails(s.h.tls_tcp_uri("vol", &query));
    }
    // A server certificate the client cannot trust: alice trusts only the
    // CA that signed her certificate, not the server's.
    let untrusting = s.creds.path().join("untrusting");
    std::fs::create_dir_all(&untrusting).unwrap();
    for f in ["client-cert.pem", "client-key.pem"] {
        std::fs::copy(s.pki.alice_dir.join(f), untrusting.join(f)).unwrap();
    }
    std::fs::copy(
        s.pki.stranger_dir.join("client-cert.pem"),
        untrusting.join("ca-cert.pem"),
    )
    .unwrap();
    let query = format!("tls-certificates={}", untrusting.display());
    handshake_fails(s.h.tls_tcp_uri("vol", &query));

    // The server is still there for a client with the right key.
    run(Command::new("nbdinfo").arg(s.h.psk_unix_uri("bob", "vol", &s.psk)));
    assert!(s
        .h
        .exports()
        .device("vol")
        .contents()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn qemu_io_and_qemu_img_with_psk_and_x509_credentials() {
    if !require("qemu-io") || !require("qemu-img") {
        return;
    }
    let s = setup();
    let psk_object = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        s.psk_dir.display()
    );
    let unix = format!("server.type=unix,server.path={}", s.h.socket.display());
    qemu_io(
        &[
            "--object",
            &psk_object,
            "--image-opts",
            &qemu_image(&unix, "tls0"),
        ],
        &[
            "write -P 0xab 0 2M",
            "read -P 0xab 0 2M",
            "write -z 1M 512k",
            "read -P 0 1M 512k",
            "flush",
        ],
    );
    let x509_object = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        s.pki.alice_dir.display()
    );
    let tcp = format!(
        "server.type=inet,server.host=localhost,server.port={}",
        s.h.port
    );
    qemu_io(
        &[
            "--object",
            &x509_object,
            "--image-opts",
            &qemu_image(&tcp, "tls0"),
        ],
        &[
            "read -P 0xab 0 1M",
            "read -P 0 1M 512k",
            "write -P 0x5c 4M 64k",
        ],
    );
    // The other two pairings: a PSK over TCP, a certificate over the unix
    // socket (which has no host name to check the certificate against, so
    // qemu is told the name).
    qemu_io(
        &[
            "--object",
            &psk_object,
            "--image-opts",
            &qemu_image(&tcp, "tls0"),
        ],
        &["read -P 0x5c 4M 64k"],
    );
    let unix_named = format!("{unix},tls-hostname=localhost");
    qemu_io(
        &[
            "--object",
            &x509_object,
            "--image-opts",
            &qemu_image(&unix_named, "tls0"),
        ],
        &["read -P 0xab 0 1M"],
    );
    let out = run(Command::new("qemu-img").args([
        "info",
        "--object",
        &x509_object,
        "--image-opts",
        &qemu_image(&tcp, "tls0"),
    ]));
    assert!(
        out.contains(&format!("{} bytes", 16 * MIB)) || out.contains("16 MiB"),
        "{out}"
    );
    let copy = s.h.path("copy.raw");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-O",
            "raw",
            "--object",
            &psk_object,
            "--image-opts",
        ])
        .arg(qemu_image(&unix, "tls0"))
        .arg(&copy));
    let copied = std::fs::read(&copy).unwrap();
    assert_eq!(copied, s.h.exports().device("vol").contents());
    assert!(copied[4 * MIB as usize..4 * MIB as usize + 65536]
        .iter()
        .all(|&b| b == 0x5c));

    // qemu without credentials, or with a certificate from elsewhere.
    let stranger = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        s.pki.stranger_dir.display()
    );
    let image = qemu_image(&tcp, "tls0");
    for args in [
        vec!["-f", "raw", &s.h.unix_uri("vol")],
        vec!["--object", &stranger, "--image-opts", &image],
    ] {
        let out = Command::new("qemu-io")
            .args(&args)
            .args(["-c", "read 0 4k"])
            .output()
            .unwrap();
        assert!(
            !out.status.success() || stderr(&out).contains("failed"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// fio's nbd engine takes a libnbd URI, and libnbd refuses the URI
/// parameters that name files (`tls-psk-file=`, `tls-certificates=`)
/// unless the program allows them, which fio does not. It still finds
/// certificates where libnbd looks by default: `$HOME/.pki/libnbd/` for
/// users other than root (root's is `/etc/pki/libnbd/`, which a test
/// must not touch), so as root fio runs as `nobody`.
#[test]
fn fio_nbd_engine_over_tls_with_certificates() {
    if !require("fio") {
        return;
    }
    let out = Command::new("fio").arg("--enghelp=nbd").output().unwrap();
    if !out.status.success() {
        assert!(
            std::env::var("CI").is_err(),
            "fio has no nbd engine under CI=true"
        );
        return;
    }
    let s = setup();
    // A HOME every user can read, holding alice's certificate.
    let home = s.h.path("home");
    let pki = home.join(".pki/libnbd");
    std::fs::create_dir_all(&pki).unwrap();
    for f in ["ca-cert.pem", "client-cert.pem", "client-key.pem"] {
        std::fs::copy(s.pki.alice_dir.join(f), pki.join(f)).unwrap();
    }
    open_to_everyone(s.h.dir.path());
    let uri = ballast_nbd::tcp_uri("localhost", s.h.port, "vol", true);
    fio_verify(&uri, &home);
    let data = s.h.exports().device("vol").contents();
    assert!(data[..4 * MIB as usize].iter().any(|&b| b != 0));
}

/// Makes `dir` and everything in it readable (and the directories
/// searchable) by every user.
fn open_to_everyone(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if dir.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_symlink() && (path.is_dir() || path.is_file()) {
                open_to_everyone(&path);
            }
        }
    }
}

/// A verified fio run on `uri`, with `home` as HOME and working
/// directory, as `nobody` if run as root.
fn fio_verify(uri: &str, home: &Path) {
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        assert!(require("setpriv"));
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "fio"]);
        cmd
    } else {
        Command::new("fio")
    };
    let out = run(cmd.current_dir(home).env("HOME", home).args([
        "--name=tls",
        "--verify_state_save=0",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=4m",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
    ]));
    assert!(out.contains("err= 0"), "{out}");
}
