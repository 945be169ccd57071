//! Scheduled backups to moto S3 behind a throttling proxy: a run slower
//! than the interval is not doubled up or queued (the slots it overlaps
//! are skipped and counted), and the runs still complete.

mod backup_common;
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_common::{image, start_with_env, unix_uri, write_image};
use common::{json, ok, TempDir};

const BUCKET: &str = "ballast-sched";

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
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        Moto { child, port }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `port` that passes what clients send at about
/// `bytes_per_sec` over all connections together (what the server sends
/// back goes at full speed).
fn throttling_proxy(port: u16, bytes_per_sec: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    // When the shared link is next free.
    let link = Arc::new(Mutex::new(Instant::now()));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            let link = link.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let done = {
                        let mut free = link.lock().unwrap();
                        let start = (*free).max(Instant::now());
                        *free = start + Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                        *free
                    };
                    std::thread::sleep(done.saturating_duration_since(Instant::now()));
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
    proxy_port
}

#[test]
fn a_slow_run_is_neither_doubled_nor_queued() {
    let Some(bin) = moto_binary() else { return };
    let moto = Moto::start(&bin);
    // 8 MiB of random data at 2 MiB/s: the first (full) run takes ~4 s.
    let proxy = throttling_proxy(moto.port, 2 << 20);
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
    let socket = &daemon.socket;
    ok(socket, &["create", "db", "--size", "8M"]);
    let data = dir.join("data.img");
    std::fs::write(&data, image(8, 0, 3)).unwrap();
    write_image(&unix_uri(&daemon, "db"), &data);
    let dest = format!("s3://{BUCKET}/slow?endpoint=http://127.0.0.1:{proxy}");
    ok(
        socket,
        &[
            "backup", "schedule", "set", "db", "--dest", &dest, "--every", "1s",
        ],
    );

    let status = || json(socket, &["backup", "schedule", "list", "--json"])[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status()["successes"].as_u64().unwrap() < 2 {
        let s = status();
        // Never more than one run going: every run started has ended but
        // the one in flight.
        let going = u64::from(!s["running_since"].is_null());
        assert_eq!(
            s["runs"].as_u64().unwrap(),
            s["successes"].as_u64().unwrap() + s["failures"].as_u64().unwrap() + going,
            "{s}"
        );
        assert!(Instant::now() < deadline, "two runs within a minute: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = status();
    assert_eq!(s["failures"], 0, "{s}");
    let skipped = s["skipped"].as_u64().unwrap();
    assert!(
        skipped >= 2,
        "the slow first run overlapped slots, skipped: {s}"
    );
    // Every run made its backup; the skipped slots made none.
    let list = json(socket, &["backup", "list", "--dest", &dest, "--json"]);
    assert_eq!(
        list.as_array().unwrap().len() as u64,
        s["successes"].as_u64().unwrap()
    );
}
