//! `ballast standby create/list/activate`. Times are shown in local time
//! with the zone; the daemon keeps them in UTC.

use std::time::Duration;

use anyhow::{Context, Result};
use ballast_engine::{format_size, validate_name};

use super::args::StandbyCommand;
use super::output::{format_local_time, json, Table};
use crate::api::types::{CreateStandby, StandbyStatus};
use crate::client::Client;

pub async fn run(client: &Client, command: StandbyCommand) -> Result<String> {
    Ok(match command {
        StandbyCommand::Create {
            volume,
            dest,
            source,
            every,
            key,
        } => {
            validate_name(&volume)?;
            validate_name(&source).context("--volume")?;
            let every_secs = humantime::parse_duration(&every)
                .map(|d: Duration| d.as_secs())
                .with_context(|| format!("--every {every:?} (e.g. 30s, 1m, 1h)"))?;
            let request = CreateStandby {
                volume,
                dest,
                source,
                every_secs,
                key: key.checked_name()?,
            };
            let s = client.create_standby(&request).await?;
            format!(
                "{}: standby of {} in {}, polled every {}\n",
                s.standby.volume,
                s.standby.source,
                s.standby.dest,
                humantime::format_duration(Duration::from_secs(s.standby.every)),
            )
        }
        StandbyCommand::List(output) => {
            let standbys = client.standbys().await?;
            if output.json {
                json(&standbys)
            } else {
                standby_table(&standbys)
            }
        }
        StandbyCommand::Activate { volume, output } => {
            validate_name(&volume)?;
            let s = client.activate_standby(&volume).await?;
            if output.json {
                json(&s)
            } else {
                format!(
                    "{volume}: activated on backup {}\n",
                    s.applied_backup.as_deref().unwrap_or("-")
                )
            }
        }
    })
}

fn standby_table(standbys: &[StandbyStatus]) -> String {
    let mut text = String::new();
    for s in standbys {
        let mut table = Table::new(&["", ""]);
        table.row(vec!["volume:".into(), s.standby.volume.clone()]);
        table.row(vec![
            "source:".into(),
            format!("{} in {}", s.standby.source, s.standby.dest),
        ]);
        table.row(vec!["state:".into(), s.state.clone()]);
        table.row(vec![
            "applied:".into(),
            match (&s.applied_backup, s.lag_secs) {
                (Some(b), Some(lag)) => format!(
                    "{b} (lag {})",
                    humantime::format_duration(Duration::from_secs(lag))
                ),
                _ => "nothing yet".into(),
            },
        ]);
        if let Some(b) = &s.applying_backup {
            table.row(vec!["applying:".into(), b.clone()]);
        }
        if let Some(l) = &s.last_apply {
            table.row(vec![
                "last apply:".into(),
                format!(
                    "{}: {} chunks fetched ({}), {} zeroed, in {:.1} s",
                    l.backup,
                    l.chunks_fetched,
                    format_size(l.bytes_fetched),
                    l.chunks_zeroed,
                    l.duration_ms as f64 / 1000.0
                ),
            ]);
        }
        table.row(vec![
            "last check:".into(),
            s.last_check.map_or("never".into(), format_local_time),
        ]);
        table.row(vec![
            "last error:".into(),
            s.last_error.as_ref().map_or("none".into(), |e| {
                format!("{}: {}", format_local_time(e.at), e.error)
            }),
        ]);
        // The header row of a two-column key/value table is empty.
        let rendered = table.render();
        text.push_str(rendered.split_once('\n').map_or("", |(_, rest)| rest));
        text.push('\n');
    }
    if text.is_empty() {
        text.push_str("no standby volumes\n");
    }
    text
}
