//! Finding and starting moto_server and learning its port, shared by the
//! workspace's two S3 test harnesses (`tests/moto`,
//! `backupstore/tests/common`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The moto_server binary of the test venv (`BALLAST_TEST_VENV`, by
/// default `/opt/ballast-test/venv`), or `None` (the test skips), except
/// under CI=true, where a missing server fails the test.
pub fn moto_binary() -> Option<PathBuf> {
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
    eprintln!(
        "skipping: {} not found (run scripts/install-test-deps.sh)",
        bin.display()
    );
    None
}

/// Starts moto on loopback `port` with extra environment `env` and waits
/// for its startup line, printed once it listens; the child and the port
/// the line names. Port 0 lets moto pick one: a free port picked by the
/// caller and passed in could be taken by a parallel test in the second or
/// so moto takes to start. A thread then drains moto's request log, so
/// moto never blocks on a full pipe.
pub fn spawn(bin: &Path, port: u16, env: &[(&str, &str)]) -> (Child, u16) {
    let mut child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let port = line
                .split("Running on http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.trim().parse::<u16>().ok());
            if let Some(port) = port {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let Ok(port) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not report its port within 30 s");
    };
    (child, port)
}
