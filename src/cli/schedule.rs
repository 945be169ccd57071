//! `ballast backup schedule set/list/remove`. Times are shown in local
//! time with the zone; the daemon keeps them in UTC.

use std::time::Duration;

use anyhow::{Context, Result};
use ballast_engine::{format_size, validate_name};

use super::args::ScheduleCommand;
use super::output::{format_local_time, json, Table};
use crate::api::types::{ScheduleStatus, SetSchedule};
use crate::client::Client;

pub async fn run(client: &Client, command: ScheduleCommand) -> Result<String> {
    Ok(match command {
        ScheduleCommand::Set {
            volume,
            dest,
            every,
            keep,
            key,
        } => {
            validate_name(&volume)?;
            let every_secs = humantime::parse_duration(&every)
                .map(|d: Duration| d.as_secs())
                .with_context(|| format!("--every {every:?} (e.g. 30m, 1h, 1d)"))?;
            let request = SetSchedule {
                volume,
                dest,
                every_secs,
                keep: keep.options(),
                key: key.checked_name()?,
            };
            let status = client.set_schedule(&request).await?;
            format!(
                "{} to {} every {}; next run {}\n",
                status.schedule.volume,
                status.schedule.dest,
                humantime::format_duration(Duration::from_secs(status.schedule.every)),
                format_local_time(status.next_run),
            )
        }
        ScheduleCommand::List(output) => {
            let schedules = client.schedules().await?;
            if output.json {
                json(&schedules)
            } else {
                schedule_table(&schedules)
            }
        }
        ScheduleCommand::Remove { volume, dest } => {
            validate_name(&volume)?;
            client.remove_schedule(&volume, &dest).await?;
            format!("{volume} to {dest}: schedule removed\n")
        }
    })
}

fn schedule_table(schedules: &[ScheduleStatus]) -> String {
    let mut text = String::new();
    for s in schedules {
        let every = humantime::format_duration(Duration::from_secs(s.schedule.every));
        let next = match s.running_since {
            Some(since) => format!("running since {}", format_local_time(since)),
            None => format_local_time(s.next_run),
        };
        let mut table = Table::new(&["", ""]);
        table.row(vec!["volume:".into(), s.schedule.volume.clone()]);
        table.row(vec!["dest:".into(), s.schedule.dest.clone()]);
        table.row(vec!["every:".into(), every.to_string()]);
        table.row(vec!["keep:".into(), keep_text(s)]);
        table.row(vec!["next run:".into(), next]);
        table.row(vec![
            "last success:".into(),
            s.last_success.as_ref().map_or("never".into(), |l| {
                format!(
                    "{} ({} uploaded in {:.1} s)",
                    format_local_time(l.at),
                    format_size(l.uploaded_bytes),
                    l.duration_ms as f64 / 1000.0
                )
            }),
        ]);
        table.row(vec![
            "last failure:".into(),
            s.last_failure.as_ref().map_or("never".into(), |l| {
                format!("{}: {}", format_local_time(l.at), l.error)
            }),
        ]);
        table.row(vec![
            "runs:".into(),
            format!(
                "{} ({} failed, {} skipped while one was running)",
                s.runs, s.failures, s.skipped
            ),
        ]);
        // The header row of a two-column key/value table is empty.
        let rendered = table.render();
        text.push_str(rendered.split_once('\n').map_or("", |(_, rest)| rest));
        text.push('\n');
    }
    if text.is_empty() {
        text.push_str("no backup schedules\n");
    }
    text
}

fn keep_text(s: &ScheduleStatus) -> String {
    let k = &s.schedule.keep;
    let parts: Vec<String> = [
        ("last", k.last),
        ("hourly", k.hourly),
        ("daily", k.daily),
        ("weekly", k.weekly),
        ("monthly", k.monthly),
        ("yearly", k.yearly),
    ]
    .iter()
    .filter_map(|(name, n)| n.filter(|n| *n > 0).map(|n| format!("{name} {n}")))
    .collect();
    if parts.is_empty() {
        "everything (no prune)".into()
    } else {
        parts.join(", ")
    }
}
