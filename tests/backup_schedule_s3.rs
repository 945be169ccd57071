//! Scheduled backups to moto S3 behind a throttling proxy: a run slower
//! than the interval is not doubled up or queued (the slots it overlaps
//! are skipped and counted), and the runs still complete.

mod backup_common;
mod common;
mod moto;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backup_common::{image, start_with_env, unix_uri, write_image};
use common::{json, ok, TempDir};
use moto::{moto_binary, Moto};

const BUCKET: &str = "ballast-sched";

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
    moto.create_bucket(BUCKET);
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
