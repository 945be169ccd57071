//! `ballast backup` to an s3:// destination served by a real S3 server
//! (moto_server): the daemon takes its credentials from the standard AWS
//! environment variables; backup, list and restore round-trip through NBD.

mod backup_common;
mod common;
mod moto;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use backup_common::{
    assert_same, image, read_export, read_ok, start_with_env, unix_uri, write_volume,
};
use common::{fails, json, ok, TempDir};
use moto::{moto_binary, Moto};

const BUCKET: &str = "ballast-e2e";

#[test]
fn backup_and_restore_through_s3() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let dir = TempDir::create();
    let daemon = start_with_env(
        &dir,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let sock = &daemon.socket;
    let dest = format!(
        "s3://{BUCKET}/team/a?endpoint=http://127.0.0.1:{}",
        moto.port
    );

    ok(sock, &["create", "vol", "--size", "8M"]);
    let data = image(3, 5, 11);
    write_volume(&daemon, &dir, "vol", &data);

    let url = ok(sock, &["backup", "create", "vol", "--dest", &dest]);
    assert_eq!(url.lines().count(), 1, "{url:?}");
    let url = url.trim_end();
    assert!(url.starts_with(&format!("s3://{BUCKET}/team/a?")), "{url}");
    assert!(
        url.contains("backup=") && url.contains("volume=vol"),
        "{url}"
    );

    let list = json(sock, &["backup", "list", "--dest", &dest, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["url"], url);
    let info = json(sock, &["backup", "inspect", url, "--json"]);
    assert_eq!(info["data_chunks"], 3);

    assert_eq!(ok(sock, &["create", "back", "--backup", url]), "back\n");
    let restored = read_export(&unix_uri(&daemon, "back"), &dir, "back.img");
    assert_same(&restored, &data, "restored from S3");
    ok(sock, &["backup", "verify", url]);

    // A bucket that does not exist is one clear line.
    let missing = format!(
        "s3://no-such-bucket/x?endpoint=http://127.0.0.1:{}",
        moto.port
    );
    let err = fails(sock, &["backup", "create", "vol", "--dest", &missing]);
    assert!(err.contains("no-such-bucket"), "{err}");
}

/// What `ballast backup create` prints when the S3 server refuses the
/// daemon's credentials, when they lack permission, and when there are
/// none: one line naming the cause and the fix, none of the SDK's
/// rendering, no secret.
#[test]
fn s3_credential_failures_read_as_one_line_with_the_fix() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let (key_id, secret) = moto.create_user("nobody");
    moto.require_auth();
    let dest = format!("s3://{BUCKET}/a?endpoint=http://127.0.0.1:{}", moto.port);
    let wrong_secret = "0".repeat(secret.len());
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("AWS_ACCESS_KEY_ID", &key_id),
                ("AWS_SECRET_ACCESS_KEY", &wrong_secret),
            ],
            "the credentials were refused (SignatureDoesNotMatch): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        (
            &[
                ("AWS_ACCESS_KEY_ID", &key_id),
                ("AWS_SECRET_ACCESS_KEY", &secret),
            ],
            "access denied: the daemon's credentials lack permission on bucket",
        ),
        (
            &[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
                ("AWS_CONFIG_FILE", "/nonexistent"),
            ],
            "no AWS credentials found: set AWS_ACCESS_KEY_ID",
        ),
    ];
    for (credentials, expected) in cases {
        let dir = TempDir::create();
        let mut env = vec![
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ];
        env.extend_from_slice(credentials);
        let daemon = start_with_env(&dir, &env);
        ok(&daemon.socket, &["create", "vol", "--size", "4M"]);
        let err = fails(
            &daemon.socket,
            &["backup", "create", "vol", "--dest", &dest],
        );
        assert!(err.contains(expected), "{err}");
        for noise in ["ServiceError", "Error {", "Unhandled", "unhandled error"] {
            assert!(!err.contains(noise), "{err}");
        }
        assert!(
            !err.contains(&secret) && !err.contains(&wrong_secret),
            "{err}"
        );
        // Nothing was left behind: no snapshot taken for the failed backup.
        let volume = json(&daemon.socket, &["inspect", "vol", "--json"]);
        assert_eq!(volume["snapshots"].as_array().unwrap().len(), 0, "{volume}");
    }
}

/// A TCP relay in front of moto that can be cut (every connection reset,
/// new ones closed at once) and restored: the store unreachable without
/// losing moto's in-memory objects.
struct Relay {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut open = o.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, down, open }
    }

    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Instant restore from S3: served at once, a partial overwrite kept, the
/// store cut mid-hydration (EIO on unfetched ranges, local ranges fine),
/// then back (the background finishes), `kill -9` and resume, every byte
/// checked through NBD.
#[test]
fn instant_restore_through_s3_survives_the_store_going_away() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    moto.create_bucket(BUCKET);
    let relay = Relay::start(moto.port);
    let dir = TempDir::create();
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("BALLAST_HYDRATE_DELAY_MS", "3600000"),
    ];
    let mut daemon = start_with_env(&dir, &env);
    let sock = daemon.socket.clone();
    let dest = format!("s3://{BUCKET}/i?endpoint=http://127.0.0.1:{}", relay.port);
    ok(&sock, &["create", "src", "--size", "12M"]);
    let data = image(10, 2, 5);
    write_volume(&daemon, &dir, "src", &data);
    let backup = ok(&sock, &["backup", "create", "src", "--dest", &dest]);
    let backup = backup.trim();

    let started = Instant::now();
    ok(&sock, &["create", "r", "--backup", backup]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let uri = unix_uri(&daemon, "r");
    let mut expected = data.clone();
    backup_common::qemu_io(&uri, &["write -P 0x42 1052672 4096", "flush"]);
    expected[1052672..1052672 + 4096].fill(0x42);
    assert!(read_ok(&uri, 2 << 20, 4096), "chunk 2 fetched on demand");

    relay.cut();
    assert!(
        !read_ok(&uri, 6 << 20, 4096),
        "unfetched chunk 6 without a store"
    );
    assert!(read_ok(&uri, 1 << 20, 8192), "chunk 1 is local");
    let h = json(&sock, &["inspect", "r", "--json"])["hydration"].clone();
    assert!(
        h["error"].as_str().unwrap_or_default().contains("chunk 6 "),
        "{h}"
    );
    relay.restore();
    assert!(
        read_ok(&uri, 6 << 20, 4096),
        "chunk 6 once the store is back"
    );

    // kill -9, restart with the background on: it resumes and finishes.
    daemon.kill9();
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let daemon = start_with_env(&dir, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !json(&sock, &["inspect", "r", "--json"])["hydration"].is_null() {
        assert!(Instant::now() < deadline, "hydration did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = read_export(&unix_uri(&daemon, "r"), &dir, "r.img");
    assert_same(
        &restored,
        &expected,
        "instant restore from S3 after kill -9",
    );
    ok(&sock, &["backup", "delete", backup]);
}
