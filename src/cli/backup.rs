//! `ballast backup ...` and `ballast create VOL --backup URL`.
//!
//! The daemon does the work: long operations are jobs this client starts,
//! polls (drawing a progress bar when stderr is a terminal and the output
//! is not JSON) and cancels on Ctrl-C.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ballast_backupstore::{Progress, TerminalProgress};
use ballast_engine::{format_size, parse_snapshot_ref, validate_name};
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};

use super::args::{BackupCommand, KeyArg};
use super::output::{emit, format_local_time, format_time, json, Table};
use super::schedule;
use crate::api::types::{JobRequest, JobState, JobStatus};
use crate::client::Client;

/// How often a running job's progress is refreshed.
const POLL: Duration = Duration::from_millis(200);

pub async fn run(client: &Client, command: BackupCommand) -> Result<String> {
    Ok(match command {
        BackupCommand::Create {
            source,
            dest,
            key,
            output,
        } => {
            let (volume, snapshot) = match source.split_once('@') {
                Some(_) => {
                    let (volume, snapshot) = parse_snapshot_ref(&source)?;
                    (volume.to_string(), Some(snapshot.to_string()))
                }
                None => {
                    validate_name(&source)?;
                    (source, None)
                }
            };
            let request = JobRequest::Backup {
                volume,
                snapshot,
                dest,
                key: key.checked_name()?,
            };
            let info = run_job(client, &request, !output.json).await?;
            if output.json {
                json(&info)
            } else {
                format!("{}\n", field(&info, "url")?)
            }
        }
        BackupCommand::List {
            dest,
            volume,
            key,
            output,
        } => {
            if let Some(volume) = &volume {
                validate_name(volume)?;
            }
            let key = key.checked_name()?;
            let backups = client
                .backups(&dest, volume.as_deref(), key.as_deref())
                .await?;
            if output.json {
                json(&backups)
            } else {
                backup_table(&backups)?
            }
        }
        BackupCommand::Inspect {
            backup,
            key,
            output,
        } => {
            let info = client
                .inspect_backup(&backup, key.checked_name()?.as_deref())
                .await?;
            if output.json {
                json(&info)
            } else {
                backup_details(&info)?
            }
        }
        BackupCommand::Key(command) => super::key::run(command)?,
        BackupCommand::Delete { backup } => {
            client.delete_backup(&backup).await?;
            format!("{backup}\n")
        }
        BackupCommand::Verify {
            backup,
            dest,
            key,
            output,
        } => {
            let request = JobRequest::Verify {
                backup,
                dest,
                key: key.checked_name()?,
            };
            let report = run_job(client, &request, !output.json).await?;
            let text = if output.json {
                json(&report)
            } else {
                verify_summary(&report)?
            };
            let damaged = report["damaged"].as_array().map_or(0, Vec::len);
            if damaged > 0 {
                emit(&text)?;
                bail!(
                    "{damaged} of {} backups damaged",
                    report["backups"].as_u64().unwrap_or(0)
                );
            }
            text
        }
        BackupCommand::Gc {
            dest,
            grace,
            key,
            output,
        } => {
            let grace_secs = grace
                .as_deref()
                .map(|g| {
                    humantime::parse_duration(g)
                        .map(|d| d.as_secs())
                        .with_context(|| format!("--grace {g:?} (e.g. 0s, 30m, 1h)"))
                })
                .transpose()?;
            let request = JobRequest::Gc {
                dest,
                grace_secs,
                key: key.checked_name()?,
            };
            let report = run_job(client, &request, !output.json).await?;
            if output.json {
                json(&report)
            } else {
                format!(
                    "deleted {} chunks ({}); kept {} unreferenced chunks younger than the grace period; {} chunks in use by {} backups\n",
                    number(&report, "deleted_chunks")?,
                    format_size(number(&report, "deleted_bytes")?),
                    number(&report, "recent_chunks")?,
                    number(&report, "referenced_chunks")?,
                    number(&report, "manifests")?,
                )
            }
        }
        BackupCommand::Schedule(command) => schedule::run(client, command).await?,
        BackupCommand::Prune {
            dest,
            volume,
            keep,
            dry_run,
            key,
            output,
        } => {
            if let Some(volume) = &volume {
                validate_name(volume)?;
            }
            let request = JobRequest::Prune {
                dest,
                volume,
                keep: keep.options(),
                dry_run,
                key: key.checked_name()?,
            };
            let report = run_job(client, &request, !output.json).await?;
            if output.json {
                json(&report)
            } else {
                prune_summary(&report)?
            }
        }
    })
}

/// `ballast backup prune`'s report: what went (or would go) and why each
/// kept backup stays.
fn prune_summary(report: &Value) -> Result<String> {
    let dry_run = report["dry_run"].as_bool().unwrap_or(false);
    let mut table = Table::new(&["ACTION", "VOLUME", "CREATED", "REASON", "ID"]);
    for b in report["backups"].as_array().into_iter().flatten() {
        let keep = b["keep"].as_bool().unwrap_or(true);
        let action = match (keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would remove",
            (false, false) => "removed",
        };
        let reason = match (b["rule"].as_str(), b["period"].as_str()) {
            (Some(rule), Some(period)) => format!("{rule} {period}"),
            (Some(rule), None) => rule.to_string(),
            _ => "-".to_string(),
        };
        table.row(vec![
            action.to_string(),
            field(b, "volume")?.to_string(),
            format_local_time(number(b, "created")?),
            reason,
            field(b, "id")?.to_string(),
        ]);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    Ok(format!(
        "{}{verb} {} backups, kept {}{}\n",
        table.render(),
        number(report, "removed")?,
        number(report, "kept")?,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
    ))
}

/// `ballast create VOL --backup URL [--key NAME]`: restores into a new volume.
pub async fn restore(
    client: &Client,
    backup: &str,
    volume: &str,
    key: Option<String>,
) -> Result<String> {
    let request = JobRequest::Restore {
        backup: backup.to_string(),
        volume: volume.to_string(),
        key: KeyArg { key }.checked_name()?,
    };
    let info = run_job(client, &request, true).await?;
    Ok(format!("{}\n", field(&info, "name")?))
}

/// Starts a job and polls it to the end; returns its result. Ctrl-C
/// cancels the job in the daemon before this client gives up.
async fn run_job(client: &Client, request: &JobRequest, may_draw: bool) -> Result<Value> {
    let id = client.start_job(request).await?.id;
    let status = follow_job(client, id, may_draw, OnInterrupt::Cancel).await?;
    status
        .result
        .ok_or_else(|| anyhow!("job {id} succeeded without a result"))
}

/// What Ctrl-C does to a job a client follows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// The job was started for this command: it is cancelled.
    Cancel,
    /// The job runs for its own sake (a hydration): only the watching stops.
    Detach,
}

/// Polls job `id` until it ends, drawing its progress when `may_draw` and
/// stderr is a terminal; returns its status once it succeeded, and its
/// error otherwise.
pub async fn follow_job(
    client: &Client,
    id: u64,
    may_draw: bool,
    on_interrupt: OnInterrupt,
) -> Result<JobStatus> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let bar = (may_draw && std::io::stderr().is_terminal()).then(TerminalProgress::new);
    let outcome = loop {
        // Each status request waits up to a poll period for the job to end,
        // so the answer comes as soon as the job is done.
        let status = tokio::select! {
            status = client.job(id, POLL) => status?,
            _ = interrupt.recv() => {
                break Err(match on_interrupt {
                    OnInterrupt::Cancel => {
                        let op = client.cancel_job(id).await?.op;
                        anyhow!("interrupted: the {op} was cancelled")
                    }
                    OnInterrupt::Detach => anyhow!("interrupted: job {id} goes on in the daemon"),
                });
            }
        };
        if let Some(bar) = &bar {
            bar.show(&status.progress);
        }
        match status.state {
            JobState::Running => {}
            JobState::Succeeded => break Ok(status),
            JobState::Failed | JobState::Cancelled => {
                break Err(anyhow!(status
                    .error
                    .unwrap_or_else(|| format!("job {id} failed"))))
            }
        }
    };
    if let Some(bar) = &bar {
        bar.finish();
    }
    outcome
}

fn field<'a>(value: &'a Value, name: &str) -> Result<&'a str> {
    value[name]
        .as_str()
        .ok_or_else(|| anyhow!("the daemon's answer lacks {name:?}"))
}

fn number(value: &Value, name: &str) -> Result<u64> {
    value[name]
        .as_u64()
        .ok_or_else(|| anyhow!("the daemon's answer lacks {name:?}"))
}

fn backup_table(backups: &Value) -> Result<String> {
    let mut table = Table::new(&["VOLUME", "SNAPSHOT", "SIZE", "NEW", "CREATED", "URL"]);
    for b in backups.as_array().into_iter().flatten() {
        table.row(vec![
            field(b, "volume")?.to_string(),
            field(b, "snapshot")?.to_string(),
            format_size(number(b, "size")?),
            format_size(number(b, "new_bytes")?),
            format_time(number(b, "created")?),
            field(b, "url")?.to_string(),
        ]);
    }
    Ok(table.render())
}

fn backup_details(b: &Value) -> Result<String> {
    Ok(format!(
        "url:        {}\nvolume:     {}\nsnapshot:   {}\nsize:       {}\nchunks:     {} ({} with data, {} each)\nnew:        {} in {} chunks ({} stored)\nreused:     {} in {} chunks\nparent:     {}\ncreated:    {}\n",
        field(b, "url")?,
        field(b, "volume")?,
        field(b, "snapshot")?,
        format_size(number(b, "size")?),
        number(b, "chunks")?,
        number(b, "data_chunks")?,
        format_size(number(b, "chunk_size")?),
        format_size(number(b, "new_bytes")?),
        number(b, "new_chunks")?,
        format_size(number(b, "stored_bytes")?),
        format_size(number(b, "reused_bytes")?),
        number(b, "reused_chunks")?,
        b["parent"].as_str().unwrap_or("-"),
        format_time(number(b, "created")?),
    ))
}

fn verify_summary(report: &Value) -> Result<String> {
    let mut text = format!(
        "verified {} backups: {} chunks, {}\n",
        number(report, "backups")?,
        number(report, "chunks")?,
        format_size(number(report, "bytes")?),
    );
    for d in report["damaged"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "damaged: {} ({} bad chunks: {})\n",
            field(d, "url")?,
            number(d, "damaged_chunks")?,
            field(d, "reason")?,
        ));
    }
    Ok(text)
}
