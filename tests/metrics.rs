//! `GET /metrics` on the control socket and on `--metrics-listen`: the
//! page passes Prometheus' own checker (`promtool check metrics`), its
//! counters move with real I/O through NBD, scheduled backups show up,
//! the README's alert rule passes `promtool check rules` and fires in
//! `promtool test rules` when no backup succeeded for twice the interval,
//! and a non-loopback listener is refused without the explicit flag.

mod backup_common;
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backup_common::{qemu_io, read_export, unix_uri};
use common::{http, json, ok, Daemon, TempDir};

/// promtool, or `None` (the test skips) — except under CI=true, where a
/// missing promtool fails the test.
fn promtool() -> Option<PathBuf> {
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

fn promtool_check(promtool: &PathBuf, page: &str) {
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

/// The value of the sample `name{labels}` (labels as printed).
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{page}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tcp_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

/// The alert rule file the README shows, between its markers.
fn readme_alert_rule() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# ballast-alerts.yml")
        .expect("the README shows the alert rule");
    let rest = &readme[start..];
    rest[..rest.find("```").unwrap()].to_string()
}

#[test]
fn metrics_pass_promtool_and_move_with_real_io() {
    let Some(promtool) = promtool() else { return };
    let dir = TempDir::create();
    let port = free_port();
    let root = dir.join("root");
    let socket = dir.join("control.sock");
    let mut command = Command::new(common::BIN);
    command
        .args(["daemon", "--root"])
        .arg(&root)
        .arg("--control-socket")
        .arg(&socket)
        .args(["--nbd-socket"])
        .arg(dir.join("nbd.sock"))
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let daemon = Daemon::start_command(command, &root, &socket);
    ok(&socket, &["create", "db", "--size", "8M"]);
    let uri = unix_uri(&daemon, "db");

    let (status, before) = http(&socket, "GET", "/metrics", "");
    assert_eq!(status, 200);
    promtool_check(&promtool, &before);
    let written = sample(&before, "ballast_volume_write_bytes_total{volume=\"db\"}");
    let reads = sample(&before, "ballast_volume_read_ops_total{volume=\"db\"}");

    qemu_io(&uri, &["write -P 0x11 0 2M"]);
    read_export(&uri, &dir, "db.img");
    let (_, after) = http(&socket, "GET", "/metrics", "");
    promtool_check(&promtool, &after);
    let written_after = sample(&after, "ballast_volume_write_bytes_total{volume=\"db\"}");
    assert!(
        written_after - written >= (2 << 20) as f64,
        "{written} -> {written_after}"
    );
    assert!(sample(&after, "ballast_volume_read_ops_total{volume=\"db\"}") > reads);
    let count = sample(
        &after,
        "ballast_volume_write_latency_seconds_count{volume=\"db\"}",
    );
    let inf = sample(
        &after,
        "ballast_volume_write_latency_seconds_bucket{volume=\"db\",le=\"+Inf\"}",
    );
    assert!(count > 0.0 && count == inf, "{count} {inf}");
    // Space: present (its accounting follows the engine's checkpoints).
    assert!(sample(&after, "ballast_volume_allocated_bytes{volume=\"db\"}") >= 0.0);
    assert!(sample(&after, "ballast_volume_size_bytes{volume=\"db\"}") == (8 << 20) as f64);
    assert!(sample(&after, "ballast_pool_used_bytes") >= 0.0);

    // A schedule's runs show up.
    let dest = format!("file://{}", dir.join("store").display());
    ok(
        &socket,
        &[
            "backup", "schedule", "set", "db", "--dest", &dest, "--every", "1h",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(&socket, &["backup", "schedule", "list", "--json"])[0]["successes"] != 1 {
        assert!(Instant::now() < deadline, "the first scheduled run");
        std::thread::sleep(Duration::from_millis(100));
    }
    let labels = format!("{{volume=\"db\",dest=\"{dest}\"}}");
    let (status, page) = tcp_get(port, "/metrics");
    assert_eq!(status, 200, "over TCP too");
    promtool_check(&promtool, &page);
    assert_eq!(
        sample(
            &page,
            &format!("ballast_backup_schedule_interval_seconds{labels}")
        ),
        3600.0
    );
    assert_eq!(
        sample(
            &page,
            &format!("ballast_backup_schedule_successes_total{labels}")
        ),
        1.0
    );
    assert!(
        sample(
            &page,
            &format!("ballast_backup_schedule_uploaded_bytes_total{labels}")
        ) >= (1 << 20) as f64 // two equal MiB: one chunk
    );
    let last = sample(
        &page,
        &format!("ballast_backup_schedule_last_success_timestamp_seconds{labels}"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    assert!(sample(&page, "ballast_jobs{state=\"succeeded\"}") >= 1.0);
    assert_eq!(tcp_get(port, "/v1/volumes").0, 404, "only /metrics on TCP");
}

#[test]
fn the_readme_alert_fires_after_two_intervals_without_a_success() {
    let Some(promtool) = promtool() else { return };
    let dir = TempDir::create();
    let rules = dir.join("ballast-alerts.yml");
    std::fs::write(&rules, readme_alert_rule()).unwrap();
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A schedule every 10 minutes whose last success was at t=0: quiet at
    // 15 minutes, firing at 25 (past 2 x 10) once the rule's `for` passed.
    let test = format!(
        r#"rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ballast_backup_schedule_interval_seconds{{volume="db",dest="file:///b"}}'
        values: '600x40'
      - series: 'ballast_backup_schedule_created_timestamp_seconds{{volume="db",dest="file:///b"}}'
        values: '0x40'
      - series: 'ballast_backup_schedule_last_success_timestamp_seconds{{volume="db",dest="file:///b"}}'
        values: '0x40'
    alert_rule_test:
      - eval_time: 15m
        alertname: BallastBackupMissing
        exp_alerts: []
      - eval_time: 30m
        alertname: BallastBackupMissing
        exp_alerts:
          - exp_labels: {{severity: critical, volume: db, dest: "file:///b"}}
            exp_annotations:
              summary: "no successful backup of db to file:///b for 2 x its interval"
"#,
        rules = rules.display()
    );
    let test_file = dir.join("test.yml");
    std::fs::write(&test_file, test).unwrap();
    let out = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_metrics_listener_off_loopback_needs_the_explicit_flag() {
    let dir = TempDir::create();
    let out = Command::new(common::BIN)
        .args(["daemon", "--root"])
        .arg(dir.join("root"))
        .arg("--control-socket")
        .arg(dir.join("c.sock"))
        .args(["--metrics-listen", "0.0.0.0:9469"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics-allow-remote"), "{stderr}");
    assert!(
        !dir.join("c.sock").exists(),
        "refused before anything was bound"
    );
}
