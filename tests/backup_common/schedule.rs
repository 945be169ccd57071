//! Helpers of the backup schedule tests: the schedules and backups the
//! daemon lists, and polling until a run's outcome shows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::json;

/// `ballast backup schedule list --json`.
pub fn schedules(socket: &Path) -> Vec<Value> {
    json(socket, &["backup", "schedule", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

/// The schedule of `volume` (there must be one).
pub fn schedule_of(socket: &Path, volume: &str) -> Value {
    schedules(socket)
        .into_iter()
        .find(|s| s["volume"] == volume)
        .unwrap_or_else(|| panic!("no schedule for {volume}"))
}

/// Polls `check` until it holds or `limit` passes.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ballast backup list --dest DEST --json`, oldest first.
pub fn backups(socket: &Path, dest: &str) -> Vec<Value> {
    json(socket, &["backup", "list", "--dest", dest, "--json"])
        .as_array()
        .unwrap()
        .clone()
}

/// The names of `volume`'s snapshots, oldest first.
pub fn snapshot_names(socket: &Path, volume: &str) -> Vec<String> {
    json(socket, &["snapshot", "list", volume, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// The value of the sample `series` (name and labels as printed) on a
/// `/metrics` page, if there is one.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// As [`metric`], for a sample that must be there.
pub fn sample(page: &str, series: &str) -> f64 {
    metric(page, series).unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
}

/// The labels of a schedule's series, as `/metrics` prints them.
pub fn schedule_labels(status: &Value) -> String {
    format!(
        "{{volume=\"{}\",dest=\"{}\"}}",
        status["volume"].as_str().unwrap(),
        status["dest"].as_str().unwrap()
    )
}

/// `GET /metrics` on the control socket.
pub fn metrics_page(socket: &Path) -> String {
    let (status, page) = crate::common::http(socket, "GET", "/metrics", "");
    assert_eq!(status, 200, "{page}");
    page
}

/// `ballast backup schedule set VOLUME --dest DEST --every EVERY`; its
/// output.
pub fn set_schedule(socket: &Path, volume: &str, dest: &str, every: &str) -> String {
    crate::common::ok(
        socket,
        &[
            "backup", "schedule", "set", volume, "--dest", dest, "--every", every,
        ],
    )
}

/// promtool, or `None` (the test skips) — except under CI=true, where a
/// missing promtool fails the test.
pub fn promtool() -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("promtool");
        if p.is_file() {
            return Some(p);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "promtool is missing; run scripts/install-test-deps.sh (Debian package prometheus)"
    );
    eprintln!("skipping: promtool not found");
    None
}

pub fn promtool_check(promtool: &PathBuf, page: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
