//! Shared helpers of the end-to-end CLI tests: a daemon on a private temp
//! root, the real `ballast` binary as client, raw HTTP on the control socket.

// Each test file uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

/// Test certificates and PSK files, shared with the NBD server's tests.
#[path = "../../nbd-server/tests/common/pki.rs"]
pub mod pki;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ballast");

/// How long a daemon may take to start or to stop.
const PATIENCE: Duration = Duration::from_secs(30);

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn create() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "ballast-cli-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running `ballast daemon`, killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub root: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with root `dir/root` and socket `dir/control.sock`.
    pub fn start(dir: &TempDir) -> Daemon {
        Daemon::start_with(&dir.join("root"), &dir.join("control.sock"), &[])
    }

    /// Starts a daemon and waits until its control API answers.
    pub fn start_with(root: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "daemon".to_string(),
            "--root".into(),
            root.display().to_string(),
            "--control-socket".into(),
            socket.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut command = Command::new(BIN);
        command.args(&args);
        Daemon::start_command(command, root, socket)
    }

    /// Runs `command` (a daemon on `root` listening on `socket`) and waits
    /// until its control API answers.
    pub fn start_command(mut command: Command, root: &Path, socket: &Path) -> Daemon {
        let log = root.with_extension(format!("log.{}", log_serial()));
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            root: root.to_path_buf(),
            socket: socket.to_path_buf(),
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited during start-up ({status}):\n{}", self.log());
            }
            if let Ok((200, _)) = try_http(&self.socket, "GET", "/v1/pool", "") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after {PATIENCE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs at all.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon still running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon still running");
        // SAFETY: plain kill(2) on the pid of our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        wait_with_deadline(&mut child).unwrap_or_else(|| panic!("daemon ignored SIGTERM"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_serial() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn wait_with_deadline(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs a daemon that is expected to refuse to start; returns its stderr.
pub fn daemon_refuses(root: &Path, socket: &Path) -> String {
    let log = root.with_extension(format!("refused.{}", log_serial()));
    let mut child = Command::new(BIN)
        .arg("daemon")
        .arg("--root")
        .arg(root)
        .arg("--control-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut child).expect("second daemon kept running");
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(
        !status.success(),
        "second daemon exited successfully:\n{stderr}"
    );
    stderr
}

/// Runs `ballast --socket SOCKET ARGS...`.
pub fn ballast(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BALLAST_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(socket: &Path, args: &[&str]) -> String {
    let out = ballast(socket, args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ballast {args:?} failed: {stderr}");
    assert!(
        stderr.is_empty(),
        "ballast {args:?} wrote to stderr: {stderr}"
    );
    stdout
}

/// Runs a command that must fail with one `error: ...` line on stderr and
/// nothing on stdout; returns that line.
pub fn fails(socket: &Path, args: &[&str]) -> String {
    let out = ballast(socket, args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success(),
        "ballast {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "ballast {args:?} printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "ballast {args:?} error is not one line: {stderr:?}"
    );
    assert!(
        stderr.starts_with("error: "),
        "ballast {args:?}: {stderr:?}"
    );
    stderr.trim_end().to_string()
}

/// Runs a command with `--json` output and parses it.
pub fn json(socket: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(socket, args)).unwrap()
}

/// Names of the volumes `ballast list --json` reports, sorted.
pub fn volume_names(socket: &Path) -> Vec<String> {
    let list = json(socket, &["list", "--json"]);
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// One raw HTTP/1.1 request on the control socket: (status, body).
pub fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    try_http(socket, method, path, body).unwrap()
}

fn try_http(socket: &Path, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let sent = write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: ballast\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The daemon may answer and hang up before reading all of a body it
    // refuses; its answer is still there to read.
    if let Err(e) = sent {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e);
        }
    }
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed status line {head:?}")))?;
    Ok((status, body.to_string()))
}
