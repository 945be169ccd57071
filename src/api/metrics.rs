//! `GET /metrics`: the daemon's state in the Prometheus text exposition
//! format (version 0.0.4), on the control socket and on the optional
//! `--metrics-listen` TCP listener (`daemon/metrics.rs`).
//!
//! Per volume: read and write bytes and operations, latency histograms,
//! size and allocated bytes. The pool: used, file size, cap, failed.
//! Per schedule: interval, creation, last success (and what it uploaded),
//! last failure, failures in a row, last run's duration, bytes uploaded,
//! runs, failures, skips. Per standby: the applied backup's creation and
//! the lag behind it, the last poll, applying and failing, the last
//! apply's duration and fetched bytes. Jobs by state.

use std::fmt::Write;

use ballast_engine::{DirectionStats, LATENCY_BUCKETS};

use super::state::ApiState;
use crate::ops::schedule::ScheduleStatus;
use crate::ops::standby::StandbyStatus;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, volume: &str, d: &DirectionStats) {
        for (le, count) in LATENCY_BUCKETS.iter().zip(&d.buckets) {
            let le = le.to_string();
            self.sample(
                &format!("{name}_bucket"),
                &[("volume", volume), ("le", &le)],
                *count as f64,
            );
        }
        self.sample(
            &format!("{name}_bucket"),
            &[("volume", volume), ("le", "+Inf")],
            d.ops as f64,
        );
        self.sample(&format!("{name}_sum"), &[("volume", volume)], d.seconds);
        self.sample(
            &format!("{name}_count"),
            &[("volume", volume)],
            d.ops as f64,
        );
    }
}

/// A schedule's labels.
fn schedule_labels(s: &ScheduleStatus) -> [(&'static str, &str); 2] {
    [
        ("volume", s.schedule.volume.as_str()),
        ("dest", s.schedule.dest.as_str()),
    ]
}

/// The metrics page.
pub async fn render(state: &ApiState) -> String {
    let mut t = Text(String::new());
    let io = state.pool.io_stats();
    let volumes = state.pool.volumes();
    type Pick = fn(&ballast_engine::VolumeIo) -> u64;
    let counters: [(&str, &str, Pick); 4] = [
        (
            "ballast_volume_read_bytes_total",
            "Bytes read from the volume.",
            |v| v.read.bytes,
        ),
        (
            "ballast_volume_read_ops_total",
            "Read requests served.",
            |v| v.read.ops,
        ),
        (
            "ballast_volume_write_bytes_total",
            "Bytes written to the volume.",
            |v| v.write.bytes,
        ),
        (
            "ballast_volume_write_ops_total",
            "Write requests served.",
            |v| v.write.ops,
        ),
    ];
    for (name, help, pick) in counters {
        t.family(name, "counter", help);
        for v in &io {
            t.sample(name, &[("volume", &v.volume)], pick(v) as f64);
        }
    }
    for (name, help, read) in [
        (
            "ballast_volume_read_latency_seconds",
            "Time reads took.",
            true,
        ),
        (
            "ballast_volume_write_latency_seconds",
            "Time writes took.",
            false,
        ),
    ] {
        t.family(name, "histogram", help);
        for v in &io {
            t.histogram(name, &v.volume, if read { &v.read } else { &v.write });
        }
    }
    t.family(
        "ballast_volume_size_bytes",
        "gauge",
        "Virtual size of the volume.",
    );
    for v in &volumes {
        t.sample(
            "ballast_volume_size_bytes",
            &[("volume", &v.name)],
            v.size as f64,
        );
    }
    t.family(
        "ballast_volume_allocated_bytes",
        "gauge",
        "Pool space the volume and its snapshots hold.",
    );
    for v in &volumes {
        t.sample(
            "ballast_volume_allocated_bytes",
            &[("volume", &v.name)],
            v.allocated as f64,
        );
    }

    let pool = state.pool.stats();
    t.family(
        "ballast_pool_used_bytes",
        "gauge",
        "Pool data space in use.",
    );
    t.sample("ballast_pool_used_bytes", &[], pool.used as f64);
    t.family(
        "ballast_pool_size_bytes",
        "gauge",
        "Size of the pool's data file.",
    );
    t.sample("ballast_pool_size_bytes", &[], pool.file_size as f64);
    if let Some(max) = pool.max_size {
        t.family(
            "ballast_pool_cap_bytes",
            "gauge",
            "The pool's size cap (--pool-size).",
        );
        t.sample("ballast_pool_cap_bytes", &[], max as f64);
    }
    t.family(
        "ballast_pool_failed",
        "gauge",
        "1 if the pool stopped accepting writes.",
    );
    t.sample(
        "ballast_pool_failed",
        &[],
        f64::from(u8::from(pool.failed.is_some())),
    );

    let schedules = state.schedules.list().await;
    // Every value here is read from the schedule's record in the pool's
    // metadata, so a restart changes none of them (the counters included:
    // they never reset). A gauge without a value is left out.
    type Gauge = fn(&ScheduleStatus) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 8] = [
        (
            "ballast_backup_schedule_interval_seconds",
            "Seconds between a schedule's runs.",
            |s| Some(s.schedule.every as f64),
        ),
        (
            "ballast_backup_schedule_created_timestamp_seconds",
            "When the schedule was set (Unix time).",
            |s| Some(s.created as f64),
        ),
        (
            "ballast_backup_schedule_last_success_timestamp_seconds",
            "When the schedule's last successful backup finished (Unix time); absent before the first.",
            |s| s.last_success.as_ref().map(|l| l.at as f64),
        ),
        (
            "ballast_backup_schedule_last_success_uploaded_bytes",
            "Bytes of new chunks the schedule's last successful backup uploaded.",
            |s| s.last_success.as_ref().map(|l| l.uploaded_bytes as f64),
        ),
        (
            "ballast_backup_schedule_last_failure_timestamp_seconds",
            "When the schedule's last failed run ended (Unix time); absent before the first.",
            |s| s.last_failure.as_ref().map(|l| l.at as f64),
        ),
        (
            "ballast_backup_schedule_consecutive_failures",
            "Failed backups since the schedule's last success (0 after a success).",
            |s| Some(f64::from(s.consecutive_failures)),
        ),
        (
            "ballast_backup_schedule_last_duration_seconds",
            "How long the schedule's last run took, whatever its outcome.",
            |s| s.last_duration_ms.map(|ms| ms as f64 / 1000.0),
        ),
        (
            "ballast_backup_schedule_running",
            "1 while a run of the schedule is going.",
            |s| Some(f64::from(u8::from(s.running_since.is_some()))),
        ),
    ];
    for (name, help, pick) in gauges {
        t.family(name, "gauge", help);
        for s in &schedules {
            if let Some(value) = pick(s) {
                t.sample(name, &schedule_labels(s), value);
            }
        }
    }
    type Count = fn(&ScheduleStatus) -> u64;
    let counts: [(&str, &str, Count); 5] = [
        (
            "ballast_backup_schedule_uploaded_bytes_total",
            "Bytes of new chunks the schedule's backups uploaded.",
            |s| s.uploaded_bytes,
        ),
        ("ballast_backup_schedule_runs_total", "Runs started.", |s| {
            s.runs
        }),
        (
            "ballast_backup_schedule_successes_total",
            "Runs whose backup succeeded.",
            |s| s.successes,
        ),
        (
            "ballast_backup_schedule_failures_total",
            "Failed runs (a backup, or the prune or gc after one).",
            |s| s.failures,
        ),
        (
            "ballast_backup_schedule_skipped_total",
            "Slots skipped because the previous run was still going.",
            |s| s.skipped,
        ),
    ];
    for (name, help, pick) in counts {
        t.family(name, "counter", help);
        for s in &schedules {
            t.sample(name, &schedule_labels(s), pick(s) as f64);
        }
    }

    standbys(&mut t, &state.standbys.list());

    t.family(
        "ballast_jobs",
        "gauge",
        "Daemon jobs (backup, restore, verify, gc, prune) kept, by state.",
    );
    for (job_state, n) in state.jobs.count_by_state() {
        t.sample("ballast_jobs", &[("state", job_state)], n as f64);
    }
    t.0
}

/// The standby gauges, each labelled with the standby's volume, the volume
/// it follows and the destination; a gauge without a value is left out.
fn standbys(t: &mut Text, list: &[StandbyStatus]) {
    type Gauge = fn(&StandbyStatus) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 7] = [
        (
            "ballast_standby_applied_backup_created_timestamp_seconds",
            "When the newest backup the standby holds complete was taken (Unix time); absent before the first apply.",
            |s| s.applied_created.map(|c| c as f64),
        ),
        (
            "ballast_standby_lag_seconds",
            "Seconds from the creation of the newest backup the standby holds complete to now.",
            |s| s.lag_secs.map(|l| l as f64),
        ),
        (
            "ballast_standby_last_check_timestamp_seconds",
            "When the standby last polled its destination (Unix time), whatever the outcome.",
            |s| s.last_check.map(|c| c as f64),
        ),
        (
            "ballast_standby_applying",
            "1 while the standby applies a backup.",
            |s| Some(f64::from(u8::from(s.applying_backup.is_some()))),
        ),
        (
            "ballast_standby_failing",
            "1 if the standby's last poll or apply failed (it keeps its last complete backup).",
            |s| Some(f64::from(u8::from(s.last_error.is_some()))),
        ),
        (
            "ballast_standby_last_apply_duration_seconds",
            "How long the standby's last complete apply took.",
            |s| s.last_apply.as_ref().map(|a| a.duration_ms as f64 / 1000.0),
        ),
        (
            "ballast_standby_last_apply_fetched_bytes",
            "Bytes of chunks the standby's last complete apply fetched.",
            |s| s.last_apply.as_ref().map(|a| a.bytes_fetched as f64),
        ),
    ];
    for (name, help, pick) in gauges {
        t.family(name, "gauge", help);
        for s in list {
            if let Some(value) = pick(s) {
                let labels = [
                    ("volume", s.standby.volume.as_str()),
                    ("source", s.standby.source.as_str()),
                    ("dest", s.standby.dest.as_str()),
                ];
                t.sample(name, &labels, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        let mut t = Text(String::new());
        t.sample("m", &[("v", "x\ny")], 1.5);
        assert_eq!(t.0, "m{v=\"x\\ny\"} 1.5\n");
    }
}
