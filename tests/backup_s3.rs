//! `ballast backup` to an s3:// destination served by a real S3 server
//! (moto_server): the daemon takes its credentials from the standard AWS
//! environment variables; backup, list and restore round-trip through NBD.

mod backup_common;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_common::{assert_same, image, read_export, start_with_env, unix_uri, write_image};
use common::{fails, json, ok, TempDir};

const BUCKET: &str = "ballast-e2e";

/// The moto_server binary, or `None` (the test skips) — except under
/// CI=true, where a missing server fails the test.
fn moto_binary() -> Option<PathBuf> {
    let venv = std::env::var_os("BALLAST_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/ballast-test/venv"));
    let bin = venv.join("bin/moto_server");
    if bin.is_file() {
        return Some(bin);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} is missing; run scripts/install-test-deps.sh",
        bin.display()
    );
    eprintln!("skipping: {} not found", bin.display());
    None
}

/// A moto_server this test started; killed (by its PID) on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(bin: &PathBuf) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    /// Creates a bucket with a plain PUT (moto does not check signatures).
    fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    std::fs::write(dir.join("data.img"), &data).unwrap();
    write_image(&unix_uri(&daemon, "vol"), &dir.join("data.img"));

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
